"""A chat session's state as a front end keeps it, without any UI toolkit: the mix of weighted
inputs (with their previews and the temporary files they own), and the conversation as a list of
OpenAI-style messages ({"role", "content", "metadata"?}) from which the prompt's history is read.

The web app keeps these per browser session; a later OpenAI-compatible server can read its
`messages` with the same `history_pairs`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .arithmetic import normalised_weights
from .chat_request import WEIGHT_RANGE, infer_modality, safe_name
from .errors import InputError
from .inputs.limits import InputLimits
from .modalities import get_modality
from .pipeline import InputItem


@dataclass
class MixInput:
    """One input of a session's mix."""

    modality: str
    path: str  # server-side file (an upload, an example, or a temp file the session owns)
    name: str  # what users see (base name, no direction controls)
    weight: float = 1.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    preview: str | None = None  # a file a browser can show (point clouds: a small PLY); see Modality.preview
    owned: list[str] = field(default_factory=list)  # temp files deleted with this input

    def item(self) -> InputItem:
        return InputItem(self.modality, self.path, self.weight, self.name)


def new_input(path: str | os.PathLike, modality: str | None = None, weight: float = 1.0, *, name: str | None = None,
              limits: InputLimits | None = None, work_dir: str | os.PathLike | None = None,
              owned: list[str] | None = None) -> MixInput:
    """A file -> a mix input: its modality (given, else from the file type), and where the modality
    has one (`Modality.preview`: point clouds) a preview made by the library's reader (so a file
    it refuses raises InputError here)."""
    entry = MixInput(infer_modality(str(path), modality), str(path), safe_name(name or str(path)),
                     clamp_weight(weight), owned=list(owned or []))
    if (make_preview := get_modality(entry.modality).preview_function()) is not None:
        entry.preview = str(make_preview(path, limits, directory=work_dir))
        entry.owned.append(entry.preview)
    return entry


def clamp_weight(value: float) -> float:
    """A weight brought into the allowed range; a non-number (from a hostile client) is an InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"a weight must be a finite number, got {value!r}")
    low, high = WEIGHT_RANGE
    return min(max(float(value), low), high)


def shares(mix: list[MixInput]) -> list[str]:
    """Each input's signed share of the mix as the library normalises the weights ("+67%")."""
    try:
        return [f"{share:+.0%}" for share in normalised_weights([entry.weight for entry in mix])]
    except InputError:  # all weights zero
        return ["—"] * len(mix)


def describe_mix(mix: list[MixInput], icons: dict[str, str] | None = None) -> list[str]:
    """One line per input: name, modality, weight and share."""
    icons = icons or {}
    return [f"{icons.get(e.modality, '')} {e.name} · {e.modality} · weight {e.weight:+.2f} · share {s}".strip()
            for e, s in zip(mix, shares(mix))]


def delete_owned(mix: list[MixInput] | None) -> None:
    """Delete the temp files (typed texts, previews) of inputs leaving the mix or a closed session."""
    for entry in mix or []:
        for path in entry.owned:
            Path(path).unlink(missing_ok=True)


def mix_key(mix: list[MixInput], cache: Any) -> str:
    """What an encoding depends on: equal keys mean a stored Conditioning can be reused."""
    return json.dumps([[(e.modality, e.path, e.weight) for e in mix], cache and vars(cache)], default=str)


def run_with_progress(fn: Callable, *args, interval: float = 0.5, **kwargs) -> Iterator[float]:
    """Run fn on a worker thread, yielding the seconds elapsed every `interval` while it runs;
    the generator's return value is fn's result (fn's exception is raised here). A caller that
    stops iterating should cancel fn's work (e.g. a CancelToken passed in kwargs)."""
    done, out, start = threading.Event(), {}, time.monotonic()

    def work():
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread below
            out["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, daemon=True, name="ibllm-work").start()
    while not done.wait(interval):
        yield time.monotonic() - start
    if "error" in out:
        raise out["error"]
    return out["value"]


# ---------------------------------------------------------------------------------------------
# Conversations as OpenAI-style messages
# ---------------------------------------------------------------------------------------------
def message_text(message: dict) -> str:
    """The text of a message whose content is a string or a list of parts (text, files, ...)."""
    content = message.get("content")
    parts = content if isinstance(content, list) else [content]
    return "".join(p if isinstance(p, str) else str(p.get("text", "")) for p in parts if isinstance(p, (str, dict)))


def is_note(message: dict) -> bool:
    """A message with a metadata title is a note to the user (e.g. which inputs a turn used), not an answer."""
    return bool((message.get("metadata") or {}).get("title"))


def history_pairs(messages: list[dict]) -> list[tuple[str, str]]:
    """Messages -> [(question, answer), ...] for the prompt; notes are skipped."""
    pairs, question = [], None
    for message in messages:
        if message.get("role") == "user":
            question = message_text(message)
        elif message.get("role") == "assistant" and not is_note(message) and question is not None:
            pairs.append((question, message_text(message)))
            question = None
    return pairs


def file_names(message: dict) -> list[str]:
    parts = message.get("content") if isinstance(message.get("content"), list) else []
    names = []
    for part in parts:
        if isinstance(part, dict) and (part.get("alt_text") or "file" in part or "path" in part):
            path = (part.get("file") or {}).get("path") or part.get("path") or ""
            names.append(part.get("alt_text") or safe_name(path))
    return names


def conversation_markdown(messages: list[dict], directory: str | os.PathLike | None = None) -> Path:
    """The conversation as a Markdown file (new temp file): questions with the files they attached,
    each turn's notes (its inputs, weights and shares) and the answers."""
    lines = ["# ImageBind-LLM conversation", ""]
    for message in messages:
        if message.get("role") == "user":
            lines += [f"**You:** {message_text(message)}", *[f"- attached: `{n}`" for n in file_names(message)]]
        elif is_note(message):
            lines += [f"_{message['metadata']['title']}_", *[f"- {line}" for line in message_text(message).split("\n\n")]]
        else:
            lines += [f"**Assistant:** {message_text(message)}", ""]
    handle, path = tempfile.mkstemp(prefix="conversation-", suffix=".md", dir=directory)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")
    return Path(path)

"""The web app's event handlers: plain functions of the values Gradio hands them (tests call them
directly). Everything that is not about Gradio's values and toasts lives in the library
(demo.chat_request, demo.chat_session); app.py builds the layout and wires these.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import gradio as gr

from demo.cancel import CancelToken
from demo.chat_request import (MAX_INPUTS, WEIGHT_RANGE, ChatRequest, check_cache, check_generation, check_question,
                               encode_dropping_bad_inputs, plain_message, write_text_input)
from demo.chat_session import (MixInput, clamp_weight, conversation_markdown, delete_owned, describe_mix,
                               history_pairs, message_text, mix_key, new_input, run_with_progress, shares)
from demo.config import GenerationConfig
from demo.errors import DemoError, InputError

logger = logging.getLogger("ibllm.app")
WORK_DIR = Path(tempfile.gettempdir()) / "ibllm-app"  # previews, typed texts, exports (unique mkstemp names)
from demo.modalities import ICONS  # noqa: E402  name -> emoji: a column of the modality table
KEEP, REPLACE = "Add to the mix", "Replace the mix"  # what a new message's files do to the mix
TITLE = "ImageBind-LLM"  # toasts carry the app's own titles


def warn(message: str, title: str) -> None:
    """A user's mistake: a toast in plain words and one log line (no traceback)."""
    logger.info("%s: %s", title, message)
    # Gradio 6.31 shows the toast's type ("Warning") as its heading, so our title leads the text.
    gr.Warning(f"{title.capitalize()}: {message}", title=f"{TITLE}: {title}")


# ------------------------------------------------------------------ the mix
def attach(pipe, files: list[str], roles: dict, mix: list[MixInput], mode: str):
    """A message's files -> (new inputs, the mix they make). Refused files are named in a toast."""
    added = []
    for path in files:
        modality, weight = roles.get(Path(path).name, (None, 1.0))
        try:
            added.append(new_input(path, modality, weight, limits=pipe.limits, work_dir=WORK_DIR))
        except DemoError as exc:
            warn(plain_message(exc), "file not used")
    base = mix if mode == KEEP else []
    if len(base) + len(added) > MAX_INPUTS:
        delete_owned(added)
        raise InputError(f"at most {MAX_INPUTS} inputs per conversation: remove some from the mix first")
    if mode != KEEP:
        delete_owned(mix)
    return added, base + added


def set_weight(mix: list[MixInput], value: float | None, *, item_id: str):
    """A weight moved (drag, arrow keys, typing): clamp it visibly, update the mix and every share."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # "-" half-typed, or junk
        return gr.skip(), *[gr.skip()] * len(mix), gr.skip()
    clamped = clamp_weight(value)
    if clamped != value:
        gr.Info(f"Weight clamped: weights range from {WEIGHT_RANGE[0]:g} to {WEIGHT_RANGE[1]:g}, so {value:g} "
                f"was set to {clamped:g}.", title=TITLE)
    mix = [replace(e, weight=clamped) if e.id == item_id else e for e in mix]
    return mix, *shares(mix), (clamped if clamped != value else gr.skip())


def remove_input(mix: list[MixInput], layout: int, *, item_id: str):
    delete_owned([e for e in mix if e.id == item_id])
    return [e for e in mix if e.id != item_id], layout + 1


def clear_inputs(mix: list[MixInput], layout: int):
    delete_owned(mix)
    return [], layout + 1


def add_text(pipe, text: str, mix: list[MixInput], layout: int):
    """Typed text -> a text input, in a fresh temp file deleted with it."""
    try:
        if len(mix) >= MAX_INPUTS:
            raise InputError(f"at most {MAX_INPUTS} inputs per conversation: remove some first")
        path = write_text_input(text or "", pipe.limits, WORK_DIR)
    except InputError as exc:
        warn(str(exc), "text not added")
        return gr.skip(), gr.skip(), gr.skip()
    name = " ".join(text.split())
    name = f"“{name[:37]}…”" if len(name) > 40 else f"“{name}”"
    return mix + [new_input(path, "text", name=name, owned=[str(path)])], layout + 1, ""


def attach_to_box(files: list[str] | None, box: dict | None, roles_json: str, modality: str):
    """Files from a modality button (or the webcam) join the message box, remembered as that modality."""
    box, roles = box or {"text": "", "files": []}, json.loads(roles_json or "{}")
    roles.update({Path(f).name: [modality, 1.0] for f in files or []})
    return {"text": box.get("text", ""), "files": [*box.get("files", []), *(files or [])]}, json.dumps(roles)


# ------------------------------------------------------------------ chat turns
def media_part(entry: MixInput):
    """How an input shows in its turn: a thumbnail, a player, a 3D view, or a file chip."""
    if entry.preview:
        return gr.Model3D(entry.preview, display_mode="point_cloud", height=160, label=entry.name)
    return {"path": entry.path, "alt_text": entry.name}


def mix_note(mix: list[MixInput], new: int, seconds: float | None = None) -> dict:
    """The turn's note: pending while encoding, then every input with its weight and share."""
    if seconds is not None:
        return {"role": "assistant", "content": "Encoding your inputs…",
                "metadata": {"title": f"⏳ Encoding your inputs… {seconds:.0f} s", "status": "pending"}}
    if not mix:
        title, lines = "💬 No inputs: answered from the text alone", ["(no inputs)"]
    else:
        listed = " · ".join(f"{ICONS[e.modality]} {e.name} {share}" for e, share in zip(mix, shares(mix)))
        title = f"🎛️ Mix ({new} new, {len(mix) - new} kept from earlier turns): {listed}"
        lines = describe_mix(mix, ICONS)
    return {"role": "assistant", "content": "\n\n".join(lines), "metadata": {"title": title, "status": "done"}}


def respond(pipe, message: dict | None, chat: list[dict], mix: list[MixInput], layout: int, cond: dict | None,
            mode: str, roles_json: str, input_text: str, generation: dict, cache_settings: dict, *, retry: bool = False):
    """Send (or Regenerate): check, add the turn, encode (cancellable), stream the answer.

    Yields (chat, message box, mix, layout, cond). A refused request leaves the chat as it was and
    the text in the box; Stop or a closed tab closes this generator, which cancels the encoding."""
    busy, idle = gr.update(submit_btn=False, stop_btn=True), gr.update(submit_btn=True, stop_btn=False)
    message, token, start, added = message or {}, CancelToken(), len(chat), []
    try:
        gen_config = check_generation(generation or {}, pipe.generation_defaults)
        cache = check_cache(cache_settings or {}, pipe.cache_defaults) if pipe.cache is not None else None
        if retry:
            users = [n for n, m in enumerate(chat) if m["role"] == "user"]
            if not users:
                raise InputError("nothing to regenerate yet: ask a question first")
            start, question = users[-1], message_text(chat[users[-1]])
            turn = [chat[start]]
        else:
            question = check_question(message.get("text"), input_text, pipe.limits)
            roles = {name: tuple(role) for name, role in json.loads(roles_json or "{}").items()}
            added, mix = attach(pipe, list(message.get("files") or []), roles, mix, mode)
            turn = [{"role": "user", "content": [question, *map(media_part, added)]}]
    except (DemoError, ValueError) as exc:
        warn(plain_message(exc), "not sent")
        yield (gr.skip(),) * 5
        return
    chat, layout = chat[:start] + turn, layout + bool(added)
    box = busy if retry else gr.update(value={"text": "", "files": []}, submit_btn=False, stop_btn=True)
    try:
        if not (cond and cond["key"] == mix_key(mix, cache)):
            items = [e.item() for e in mix]
            task = run_with_progress(encode_dropping_bad_inputs, pipe, items, cache, cancel=token)
            try:
                while True:
                    yield chat + [mix_note(mix, len(added), next(task))], box, mix, layout, gr.skip()
            except StopIteration as finished:
                conditioning, kept, errors = finished.value
            for text in errors:
                warn(text, "input not used")
            if len(kept) < len(mix):  # the library returns the items it kept (the same objects)
                kept_ids = {id(item) for item in kept}
                delete_owned([e for e, item in zip(mix, items) if id(item) not in kept_ids])
                mix, layout = [e for e, item in zip(mix, items) if id(item) in kept_ids], layout + 1
                added = [e for e in added if e in mix]
            if conditioning is None:
                raise InputError("; ".join(errors))
            cond = {"key": mix_key(mix, cache), "cond": conditioning}
        chat = chat + [mix_note(mix, len(added))]
        yield chat, box, mix, layout, cond
        answer = ""
        for delta in pipe.stream(question, cond["cond"], history=history_pairs(chat[:start]), generation=gen_config,
                                 input_text=(input_text or "").strip() or None, cancel=token):
            answer += delta
            yield chat + [{"role": "assistant", "content": answer}], box, mix, layout, cond
        yield chat + [{"role": "assistant", "content": answer or "_(empty answer)_"}], idle, mix, layout, cond
    except GeneratorExit:  # Stop pressed or tab closed: cancel the encoding too
        token.cancel()
        raise
    except Exception as exc:  # noqa: BLE001: every failure becomes a toast; the conversation stays
        if isinstance(exc, DemoError):
            warn(plain_message(exc, [e.item() for e in mix]), "no answer")
        else:
            logger.exception("unexpected error in a chat request")
            gr.Warning(f"No answer: something went wrong on the server ({type(exc).__name__}); it has been "
                       "logged. Please try again.", title=f"{TITLE}: no answer")
        restore = idle if retry else gr.update(value={"text": question, "files": []}, submit_btn=True, stop_btn=False)
        yield chat[:start] + turn * retry, restore, mix, layout, cond


def stopped(chat: list[dict]):
    """Stop: the turn keeps what was answered so far; a pending note says it stopped."""
    chat = [{**m, "metadata": {"title": "⏹️ Stopped", "status": "done"}}
            if (m.get("metadata") or {}).get("status") == "pending" else m for m in chat]
    return chat, gr.update(submit_btn=True, stop_btn=False)


def undo(chat: list[dict]):
    """Remove the last exchange and put its question back in the box for editing."""
    users = [n for n, m in enumerate(chat) if m["role"] == "user"]
    if not users:
        return chat, gr.skip()
    return chat[:users[-1]], {"text": message_text(chat[users[-1]]), "files": []}


def neighbours_rows(cond: dict | None) -> list[list]:
    """(rank, id, similarity, source) of what the visual cache recalled for the last answer's mix."""
    result = getattr((cond or {}).get("cond"), "neighbours", None)
    if result is None:
        return []
    ids, sims = result.ids.tolist()[0], result.similarities.tolist()[0]  # [B, k] -> the first query
    sources = (result.sources or [[]])[0] or []
    return [[rank, int(i), round(float(sim), 4), (sources[rank - 1] if rank - 1 < len(sources) else None) or ""]
            for rank, (i, sim) in enumerate(zip(ids, sims), start=1) if i >= 0]  # -1: fewer than k found


def export_chat(chat: list[dict]) -> str | None:
    return str(conversation_markdown(chat, WORK_DIR)) if chat else None


def api_chat(pipe, question, files, modalities, weights, history, settings, *,
             defaults: GenerationConfig | None = None) -> Iterator[str]:
    """/chat (docs/api.md): a checked request, encoded and streamed; a bad argument is a clear error."""
    token, request = CancelToken(), None
    try:
        request = ChatRequest.parse(question, files, modalities, weights, history, settings, limits=pipe.limits,
                                    generation_defaults=defaults or pipe.generation_defaults,
                                    cache_defaults=pipe.cache_defaults)
        cond = pipe.encode(request.inputs, request.cache, cancel=token)
        answer = ""
        for delta in pipe.stream(request.question, cond, history=request.history, input_text=request.input_text,
                                 generation=request.generation, cancel=token):
            answer += delta
            yield answer
    except GeneratorExit:
        token.cancel()
        raise
    except DemoError as exc:
        message = plain_message(exc, request.inputs if request else ())
        logger.info("/chat refused: %s", message)
        raise gr.Error(message, title=f"{TITLE}: request refused") from None
    except Exception as exc:  # details go to the log only; the client learns the kind of failure
        logger.exception("unexpected error in a /chat request")
        raise gr.Error(f"Unexpected server error ({type(exc).__name__}); it has been logged.",
                       title=f"{TITLE}: no answer") from None

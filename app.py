"""Gradio web app for ImageBind-LLM multimodal chat.

    python app.py                      # the shipped `pocket` model (docs/pocket_world.md), else `tiny`
    python app.py --weights weights/converted/imagebind-llm-7b --load-in-4bit
    python app.py --help

All machine learning lives in the `demo` library; this file only builds the UI and wires it.
`build_demo(pipeline)` returns the Blocks app and loads nothing itself, so tests and Spaces can
hand it any pipeline. Layout comes first in `build_demo`, event wiring after it; handlers are
small top-level functions that take plain values (and the pipeline as their first argument), so
tests call them directly.

Per-session state:
  mix      list of input dicts {"id", "modality", "path", "name", "weight"}: what the user added.
  layout   an int bumped whenever items are added or removed: it re-renders the list of weight
           sliders. Weight changes do not bump it, so a slider is not rebuilt under the pointer.
  cond     {"key", "cond", "error"}: the Conditioning last encoded for the mix, so that a
           question does not re-encode unchanged inputs.
  gen, cache_cfg   generation and cache settings as dicts.
The chat history is the Chatbot's own value (messages format).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import inspect
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import numpy as np

from demo.cache import CACHE_LIMITS, CacheConfig
from demo.config import GENERATION_LIMITS, GenerationConfig
from demo.errors import DemoError
from demo.modalities import MODALITIES
from demo.pipeline import POCKET_FOLDER, Conditioning, ImageBindLLMPipeline, InputItem

logger = logging.getLogger("ibllm.app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "examples"
MAX_INPUTS = 16  # per session: keeps the slider list and one encode call bounded
WEIGHT_RANGE = (-1.0, 1.0, 0.05)  # signed: a negative weight steers away from an input
PREVIEW_POINTS = 50_000  # the browser's 3D viewer gets a random subset of larger clouds

# Tab order and which capture widget (besides file upload) each modality gets.
TAB_ORDER = ("image", "audio", "video", "point", "text", "depth", "thermal", "imu", "embedding")
ICONS = {"image": "🖼️", "audio": "🔊", "video": "🎬", "point": "🧊", "text": "📝",
         "depth": "🌊", "thermal": "🌡️", "imu": "📈", "embedding": "🧬"}

# Examples: (title, question, optional "input" text, [(modality, file in examples/, weight)]).
# A row whose files are missing is skipped at startup, so the app never breaks on a missing file.
EXAMPLE_TABLE: list[tuple[str, str, str, list[tuple[str, str, float]]]] = [
    ("Image: a cat", "What animal is this, and what is it doing?", "", [("image", "chelsea.png", 1.0)]),
    ("Image: coffee", "Describe this image in detail.", "", [("image", "coffee.png", 1.0)]),
    ("Audio: speech", "What do you hear?", "", [("audio", "speech.wav", 1.0)]),
    ("Audio: a sound", "What made this sound?", "", [("audio", "trash-empty.ogg", 1.0)]),
    ("Video", "What happens in this video?", "", [("video", "video.mp4", 1.0)]),
    ("Point cloud", "What object is this 3D shape?", "", [("point", "mug.ply", 1.0)]),
    ("Text", "Write a short poem about this.", "", [("text", "caption.txt", 1.0)]),
    ("Depth map", "What scene does this depth map show?", "", [("depth", "depth.png", 1.0)]),
    ("Thermal", "What is in this thermal image?", "", [("thermal", "thermal.png", 1.0)]),
    ("IMU", "What activity is the wearer doing?", "", [("imu", "walking_imu.csv", 1.0)]),
    ("Embedding", "Describe what this embedding shows.", "", [("embedding", "embedding.npy", 1.0)]),
    ("Mix: image + audio", "Describe the scene, including what you hear.", "",
     [("image", "rocket.jpg", 1.0), ("audio", "speech.wav", 0.5)]),
    ("Mix: coffee, not cat", "What is in the picture?", "",  # a negative weight steers away
     [("image", "coffee.png", 1.0), ("image", "chelsea.png", -0.3)]),
    # Held-out objects of the pocket world (examples/world/, written by `python -m demo.world build --ship`):
    # what the shipped pocket model knows about. Only images were paired with text in its training.
    ("World: image", "Describe this object.", "", [("image", "world/world-0.png", 1.0)]),
    ("World: sound", "What shape is this?", "", [("audio", "world/world-0.wav", 1.0)]),
    ("World: point cloud", "What shape is this?", "", [("point", "world/world-1.ply", 1.0)]),
    ("World: depth map", "How big is it?", "", [("depth", "world/world-1.depth.png", 1.0)]),
    ("World: video", "What colour is it?", "", [("video", "world/world-2.mp4", 1.0)]),
    ("World: text", "What shape is this?", "", [("text", "world/world-2.txt", 1.0)]),
    ("World: image + sound", "Describe this object.", "",  # modality arithmetic: two objects mixed
     [("image", "world/world-0.png", 0.5), ("audio", "world/world-1.wav", 0.5)]),
]

BANNER_PLACEHOLDER = """\
> ⚠️ **Demo mode: random weights.** This server runs the offline `tiny` preset, so the answers
> are meaningless text. It is here to try the interface. For real answers, download and convert
> the ImageBind-LLM weights (README, section **Weights**) and start
> `python app.py --weights PATH_TO_CONVERTED_WEIGHTS` (add `--load-in-4bit` for a 8-12 GB GPU).
"""

BANNER_NOTICE = "> ℹ️ {notice}\n"  # the model folder's own description (imagebind_llm.json "notice")

INTRO = """\
# ImageBind-LLM: chat about images, sounds, videos, 3D shapes and more
Add one or more inputs in the tabs on the left (they are mixed into one ImageBind embedding,
each with its own weight; a negative weight steers away from an input), then ask a question.
With no inputs it is a plain text chat.
"""


# ---------------------------------------------------------------------------------------------
# Errors: library errors become a message in the UI; anything else is logged, and the user sees
# a short message. Gradio then keeps serving everyone else.
# ---------------------------------------------------------------------------------------------
def _as_ui_error(exc: Exception) -> gr.Error:
    if isinstance(exc, gr.Error):
        return exc
    if isinstance(exc, DemoError):
        return gr.Error(str(exc), title=type(exc).__name__.replace("Error", " error").strip())
    logger.exception("unexpected error in a request")
    return gr.Error(f"Unexpected server error ({type(exc).__name__}); it has been logged.")


def reports_errors(fn: Callable) -> Callable:
    """Decorate a handler (plain or generator) so every exception reaches the UI as gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # GeneratorExit (Stop button) is not an Exception: passes
                raise _as_ui_error(exc) from exc

        return generator_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _as_ui_error(exc) from exc

    return wrapper


# ---------------------------------------------------------------------------------------------
# Settings: defaults and ranges come from the library's tables.
# ---------------------------------------------------------------------------------------------
def default_generation(pipe: ImageBindLLMPipeline) -> dict:
    defaults = pipe.generation_defaults
    return {name: getattr(defaults, name) for name in GENERATION_LIMITS}


def default_cache_settings(pipe: ImageBindLLMPipeline) -> dict:
    defaults = CacheConfig(enabled=pipe.cache is not None)
    return {"enabled": defaults.enabled, **{name: getattr(defaults, name) for name in CACHE_LIMITS}}


def read_generation(**values) -> dict:
    """Slider values -> generation dict. Whole-number settings come back from sliders as floats."""
    values["max_new_tokens"] = int(values["max_new_tokens"])
    return values


def read_cache_settings(**values) -> dict:
    values["k"] = int(values["k"])
    values["enabled"] = bool(values["enabled"])
    return values


def generation_config(pipe: ImageBindLLMPipeline, settings: dict | None) -> GenerationConfig:
    config = GenerationConfig(**{**default_generation(pipe), **(settings or {})})
    return config.check()


def cache_config(pipe: ImageBindLLMPipeline, settings: dict | None) -> CacheConfig | None:
    """None when the server has no cache loaded: the library then skips retrieval entirely."""
    if pipe.cache is None:
        return None
    settings = {**default_cache_settings(pipe), **(settings or {})}
    return CacheConfig(enabled=bool(settings["enabled"]), k=int(settings["k"]),
                       temperature=float(settings["temperature"]), weight=float(settings["weight"]))


# ---------------------------------------------------------------------------------------------
# The input mix: add, reweight, remove, encode.
# ---------------------------------------------------------------------------------------------
def new_item(modality: str, path: str, weight: float = 1.0, name: str | None = None) -> dict:
    return {"id": uuid.uuid4().hex[:8], "modality": modality, "path": str(path),
            "name": name or Path(path).name, "weight": float(weight)}


def add_inputs(files: str | list[str] | None, mix: list[dict], layout: int, *, modality: str):
    """Append uploaded (or captured) files to the mix; clear the upload widget for the next one."""
    paths = [files] if isinstance(files, (str, Path)) else list(files or [])
    if not paths:  # the widget was cleared (also by us): nothing to add
        return mix, layout, None
    room = MAX_INPUTS - len(mix)
    if len(paths) > room:
        gr.Warning(f"At most {MAX_INPUTS} inputs per conversation; {len(paths) - max(room, 0)} ignored.")
        paths = paths[:max(room, 0)]
    added = [new_item(modality, p) for p in paths]
    return mix + added, layout + (1 if added else 0), None


def add_typed_text(text: str, mix: list[dict], layout: int):
    """The Text tab's box: store the text as a .txt file, the form the library encodes."""
    text = (text or "").strip()
    if not text:
        raise gr.Error("Type some text to add first.")
    path = _work_dir() / f"text-{hashlib.sha1(text.encode()).hexdigest()[:12]}.txt"
    path.write_text(text, encoding="utf-8")
    if len(mix) >= MAX_INPUTS:
        raise gr.Error(f"At most {MAX_INPUTS} inputs per conversation.")
    name = text if len(text) <= 40 else text[:37] + "..."
    return mix + [new_item("text", path, name=f"“{name}”")], layout + 1, ""


def set_weight(mix: list[dict], weight: float, *, item_id: str) -> list[dict]:
    return [{**item, "weight": float(weight)} if item["id"] == item_id else item for item in mix]


def remove_input(mix: list[dict], layout: int, *, item_id: str):
    return [item for item in mix if item["id"] != item_id], layout + 1


def clear_inputs(layout: int):
    return [], layout + 1


def input_items(mix: list[dict]) -> list[InputItem]:
    return [InputItem(modality=item["modality"], source=item["path"], weight=item["weight"], name=item["name"])
            for item in mix]


def mix_key(mix: list[dict], cache: CacheConfig | None) -> str:
    """What the conditioning depends on; equal keys mean the stored Conditioning can be reused."""
    inputs = [(item["modality"], item["path"], item["weight"]) for item in mix]
    cache_part = None if cache is None else [cache.enabled, cache.k, cache.temperature, cache.weight]
    return json.dumps([inputs, cache_part])


def plain_message(exc: Exception, mix: list[dict]) -> str:
    """The library's message with server-side upload paths replaced by the file names users know."""
    message = str(exc)
    for item in mix:
        message = message.replace(item["path"], item["name"])
    return message


def encode_pruning_bad_inputs(pipe: ImageBindLLMPipeline, mix: list[dict], cache: CacheConfig | None):
    """Encode the mix. If it fails, find the inputs that fail on their own and drop them.

    Returns (conditioning or None, kept mix, error messages). A broken upload is thus removed from
    this session's mix with a message instead of poisoning every later question. Errors that no
    single input explains (e.g. weights that cancel out) keep the mix and return the message.
    """
    try:
        return pipe.encode(input_items(mix), cache=cache), mix, []
    except DemoError as whole_error:
        bad, errors = set(), []
        for item in mix:
            try:
                pipe.encode(input_items([{**item, "weight": 1.0}]), cache=None)
            except DemoError as item_error:
                bad.add(item["id"])
                message = plain_message(item_error, [item])
                errors.append(message if item["name"] in message else f"{item['name']}: {message}")
        if not bad:
            return None, mix, [plain_message(whole_error, mix)]
        kept = [item for item in mix if item["id"] not in bad]
        try:
            return pipe.encode(input_items(kept), cache=cache), kept, errors
        except DemoError as rest_error:
            return None, kept, errors + [plain_message(rest_error, kept)]


@reports_errors
def refresh_conditioning(pipe: ImageBindLLMPipeline, mix: list[dict], layout: int,
                         cache_settings: dict, cond_state: dict | None):
    """Encode the current mix (unless unchanged) and show its summary and cache neighbours."""
    cache = cache_config(pipe, cache_settings)
    key = mix_key(mix, cache)
    if not (cond_state and cond_state["key"] == key):
        cond, kept, errors = encode_pruning_bad_inputs(pipe, mix, cache)
        for message in errors:
            gr.Warning(message, title="Input not used")
        if len(kept) != len(mix):
            layout += 1  # rows were dropped: re-render the slider list
        mix = kept
        cond_state = {"key": mix_key(mix, cache), "cond": cond, "error": "; ".join(errors) if cond is None else None}
    cond = cond_state["cond"]
    return mix, layout, cond_state, mix_summary(mix, cond, cond_state["error"]), neighbours_table(cond)


@reports_errors
def ensure_conditioning(pipe: ImageBindLLMPipeline, mix: list[dict], cache_settings: dict,
                        cond_state: dict | None) -> dict:
    """Before answering: reuse the stored Conditioning, else encode (errors stop the answer)."""
    cache = cache_config(pipe, cache_settings)
    key = mix_key(mix, cache)
    if cond_state and cond_state["key"] == key and cond_state["cond"] is not None:
        return cond_state
    try:
        return {"key": key, "cond": pipe.encode(input_items(mix), cache=cache), "error": None}
    except DemoError as exc:
        raise gr.Error(plain_message(exc, mix), title="Input error") from exc


def mix_summary(mix: list[dict], cond: Conditioning | None, error: str | None = None) -> str:
    """Markdown table of the mix; normalised weights come from the library's Conditioning.mix."""
    if error:
        return f"**The inputs could not be mixed:** {error}"
    if not mix:
        return "_No inputs: plain text chat (the model sees a blank image)._"
    if cond is None:
        return "_Encoding…_"
    rows = ["| modality | input | share of the mix |", "|---|---|---|"]
    for modality, source_name, share in cond.mix:
        label = MODALITIES[modality].label if modality in MODALITIES else modality
        rows.append(f"| {ICONS.get(modality, '')} {label} | `{source_name}` | {share:+.0%} |")
    notes = [f"_{note}_" for note in getattr(cond, "notes", [])]
    return "\n".join(rows + ([""] + notes if notes else []))


def neighbours_table(cond: Conditioning | None) -> list[list[Any]]:
    """Rows (rank, id, similarity, source) of what the visual cache recalled, first query only."""
    result = getattr(cond, "neighbours", None)
    if result is None:
        return []
    ids = np.atleast_2d(np.asarray(result.ids))[0]
    sims = np.atleast_2d(np.asarray(result.similarities))[0]
    sources = result.sources[0] if result.sources and isinstance(result.sources[0], list) else (result.sources or [])
    rows = []
    for rank, (entry_id, sim) in enumerate(zip(ids.tolist(), sims.tolist()), start=1):
        if entry_id < 0:  # an approximate index may find fewer than k
            continue
        source = sources[rank - 1] if rank - 1 < len(sources) else None
        rows.append([rank, int(entry_id), round(float(sim), 4), source or ""])
    return rows


# ---------------------------------------------------------------------------------------------
# 3D preview: the browser viewer wants a file it can load; point clouds come in many formats.
# ---------------------------------------------------------------------------------------------
def _work_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "ibllm-app"
    path.mkdir(exist_ok=True)
    return path


def _read_points(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(points [N, 3] float32, colours [N, 3] uint8 or None) from a point-cloud file."""
    suffix = path.suffix.lower()
    if suffix in (".npy", ".npz", ".pt", ".xyz", ".pts", ".txt", ".csv"):
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            archive = np.load(path, allow_pickle=False)
            array = archive[archive.files[0]]
        elif suffix == ".pt":
            import torch  # heavy: only for this format

            array = torch.load(path, map_location="cpu", weights_only=True).numpy()
        else:
            array = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, comments=("#", "//"), ndmin=2)
            if suffix == ".pts" and array.shape[1] == 1:  # some .pts files start with a count line
                array = np.loadtxt(path, skiprows=1, ndmin=2)
        array = np.asarray(array, dtype=np.float32).reshape(-1, array.shape[-1])
        colours = None
        if array.shape[1] >= 6:  # x y z r g b, colours in [0, 1] or [0, 255]
            rgb = array[:, 3:6]
            colours = np.clip(rgb * (255.0 if rgb.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return array[:, :3], colours
    import open3d as o3d  # heavy: only for .ply / .pcd

    cloud = o3d.io.read_point_cloud(str(path))
    points = np.asarray(cloud.points, dtype=np.float32)
    colours = (np.asarray(cloud.colors) * 255).astype(np.uint8) if cloud.has_colors() else None
    return points, colours


def _write_ply(path: Path, points: np.ndarray, colours: np.ndarray) -> None:
    vertex = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                          ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"element vertex {len(points)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path.write_bytes(header.encode("ascii") + vertex.tobytes())


@functools.lru_cache(maxsize=64)
def point_cloud_preview_file(source: str) -> str | None:
    """A coloured, at most PREVIEW_POINTS-point binary .ply of `source` for gr.Model3D."""
    path = Path(source)
    if path.suffix.lower() == ".obj":
        return source  # the viewer loads meshes (and point-only .obj files) itself
    try:
        points, colours = _read_points(path)
    except Exception:  # a preview is best effort; the encoder reports unreadable files
        logger.warning("no 3D preview for %s", source, exc_info=True)
        return None
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        return None
    if len(points) > PREVIEW_POINTS:
        keep = np.random.default_rng(0).choice(len(points), PREVIEW_POINTS, replace=False)
        points, colours = points[keep], None if colours is None else colours[keep]
    if colours is None:  # colour by height so the shape reads without lighting
        z = points[:, 2]
        t = ((z - z.min()) / (np.ptp(z) or 1.0))[:, None]
        colours = (np.array([40, 90, 200]) * (1 - t) + np.array([250, 180, 40]) * t).astype(np.uint8)
    digest = hashlib.sha1(f"{source}:{path.stat().st_mtime_ns}".encode()).hexdigest()[:16]
    out = _work_dir() / f"cloud-{digest}.ply"
    _write_ply(out, points.astype(np.float32), colours)
    return str(out)


def point_cloud_view(mix: list[dict]) -> str | None:
    """The newest point cloud in the mix, for the 3D viewer."""
    clouds = [item for item in mix if item["modality"] == "point"]
    return point_cloud_preview_file(clouds[-1]["path"]) if clouds else None


# ---------------------------------------------------------------------------------------------
# Streaming on one thread.
# ---------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------
# Chat: add the user's turn, stream the answer, regenerate, undo, clear.
# ---------------------------------------------------------------------------------------------
def message_text(message: dict) -> str:
    """Gradio 6 gives message content as a list of parts; we only chat in text."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in parts if p is not None)


def history_pairs(chat: list[dict]) -> list[tuple[str, str]]:
    """Chatbot messages -> [(question, answer), ...] for the library's prompt."""
    pairs, question = [], None
    for message in chat:
        if message["role"] == "user":
            question = message_text(message)
        elif message["role"] == "assistant" and question is not None:
            pairs.append((question, message_text(message)))
            question = None
    return pairs


def add_user_turn(message: str, chat: list[dict]):
    message = (message or "").strip()
    if not message:
        raise gr.Error("Type a question first.")
    return chat + [{"role": "user", "content": message}], ""


@reports_errors
def stream_answer(pipe: ImageBindLLMPipeline, chat: list[dict], input_text: str,
                  generation: dict, cond_state: dict) -> Iterator[list[dict]]:
    """Answer the last user message, yielding the chat with the answer so far."""
    if not chat or chat[-1]["role"] != "user":
        raise gr.Error("There is no question to answer.")
    question, history = message_text(chat[-1]), history_pairs(chat[:-1])
    config = generation_config(pipe, generation)
    answer = ""
    # Closing this generator (Stop, a closed tab) closes the library's stream after the current
    # token. Gradio may resume it on another worker thread: the library conditions per step.
    for delta in pipe.stream(question, cond_state["cond"], history=history,
                             input_text=(input_text or "").strip() or None, generation=config):
        answer += delta
        yield chat + [{"role": "assistant", "content": answer}]
    if not answer:
        yield chat + [{"role": "assistant", "content": "_(empty answer)_"}]


def drop_last_answer(chat: list[dict]) -> list[dict]:
    """For Regenerate: keep the last question, drop its answer."""
    while chat and chat[-1]["role"] == "assistant":
        chat = chat[:-1]
    if not chat:
        raise gr.Error("Nothing to regenerate yet: ask a question first.")
    return chat


def undo_last_turn(chat: list[dict]):
    """Remove the last exchange and put its question back in the box for editing."""
    while chat and chat[-1]["role"] == "assistant":
        chat = chat[:-1]
    if not chat:
        return chat, gr.skip()
    return chat[:-1], message_text(chat[-1])


def clear_chat():
    return [], ""


# ---------------------------------------------------------------------------------------------
# Single-call API: /chat for gradio_client (see docs/api.md).
# ---------------------------------------------------------------------------------------------
@reports_errors
def api_chat(pipe: ImageBindLLMPipeline, question: str, files: list[str] | None,
             modalities: list[str] | str | None, weights: list[float] | None,
             history: list | None, settings: dict | None) -> Iterator[str]:
    """Answer `question` about `files` (one modality and weight each); yields the answer so far.

    question: the question. files: uploaded files. modalities: one name per file (image, audio,
    video, text, point, depth, thermal, imu, embedding), or one name for all. weights: one per
    file (default 1). history: [[question, answer], ...] of earlier turns. settings: optional
    {"max_new_tokens", "temperature", "top_p", "input", "cache": {"enabled", "k", "temperature",
    "weight"}}.
    """
    # Arguments arrive as arbitrary JSON from any client: check every shape here, so a malformed
    # call gets a message naming the argument instead of an "unexpected server error".
    if not isinstance(settings or {}, dict):
        raise gr.Error("settings must be a JSON object, e.g. {\"max_new_tokens\": 64}")
    files, settings = list(files or []), dict(settings or {})
    if isinstance(modalities, str):
        modalities = [modalities] * len(files)
    modalities = list(modalities or [])
    weights = [1.0] * len(files) if weights is None else list(weights)
    if not (len(modalities) == len(weights) == len(files)):
        raise gr.Error(f"got {len(files)} files, {len(modalities)} modalities and {len(weights)} "
                       "weights: give one modality and one weight per file")
    if len(files) > MAX_INPUTS:
        raise gr.Error(f"at most {MAX_INPUTS} files per request")
    unknown = sorted({str(m) for m in modalities} - set(MODALITIES))
    if unknown:
        raise gr.Error(f"unknown modality {unknown[0]!r}; known: {', '.join(MODALITIES)}")
    low, high = WEIGHT_RANGE[:2]
    for path, weight in zip(files, weights):
        # `not low <= w <= high` also refuses NaN; bool is an int but not a weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not low <= weight <= high:
            raise gr.Error(f"{Path(path).name}: weight {weight!r} is not a number in [{low:g}, {high:g}]")
    weights = [float(w) for w in weights]
    history = list(history or [])
    if not all(isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)
               for turn in history):
        raise gr.Error("history must be a list of [question, answer] pairs of strings")
    if not isinstance(settings.get("input") or "", str):
        raise gr.Error("settings.input must be a string")
    if not (question or "").strip():
        raise gr.Error("question is empty")
    mix = [new_item(m, f, w) for f, m, w in zip(files, modalities, weights)]
    try:
        cond = pipe.encode(input_items(mix), cache=cache_config(pipe, settings.get("cache")))
    except DemoError as exc:
        raise gr.Error(plain_message(exc, mix), title="Input error") from exc
    generation = {k: settings[k] for k in GENERATION_LIMITS if k in settings}
    config = generation_config(pipe, generation)
    history = [tuple(turn) for turn in history]
    answer = ""
    for delta in pipe.stream(question.strip(), cond, history=history,
                             input_text=settings.get("input") or None, generation=config):
        answer += delta
        yield answer


# ---------------------------------------------------------------------------------------------
# Examples: built at startup from whatever exists in examples/.
# ---------------------------------------------------------------------------------------------
def available_examples(examples_dir: Path = EXAMPLES_DIR) -> list[dict]:
    rows = []
    for title, question, input_text, files in EXAMPLE_TABLE:
        paths = [examples_dir / name for _, name, _ in files]
        if all(p.is_file() for p in paths):
            rows.append({"title": title, "question": question, "input": input_text,
                         "inputs": [(m, str(p), w) for (m, _, w), p in zip(files, paths)]})
    return rows


def load_example(title: str, layout: int, *, examples: list[dict]):
    """Replace the mix with the example's inputs (the question box is filled by gr.Examples)."""
    row = next((row for row in examples if row["title"] == title), None)
    if row is None:
        return gr.skip(), gr.skip()
    return [new_item(m, p, w) for m, p, w in row["inputs"]], layout + 1


# ---------------------------------------------------------------------------------------------
# Layout, then wiring.
# ---------------------------------------------------------------------------------------------
def _upload_widgets(modality: str) -> list[tuple[gr.components.Component, str]]:
    """Widgets of one modality tab, each with the event that delivers a file to add."""
    spec = MODALITIES[modality]
    widgets = [(gr.File(label=f"Upload {spec.label.lower()} files ({' '.join(spec.suffixes)})",
                        file_count="multiple", file_types=list(spec.suffixes), height=110,
                        elem_id=f"upload-{modality}"), "upload")]
    # Capture widgets are big; they wait in a closed accordion. A photo is delivered by .change
    # (webcam snapshots fire no upload event), a recording by .stop_recording.
    if modality == "image":
        with gr.Accordion("Take a photo (webcam / clipboard)", open=False):
            widgets.append((gr.Image(show_label=False, sources=["webcam", "clipboard"], type="filepath",
                                     height=220, elem_id="capture-image"), "change"))
    elif modality == "audio":
        with gr.Accordion("Record (microphone)", open=False):
            widgets.append((gr.Audio(show_label=False, sources=["microphone"], type="filepath",
                                     elem_id="capture-audio"), "stop_recording"))
    return widgets


def build_demo(pipeline: ImageBindLLMPipeline, *, concurrency_limit: int = 1,
               examples_dir: Path = EXAMPLES_DIR) -> gr.Blocks:
    """The web app around one shared `pipeline`. Nothing is loaded here."""
    pipe = pipeline
    gen_defaults, cache_defaults = default_generation(pipe), default_cache_settings(pipe)
    examples = available_examples(Path(examples_dir))
    # Every event that runs the model shares one concurrency group: at most `concurrency_limit`
    # encodes/generations at once across all users; the rest wait in the (bounded) queue.
    model_event = {"concurrency_id": "model", "concurrency_limit": concurrency_limit}
    internal = {"api_visibility": "undocumented"}
    # Instant state edits. They go through the queue anyway: Gradio only fires a State's .change
    # (which re-renders the slider list and re-encodes) for queued events. No concurrency limit,
    # so they never wait behind a generation.
    quick = {"concurrency_limit": None, "show_progress": "hidden", **internal}

    with gr.Blocks(title="ImageBind-LLM chat") as demo:
        mix = gr.State([])
        layout = gr.State(0)
        cond_state = gr.State(None)
        generation = gr.State(gen_defaults)
        cache_settings = gr.State(cache_defaults)

        if pipe.is_placeholder:
            gr.Markdown(BANNER_PLACEHOLDER, elem_id="placeholder-banner")
        elif getattr(pipe, "notice", None):
            gr.Markdown(BANNER_NOTICE.format(notice=pipe.notice), elem_id="notice-banner")
        gr.Markdown(INTRO)

        with gr.Row(equal_height=False):
            # ---- left: inputs ----
            with gr.Column(scale=5, min_width=360):
                uploads: list[tuple[str, gr.components.Component, str]] = []
                with gr.Tabs(elem_id="input-tabs"):
                    for modality in TAB_ORDER:
                        spec = MODALITIES[modality]
                        with gr.Tab(f"{ICONS[modality]} {spec.label}", id=modality):
                            for widget, event in _upload_widgets(modality):
                                uploads.append((modality, widget, event))
                            if modality == "text":
                                typed_text = gr.Textbox(label="Or type a text", lines=2, elem_id="typed-text")
                                add_text_btn = gr.Button("Add text", size="sm")
                            if modality == "point":
                                cloud_view = gr.Model3D(label="Point cloud preview (newest in the mix)",
                                                        display_mode="point_cloud", height=280,
                                                        clear_color=(0.95, 0.95, 0.97, 1.0),
                                                        interactive=False, elem_id="cloud-view")
                            if modality == "embedding":
                                gr.Markdown("A precomputed 1024-d ImageBind embedding (`.npy`, `.pt`, "
                                            "`.safetensors`), mixed like any other input.")

                with gr.Column(variant="panel", elem_id="mix-panel"):
                    gr.Markdown("### Inputs and weights")

                    @gr.render(inputs=[mix], triggers=[layout.change, demo.load])
                    def render_mix(items: list[dict]):
                        for item in items:
                            with gr.Row(equal_height=True):
                                slider = gr.Slider(*WEIGHT_RANGE[:2], step=WEIGHT_RANGE[2], value=item["weight"],
                                                   label=f"{ICONS[item['modality']]} {item['name']}",
                                                   key=f"weight-{item['id']}", scale=8, interactive=True,
                                                   elem_classes=["mix-weight"])
                                remove = gr.Button("✕", size="sm", scale=0, min_width=40,
                                                   key=f"remove-{item['id']}", elem_classes=["mix-remove"])
                            slider.release(functools.partial(set_weight, item_id=item["id"]),
                                           [mix, slider], [mix], **quick).then(
                                refresh, [mix, layout, cache_settings, cond_state], refresh_outputs,
                                trigger_mode="always_last", **model_event, **internal)
                            remove.click(functools.partial(remove_input, item_id=item["id"]),
                                         [mix, layout], [mix, layout], **quick)

                    summary = gr.Markdown(mix_summary([], None), elem_id="mix-summary")
                    clear_inputs_btn = gr.Button("Remove all inputs", size="sm", variant="secondary")

                if examples:
                    example_title = gr.Textbox(visible=False)
                    example_holder = gr.Column()  # filled below, once the question box exists

            # ---- right: chat ----
            with gr.Column(scale=7, min_width=420):
                chatbot = gr.Chatbot(label="Chat", height=460, elem_id="chatbot",
                                     buttons=["copy", "copy_all"], feedback_options=None,
                                     placeholder="Add inputs on the left (optional), then ask a question.")
                with gr.Row():
                    # max_length only stops typing in the browser; the library enforces the limit.
                    question = gr.Textbox(placeholder="Ask about the inputs…", show_label=False,
                                          scale=8, lines=1, max_lines=6, elem_id="question", autofocus=True,
                                          max_length=pipe.limits.prompt_max_chars)
                    send_btn = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id="send")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id="stop")
                with gr.Row():
                    regenerate_btn = gr.Button("🔄 Regenerate", size="sm")
                    undo_btn = gr.Button("↩️ Undo", size="sm")
                    clear_btn = gr.Button("🗑️ Clear chat", size="sm")
                input_text = gr.Textbox(label="Optional “input” field (context for the instruction, "
                                              "the second prompt template)", lines=1, elem_id="input-text",
                                        max_length=pipe.limits.prompt_max_chars)

                with gr.Accordion("Generation settings", open=False):
                    gen_controls = {
                        name: gr.Slider(*GENERATION_LIMITS[name][:2], step=GENERATION_LIMITS[name][2],
                                        value=gen_defaults[name], label=label)
                        for name, label in (("temperature", "Temperature (0 = greedy)"),
                                            ("top_p", "Top-p"), ("max_new_tokens", "Max new tokens"))
                    }
                with gr.Accordion("Visual cache", open=False):
                    if pipe.cache is None:
                        gr.Markdown("_No cache loaded on this server (start with `--cache PATH`)._")
                    cache_controls = {"enabled": gr.Checkbox(value=cache_defaults["enabled"],
                                                             label="Use the cache",
                                                             interactive=pipe.cache is not None)}
                    for name, label in (("k", "Neighbours (k)"), ("temperature", "Softmax temperature"),
                                        ("weight", "Cache weight")):
                        low, high, step = CACHE_LIMITS[name]
                        cache_controls[name] = gr.Slider(low, high, step=step, value=cache_defaults[name],
                                                         label=label, interactive=pipe.cache is not None)
                    neighbours = gr.Dataframe(headers=["rank", "id", "similarity", "source"],
                                              label="What the cache recalled for the current inputs",
                                              interactive=False, wrap=True, elem_id="neighbours")

        with gr.Row(visible=False):  # the /chat API endpoint's own inputs; no UI
            api_files = gr.File(file_count="multiple", label="files")
            api_modalities = gr.JSON(label="modalities")
            api_weights = gr.JSON(label="weights")
            api_history = gr.JSON(label="history")
            api_settings = gr.JSON(label="settings")
            api_answer = gr.Textbox(label="answer")
            api_trigger = gr.Button()

        if examples:
            with example_holder:
                example_table = gr.Examples([[row["question"], row["input"], row["title"]] for row in examples],
                            inputs=[question, input_text, example_title],
                            example_labels=[row["title"] for row in examples],
                            label="Examples (click one, then Send)", examples_per_page=len(examples))

        # ---------------- wiring ----------------
        refresh = functools.partial(refresh_conditioning, pipe)
        refresh_outputs = [mix, layout, cond_state, summary, neighbours]
        refresh_inputs = [mix, layout, cache_settings, cond_state]

        for modality, widget, event in uploads:
            getattr(widget, event)(functools.partial(add_inputs, modality=modality), [widget, mix, layout],
                                   [mix, layout, widget], **quick)
        add_text_btn.click(add_typed_text, [typed_text, mix, layout], [mix, layout, typed_text],
                           **quick)
        clear_inputs_btn.click(clear_inputs, [layout], [mix, layout], **quick)

        # Items added or removed (including by refresh itself dropping a broken file): re-encode
        # and update the 3D view. Weight changes call refresh directly from their slider.
        layout.change(refresh, refresh_inputs, refresh_outputs, trigger_mode="always_last",
                      **model_event, **internal)
        layout.change(point_cloud_view, [mix], [cloud_view], trigger_mode="always_last", **internal)

        gr.on([c.change for c in gen_controls.values()], read_generation,
              inputs_kwargs=gen_controls, outputs=[generation], **quick)
        gr.on([c.change for c in cache_controls.values()], read_cache_settings,
              inputs_kwargs=cache_controls, outputs=[cache_settings], **quick).then(
            refresh, refresh_inputs, refresh_outputs, trigger_mode="always_last", **model_event, **internal)

        answer = functools.partial(stream_answer, pipe)
        ensure = functools.partial(ensure_conditioning, pipe)
        answer_inputs = [chatbot, input_text, generation, cond_state]

        def answer_after(event):
            """The shared tail of Send / Regenerate: conditioning, then the streamed answer."""
            return event.success(ensure, [mix, cache_settings, cond_state], [cond_state],
                                 **model_event, **internal).success(
                answer, answer_inputs, [chatbot], **model_event, **internal)

        submitted = gr.on([question.submit, send_btn.click], add_user_turn, [question, chatbot],
                          [chatbot, question], **quick)
        regenerated = gr.on([regenerate_btn.click, chatbot.retry], drop_last_answer, [chatbot], [chatbot],
                            **quick)
        streams = [answer_after(submitted), answer_after(regenerated)]
        stop_btn.click(None, cancels=streams, **internal)
        gr.on([undo_btn.click, chatbot.undo], undo_last_turn, [chatbot], [chatbot, question],
              cancels=streams, **quick)
        gr.on([clear_btn.click, chatbot.clear], clear_chat, None, [chatbot, question],
              cancels=streams, **quick)

        if examples:
            # gr.Examples fills the question/input boxes; the mix (a State) is set here. Chained to
            # the click itself (not to a .change) so clicking the same example again resets the mix.
            example_table.load_input_event.then(functools.partial(load_example, examples=examples), [example_title, layout],
                                 [mix, layout], **quick)

        api_trigger.click(functools.partial(api_chat, pipe),
                          [question, api_files, api_modalities, api_weights, api_history, api_settings],
                          [api_answer], api_name="chat", **model_event)
    return demo


# ---------------------------------------------------------------------------------------------
# Command line and serving.
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(
        description="ImageBind-LLM multimodal chat (Gradio web app).",
        epilog="Environment (used when the flag is not given; handy on Hugging Face Spaces): "
               "IBLLM_WEIGHTS (path) or IBLLM_PRESET (preset name) for --weights, IBLLM_QUANT "
               "(8bit|4bit), IBLLM_CACHE (cache path). On Spaces (SPACE_ID set) the app binds 0.0.0.0.",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--weights", default=env.get("IBLLM_WEIGHTS") or env.get("IBLLM_PRESET") or default_preset(),
                       metavar="PATH_OR_PRESET",
                       help="converted weights folder, or a preset name: `pocket` is the micro model trained "
                            "on a procedural world that ships in weights/pocket (docs/pocket_world.md); `tiny` "
                            "is an offline random model for trying the UI (meaningless answers). Default: "
                            "$IBLLM_WEIGHTS, else $IBLLM_PRESET, else pocket when present, else tiny")
    quant = model.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="8-bit LLaMA weights (bitsandbytes)")
    quant.add_argument("--load-in-4bit", action="store_true", help="4-bit LLaMA weights (bitsandbytes nf4)")
    model.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                       help="compute dtype (default: auto, the library's choice for the device)")
    model.add_argument("--device", default=None, help="e.g. cuda, cuda:1, cpu (default: best available)")
    model.add_argument("--cache", default=env.get("IBLLM_CACHE"), metavar="PATH",
                       help="visual cache index to load (default: $IBLLM_CACHE, else none: cache off)")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--host", default=None,
                       help="address to bind (default 127.0.0.1; 0.0.0.0 on Spaces). "
                            "Use --host 0.0.0.0 to accept other machines")
    serve.add_argument("--port", type=int, default=int(env.get("PORT", 7860)), help="default: $PORT or 7860")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    serve.add_argument("--concurrency", type=int, default=1,
                       help="encodes/generations that may run at once, all users together (default: 1)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests that may wait; more are refused (default: %(default)s)")
    serve.add_argument("--max-file-size", default="200mb", help="largest upload, e.g. 50mb, 1gb (default: %(default)s)")
    args = parser.parse_args(argv)
    if not (args.load_in_8bit or args.load_in_4bit):
        quant_env = (env.get("IBLLM_QUANT") or "").lower()
        if quant_env not in ("", "none", "8bit", "4bit"):
            parser.error(f"IBLLM_QUANT must be 8bit or 4bit, got {quant_env!r}")
        args.load_in_8bit, args.load_in_4bit = quant_env == "8bit", quant_env == "4bit"
    if args.host is None:
        args.host = "0.0.0.0" if env.get("SPACE_ID") else "127.0.0.1"
    return args


def default_preset() -> str:
    """`pocket` when its folder ships with the repository, else `tiny`."""
    return "pocket" if (POCKET_FOLDER / "imagebind_llm.json").is_file() else "tiny"


def load_pipeline(args: argparse.Namespace) -> ImageBindLLMPipeline:
    quantization = "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None
    dtype = None if args.dtype == "auto" else args.dtype  # the library takes dtype names
    cache = args.cache
    if args.weights == "pocket" and cache is None and (POCKET_FOLDER / "cache.index").is_file():
        cache = POCKET_FOLDER / "cache.index"  # the pocket world's own visual cache (its training images)
    return ImageBindLLMPipeline.from_pretrained(args.weights, device=args.device, dtype=dtype,
                                                quantization=quantization, cache_path=cache)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    pipe = load_pipeline(args)
    if pipe.is_placeholder:
        logger.warning("running the `tiny` placeholder model: answers are meaningless (README, Weights)")
    demo = build_demo(pipe, concurrency_limit=args.concurrency)
    demo.queue(max_size=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share,
                max_file_size=args.max_file_size, **launch_style())


def launch_style() -> dict:
    """Theme and CSS: Gradio 6 takes them in launch(), not in Blocks()."""
    return {"theme": gr.themes.Soft(), "css": CSS}


CSS = """
#mix-summary table { font-size: 0.9em; }
#input-tabs button[role="tab"] { padding-left: 6px; padding-right: 6px; }
.mix-remove { align-self: center; }
#placeholder-banner blockquote { border-left-color: #e8a400; background: #fff8e1; }
#notice-banner blockquote { border-left-color: #3b82f6; background: #eef5ff; }
"""

if __name__ == "__main__":
    main()

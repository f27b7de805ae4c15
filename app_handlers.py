"""The web app's event handlers: plain functions of the values Gradio hands them (tests call them
directly). Everything that is not about Gradio's values and toasts lives in the library
(demo.chat_request, demo.chat_session); app.py builds the layout and wires these.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import gradio as gr

from demo.cancel import CancelToken
from demo.chat_request import (MAX_INPUTS, WEIGHT_RANGE, ChatRequest, check_cache, check_generation, check_question,
                               check_settings, encode_dropping_bad_inputs, plain_message, write_text_input)
from demo.chat_session import (MixInput, clamp_weight, conversation_markdown, delete_owned, describe_mix,
                               history_pairs, message_text, mix_key, new_input, run_with_progress, shares)
from demo.config import GenerationConfig
from demo.errors import DemoError, InputError
from demo.imagine import ImageSettings
from demo.serve.content import NEW_SEEDS, picture_record

logger = logging.getLogger("ibllm.app")
WORK_DIR = Path(tempfile.gettempdir()) / "ibllm-app"  # previews, typed texts, exports (unique mkstemp names)
from demo.modalities import ICONS  # noqa: E402  name -> emoji: a column of the modality table
KEEP, REPLACE = "Add to the mix", "Replace the mix"  # what a new message's files do to the mix
IMAGINE = "🎨 Imagine"  # how a picture turn's question starts (Regenerate tells it from a question)
TITLE = "ImageBind-LLM"  # toasts carry the app's own titles


def warn(message: str, title: str) -> None:
    """A user's mistake: a toast in plain words and one log line (no traceback)."""
    logger.info("%s: %s", title, message)
    # Gradio 6.31 shows the toast's type ("Warning") as its heading, so our title leads the text.
    gr.Warning(f"{title.capitalize()}: {message}", title=f"{TITLE}: {title}")


def toast_failure(exc: Exception, mix: list, title: str) -> None:
    """A failed chat or picture request: the user's mistake in plain words (one log line), anything
    else logged with its traceback and told as a server error."""
    if isinstance(exc, DemoError):
        warn(plain_message(exc, [e.item() for e in mix]), title)
    else:
        logger.exception("unexpected error (%s)", title)
        gr.Warning(f"{title.capitalize()}: something went wrong on the server ({type(exc).__name__}); it has been "
                   "logged. Please try again.", title=f"{TITLE}: {title}")


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
        cache = check_cache(cache_settings or {}, pipe.retrieval_defaults) if pipe.cache is not None else None
        if retry:
            users = [n for n, m in enumerate(chat) if m["role"] == "user"]
            if not users:
                raise InputError("nothing to regenerate yet: ask a question first")
            start, question = users[-1], message_text(chat[users[-1]])
            if question.startswith(IMAGINE):
                raise InputError("Regenerate answers the last question again; for another picture press 🎨 Imagine "
                                 "(Seed -1 draws a new one)")
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
        history = [(q, a) for q, a in history_pairs(chat[:start]) if a]  # a picture turn has no text answer
        for delta in pipe.stream(question, cond["cond"], history=history, generation=gen_config,
                                 input_text=(input_text or "").strip() or None, cancel=token):
            answer += delta
            yield chat + [{"role": "assistant", "content": answer}], box, mix, layout, cond
        yield chat + [{"role": "assistant", "content": answer or "_(empty answer)_"}], idle, mix, layout, cond
    except GeneratorExit:  # Stop pressed or tab closed: cancel the encoding too
        token.cancel()
        raise
    except Exception as exc:  # noqa: BLE001: every failure becomes a toast; the conversation stays
        toast_failure(exc, mix, "no answer")
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
                                    cache_defaults=pipe.retrieval_defaults)
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


# ------------------------------------------------------------------ pictures (the Imagine action)
NO_IMAGE_MODEL = ("making pictures needs an image model, and this server has none loaded. Whoever runs it can "
                  "download Stable unCLIP (about 3.9 GB) with “ibllm download unclip” and restart the app "
                  "with “--unclip weights/downloads/stable-diffusion-2-1-unclip” (README, Image output).")
IMAGE_DEFAULTS = ImageSettings()  # the release's: 20 steps, guidance 10, noise level 0, the model's own size
SIZES = ["auto", "512x512", "768x768", "768x512", "512x768", "1024x1024"]  # "auto": the model's own size
IMAGE_KEYS = ("negative_prompt", "steps", "guidance", "noise_level", "seed", "size", "cache")  # /imagine settings


def parse_size(size) -> int | tuple[int, int] | None:
    """"auto"/None: the model's own size; "768x512" (width x height); a side; [width, height]."""
    if size in (None, "", "auto"):
        return None
    if isinstance(size, str):
        width, sep, height = size.lower().partition("x")
        if not (sep and width.strip().isdigit() and height.strip().isdigit()):
            raise InputError(f"image size {size!r} must look like 768x512 (width x height) or auto")
        return int(width), int(height)
    return tuple(size) if isinstance(size, list) else size


def image_settings(pipe, prompt: str = "", negative_prompt: str | None = None, steps=IMAGE_DEFAULTS.steps,
                   guidance=IMAGE_DEFAULTS.guidance, noise_level=IMAGE_DEFAULTS.noise_level, seed=None,
                   size=None) -> ImageSettings:
    """The controls -> checked settings with a concrete seed (a new one when None or -1). Sliders
    send whole numbers as floats (20.0): those count as whole."""
    def whole(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    seed = whole(seed)
    if seed is None or (isinstance(seed, int) and seed == -1):
        seed = secrets.randbelow(NEW_SEEDS)  # small enough to type back exactly
    settings = ImageSettings(prompt or "", negative_prompt or None, whole(steps), guidance, whole(noise_level), seed,
                             parse_size(size))
    return settings.check(pipe.image_generator.max_noise_level)


def picture_note(record: dict) -> dict:
    """The note under a picture: the seed and settings that make it again."""
    used = set(record.get("settings_used", ()))
    parts = [f"🎨 Seed {record['seed']}", *([f"{record['steps']} steps"] if "steps" in used else []),
             *([f"guidance {record['guidance']:g}"] if "guidance" in used else []),
             f"noise level {record['noise_level']}", f"{record['size'][0]}×{record['size'][1]}"]
    title = " · ".join(parts)
    ignored = [name.replace("_", " ") for name in ("prompt", "negative_prompt", "steps", "guidance") if name not in used]
    lines = [f"Prompt: “{record['prompt']}”" if record["prompt"] else "No prompt: the picture comes from the inputs alone",
             *([f"Negative prompt: “{record['negative_prompt']}”"] if record["negative_prompt"] else []),
             *([f"This image model has no {', '.join(ignored)}: it draws from the inputs' vector alone."] if ignored else []),
             f"The same inputs, weights and settings with seed {record['seed']} make this picture again "
             "(Image settings, Seed).", *record["notes"]]
    return {"role": "assistant", "content": "\n\n".join(lines), "metadata": {"title": title, "status": "done"}}


def imagine_turn(pipe, message: dict | None, chat: list[dict], mix: list[MixInput], layout: int, mode: str,
                 roles_json: str, cache_settings: dict, *image):
    """Imagine: the message's text is the picture's prompt, its files join the mix like Send's; the
    turn shows the inputs and weights, then "step k of n", then the picture and its seed.

    `image`: negative prompt, steps, guidance, noise level, seed (-1: new), size. Yields (chat,
    message box, mix, layout). Refused: a toast, nothing else changes; Stop cancels the work."""
    message, token, added = message or {}, CancelToken(), []
    prompt = (message.get("text") or "").strip()
    try:
        if pipe.image_generator is None:
            warn(NO_IMAGE_MODEL, "no picture")
            yield (gr.skip(),) * 4
            return
        settings = image_settings(pipe, prompt, *image)
        cache = check_cache(cache_settings or {}, pipe.retrieval_defaults) if pipe.cache is not None else None
        if not message.get("files") and not (mode == KEEP and mix):
            raise InputError("a picture is made from your inputs: add an image, a sound, a 3D shape… first")
        roles = {name: tuple(role) for name, role in json.loads(roles_json or "{}").items()}
        added, mix = attach(pipe, list(message.get("files") or []), roles, mix, mode)
    except (DemoError, ValueError, TypeError) as exc:
        warn(plain_message(exc), "no picture")
        yield (gr.skip(),) * 4
        return
    start, layout = len(chat), layout + bool(added)
    chat = chat + [{"role": "user", "content": [f"{IMAGINE}: {prompt}" if prompt else f"{IMAGINE} (no prompt)",
                                                 *map(media_part, added)]}]
    box = gr.update(value={"text": "", "files": []}, submit_btn=False, stop_btn=True)
    steps, folder = {"done": 0}, None
    try:
        task = run_with_progress(pipe.imagine, [e.item() for e in mix], prompt=settings.prompt,
                                 negative_prompt=settings.negative_prompt, steps=settings.steps,
                                 guidance=settings.guidance, noise_level=settings.noise_level, seed=settings.seed,
                                 size=settings.size, cache=cache, progress=lambda k, n: steps.update(done=k),
                                 cancel=token, interval=0.25)
        try:
            while True:
                seconds = next(task)
                if not steps["done"]:
                    yield chat + [mix_note(mix, len(added), seconds)], box, mix, layout
                else:
                    yield chat + [mix_note(mix, len(added)), painting_note(steps["done"], settings.steps)], box, mix, layout
        except StopIteration as finished:
            out = finished.value
        record = picture_record(out)
        # A fresh folder per picture: the download keeps the file's name. Gradio copies the file into
        # its own cache when the turn is sent, so the folder goes once the generator resumes.
        folder = Path(tempfile.mkdtemp(prefix="picture-", dir=WORK_DIR))
        path = folder / f"imagebind-llm-seed-{record['seed']}.png"
        out.image.save(path)
        names = ", ".join(e.name for e in mix)
        picture = {"role": "assistant", "content": {"path": str(path), "alt_text": f"What the model sees in {names}"}}
        yield (chat + [mix_note(mix, len(added)), picture, picture_note(record)],
               gr.update(submit_btn=True, stop_btn=False), mix, layout)
    except GeneratorExit:  # Stop pressed or tab closed: stop at the next input or step
        token.cancel()
        raise
    except Exception as exc:  # noqa: BLE001: every failure becomes a toast; the conversation stays
        toast_failure(exc, mix, "no picture")
        yield chat[:start], gr.update(value={"text": prompt, "files": []}, submit_btn=True, stop_btn=False), mix, layout
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def painting_note(done: int, total: int) -> dict:
    return {"role": "assistant", "content": f"Step {done} of {total}",
            "metadata": {"title": f"🎨 Painting… step {done} of {total}", "status": "pending"}}


def api_imagine(pipe, prompt, files, modalities, weights, settings, progress=None):
    """/imagine (docs/api.md): (the picture, its record: seed, settings, mix) or a clear error."""
    request = None
    try:
        settings = check_settings(settings, IMAGE_KEYS, '{"steps": 20, "seed": 42}')
        if prompt is not None and not isinstance(prompt, str):
            raise InputError("prompt must be text (or empty)")
        if pipe.image_generator is None:
            raise gr.Error(NO_IMAGE_MODEL, title=f"{TITLE}: no image model")
        # The inputs are checked as /chat checks them (the question is /chat's only; a stand-in here).
        request = ChatRequest.parse("(picture)", files, modalities, weights, None, {"cache": settings["cache"]}
                                    if "cache" in settings else None, limits=pipe.limits,
                                    cache_defaults=pipe.retrieval_defaults)
        image = image_settings(pipe, prompt, **{k: v for k, v in settings.items() if k != "cache"})
        out = pipe.imagine(request.inputs, **{**vars(image), "cache": request.cache, "progress": progress})
        return out.image, picture_record(out)
    except gr.Error:
        raise
    except DemoError as exc:
        message = plain_message(exc, request.inputs if request else ())
        logger.info("/imagine refused: %s", message)
        raise gr.Error(message, title=f"{TITLE}: request refused") from None
    except Exception as exc:
        logger.exception("unexpected error in an /imagine request")
        raise gr.Error(f"Unexpected server error ({type(exc).__name__}); it has been logged.",
                       title=f"{TITLE}: no picture") from None

"""An OpenAI-compatible HTTP API over one `ImageBindLLMPipeline` (FastAPI router).

    app = FastAPI()
    mount_openai(app, pipe)            # POST /v1/chat/completions, POST /v1/embeddings, GET /v1/models,
                                       # POST /v1/images/generations (when the pipeline has an image model)

Requests to the engine share its forward passes (demo/engine.py). Encoding (file decoding +
ImageBind) blocks, so it runs in a worker thread; the event loop keeps serving. Every request
carries a `CancelToken`: a client that disconnects (while encoding, while waiting for a
non-streamed answer, or mid-stream) cancels it, and the engine frees its batch row at the next
step. Errors are answered in OpenAI's JSON shape (see `APIError`). docs/api.md documents the
fields; README "OpenAI-compatible API" has a client snippet.

Which inputs count in multi-turn chat: the non-text parts of ALL user messages of the request,
in order, mixed by their weights (an image sent in turn 1 still conditions turn 3, as in the app
where inputs stay until removed). Text parts are the question; system messages go to the
prompt's "### Input:" field.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import secrets
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..cache import RetrievalSettings
from ..cancel import CancelToken
from ..config import GenerationConfig
from ..errors import BadInputError, BusyError, Cancelled, InputError, PromptTooLongError
from ..generation import GenerationState
from ..imagine import ImageSettings
from ..pipeline import ImageBindLLMPipeline, InputItem
from .content import NEW_SEEDS, APIError, PartDecoder, ServeOptions, input_parts, picture_record, remove_folder, text_of

logger = logging.getLogger(__name__)

# Cache settings a client may choose per request (never index_path / mmap: server files).
CLIENT_CACHE_FIELDS = ("enabled", "k", "temperature", "weight")
MAX_STOP_STRINGS = 4  # as OpenAI


def mount_openai(app: FastAPI, pipeline: ImageBindLLMPipeline, prefix: str = "/v1", options: ServeOptions | None = None) -> FastAPI:
    """Add the OpenAI-compatible routes to a FastAPI app (also Gradio's: `demo.app` / the app
    given to `gr.mount_gradio_app`). Adds no middleware or exception handler, so it also works
    on an app that is already serving."""
    app.include_router(openai_router(pipeline, options or ServeOptions()), prefix=prefix)
    return app


def create_app(pipeline: ImageBindLLMPipeline, options: ServeOptions | None = None) -> FastAPI:
    """A FastAPI app serving only the OpenAI-compatible API (`python -m demo.serve`)."""
    app = FastAPI(title="ImageBind-LLM OpenAI-compatible API")
    return mount_openai(app, pipeline, options=options)


def openai_router(pipe: ImageBindLLMPipeline, options: ServeOptions) -> APIRouter:
    router = APIRouter()
    created = int(time.time())

    @router.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": options.model_name, "object": "model", "created": created, "owned_by": "imagebind-llm"}]}

    async def answer(request: Request, handler):
        """Read and check the body, run `handler`; an APIError becomes OpenAI's JSON error shape."""
        try:
            body = await _read_json(request, options)
            _check_model(body, options)
            return await handler(request, body, pipe, options)
        except APIError as exc:
            return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, _chat)

    @router.post("/embeddings")
    async def embeddings(request: Request):
        return await answer(request, _embeddings)

    pictures = {"pending": 0}  # made or waiting now (changed on the event loop only: no lock needed)

    @router.post("/images/generations")
    async def images_generations(request: Request):
        return await answer(request, functools.partial(_images, pictures=pictures))

    return router


# ----------------------------------------------------------------------------------------------
# Chat completions
# ----------------------------------------------------------------------------------------------
async def _chat(request: Request, body: dict, pipe: ImageBindLLMPipeline, options: ServeOptions):
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    question, history, input_text, parts = _conversation(messages)
    generation = _generation(body, pipe.generation_defaults)
    stop = _stop(body.get("stop"))
    extra = body.get("imagebind") or {}
    if not isinstance(extra, dict):
        raise APIError(400, "imagebind must be an object", param="imagebind")
    cache = _cache(extra.get("cache"), pipe.retrieval_defaults)

    token = CancelToken()
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, token))
    folder = tempfile.mkdtemp(prefix="ibllm-serve-")
    started, where = False, []
    try:
        items, where = _items(parts, extra, PartDecoder(folder, options, pipe.limits))
        conditioning = await anyio.to_thread.run_sync(functools.partial(pipe.encode, items, cache, cancel=token))
        prompt_tokens = len((await anyio.to_thread.run_sync(
            pipe.prompt_ids, question, history, input_text, int(generation.max_new_tokens)))[0])
        state = GenerationState()
        deltas = pipe.stream(question, conditioning, history=history, input_text=input_text, generation=generation,
                             state=state, cancel=token, stop=stop)
        first = await _next(deltas)  # BusyError / PromptTooLongError surface here, before any byte is sent
        started = True
    except BadInputError as exc:
        raise _bad_input(exc, where, "messages") from None
    except Exception as exc:
        raise _api_error(exc) from None
    finally:
        remove_folder(folder)  # the inputs are encoded (or failed): their files are not needed any more
        if not started:  # failed or cancelled: stop any work still running for it
            watcher.cancel()
            token.cancel()  # the inputs are encoded (or failed): their files are not needed any more

    ident = f"chatcmpl-{uuid.uuid4().hex}"
    stamp = int(time.time())

    def usage() -> dict:
        completion = len(state.token_ids)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}

    def finish_reason() -> str:
        return "length" if state.finish_reason == "length" else "stop"

    if not body.get("stream"):
        try:
            text = (first or "") + "".join(await _rest(deltas))
        except Exception as exc:
            raise _api_error(exc) from None
        finally:
            watcher.cancel()
            token.cancel()  # a no-op when finished; frees the row when the handler was cancelled
        return {
            "id": ident, "object": "chat.completion", "created": stamp, "model": options.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(), "logprobs": None}],
            "usage": usage(),
        }

    watcher.cancel()  # from here StreamingResponse watches the client; `finally` below cancels
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(delta: dict, reason: str | None = None) -> str:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": stamp, "model": options.model_name,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}]}
        if include_usage:
            payload["usage"] = None
        return f"data: {json.dumps(payload)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk({"role": "assistant", "content": ""})
            if first:
                yield chunk({"content": first})
            while (delta := await _next(deltas)) is not None:
                yield chunk({"content": delta})
            yield chunk({}, finish_reason())
            if include_usage:
                payload = {"id": ident, "object": "chat.completion.chunk", "created": stamp, "model": options.model_name,
                           "choices": [], "usage": usage()}
                yield f"data: {json.dumps(payload)}\n\n"
            yield "data: [DONE]\n\n"
        except Exception as exc:  # the status line is sent: report the error in the stream
            yield f"data: {json.dumps(_api_error(exc).body())}\n\n"
        finally:
            token.cancel()  # client gone (or done): the engine frees the row at its next step

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


_END = object()


async def _next(deltas) -> str | None:
    """The next delta of a blocking engine stream, waited for in a thread; None at the end.
    abandon_on_cancel: a cancelled (disconnected) caller does not wait for the thread."""
    item = await anyio.to_thread.run_sync(next, deltas, _END, abandon_on_cancel=True)
    return None if item is _END else item


async def _rest(deltas) -> list[str]:
    return await anyio.to_thread.run_sync(list, deltas, abandon_on_cancel=True)


async def _cancel_on_disconnect(request: Request, token: CancelToken) -> None:
    """Cancel `token` when the client goes away (polled: the body is already read)."""
    while not token.cancelled:
        if await request.is_disconnected():
            token.cancel()
            return
        await asyncio.sleep(0.1)


def _conversation(messages: list) -> tuple[str, list[tuple[str, str]], str | None, list[tuple[dict, str]]]:
    """messages -> (question, history pairs, input_text, input parts of all user messages)."""
    history: list[tuple[str, str]] = []
    pending: list[str] | None = None  # user texts since the last assistant reply; None: no user message
    system: list[str] = []
    parts: list[tuple[dict, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} must be an object", param=where)
        role, content = message.get("role"), message.get("content")
        text = text_of(content, f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role == "user":
            pending = (pending or []) + ([text] if text else [])
            parts += input_parts(content, f"{where}.content")
        elif role == "assistant":
            if pending is None:
                raise APIError(400, f"{where}: an assistant message must follow a user message", param=where)
            history.append(("\n".join(pending), text))
            pending = None
        else:
            raise APIError(400, f"{where}: unsupported role {role!r}; use system, user or assistant", param=where)
    if pending is None:
        raise APIError(400, "the last message must be from the user", param=f"messages[{len(messages) - 1}]")
    question = "\n".join(pending)
    if not question.strip():
        raise APIError(400, "the last user message has no text: add a text part with the question",
                       param=f"messages[{len(messages) - 1}].content")
    return question, history, "\n".join(system) or None, parts


def _items(parts: list[tuple[dict, str]], extra: dict, decoder: PartDecoder) -> tuple[list[InputItem], list[str]]:
    weights = _aligned(extra, "weights", len(parts))
    modalities = _aligned(extra, "modalities", len(parts))
    items = [decoder.item(part, where, weight, modality) for (part, where), weight, modality in zip(parts, weights, modalities)]
    return items, [where for _, where in parts]


def _aligned(extra: dict, key: str, count: int) -> list:
    values = extra.get(key)
    if values is None:
        return [None] * count
    if not isinstance(values, list) or len(values) != count:
        raise APIError(400, f"imagebind.{key} must be a list with one entry (or null) per input part; the request has {count}",
                       param=f"imagebind.{key}")
    return values


def _generation(body: dict, defaults: GenerationConfig) -> GenerationConfig:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    values = {
        "max_new_tokens": defaults.max_new_tokens if max_tokens is None else max_tokens,
        "temperature": defaults.temperature if body.get("temperature") is None else body["temperature"],
        "top_p": defaults.top_p if body.get("top_p") is None else body["top_p"],
        "seed": body.get("seed"),
    }
    names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p"}
    for name, param in names.items():
        if not isinstance(values[name], (int, float)) or isinstance(values[name], bool):
            raise APIError(400, f"{param} must be a number", param=param)
    if values["seed"] is not None and (not isinstance(values["seed"], int) or isinstance(values["seed"], bool)):
        raise APIError(400, "seed must be an integer", param="seed")
    config = GenerationConfig(**values)
    try:
        return config.check()
    except InputError as exc:
        param = next((p for n, p in names.items() if f"{n}=" in str(exc)), None)
        raise APIError(400, str(exc).replace("max_new_tokens", "max_tokens"), param=param) from None


def _stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > MAX_STOP_STRINGS:
        raise APIError(400, f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", param="stop")
    return tuple(stop)


def _cache(value: Any, defaults: RetrievalSettings) -> RetrievalSettings:
    if value is None:
        return defaults
    if not isinstance(value, dict) or set(value) - set(CLIENT_CACHE_FIELDS):
        raise APIError(400, f"imagebind.cache may set only {', '.join(CLIENT_CACHE_FIELDS)}", param="imagebind.cache")
    base = {f.name: getattr(defaults, f.name) for f in fields(RetrievalSettings)}
    try:
        return RetrievalSettings(**{**base, **value}).check()
    except (InputError, TypeError) as exc:
        raise APIError(400, f"imagebind.cache: {exc}", param="imagebind.cache") from None


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------
async def _embeddings(request: Request, body: dict, pipe: ImageBindLLMPipeline, options: ServeOptions) -> dict:
    inputs = body.get("input")
    if isinstance(inputs, (str, dict)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise APIError(400, "input must be a string, a content part, or a non-empty list of them", param="input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise APIError(400, "encoding_format must be float or base64", param="encoding_format")
    token = CancelToken()
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, token))
    folder = tempfile.mkdtemp(prefix="ibllm-serve-")
    try:
        decoder = PartDecoder(folder, options, pipe.limits)
        items = []
        for i, value in enumerate(inputs):
            where = f"input[{i}]"
            if isinstance(value, str):
                items.append(InputItem("text", _text_file(decoder, value, where), name=where))
            elif isinstance(value, dict):
                items.append(decoder.item(value, where))
            else:
                raise APIError(400, f"{where}: token ids are not supported; send text or a content part", param=where)
        data = []
        for i, item in enumerate(items):
            try:
                vector = await anyio.to_thread.run_sync(functools.partial(pipe.embed, item, cancel=token))
            except InputError as exc:
                raise APIError(400, f"input[{i}]: {exc}", param=f"input[{i}]", code="bad_input") from None
            values = vector.numpy().astype("<f4")  # (E,) unit vector
            embedding = base64.b64encode(values.tobytes()).decode() if encoding == "base64" else values.tolist()
            data.append({"object": "embedding", "index": i, "embedding": embedding})
    except Exception as exc:
        raise _api_error(exc) from None
    finally:
        watcher.cancel()
        token.cancel()  # done or failed: stops an encoding still running for a cancelled handler
        remove_folder(folder)
    # ImageBind tokens are not the LLM's: usage counts nothing billable.
    return {"object": "list", "data": data, "model": options.model_name, "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def _text_file(decoder: PartDecoder, text: str, where: str) -> str:
    """A text input is loaded like an uploaded .txt file (the text loader's limits apply)."""
    part = {"type": "file", "file": {"file_data": base64.b64encode(text.encode()).decode(), "filename": "input.txt"}}
    return decoder.item(part, where).source


# ----------------------------------------------------------------------------------------------
# Images: a picture of what the model sees in the inputs (ImageBindLLMPipeline.imagine)
# ----------------------------------------------------------------------------------------------
IMAGE_FIELDS = ("inputs", "weights", "modalities", "cache", "negative_prompt", "steps", "guidance", "noise_level", "seed")


async def _images(request: Request, body: dict, pipe: ImageBindLLMPipeline, options: ServeOptions, *, pictures: dict) -> dict:
    """OpenAI's images.generate shape; the inputs, their weights and the image settings come in
    the `imagebind` field (docs/api.md), the picture as b64_json with its record (seed, mix...)."""
    if pipe.image_generator is None:
        raise APIError(503, "this server has no image model: whoever runs it can download Stable unCLIP with "
                            "`ibllm download unclip` and restart with --unclip <that folder>",
                       code="image_model_missing", headers={"x-should-retry": "false"})
    prompt = body.get("prompt", "")
    if not isinstance(prompt, str):
        raise APIError(400, "prompt must be a string (it may be empty: the picture then follows the inputs alone)", param="prompt")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", param="n")
    if (body.get("response_format") or "b64_json") != "b64_json":
        raise APIError(400, "response_format must be b64_json: this server keeps no pictures to link to", param="response_format")
    if (body.get("output_format") or "png") != "png":
        raise APIError(400, "output_format must be png", param="output_format")
    extra = body.get("imagebind")
    if not isinstance(extra, dict) or not isinstance(extra.get("inputs"), list) or not extra["inputs"]:
        raise APIError(400, "a picture is made from inputs: send imagebind.inputs, a list of content parts "
                            "(image_url, input_audio or file, as in chat messages)", param="imagebind.inputs")
    unknown = sorted(set(extra) - set(IMAGE_FIELDS))
    if unknown:
        raise APIError(400, f"unknown imagebind field {unknown[0]!r}; known: {', '.join(IMAGE_FIELDS)}", param=f"imagebind.{unknown[0]}")
    settings = _image_settings(prompt, body.get("size"), extra, pipe.image_generator.max_noise_level)
    parts = [(part, f"imagebind.inputs[{i}]") for i, part in enumerate(extra["inputs"])]
    if not all(isinstance(part, dict) for part, _ in parts):
        raise APIError(400, "imagebind.inputs must hold content parts (objects)", param="imagebind.inputs")
    cache = _cache(extra.get("cache"), pipe.retrieval_defaults)
    if pictures["pending"] >= options.max_pending_pictures:
        raise APIError(503, f"the server is making {pictures['pending']} pictures already; try again shortly", code="server_busy")

    pictures["pending"] += 1
    token = CancelToken()
    watcher = asyncio.ensure_future(_cancel_on_disconnect(request, token))
    folder = tempfile.mkdtemp(prefix="ibllm-serve-")
    where: list[str] = []
    try:
        items, where = _items(parts, extra, PartDecoder(folder, options, pipe.limits))
        out = await anyio.to_thread.run_sync(functools.partial(pipe.imagine, items, **vars(settings), cache=cache, cancel=token))
    except BadInputError as exc:
        raise _bad_input(exc, where, "imagebind.inputs") from None
    except Exception as exc:
        raise _api_error(exc) from None
    finally:
        pictures["pending"] -= 1
        watcher.cancel()
        token.cancel()  # done or failed: stops work still running for a cancelled handler
        remove_folder(folder)
    png = io.BytesIO()
    out.image.save(png, "PNG")
    width, height = out.image.size
    return {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(png.getvalue()).decode(), "revised_prompt": None}],
            "output_format": "png", "size": f"{width}x{height}", "imagebind": picture_record(out)}


def _image_settings(prompt: str, size: Any, extra: dict, max_noise_level: int) -> ImageSettings:
    """The body's picture settings, checked; a missing seed becomes a new one (returned in the record)."""
    if size in (None, "auto"):
        sides = None
    else:
        width, sep, height = size.partition("x") if isinstance(size, str) else ("", "", "")
        if not (sep and width.isdigit() and height.isdigit()):
            raise APIError(400, f"size must be auto or WIDTHxHEIGHT, e.g. 768x512; got {size!r}", param="size")
        sides = (int(width), int(height))
    defaults = ImageSettings()
    values = {name: extra.get(name, getattr(defaults, name)) for name in ("negative_prompt", "steps", "guidance", "noise_level")}
    seed = extra.get("seed")
    try:
        return ImageSettings(prompt, **values, seed=secrets.randbelow(NEW_SEEDS) if seed is None else seed, size=sides).check(max_noise_level)
    except InputError as exc:
        text = str(exc)  # names the setting: "image setting steps=0 ...", "the image negative prompt is ..."
        names = ("negative_prompt", "steps", "guidance", "noise_level", "seed")
        param = next((f"imagebind.{n}" for n in names if n in text or n.replace("_", " ") in text),
                     "size" if "size" in text else "prompt")
        raise APIError(400, text, param=param) from None


# ----------------------------------------------------------------------------------------------
# Shared
# ----------------------------------------------------------------------------------------------
async def _read_json(request: Request, options: ServeOptions) -> dict:
    limit = options.max_body_bytes
    too_large = APIError(413, f"the request body is over {limit / 2**20:.0f} MiB; send smaller files (the server's "
                              "--max-body-mb raises the limit)", code="request_too_large")
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    return body


def _check_model(body: dict, options: ServeOptions) -> None:
    model = body.get("model")
    if model is not None and model != options.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {options.model_name!r} (GET /v1/models)",
                       param="model", code="model_not_found")


def _bad_input(exc: BadInputError, where: list[str], field: str) -> APIError:
    """400 naming the request part the bad input came from (`where[i]`: the part of input i)."""
    param = where[exc.index] if 0 <= exc.index < len(where) else field
    return APIError(400, f"{param}: {exc}", param=param, code="bad_input")


def _api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, BusyError):
        return APIError(503, str(exc), code="server_busy")
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InputError):
        return APIError(400, str(exc), code="bad_input")
    if isinstance(exc, (Cancelled, asyncio.CancelledError)):
        return APIError(499, "the request was cancelled", code="cancelled", type="cancelled")
    logger.error("request failed", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", code="internal_error")


__all__ = ["APIError", "ServeOptions", "create_app", "mount_openai", "openai_router"]

"""OpenAI content parts -> `InputItem`s backed by files in a private temporary folder.

A part's bytes are decoded (base64 / data: URL), checked against the modality's byte limit of
`InputLimits` (413 when over) and written to `<tmp>/part-<n><suffix>`; the caller deletes the
folder when the request's encoding is done. Parts understood (each may carry the extra fields
`modality` and `weight`):

    {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}
    {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}
    {"type": "file", "file": {"file_data": "data:...;base64,..." or "<base64>", "filename": "clip.mp4"}}

Server-local paths (`image_url` "file:///..." or "/abs/path") are read only under
`ServeOptions.local_root`; http(s) URLs are fetched only when `allow_remote_urls` is set.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..inputs.limits import InputLimits
from ..modalities import MODALITIES, get_modality
from ..pipeline import InputItem


class APIError(Exception):
    """An error answered in OpenAI's JSON shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers  # e.g. {"x-should-retry": "false"}: OpenAI's clients then do not retry a 503
        self.type = type or {400: "invalid_request_error", 404: "invalid_request_error", 413: "invalid_request_error",
                             503: "server_overloaded"}.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ServeOptions:
    """What the HTTP API allows. The defaults are safe for a public server."""

    model_name: str = "imagebind-llm"
    max_body_bytes: int = 64 * 1024 * 1024  # a whole request body (base64 grows files by 4/3)
    local_root: Path | None = None  # server-local paths allowed only under this folder
    allow_remote_urls: bool = False  # fetch http(s) image_url / file URLs
    remote_timeout_s: float = 20.0
    max_pending_pictures: int = 8  # /v1/images/generations made or waiting at once; more are answered 503


# Default suffix of each input_audio "format" and of common MIME types that mimetypes misses.
_AUDIO_FORMATS = {"wav": ".wav", "mp3": ".mp3", "flac": ".flac", "ogg": ".ogg"}
_MIME_SUFFIX = {"image/jpeg": ".jpg", "audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3"}


def infer_modality(filename: str, where: str) -> str:
    """The modality of a file name's suffix (demo.modalities). A raster suffix shared with depth
    and thermal means an image; other shared suffixes (.npy: point, depth, IMU, embedding) need an
    explicit `modality` field."""
    suffix = Path(filename).suffix.lower()
    matches = [m.name for m in MODALITIES.values() if suffix in m.suffixes]
    if len(matches) == 1 or (matches and matches[0] == "image"):
        return matches[0]
    if not matches:
        known = sorted({s for m in MODALITIES.values() for s in m.suffixes})
        raise APIError(400, f"{where}: cannot tell the modality of {filename!r} from its suffix; use one of {' '.join(known)} "
                            "or set \"modality\"", param=where, code="unknown_modality")
    raise APIError(400, f"{where}: the suffix {suffix} fits {', '.join(matches)}: set \"modality\" to one of them", param=where,
                   code="ambiguous_modality")


class PartDecoder:
    """Decodes the parts of one request into files under `folder`."""

    def __init__(self, folder: Path, options: ServeOptions, limits: InputLimits):
        self.folder, self.options, self.limits = Path(folder), options, limits
        self.count = 0

    def item(self, part: dict, where: str, weight: float | None = None, modality: str | None = None) -> InputItem:
        """One content part -> InputItem. `where` names the part in errors (e.g. messages[0].content[1]);
        `weight` / `modality` (from the `imagebind` body field) override the part's own."""
        kind = part.get("type")
        modality = modality or part.get("modality")
        weight = weight if weight is not None else part.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight != weight:
            raise APIError(400, f"{where}: weight must be a number, got {weight!r}", param=where)
        if kind == "image_url":
            body = part.get("image_url")
            url = body.get("url") if isinstance(body, dict) else body
            if not isinstance(url, str):
                raise APIError(400, f"{where}: image_url needs {{\"url\": ...}}", param=where)
            data, name = self._url(url, where)
            modality = modality or "image"
        elif kind == "input_audio":
            body = part.get("input_audio") or {}
            fmt = str(body.get("format", "wav")).lower()
            if fmt not in _AUDIO_FORMATS:
                raise APIError(400, f"{where}: audio format {fmt!r} is not supported; use one of {', '.join(_AUDIO_FORMATS)}", param=where)
            data, name = _b64(body.get("data"), where), f"audio{_AUDIO_FORMATS[fmt]}"
            modality = modality or "audio"
        elif kind == "file":
            body = part.get("file") or {}
            name = body.get("filename")
            if not isinstance(name, str) or not Path(name).suffix:
                raise APIError(400, f"{where}: a file part needs a \"filename\" with a suffix (e.g. clip.mp4)", param=where)
            if "file_data" not in body:
                raise APIError(400, f"{where}: a file part needs \"file_data\" (base64 or a data: URL); file ids are not supported",
                               param=where)
            raw = body["file_data"]
            data = self._data_url(raw, where)[0] if isinstance(raw, str) and raw.startswith("data:") else _b64(raw, where)
            name = Path(name).name
            modality = modality or body.get("modality") or infer_modality(name, where)
        elif kind == "text":
            raise APIError(400, f"{where}: a text part is not an input here", param=where)
        else:
            raise APIError(400, f"{where}: unknown content part type {kind!r}; use text, image_url, input_audio or file",
                           param=where, code="unknown_part")
        try:
            modality = get_modality(str(modality)).name
        except KeyError as exc:
            raise APIError(400, f"{where}: {exc.args[0]}", param=where, code="unknown_modality") from None
        return InputItem(modality, self._write(data, name, modality, where), float(weight), name=f"{where} ({name})")

    def _write(self, data: bytes, name: str, modality: str, where: str) -> str:
        limit = get_modality(modality).max_bytes(self.limits)
        if len(data) > limit:
            raise APIError(413, f"{where}: {name} is {len(data) / 2**20:.1f} MiB; {modality} inputs are limited to "
                                f"{limit / 2**20:.1f} MiB", param=where, code="input_too_large")
        suffix = Path(name).suffix.lower() or get_modality(modality).suffixes[0]  # a data: URL of an unknown type
        self.count += 1
        path = self.folder / f"part-{self.count}{suffix}"
        path.write_bytes(data)
        return str(path)

    def _url(self, url: str, where: str) -> tuple[bytes, str]:
        if url.startswith("data:"):
            return self._data_url(url, where)
        if url.startswith(("http://", "https://")):
            if not self.options.allow_remote_urls:
                raise APIError(400, f"{where}: this server does not fetch remote URLs; send the file as a data: URL "
                                    "(the server's --allow-remote-urls enables fetching)", param=where, code="remote_url_disabled")
            return self._fetch(url, where)
        path = Path(url[len("file://"):] if url.startswith("file://") else url)
        root = self.options.local_root
        if root is None:
            raise APIError(400, f"{where}: server-local paths are disabled; send the file as a data: URL "
                                "(the server's --allow-local-files DIR enables paths under DIR)", param=where, code="local_path_disabled")
        resolved = path.resolve()
        if not path.is_absolute() or not resolved.is_relative_to(Path(root).resolve()) or not resolved.is_file():
            raise APIError(400, f"{where}: {path.name} is not a file under the folder this server allows", param=where)
        return resolved.read_bytes(), resolved.name

    def _data_url(self, url: str, where: str) -> tuple[bytes, str]:
        header, sep, payload = url.partition(",")
        if not sep or not header.endswith(";base64"):
            raise APIError(400, f"{where}: a data: URL must look like data:<mime>;base64,<data>", param=where)
        mime = header[len("data:"):-len(";base64")]
        suffix = _MIME_SUFFIX.get(mime) or mimetypes.guess_extension(mime) or ""
        return _b64(payload, where), f"upload{suffix}"

    def _fetch(self, url: str, where: str) -> tuple[bytes, str]:
        import httpx

        limit = self.options.max_body_bytes
        try:
            with httpx.stream("GET", url, timeout=self.options.remote_timeout_s, follow_redirects=True) as response:
                response.raise_for_status()
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        raise APIError(413, f"{where}: the file at the URL is over {limit / 2**20:.0f} MiB", param=where)
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            raise APIError(400, f"{where}: could not fetch the URL ({type(exc).__name__})", param=where) from None
        name = Path(httpx.URL(url).path).name or "download"
        return b"".join(chunks), name


def _b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise APIError(400, f"{where}: expected base64 data", param=where)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{where}: the data is not valid base64", param=where) from None


def text_of(content: Any, where: str) -> str:
    """The text of a message's content: a string, or its text parts joined by new lines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError(400, f"{where}: content must be a string or a list of parts", param=where)
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise APIError(400, f"{where}[{j}]: a content part must be an object", param=f"{where}[{j}]")
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
    return "\n".join(texts)


def input_parts(content: Any, where: str) -> list[tuple[dict, str]]:
    """The non-text parts of a message's content, with their locations."""
    if not isinstance(content, list):
        return []
    return [(part, f"{where}[{j}]") for j, part in enumerate(content) if isinstance(part, dict) and part.get("type") != "text"]


def remove_folder(folder: str | os.PathLike) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


NEW_SEEDS = 2**32  # seeds a server draws for a picture: exact in every client's numbers (JavaScript's hold 53 bits)


def picture_record(out) -> dict:
    """What a client is told about a picture (`ImageBindLLMPipeline.imagine`'s ImagineOutput): the
    seed and settings that make it again, and the inputs' shares. JSON-ready; /imagine, the app
    and /v1/images/generations give the same record."""
    settings = out.settings
    return {
        "seed": settings.seed, "prompt": settings.prompt, "negative_prompt": settings.negative_prompt,
        "steps": settings.steps, "guidance": float(settings.guidance), "noise_level": settings.noise_level,
        "size": list(out.image.size),  # [width, height]
        "mix": [{"modality": modality, "name": name, "share": round(float(share), 4)} for modality, name, share in out.mix],
        "notes": list(out.notes),
        # The settings the image model read: the pocket decoder has no prompt, steps or guidance.
        "settings_used": list(out.settings_used if out.settings_used is not None else (f.name for f in fields(settings))),
    }

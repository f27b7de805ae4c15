"""What the evaluation toolkits' wrappers share: their media objects -> pipeline inputs, their
generation arguments -> GenerationConfig, and cutting an answer at stop strings.

lmms-eval hands a model PIL images, audio as {"array", "sampling_rate"} dicts and videos (and
sometimes images or audio) as file paths; VLMEvalKit hands file paths. The pipeline's audio loader
reads files, so in-memory audio is written to a temporary WAV first.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import GENERATION_LIMITS, GenerationConfig
from ..errors import InputError
from ..pipeline import InputItem

SUFFIXES = {
    "image": {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"},
    "video": {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpeg", ".mpg"},
    "audio": {".wav", ".flac", ".mp3", ".ogg", ".m4a"},
    "point": {".ply", ".pcd", ".xyz", ".pts", ".obj"},
}


def modality_of_path(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    for modality, suffixes in SUFFIXES.items():
        if suffix in suffixes:
            return modality
    raise InputError(f"{path}: cannot tell its modality from the suffix {suffix!r} (known: "
                     + ", ".join(f"{m} {' '.join(sorted(s))}" for m, s in SUFFIXES.items()) + ")")


def to_inputs(media: Iterable[Any], scratch: str | os.PathLike) -> list[InputItem]:
    """Toolkit media -> InputItems of equal weight; in-memory audio is written under `scratch`."""
    from PIL import Image

    items = []
    for n, obj in enumerate(media):
        if obj is None:
            continue
        if isinstance(obj, Image.Image):
            items.append(InputItem("image", obj.convert("RGB"), name=f"image-{n}"))
        elif isinstance(obj, dict) and "array" in obj and "sampling_rate" in obj:
            import soundfile

            path = Path(scratch) / f"audio-{n}.wav"
            soundfile.write(path, np.asarray(obj["array"], dtype=np.float32), int(obj["sampling_rate"]))
            items.append(InputItem("audio", str(path)))
        elif isinstance(obj, (str, os.PathLike)):
            items.append(InputItem(modality_of_path(obj), str(obj)))
        else:
            raise InputError(f"unsupported media of type {type(obj).__name__}: expected a PIL image, an audio dict "
                             "{'array', 'sampling_rate'} or a file path")
    return items


def generation_from(kwargs: dict, default: GenerationConfig) -> GenerationConfig:
    """lmms-eval's gen_kwargs (max_new_tokens, temperature, top_p, do_sample) over our defaults;
    do_sample=False or temperature 0 means greedy, as in transformers. Values past our limits
    (tasks ask up to 1024 new tokens or temperatures above 1) are clamped to them, not refused."""
    temperature = float(kwargs.get("temperature", default.temperature) or 0.0)
    if kwargs.get("do_sample") is False:
        temperature = 0.0
    top_p = kwargs.get("top_p")
    return GenerationConfig(
        max_new_tokens=min(int(kwargs.get("max_new_tokens", default.max_new_tokens)), int(GENERATION_LIMITS["max_new_tokens"][1])),
        temperature=min(temperature, GENERATION_LIMITS["temperature"][1]),
        top_p=default.top_p if top_p is None else float(top_p),
        seed=default.seed,
    ).check()


def cut_at(text: str, until: str | Sequence[str] | None) -> str:
    """The text before the first of the stop strings."""
    stops = [until] if isinstance(until, str) else list(until or [])
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class Scratch:
    """A temporary folder per request, removed afterwards."""

    def __enter__(self) -> str:
        self._dir = tempfile.TemporaryDirectory(prefix="ibllm-eval-")
        return self._dir.name

    def __exit__(self, *exc) -> None:
        self._dir.cleanup()

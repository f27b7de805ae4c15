"""The table of input modalities: one row per modality, looked up by name.

Every other part of the project asks this table instead of listing or testing modality names:
the loader registry (`demo.inputs.registry`), the encoder's sample checks and tower choice
(`demo.encoders.encoder`), the app's buttons and icons, the API's suffix inference, byte limits
and documentation. A new modality is one loader module plus one row here (or one
`register_modality` call at run time).

This module imports nothing heavy: loaders are named as "module:function" and imported on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from demo.preprocess import RELEASE, PreprocessConfig

# A loader: (source, limits: InputLimits, cancel: CancelToken | None) -> one sample, a CPU tensor
# laid out as its row's `shape` (demo/inputs/*.py; `demo.inputs.load_input` calls them).
Loader = Callable[..., Any]

# One axis of a sample: a fixed number, or the name of a `PreprocessConfig` attribute (so the
# layout follows the encoder's own preprocessing settings).
Dim = Union[int, str]
CAPTURE_KINDS = ("upload", "microphone", "webcam", "typed")  # how a front end can obtain an input


@dataclass(frozen=True)
class SampleShape:
    """The layout of ONE preprocessed sample, as its loader returns it and the encoder takes it."""

    dims: tuple[Dim, ...]
    dtype: str = "float32"  # torch dtype name ("int64" for token ids)
    # The encoder takes any length along the first axis: clips or views that the tower averages,
    # or the points of a cloud. The loader still gives the configured number.
    any_first: bool = False
    axes: str = ""  # what the axes mean, for messages and docs

    def resolve(self, preprocess: PreprocessConfig = RELEASE) -> tuple[int, ...]:
        """The exact shape the loaders give with these preprocessing settings."""
        return tuple(d if isinstance(d, int) else int(getattr(preprocess, d)) for d in self.dims)

    def accepted(self, preprocess: PreprocessConfig = RELEASE) -> tuple[int | None, ...]:
        """The shape the encoder accepts: `resolve`, with None (any size) on a free first axis."""
        shape = self.resolve(preprocess)
        return (None, *shape[1:]) if self.any_first else shape

    def describe(self, preprocess: PreprocessConfig = RELEASE) -> str:
        """E.g. "[15, 3, 2, 224, 224] (5 clips x 3 crops, C, T, H, W)"."""
        text = f"[{', '.join(map(str, self.resolve(preprocess)))}]"
        text += "" if self.dtype == "float32" else f" {self.dtype}"
        return f"{text} ({self.axes})" if self.axes else text


@dataclass(frozen=True)
class Modality:
    """One input modality: how to read it, how it is encoded, how front ends offer it."""

    name: str  # our key, also used in the API ("image", "audio", ...)
    label: str  # human-readable, for the UI
    icon: str  # one emoji, for the UI
    # The encoder tower: ImageBind's ModalityType key ("vision", "audio", ...), "point" for
    # Point-Bind, "" for inputs that are ImageBind embeddings already.
    tower: str
    suffixes: tuple[str, ...]  # accepted file suffixes, lower case, with dot; the first is the default
    shape: SampleShape
    # The loader: "module:function" (imported on first use) or the function itself, taking
    # (source, limits, cancel) and returning one sample laid out as `shape`.
    loader: str | Loader
    api: str  # one line for API documentation: what a file of this modality is
    capture: tuple[str, ...] = ("upload",)  # subset of CAPTURE_KINDS
    limits_key: str = ""  # prefix of its `InputLimits` fields (`<key>_max_bytes`); default: the name
    # A file a browser can show, for inputs it cannot show itself: "module:function" taking
    # (source, limits, directory=) and returning a new file's path; "" for none.
    preview: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.capture) - set(CAPTURE_KINDS)
        if unknown:
            raise ValueError(f"{self.name}: unknown capture kinds {sorted(unknown)}; known: {', '.join(CAPTURE_KINDS)}")
        if not self.suffixes or any(not s.startswith(".") or s != s.lower() for s in self.suffixes):
            raise ValueError(f"{self.name}: suffixes must be lower case and start with a dot, got {self.suffixes}")
        if not self.limits_key:
            object.__setattr__(self, "limits_key", self.name)

    @property
    def sample_shape(self) -> str:
        """The release's layout of one sample, in words (`shape.describe()`)."""
        return self.shape.describe()

    def max_bytes(self, limits) -> int:
        """This modality's file size limit in `limits` (an `InputLimits`)."""
        return int(getattr(limits, f"{self.limits_key}_max_bytes"))

    def load_function(self) -> Loader:
        """The loader itself, imported on first use."""
        return self.loader if callable(self.loader) else _import(self.loader)

    def preview_function(self) -> Callable | None:
        """The preview maker (see `preview`), imported on first use; None when there is none."""
        return _import(self.preview) if self.preview else None


def _import(reference: str) -> Callable:
    """"package.module:function" -> the function."""
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


_RASTER = SampleShape((1, "image_size", "image_size"))  # one channel, short side resized and centre-cropped

# One row per modality; a new one is a loader module (demo/inputs/) plus a row here.
_ROWS = (
    Modality(name="image", label="Image", icon="🖼️", tower="vision",
             suffixes=(".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"),
             shape=SampleShape((3, "image_size", "image_size")), loader="demo.inputs.image:load_image",
             api="a photo or picture", capture=("upload", "webcam")),
    Modality(name="video", label="Video", icon="🎬", tower="vision", suffixes=(".mp4", ".webm", ".mov", ".avi", ".mkv"),
             shape=SampleShape(("video_views", 3, "video_frames", "image_size", "image_size"), any_first=True,
                               axes="5 clips x 3 crops, C, T, H, W"),
             loader="demo.inputs.video:load_video", api="a video (5 two-second clips are seen, not the sound track)"),
    Modality(name="audio", label="Audio", icon="🔊", tower="audio", suffixes=(".wav", ".flac", ".ogg", ".mp3"),
             shape=SampleShape(("audio_clips", 1, "audio_num_mel_bins", "audio_target_len"), any_first=True,
                               axes="3 clips of Kaldi fbank"),
             loader="demo.inputs.audio:load_audio", api="a sound recording", capture=("upload", "microphone")),
    Modality(name="text", label="Text", icon="📝", tower="text", suffixes=(".txt",),
             shape=SampleShape(("text_context",), "int64", axes="token ids"), loader="demo.inputs.text:load_text",
             api="a UTF-8 text file, encoded as ImageBind text (an input to mix, not the question)",
             capture=("upload", "typed")),
    Modality(name="point", label="Point cloud", icon="🧊", tower="point",
             suffixes=(".ply", ".pcd", ".xyz", ".pts", ".npy", ".npz", ".obj", ".pt"),
             shape=SampleShape(("point_count", 3), any_first=True, axes="points, xyz"),
             loader="demo.inputs.points:load_points", api="a 3D point cloud or mesh (x, y, z per point)",
             preview="demo.inputs.preview:point_cloud_preview"),
    Modality(name="depth", label="Depth", icon="🌊", tower="depth", suffixes=(".png", ".npy", ".tif", ".tiff"),
             shape=_RASTER, loader="demo.inputs.depth:load_depth",
             api="a depth map (16-bit PNG in millimetres, or metres as .npy)"),
    Modality(name="thermal", label="Thermal", icon="🌡️", tower="thermal",
             suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
             shape=_RASTER, loader="demo.inputs.thermal:load_thermal", api="a thermal (infrared) image"),
    Modality(name="imu", label="IMU", icon="📈", tower="imu", suffixes=(".npy", ".csv"),
             shape=SampleShape(("imu_channels", "imu_steps"), axes="acc xyz + gyro xyz, time"),
             loader="demo.inputs.imu:load_imu", api="an IMU recording: accelerometer and gyroscope x, y, z over time"),
    # A precomputed ImageBind-Huge embedding, for researchers: no tower, used as it is.
    Modality(name="embedding", label="Embedding", icon="🧬", tower="", suffixes=(".npy", ".pt", ".safetensors"),
             shape=SampleShape((1024,)), loader="demo.inputs.embedding:load_embedding",
             api="a precomputed 1024-d ImageBind embedding"),
)
MODALITIES: dict[str, Modality] = {m.name: m for m in _ROWS}


def get_modality(name: str) -> Modality:
    try:
        return MODALITIES[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}") from None


def register_modality(modality: Modality, *, replace: bool = False) -> Modality:
    """Add a row at run time (a plugin, a test); everything derived from the table sees it.
    Returns the row; `unregister_modality` removes it again."""
    if modality.name in MODALITIES and not replace:
        raise ValueError(f"modality {modality.name!r} exists; pass replace=True to redefine it")
    MODALITIES[modality.name] = modality
    return modality


def unregister_modality(name: str) -> None:
    MODALITIES.pop(name, None)


def names_in_words(last: str = "or") -> str:
    """"image, video, ... or embedding": the table's names, for documentation."""
    names = list(MODALITIES)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def api_reference() -> str:
    """One Markdown line per modality: name, suffixes, what it is. API docs embed this."""
    return "\n".join(f"- `{m.name}` ({' '.join(m.suffixes)}): {m.api}" for m in MODALITIES.values())


def documented(function: Callable) -> Callable:
    """Decorator for API functions whose docstring names the modalities: "{modalities}" in it
    becomes `names_in_words()` (at definition time), so tool docs (MCP, /chat) follow the table."""
    if function.__doc__:
        function.__doc__ = function.__doc__.replace("{modalities}", names_in_words())
    return function


# The block of a Markdown file that `write_reference` keeps equal to `api_reference()`.
DOC_BEGIN, DOC_END = "<!-- modalities: begin (written by demo.modalities.write_reference) -->", "<!-- modalities: end -->"


def write_reference(path) -> bool:
    """Rewrite the block between DOC_BEGIN and DOC_END of a Markdown file (docs/api.md) from the
    table; returns whether the file changed. Tests check the block is current."""
    from pathlib import Path

    path = Path(path)
    text = path.read_text()
    head, begin, rest = text.partition(DOC_BEGIN)
    _, end, tail = rest.partition(DOC_END)
    if not begin or not end:
        raise ValueError(f"{path} has no {DOC_BEGIN} ... {DOC_END} block")
    new = f"{head}{DOC_BEGIN}\n{api_reference()}\n{DOC_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


class Column(Mapping):
    """A live, read-only view name -> one value per row (rows registered later included)."""

    def __init__(self, value: Callable[[Modality], object]):
        self._value = value

    def __getitem__(self, name: str):
        return self._value(get_modality(name))

    def __iter__(self):
        return iter(list(MODALITIES))

    def __len__(self) -> int:
        return len(MODALITIES)


ICONS = Column(lambda m: m.icon)  # name -> icon, for front ends


def all_suffixes() -> list[str]:
    """Every accepted suffix, sorted (a file picker's filter)."""
    return sorted({s for m in MODALITIES.values() for s in m.suffixes})


"""Shared by the loaders: is the source a usable file, are its values finite, where clips start."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from demo.errors import InputError
from demo.modalities import get_modality

if TYPE_CHECKING:
    from PIL import Image

# A file path, or an in-memory object where the modality has a natural one
# (PIL image or array for rasters, array/tensor for points, IMU and embeddings).
Source = Union[str, "os.PathLike[str]", "Image.Image", np.ndarray, torch.Tensor]


def is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def describe(source: Any) -> str:
    """How error messages name a source: the file's name (never its folder, which on a server is
    the upload path), or the in-memory object's type and shape."""
    if is_path(source):
        return Path(source).name or str(source)
    # arrays and tensors have .shape; PIL images have .size = (width, height)
    shape = getattr(source, "shape", getattr(source, "size", None))
    shape_text = f" {tuple(shape)}" if isinstance(shape, tuple) else ""
    return f"<in-memory {type(source).__name__}{shape_text}>"


def check_file(source: Any, modality: str, max_bytes: int) -> Path:
    """Return `source` as a Path after checking existence, suffix and size (no decoding)."""
    if not is_path(source):
        raise InputError(f"{describe(source)}: {modality} input must be a file path")
    path, name = Path(source), describe(source)
    suffixes = get_modality(modality).suffixes
    if path.suffix.lower() not in suffixes:
        raise InputError(
            f"{name}: unsupported file type {path.suffix or '(none)'!r} for {modality}; "
            f"expected one of {', '.join(suffixes)}"
        )
    if not path.is_file():
        raise InputError(f"{name}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{name}: file is empty")
    if size > max_bytes:
        raise InputError(
            f"{name}: file is {size / 2**20:.1f} MiB, over the {modality} limit of "
            f"{max_bytes / 2**20:.1f} MiB"
        )
    return path


def load_npy(path: Path, max_bytes: int | None = None) -> np.ndarray:
    """The array in a .npy file, never unpickling, read into memory. Raises numpy's errors
    (ValueError, OSError, EOFError) for the caller to name in its own terms, and InputError when
    the array is over `max_bytes` (checked before the copy).

    Memory-mapping first makes numpy check that the file holds as many bytes as its header
    announces, so a 100-byte file claiming 10^10 values is refused instead of allocating 37 GiB.
    """
    mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    if max_bytes is not None and mapped.nbytes > max_bytes:
        raise InputError(f"{describe(path)}: array of {mapped.nbytes / 2**20:.1f} MiB, over the limit of "
                         f"{max_bytes / 2**20:.1f} MiB")
    return np.array(mapped)  # a plain in-memory copy


def scrub_paths(message: str, source: Any) -> str:
    """`message` with the source's full path and folder replaced by its name: decoders (libsndfile,
    FFmpeg, open3d) quote the path they were given, which on a server is the upload folder."""
    if not is_path(source):
        return message
    path = Path(source)
    for text in sorted({str(path), str(path.resolve())}, key=len, reverse=True):  # longest first
        message = message.replace(text, path.name)
    for folder in sorted({str(path.parent), str(path.resolve().parent)} - {".", "", os.sep}, key=len, reverse=True):
        message = message.replace(folder + os.sep, "").replace(folder, "<folder>")
    return message


def check_shape(name: str, what: str, width: int, height: int, max_pixels: int, max_aspect: float) -> None:
    """Refuse a raster (image, depth map, video frame) over the pixel or aspect-ratio budget.

    The aspect ratio bounds the work after ImageBind's resize (short side -> 224): the resized
    long side is 224 x long / short (see InputLimits.max_aspect_ratio)."""
    if width * height == 0:
        raise InputError(f"{name}: {what} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(
            f"{name}: {what} is {width}x{height} = {width * height / 1e6:.0f} MP, over the limit of "
            f"{max_pixels / 1e6:.0f} MP"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect:
        raise InputError(
            f"{name}: {what} is {width}x{height}, {ratio:.0f} times longer than wide; the limit is "
            f"{max_aspect:g}:1 (crop it to the part that matters)"
        )


def check_zip_members(path: Path, max_bytes: int, what: str, max_pickle_bytes: int | None = None) -> None:
    """Refuse a zip container (.npz, torch's .pt) whose members decompress to more than
    `max_bytes` in all, before anything is decompressed: sizes come from the zip directory, and a
    member that lies about its size fails the zip module's own CRC/length check when read.
    `max_pickle_bytes` bounds torch's `data.pkl` (a few hundred bytes for a tensor or a dict of
    tensors): unpickling a long harmless pickle with weights_only=True still takes seconds."""
    import zipfile

    name = describe(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{name}: not a readable {what} (not a zip archive: {exc})") from None
    total = sum(member.file_size for member in members)
    if total > max_bytes:
        raise InputError(
            f"{name}: {what} decompresses to {total / 2**20:.0f} MiB, over the limit of {max_bytes / 2**20:.0f} MiB"
        )
    if max_pickle_bytes is not None:
        pickles = [m for m in members if m.filename.endswith(".pkl")]
        if len(pickles) != 1:
            raise InputError(f"{name}: not a torch.save file (save it with torch.save, torch >= 1.6)")
        if pickles[0].file_size > max_pickle_bytes:
            raise InputError(
                f"{name}: its object structure is {pickles[0].file_size} bytes, over the limit of "
                f"{max_pickle_bytes}; save a plain tensor (or a dict of tensors)"
            )


def require_finite(values: np.ndarray | torch.Tensor, name: str) -> None:
    finite = torch.isfinite(values) if isinstance(values, torch.Tensor) else np.isfinite(values)
    if not bool(finite.all()):
        raise InputError(f"{name}: contains NaN or infinite values")


def clip_start_times(duration: float, clip_seconds: float, num_clips: int) -> list[Fraction]:
    """Start times of pytorchvideo's ConstantClipsPerVideoSampler: i * max(D - clip, 0) / n.

    Exact fractions, as pytorchvideo computes them, so that sample indices derived from them
    (int(start * rate)) match ImageBind's to the sample. Clips reach past the end when the
    input is shorter than one clip; then every clip starts at 0.
    """
    step = Fraction(max(duration - clip_seconds, 0)) / num_clips
    return [step * i for i in range(num_clips)]

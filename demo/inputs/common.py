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
    """How error messages name a source: the path, or the in-memory object's type and shape."""
    if is_path(source):
        return str(source)
    # arrays and tensors have .shape; PIL images have .size = (width, height)
    shape = getattr(source, "shape", getattr(source, "size", None))
    shape_text = f" {tuple(shape)}" if isinstance(shape, tuple) else ""
    return f"<in-memory {type(source).__name__}{shape_text}>"


def check_file(source: Any, modality: str, max_bytes: int) -> Path:
    """Return `source` as a Path after checking existence, suffix and size (no decoding)."""
    if not is_path(source):
        raise InputError(f"{describe(source)}: {modality} input must be a file path")
    path = Path(source)
    suffixes = get_modality(modality).suffixes
    if path.suffix.lower() not in suffixes:
        raise InputError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r} for {modality}; "
            f"expected one of {', '.join(suffixes)}"
        )
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: file is empty")
    if size > max_bytes:
        raise InputError(
            f"{path}: file is {size / 2**20:.1f} MiB, over the {modality} limit of "
            f"{max_bytes / 2**20:.1f} MiB"
        )
    return path


def load_npy(path: Path) -> np.ndarray:
    """The array in a .npy file, never unpickling, read into memory. Raises numpy's errors
    (ValueError, OSError, EOFError) for the caller to name in its own terms.

    Memory-mapping first makes numpy check that the file holds as many bytes as its header
    announces, so a 100-byte file claiming 10^10 values is refused instead of allocating 37 GiB.
    """
    return np.array(np.load(path, mmap_mode="r", allow_pickle=False))  # a plain in-memory copy


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

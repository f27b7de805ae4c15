"""Precomputed ImageBind embeddings -> [1024] float32, for researchers who embed offline.

The vector is validated but not normalised: ImageBind-LLM L2-normalises every modality's
embedding before mixing, so the scale a file was saved with does not matter.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from demo.cancel import CancelToken, check
from demo.errors import InputError
from demo.inputs.common import Source, check_file, check_zip_members, describe, is_path, load_npy, require_finite
from demo.inputs.limits import InputLimits

EMBED_DIM = 1024  # ImageBind-Huge's joint embedding width
PICKLE_MAX_BYTES = 64 * 1024  # torch.save's object structure for a tensor or a dict of them


def read_tensor(path: Path, limits: InputLimits) -> torch.Tensor:
    """.npy / .pt / .safetensors -> the tensor it holds (a file of several must name it "embedding")."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return torch.from_numpy(load_npy(path))
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: object = load_file(path)
    else:
        # A 1 MiB .pt may hold a deflated member of a gigabyte, or a pickle that takes seconds.
        check_zip_members(path, limits.embedding_max_bytes, "torch file", PICKLE_MAX_BYTES)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(loaded, Mapping):
        if len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        elif "embedding" in loaded:
            loaded = loaded["embedding"]
        else:
            raise InputError(f"{describe(path)}: holds several tensors ({', '.join(map(str, loaded))}); name it 'embedding'")
    if not isinstance(loaded, torch.Tensor):
        raise InputError(f"{describe(path)}: expected a tensor, found {type(loaded).__name__}")
    return loaded


def load_embedding(source: Source, limits: InputLimits, cancel: CancelToken | None = None) -> torch.Tensor:
    """Embedding file / array / tensor of 1024 values ([1024] or [1, 1024]) -> float32 [1024]."""
    name = describe(source)
    if is_path(source):
        path = check_file(source, "embedding", limits.embedding_max_bytes)
        try:
            vector = read_tensor(path, limits)
        except InputError:
            raise
        except Exception as exc:  # numpy / torch / safetensors parse errors have no common base
            raise InputError(f"{name}: not a readable tensor file ({type(exc).__name__}: {exc})") from None
    elif isinstance(source, (np.ndarray, torch.Tensor)):
        vector = torch.as_tensor(source)
    else:
        raise InputError(f"{name}: expected a file path, numpy array or tensor")

    if not (vector.is_floating_point() and vector.numel() == EMBED_DIM and vector.squeeze().dim() == 1):
        raise InputError(
            f"{name}: expected {EMBED_DIM} floating-point values ([{EMBED_DIM}] or [1, {EMBED_DIM}]), "
            f"got {vector.dtype} {tuple(vector.shape)}"
        )
    check(cancel)
    vector = vector.detach().reshape(EMBED_DIM).float().cpu().clone()  # [1024], owns its memory
    require_finite(vector, name)
    if not vector.norm() > 0:
        raise InputError(f"{name}: embedding is all zeros")
    return vector

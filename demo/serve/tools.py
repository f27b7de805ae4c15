"""Agent tools (MCP, `python app.py --mcp`): plain functions over one pipeline, local file paths in,
JSON-ready values out. The app registers typed, documented wrappers around them (app_mcp.py);
errors are the library's InputError with the library's messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.nn import functional as F

from ..arithmetic import mix_embeddings as mix_vectors
from ..chat_request import ChatRequest, infer_modality
from ..errors import InputError
from ..modalities import documented
from ..pipeline import ImageBindLLMPipeline, InputItem

NO_CACHE = "no visual cache is loaded on this server: start it with --cache PATH (README, Visual cache)"


@documented
def describe_inputs(pipe: ImageBindLLMPipeline, question: str, paths: Sequence[str] = (),
                    weights: Sequence[float] | None = None) -> str:
    """The model's answer to `question` about the files (mixed with `weights` in [-1, 1], default all 1;
    each file's modality, one of {modalities}, from its suffix). Checked as the app's /chat checks its arguments."""
    request = ChatRequest.parse(question, list(paths), None, None if weights is None else list(weights),
                                limits=pipe.limits, generation_defaults=pipe.generation_defaults,
                                cache_defaults=pipe.retrieval_defaults)
    return pipe(request.question, request.inputs, generation=request.generation, cache=request.cache).text


@documented
def embed_file(pipe: ImageBindLLMPipeline, path: str, modality: str | None = None) -> dict:
    """{"modality", "dim", "embedding"}: the file's unit-norm ImageBind embedding as floats; the modality
    ({modalities}) from the file's suffix (demo.modalities) unless given."""
    item = InputItem(infer_modality(Path(path).name, modality), str(path), name=Path(path).name)
    vector = pipe.embed(item)  # (E,) unit norm
    return {"modality": item.modality, "dim": int(vector.numel()), "embedding": vector.tolist()}


def as_vector(values: Sequence[float], dim: int | None = None, what: str = "embedding") -> torch.Tensor:
    """A JSON list of numbers -> a (D,) float32 tensor, checked (length, finite, non-zero)."""
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f"{what} must be a non-empty list of numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise InputError(f"{what} must hold finite numbers only")
    if dim is not None and len(values) != dim:
        raise InputError(f"{what} has {len(values)} values, this model's embeddings have {dim}")
    vector = torch.tensor(values, dtype=torch.float32)  # (D,)
    if vector.norm() == 0:
        raise InputError(f"{what} is all zeros: it has no direction")
    return vector


def mix_embeddings(embeddings: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """The release's mix (demo.arithmetic): each embedding normalised, weights / (sum |w| + 1e-6)."""
    if not embeddings:
        raise InputError("give at least one embedding to mix")
    dim = len(embeddings[0]) if isinstance(embeddings[0], (list, tuple)) else None
    vectors = [as_vector(e, dim, f"embedding {i + 1}") for i, e in enumerate(embeddings)]
    return mix_vectors(vectors, weights).tolist()


def search_visual_cache(pipe: ImageBindLLMPipeline, path: str | None = None,
                        embedding: Sequence[float] | None = None, k: int = 5) -> dict:
    """The k cache entries nearest to a file's (or an embedding's) direction: {"ids", "similarities", "sources"},
    best first. An error when no cache is loaded."""
    if pipe.cache is None:
        raise InputError(NO_CACHE)
    if (path is None) == (embedding is None):
        raise InputError("give either a file or an embedding to search the visual cache with, not both")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a whole number of neighbours >= 1, got {k!r}")
    query = embed_file(pipe, path)["embedding"] if path is not None else embedding
    vector = F.normalize(as_vector(query, pipe.cache.dim), dim=0)  # (D,) the cache holds unit vectors
    result = pipe.cache.retrieve(vector, k=min(k, pipe.cache.index.ntotal))  # [1, k] arrays
    found = [(int(i), float(s), src) for i, s, src in zip(result.ids[0], result.similarities[0], result.sources[0])
             if i >= 0]  # -1: an approximate index found fewer than k
    return {"ids": [f[0] for f in found], "similarities": [f[1] for f in found], "sources": [f[2] for f in found]}

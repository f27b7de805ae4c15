"""The training-free visual cache (reference section 8): pull a query towards its nearest images.

For a mixed query v (an ImageBind embedding, 1024-d), with k neighbours, temperature t, weight w:

    sims, ids = top-k search of v in the cache         # [k], [k]
    a  = softmax(t * sims)                              # [k]
    r  = normalise(a @ cache[ids])                      # [D]
    v' = normalise((1 - w) * v + w * r)                 # [D]

The cache holds unit-norm image features (the official `knn.index`: ~3 M CC3M images, 13.3 GB).
Its scores are used as similarities, so the metric matters:
- inner product: the score is <v, x>, used as it is (this is what the original demo does);
- L2: faiss returns squared distances d = |v - x|^2 = |v|^2 + 1 - 2 <v, x> for a unit x, so
  <v, x> = (|v|^2 + 1 - d) / 2 (= 1 - d / 2 for a unit query). Both metrics give the same blend.
Loading checks this with a probe query: its scores, read as above, must equal the inner products
with the vectors the index gives back, else the index is refused (wrong metric, an L2 index of
non-unit vectors, an index that cannot give back vectors). Non-unit vectors in an inner-product
index are used as they are, as the original demo would, with a warning.

Files: the index (any faiss index that can give back its vectors) and, next to it, a sidecar
`<index>.sources.jsonl` with one line `{"source": ...}` per entry (image path, URL or caption;
null when unknown). The official index has no sidecar: its sources are None.

Off by default: `VisualCache.from_config` returns None when `RetrievalSettings.enabled` is False, and
callers hold None for "no cache". This module is what the pipeline uses at run time; building a
cache and compacting one are tooling, in demo/weights_tools/cache.py (`ibllm cache`).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .errors import InputError, WeightsError

if TYPE_CHECKING:  # faiss is imported when a cache is loaded: the app starts without it when the cache is off
    import faiss

logger = logging.getLogger(__name__)

EMBED_DIM = 1024  # ImageBind-Huge joint embedding size
OFFICIAL_INDEX_URL = "https://huggingface.co/csuhan/knn/resolve/main/knn.index"

# name -> (minimum, maximum, step). The app's sliders and the checks both read this table.
CACHE_LIMITS: dict[str, tuple[float, float, float]] = {
    "k": (1, 100, 1),
    "temperature": (0.0, 100.0, 1.0),
    "weight": (0.0, 1.0, 0.05),
}

# A stored vector counts as unit-norm, and a score as its inner product, within this tolerance:
# loose enough for 6-bit codes (error ~1e-3 per score), tight enough to catch a wrong metric.
_PROBE_TOLERANCE = 0.02


@dataclass
class RetrievalSettings:
    """Whether and how to pull a query toward the visual cache: off unless `enabled`.

    The pipeline reads it per request (k, temperature, weight) for a cache loaded elsewhere;
    `index_path`, `nprobe` and `mmap` only matter to `VisualCache.from_config`.
    """

    enabled: bool = False
    index_path: str | None = None
    k: int = 10
    temperature: float = 20.0
    weight: float = 0.5
    nprobe: int | None = None  # IVF indexes only: lists to visit; None keeps the value saved in the file
    mmap: bool = False  # map a flat index from disk instead of reading it into RAM (slower search)

    def check(self) -> "RetrievalSettings":
        _check_params(self.k, self.temperature, self.weight)
        return self


@dataclass
class RetrievalResult:
    """What one `retrieve` call recalled. Neighbour arrays are always batched: [B, k]."""

    embedding: torch.Tensor  # the blended query, same shape, dtype and device as the input
    ids: np.ndarray  # [B, k] int64 entry ids; -1 where an approximate index found fewer than k
    similarities: np.ndarray  # [B, k] float32, the inner products <v, x>; NaN where the id is -1
    attention: np.ndarray  # [B, k] float32, a = softmax(t * sims): each neighbour's share of r
    sources: list[list[str | None]]  # [B][k] path, URL or caption of each neighbour, if known


# The names before session 3 (README documented CacheConfig); kept so older code keeps working.
CacheConfig = RetrievalSettings
CacheResult = RetrievalResult


class VisualCache:
    """A faiss index of unit image features, and where each came from."""

    def __init__(self, index: "faiss.Index", sources: list[str | None] | None = None, dim: int = EMBED_DIM):
        _check_index(index, dim)
        if sources is not None and len(sources) != index.ntotal:
            raise WeightsError(
                f"the cache index has {index.ntotal} entries but its sources list has {len(sources)}; "
                "rebuild the sidecar file or delete it"
            )
        self.index = index
        self.sources = sources
        self.dim = dim

    @classmethod
    def from_index(cls, path: str | os.PathLike, *, dim: int = EMBED_DIM, nprobe: int | None = None, mmap: bool = False) -> "VisualCache":
        """Read a faiss index (and its sidecar `<path>.sources.jsonl` if present)."""
        path = Path(path)
        if not path.is_file():
            raise WeightsError(
                f"visual cache index not found at {path}: download {OFFICIAL_INDEX_URL} there, build one "
                "with `ibllm cache build`, or turn the cache off"
            )
        import faiss

        # IO_FLAG_MMAP_IFC maps the vectors of flat (and other code-array) indexes from disk.
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as error:
            raise WeightsError(f"{path} is not a readable faiss index ({str(error).splitlines()[0]})") from None
        if nprobe is not None:
            ivf = faiss.try_extract_index_ivf(index)
            if ivf is None:
                raise InputError(f"nprobe={nprobe} was given but {path} is not an IVF index")
            ivf.nprobe = nprobe
        sidecar = sources_path(path)
        sources = read_sources(sidecar) if sidecar.is_file() else None
        cache = cls(index, sources, dim)
        logger.info("visual cache: %s", cache.describe())
        return cache

    @classmethod
    def from_config(cls, config: RetrievalSettings, *, dim: int = EMBED_DIM) -> "VisualCache | None":
        """The cache the config asks for, or None when the cache is off."""
        config.check()
        if not config.enabled:
            logger.info("visual cache: off (RetrievalSettings.enabled is False)")
            return None
        if not config.index_path:
            raise InputError("the visual cache is enabled but RetrievalSettings.index_path is not set")
        return cls.from_index(config.index_path, dim=dim, nprobe=config.nprobe, mmap=config.mmap)

    def describe(self) -> str:
        """One line for logs and the UI."""
        import faiss

        kind = type(faiss.downcast_index(self.index)).__name__
        known = "with sources" if self.sources is not None else "sources unknown"
        return f"on: {self.index.ntotal:,} entries of {self.dim}-d, {kind}, {known}"

    def retrieve(
        self,
        embedding: torch.Tensor,
        k: int = 10,
        temperature: float = 20.0,
        weight: float = 0.5,
    ) -> RetrievalResult:
        """Blend `embedding` ([D] or [B, D]) with its k nearest cache entries (section 8)."""
        # 1. Check inputs
        _check_params(k, temperature, weight)
        k = int(k)  # sliders may send 10.0
        if k > self.index.ntotal:
            raise InputError(f"k={k} is larger than the cache ({self.index.ntotal} entries)")
        query = self._as_query(embedding)  # [B, D] float32

        # 2. Search and gather the neighbours' vectors in one call (no per-neighbour loop)
        scores, ids, vectors = self.index.search_and_reconstruct(query, k)  # [B, k], [B, k], [B, k, D]
        found = ids >= 0  # [B, k]; an IVF index may find fewer than k in the lists it visits
        sims = np.where(found, _similarities(self.index.metric_type, scores, query), np.nan)  # [B, k]

        # 3. Blend
        attention = _softmax(temperature * sims, found)  # [B, k]
        vectors = np.where(found[..., None], vectors, 0.0)  # missing neighbours come back as NaN
        recalled = _normalise(np.einsum("bk,bkd->bd", attention, vectors))  # [B, D]
        blended = _normalise((1.0 - weight) * query + weight * recalled)  # [B, D]

        # 4. Package, in the caller's shape, dtype and device
        out = torch.from_numpy(blended).reshape(embedding.shape).to(embedding.device, embedding.dtype)
        sources = [[self._source(i) for i in row] for row in ids.tolist()]
        return RetrievalResult(out, ids, sims.astype(np.float32), attention.astype(np.float32), sources)

    def _as_query(self, embedding: torch.Tensor) -> np.ndarray:
        if not isinstance(embedding, torch.Tensor) or embedding.ndim not in (1, 2) or embedding.shape[-1] != self.dim:
            shape = tuple(embedding.shape) if hasattr(embedding, "shape") else type(embedding).__name__
            raise InputError(f"cache query must be a tensor of shape [{self.dim}] or [B, {self.dim}], got {shape}")
        query = embedding.detach().reshape(-1, self.dim).to("cpu", torch.float32).numpy()  # [B, D]
        if not np.isfinite(query).all():
            raise InputError("cache query contains NaN or infinite values")
        return np.ascontiguousarray(query)

    def _source(self, entry: int) -> str | None:
        return self.sources[entry] if self.sources is not None and entry >= 0 else None


def _check_params(k: int, temperature: float, weight: float) -> None:
    for name, value in (("k", k), ("temperature", temperature), ("weight", weight)):
        low, high, _ = CACHE_LIMITS[name]
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"cache setting {name}={value!r} is outside [{low}, {high}]")
    if int(k) != k:
        raise InputError(f"cache setting k must be a whole number, got {k!r}")


def _similarities(metric: int, scores: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Faiss scores [B, k] -> inner products [B, k], for unit cache vectors (see module docstring)."""
    import faiss

    if metric == faiss.METRIC_INNER_PRODUCT:
        return scores
    squared_norm = np.square(query).sum(axis=1, keepdims=True)  # [B, 1]
    return (squared_norm + 1.0 - scores) / 2.0


def _softmax(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, [B, k], giving weight 0 where `valid` is False."""
    logits = np.where(valid, logits, -np.inf)
    peak = np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(logits - np.where(np.isfinite(peak), peak, 0.0))  # exp(-inf) = 0 for invalid slots
    return exp / np.maximum(exp.sum(axis=-1, keepdims=True), np.finfo(np.float32).tiny)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _check_index(index: "faiss.Index", dim: int) -> None:
    """Refuse an index whose dimension, metric or vectors do not fit the formula."""
    import faiss

    if index.d != dim:
        raise WeightsError(f"the cache index holds {index.d}-d vectors but the model's embeddings are {dim}-d")
    if index.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
        raise WeightsError(f"the cache index uses faiss metric {index.metric_type}; only inner product and L2 are supported")
    if index.ntotal == 0:
        raise WeightsError("the cache index is empty")
    # Probe with a fixed random unit query: the scores, read as similarities, must be the inner
    # products with the vectors the index gives back.
    probe = _normalise(np.random.default_rng(0).standard_normal((1, dim))).astype(np.float32)  # [1, D]
    try:
        scores, ids, vectors = index.search_and_reconstruct(probe, min(8, index.ntotal))  # [1, k], [1, k], [1, k, D]
    except RuntimeError as error:
        raise WeightsError(f"the cache index cannot give back its vectors ({str(error).splitlines()[0]})") from None
    found = ids[0] >= 0
    vectors = vectors[0, found]  # [n, D]
    norms = np.linalg.norm(vectors, axis=1)  # [n]
    unit = bool(np.all(np.abs(norms - 1.0) <= _PROBE_TOLERANCE))
    if index.metric_type == faiss.METRIC_L2 and not unit:
        raise WeightsError(
            f"the cache is an L2 index of vectors that are not unit-norm (norms {norms.min():.3f}..{norms.max():.3f}), "
            "so its distances cannot be turned into similarities; rebuild it with `ibllm cache build`, which normalises"
        )
    sims = _similarities(index.metric_type, scores[:, found], probe)[0]  # [n]
    if np.any(np.abs(sims - vectors @ probe[0]) > _PROBE_TOLERANCE * np.maximum(norms, 1.0)):
        raise WeightsError(
            f"the cache index's scores (metric {index.metric_type}) are not inner products with its own vectors; "
            "only plain inner-product or L2 indexes (flat, IVF, HNSW, with or without quantisation) are supported"
        )
    if not unit:
        # Inner products of non-unit vectors still follow the formula (the original demo uses them
        # as they are), but they are not cosines: the temperature then means something else.
        logger.warning("visual cache vectors are not unit-norm (norms %.3f..%.3f); scores are raw inner products", norms.min(), norms.max())


# ---------------------------------------------------------------------------------------------
# The sources sidecar


def sources_path(index_path: str | os.PathLike) -> Path:
    """The sidecar next to an index: `knn.index` -> `knn.index.sources.jsonl`."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".sources.jsonl")


def read_sources(path: Path) -> list[str | None]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["source"] for line in f]

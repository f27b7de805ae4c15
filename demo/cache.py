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
callers hold None for "no cache".
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError, WeightsError

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
                "with `python -m weights.cache build`, or turn the cache off"
            )
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
            "so its distances cannot be turned into similarities; rebuild it with `python -m weights.cache build`, which normalises"
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
# Files: the sources sidecar, building a cache, and compacting one.


def sources_path(index_path: str | os.PathLike) -> Path:
    """The sidecar next to an index: `knn.index` -> `knn.index.sources.jsonl`."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name + ".sources.jsonl")


def read_sources(path: Path) -> list[str | None]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["source"] for line in f]


def build_from_embeddings(
    files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    sources: Sequence[str | None] | None = None,
    dim: int = EMBED_DIM,
    batch_size: int = 4096,
    checkpoint_every: int = 65536,
    progress: bool = True,
) -> Path:
    """Build a flat cache from .npy files of embeddings ([n, D] or [D] each), in file order.

    `sources` gives one source per row (URL or caption); without it a row's source is `file.npy[row]`.
    """
    arrays = [_load_npy(f) for f in files]
    for f, array in zip(files, arrays):
        if array.ndim not in (1, 2) or array.shape[-1] != dim:
            raise InputError(f"{f}: expected embeddings of shape [n, {dim}] or [{dim}], got {array.shape}")
    arrays = [a.reshape(-1, dim) for a in arrays]
    names = [f"{f}[{row}]" for f, a in zip(files, arrays) for row in range(len(a))]
    if sources is not None and len(sources) != len(names):
        raise InputError(f"{len(sources)} sources were given for {len(names)} embedding rows")
    starts = np.cumsum([0] + [len(a) for a in arrays])  # [F + 1] first row of each file

    def read(start: int, stop: int) -> np.ndarray:
        parts = [  # the slices of rows [start, stop) that fall in each file
            a[max(start, lo) - lo : min(stop, hi) - lo] for a, lo, hi in zip(arrays, starts[:-1], starts[1:]) if max(start, lo) < min(stop, hi)
        ]
        return np.concatenate(parts)  # [stop - start, D]

    return _build(read, names if sources is None else list(sources), output, dim=dim, batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress)


def _load_npy(path: str | os.PathLike) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r")  # mapped: only the rows being copied are read
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: cannot read it as a .npy array ({error})") from None


def build_from_images(
    paths: Sequence[str | os.PathLike],
    encode_images: Callable[[list[str]], np.ndarray],
    output: str | os.PathLike,
    *,
    dim: int = EMBED_DIM,
    batch_size: int = 32,
    checkpoint_every: int = 1024,
    progress: bool = True,
) -> Path:
    """Build a flat cache from images; `encode_images(paths) -> [n, D]` is the image encoder."""
    paths = [str(p) for p in paths]
    return _build(lambda start, stop: np.asarray(encode_images(paths[start:stop])), paths, output, dim=dim, batch_size=batch_size, checkpoint_every=checkpoint_every, progress=progress)


def _build(
    read: Callable[[int, int], np.ndarray],
    sources: Sequence[str | None],
    output: str | os.PathLike,
    *,
    dim: int,
    batch_size: int,
    checkpoint_every: int,
    progress: bool,
) -> Path:
    """Write entries `read(start, stop) -> [n, D]` with their `sources`, resuming from the last checkpoint.

    Work in progress lives in `<output>.partial.f32` (raw rows) and `<output>.partial.jsonl`
    (sources). Both are append-only and written in the same order, so after a crash the entries
    present in both are complete. A run resumes when those entries' sources are the start of its
    own: images can be added to the end of the list, or one that failed can be moved away.
    """
    total = len(sources)
    if total == 0:
        raise InputError("nothing to build the cache from: no images or embedding rows were given")
    output = Path(output)
    rows_path, sources_tmp = output.with_name(output.name + ".partial.f32"), output.with_name(output.name + ".partial.jsonl")
    done = _resume(rows_path, sources_tmp, sources, dim)

    bar = tqdm(total=total, initial=done, desc="building cache", unit="entry", disable=not progress)
    with bar, open(rows_path, "ab") as rows_file, open(sources_tmp, "a", encoding="utf-8") as sources_file:
        since_checkpoint = 0
        for start in range(done, total, batch_size):
            stop = min(start + batch_size, total)
            rows_file.write(_unit_rows(read(start, stop), stop - start, dim, start).tobytes())
            sources_file.writelines(json.dumps({"source": name}) + "\n" for name in sources[start:stop])
            since_checkpoint += stop - start
            bar.update(stop - start)
            if since_checkpoint >= checkpoint_every:
                _sync(rows_file, sources_file)
                since_checkpoint = 0
        _sync(rows_file, sources_file)

    # Finish: one flat inner-product index (exact; shrink it with `compact_index`), then the sidecar.
    index = faiss.IndexFlatIP(dim)
    index.add(np.fromfile(rows_path, dtype=np.float32).reshape(total, dim))  # [total, D]
    tmp = output.with_name(output.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, output)
    os.replace(sources_tmp, sources_path(output))
    rows_path.unlink()
    return output


def _unit_rows(vectors: np.ndarray, expected: int, dim: int, start: int) -> np.ndarray:
    """Check a batch of embeddings [n, D] and scale each row to unit norm (the cache's contract)."""
    if vectors.shape != (expected, dim):
        raise InputError(f"entries {start}..{start + expected - 1}: expected embeddings [{expected}, {dim}], got {vectors.shape}")
    vectors = vectors.astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # [n, 1]
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0))
    if bad.size:
        raise InputError(f"entry {start + bad[0]} has a zero or non-finite embedding")
    return vectors / norms


def _resume(rows_path: Path, sources_tmp: Path, sources: Sequence[str | None], dim: int) -> int:
    """How many entries an earlier run finished; both partial files are cut back to that many."""
    if not sources_tmp.is_file():
        rows_path.unlink(missing_ok=True)
        return 0
    with open(sources_tmp, encoding="utf-8") as f:
        lines = [line for line in f if line.endswith("\n")]  # a torn last line is dropped
    done = min(rows_path.stat().st_size // (4 * dim) if rows_path.is_file() else 0, len(lines))
    for entry, line in enumerate(lines[:done]):
        if entry >= len(sources) or json.loads(line)["source"] != sources[entry]:
            now = sources[entry] if entry < len(sources) else "nothing"
            raise InputError(
                f"{sources_tmp} is an unfinished build with other inputs (entry {entry} was {json.loads(line)['source']!r}, "
                f"now {now!r}): pass the same inputs to resume, or delete {sources_tmp.name} to start over"
            )
    with open(rows_path, "ab") as f:
        f.truncate(done * 4 * dim)
    with open(sources_tmp, "w", encoding="utf-8") as f:
        f.writelines(lines[:done])
    if done:
        logger.info("resuming the cache build at entry %d of %d", done, len(sources))
    return done


def _sync(*files) -> None:
    for f in files:
        f.flush()
        os.fsync(f.fileno())


# our name -> faiss factory code of the IVF lists' codes. "SQ7" is built by hand (see `_compact_sq7`).
CODECS = {"SQ7": None, "SQ8": "SQ8", "SQ6": "SQ6", "SQ4": "SQ4", "fp16": "SQfp16"}


def compact(
    index: "faiss.Index",
    *,
    codec: str = "SQ8",
    nlist: int | None = None,
    nprobe: int = 32,
    train_size: int | None = None,
    k_factor: int = 32,
    batch_size: int = 65536,
    progress: bool = True,
) -> "faiss.Index":
    """Re-encode a cache index as IVF with compressed codes; entry ids stay the same.

    codec: "SQ8" (the default: 8 bits a dimension, 0.253x the RAM of fp32 with faiss's 8-byte ids
    counted, top-10 recall 0.98), "SQ7" (7 bits, 0.238x, recall 0.96 on in-distribution queries
    but much worse than SQ8 for queries far from every entry, e.g. audio or text against image
    features, the cache's main use: recall 0.37 vs 0.85 in a synthetic test), "SQ6" (0.19x,
    recall 0.93), "SQ4" or "fp16"; measured on 1M clustered vectors by benchmarks/bench_cache.py.
    nlist defaults to sqrt(n) rounded to a power of two; the coarse quantizer (and the codes' ranges)
    are trained on `train_size` vectors (39 * nlist by default, faiss's minimum without a warning).
    k_factor (SQ7 only, saved in the file): candidates re-scored on the 7-bit codes per neighbour
    asked for; more cost ~1 us each per query.
    """
    if codec not in CODECS:
        raise InputError(f"codec={codec!r} is not one of {', '.join(CODECS)}")
    if k_factor < 1:
        raise InputError(f"k_factor={k_factor} must be at least 1")
    total = index.ntotal
    nlist = nlist or 2 ** round(np.log2(np.sqrt(total)))
    if total < nlist:
        raise InputError(f"nlist={nlist} is larger than the cache ({total} entries)")
    train_size = min(total, train_size or 39 * nlist)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # an IVF source gives back vectors by id only through a direct map

    sample = np.sort(np.random.default_rng(0).choice(total, train_size, replace=False))  # [train_size]
    sample = index.reconstruct_batch(sample)  # [train_size, D]
    batches = tqdm(range(0, total, batch_size), desc="compacting cache", unit="batch", disable=not progress)
    read = (index.reconstruct_n(start, min(batch_size, total - start)) for start in batches)  # [batch, D] each, in id order
    if codec == "SQ7":
        out = _compact_sq7(sample, read, nlist, k_factor)
    else:
        # Inner product on unit vectors: scores are the similarities, whatever the source metric was.
        out = faiss.index_factory(index.d, f"IVF{nlist},{CODECS[codec]}", faiss.METRIC_INNER_PRODUCT)
        out.train(sample)
        for vectors in read:
            out.add(vectors)  # ids continue in order
    faiss.extract_index_ivf(out).nprobe = nprobe  # saved in the file
    return out


def _compact_sq7(sample: np.ndarray, batches, nlist: int, k_factor: int) -> "faiss.Index":
    """SQ7: every entry as 7 bits a dimension (uniform between the sample's per-dimension min and max),
    found through a small IVF index of 4-bit PQ codes.

    Faiss has 4-, 6- and 8-bit scalar quantizers, and 8 bits for all 1024 dimensions plus the 8-byte
    id an IVF list keeps for each entry is just over a quarter of fp32. So the codes live in a flat
    `IndexPQ` with one dimension per sub-quantizer and 128 evenly spaced centroids (a 7-bit scalar
    quantizer; no ids: an entry's id is its position), which faiss decodes and scores by itself; we
    only write the codes, since faiss's own PQ encoder is ~1 ms a vector at this size. The IVF index
    (`IVF{nlist},PQ{d/8}x4fs`, 64 + 8 bytes an entry at 1024-d) proposes `k_factor * k`
    candidates, which `IndexRefine` re-scores on the 7-bit codes: scores are exact inner products
    with the vectors given back.
    """
    dim = sample.shape[1]
    low, high = sample.min(axis=0), sample.max(axis=0)  # [D] each
    step = np.maximum(high - low, 1e-6) / 128  # [D]
    codes = faiss.IndexPQ(dim, dim, 7, faiss.METRIC_INNER_PRODUCT)
    centroids = low[:, None] + (np.arange(128) + 0.5) * step[:, None]  # [D, 128]: sub-quantizer j is dimension j
    faiss.copy_array_to_vector(centroids.astype(np.float32).ravel(), codes.pq.centroids)
    codes.is_trained = True
    sub = max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)  # 128 at 1024-d: 8 dims a sub-quantizer
    candidates = faiss.index_factory(dim, f"IVF{nlist},PQ{sub}x4fs", faiss.METRIC_INNER_PRODUCT)
    candidates.train(sample)
    for vectors in batches:
        candidates.add(vectors)
        codes.add_sa_codes(_sq7_codes(vectors, low, step))
    out = faiss.IndexRefine(candidates, codes)
    out.own_fields = True  # `out` frees both; Python must not (it would free them when this returns)
    candidates.this.disown()
    codes.this.disown()
    out.k_factor = k_factor
    return out


def _sq7_codes(vectors: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """[n, D] -> [n, 7 * D / 8] bytes: each dimension's nearest of the 128 centroids (index floor((x - low) / step),
    clipped), packed 7 bits after 7 bits, least significant first, as faiss's PQ codes are."""
    nearest = np.clip(np.floor((vectors - low) / step), 0, 127).astype(np.uint8)  # [n, D]
    bits = np.unpackbits(nearest[..., None], axis=-1, count=7, bitorder="little")  # [n, D, 7]
    return np.packbits(bits.reshape(len(vectors), -1), axis=1, bitorder="little")  # [n, ceil(7 D / 8)]


def compact_index(source: str | os.PathLike, output: str | os.PathLike, *, dim: int = EMBED_DIM, **options) -> Path:
    """`compact` from file to file, copying the sources sidecar; options as for `compact`."""
    # The source passes the load-time checks; it is mapped from disk, not read into RAM.
    cache = VisualCache.from_index(source, dim=dim, mmap=True)
    index = compact(cache.index, **options)
    output = Path(output)
    tmp = output.with_name(output.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, output)
    if cache.sources is not None:  # ids are kept, so the sidecar is valid as it is
        shutil.copyfile(sources_path(source), sources_path(output))
    return output

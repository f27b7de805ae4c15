"""Visual cache: the original flat search vs the compact IVF index, in one run.

Synthetic data shaped like image features: unit 1024-d vectors in clusters grouped into topics
(vectors of one cluster have cosine ~0.6 with each other). Measures, for the same queries:
- original: exact flat inner-product search, then `reconstruct` per neighbour in a Python loop
  (as the original demo does), then the section 8 blend;
- flat: `VisualCache` on the same flat index (one search that also gives back the vectors);
- compact: `VisualCache` on `demo.weights_tools.cache.compact(...)`, saved and loaded back like a user would.
Targets for the compact cache: RAM <= 1/4 of flat fp32, top-10 recall >= 0.95 against exact
search, cosine of the blended embedding to the exact one >= 0.999, single-query latency <= 10 ms.

    .venv/bin/python -m benchmarks.bench_cache                     # 1M vectors, two codecs, ~5 min on 2 cores
    .venv/bin/python -m benchmarks.bench_cache --n 200000 --codecs SQ8 SQ6 SQ4 fp16 "PQ128x4fs,Refine(SQ8)"

RAM is the size of the index file: faiss reads an index into memory whole.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from demo.cache import VisualCache
from demo.weights_tools.cache import compact

CHUNK = 65536  # vectors generated (and added) at a time, to keep RAM near one copy of the data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="cache entries (default 1M; the official cache has ~3M)")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=200, help="queries for recall, cosine and compact latency")
    parser.add_argument("--original-queries", type=int, default=10, help="queries timed on the slow flat paths")
    parser.add_argument("--codecs", nargs="+", default=["SQ8", "PQ128x4fs,Refine(SQ8)"],
                        help="compact codecs to measure: SQ8 SQ6 SQ4 fp16 or faiss factory codes (default: %(default)s)")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: sqrt(n) as a power of two)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 32], help="IVF lists searched per query, one row each")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--temperature", type=float, default=20.0)
    parser.add_argument("--weight", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


class ClusteredData:
    """Unit vectors around cluster centres, clusters around topics; chunk i is always the same."""

    def __init__(self, dim: int, n_clusters: int, seed: int):
        rng = np.random.default_rng(seed)
        topics = _unit(rng.standard_normal((max(1, n_clusters // 10), dim)))  # [T, D]
        parents = rng.integers(len(topics), size=n_clusters)  # [C]
        self.centers = _unit(topics[parents] + 0.8 * _unit(rng.standard_normal((n_clusters, dim))))  # [C, D]
        self.dim, self.seed = dim, seed

    def chunk(self, index: int, size: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, index))
        members = rng.integers(len(self.centers), size=size)  # [n]
        noise = _unit(rng.standard_normal((size, self.dim), dtype=np.float32))  # [n, D]
        return _unit(self.centers[members] + 0.8 * noise).astype(np.float32)  # [n, D]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def reference_blend(query: np.ndarray, sims: np.ndarray, neighbours: np.ndarray, t: float, w: float) -> np.ndarray:
    """Section 8 for one query [D], its sims [k] and neighbour vectors [k, D], in float64."""
    a = np.exp(t * (sims - sims.max()))
    a /= a.sum()  # [k]
    r = _unit(a @ neighbours)  # [D]
    return _unit((1 - w) * query + w * r)  # [D]


def original(index: "faiss.Index", query: np.ndarray, k: int, t: float, w: float) -> tuple[np.ndarray, np.ndarray]:
    """The original demo's path: search, then one `reconstruct` per neighbour in Python: (ids, v')."""
    sims, ids = index.search(query[None], k)  # [1, k]
    neighbours = np.vstack([index.reconstruct(int(i)) for i in ids[0]])  # [k, D]
    return ids[0], reference_blend(query.astype(np.float64), sims[0].astype(np.float64), neighbours.astype(np.float64), t, w)


def agreement(ids: list[np.ndarray], blended: list[np.ndarray], exact_ids: np.ndarray, exact: np.ndarray) -> tuple[float, float, float]:
    """Top-k recall against exact search, and min and mean cosine of v' to the exact v', over the queries given."""
    recall = np.mean([len(set(i) & set(e)) / len(e) for i, e in zip(ids, exact_ids)])
    cosine = np.array([float(np.dot(v, e)) for v, e in zip(blended, exact)])  # both unit
    return recall, cosine.min(), cosine.mean()


def timed(fn, items) -> tuple[list, np.ndarray]:
    """Call fn on each item alone; return the results and the latencies in ms."""
    results, ms = [], []
    for item in items:
        start = time.perf_counter()
        results.append(fn(item))
        ms.append(1e3 * (time.perf_counter() - start))
    return results, np.array(ms)


def measure_compact(path: Path, codec: str, nprobes: list[int], scale: float, flat: "faiss.Index", queries: np.ndarray, exact_ids: np.ndarray, exact: np.ndarray, options: dict) -> list[tuple]:
    """Load a compact index as a user would; one report row per nprobe (see `main`)."""
    cache = VisualCache.from_index(path, dim=queries.shape[1])
    ivf = faiss.extract_index_ivf(cache.index)
    # Ids kept and vectors given back near unit: entry i decodes close to the flat entry i.
    ivf.make_direct_map()
    sample = np.random.default_rng(1).choice(flat.ntotal, min(10_000, flat.ntotal), replace=False)  # [S]
    decoded, original = cache.index.reconstruct_batch(sample), flat.reconstruct_batch(sample)  # [S, D] each
    norms, cosines = np.linalg.norm(decoded, axis=1), np.sum(decoded * original, axis=1) / np.linalg.norm(decoded, axis=1)
    print(f"{codec}: {len(sample):,} decoded entries: norm {norms.min():.4f}..{norms.max():.4f}, cosine to the flat entry of the same id min {cosines.min():.4f}")
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    rows = []
    for nprobe in nprobes:
        ivf.nprobe = nprobe
        results, ms = timed(lambda q: cache.retrieve(torch.from_numpy(q), **options), queries)
        scores = agreement([r.ids[0] for r in results], [r.embedding.numpy() for r in results], exact_ids, exact)
        # 3M proxy: the same fraction of lists over `scale` x the entries scans `scale` x the codes,
        # as `scale` x nprobe does here (possible only while that many lists exist).
        ms3 = None
        if round(scale * nprobe) <= ivf.nlist:
            ivf.nprobe = round(scale * nprobe)
            _, ms3 = timed(lambda q: cache.retrieve(torch.from_numpy(q), **options), queries)
        rows.append((f"IVF{ivf.nlist},{codec} nprobe={nprobe}", path.stat().st_size, *scores, ms, ms3))
    return rows


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    options = dict(k=args.k, temperature=args.temperature, weight=args.weight)
    print(f"{args.n:,} x {args.dim}-d unit vectors, {args.threads} threads, k={args.k} t={args.temperature} w={args.weight}")

    # 1. Data: the flat index is the one copy of the vectors in RAM
    start = time.perf_counter()
    data = ClusteredData(args.dim, max(1, args.n // 100), args.seed)
    flat = faiss.IndexFlatIP(args.dim)
    for i, lo in enumerate(range(0, args.n, CHUNK)):
        flat.add(data.chunk(i, min(CHUNK, args.n - lo)))
    queries = data.chunk(2**31, args.queries)  # [Q, D], a chunk no cache entry came from
    print(f"data: {time.perf_counter() - start:.0f} s")

    # 2. Ground truth: exact top-k and the exact blend (float64) for every query
    exact_sims, exact_ids = flat.search(queries, args.k)  # [Q, k]
    exact = np.stack([
        reference_blend(q.astype(np.float64), s.astype(np.float64), flat.reconstruct_batch(i).astype(np.float64), args.temperature, args.weight)
        for q, s, i in zip(queries, exact_sims, exact_ids)
    ])  # [Q, D]
    print(f"query top-1 similarity {exact_sims[:, 0].mean():.3f}, top-{args.k} {exact_sims[:, -1].mean():.3f} (means)")

    # 3. The flat paths, timed on a few queries (each scans all n vectors)
    few = queries[: args.original_queries]
    original_out, original_ms = timed(lambda q: original(flat, q, args.k, args.temperature, args.weight), few)
    flat_cache = VisualCache(flat, dim=args.dim)
    flat_out, flat_ms = timed(lambda q: flat_cache.retrieve(torch.from_numpy(q), **options), few)
    flat_bytes = args.n * args.dim * 4
    scale = 3_000_000 / args.n
    rows = [
        ("original (flat, reconstruct loop)", flat_bytes, *agreement([ids for ids, _ in original_out], [v for _, v in original_out], exact_ids, exact), original_ms, original_ms * scale),
        ("flat, VisualCache", flat_bytes, *agreement([r.ids[0] for r in flat_out], [r.embedding.numpy() for r in flat_out], exact_ids, exact), flat_ms, flat_ms * scale),
    ]

    # 4. Each compact codec: build, save, load back through VisualCache.from_index, measure per nprobe
    with tempfile.TemporaryDirectory() as tmp:
        for codec in args.codecs:
            start = time.perf_counter()
            index = compact(flat, codec=codec, nlist=args.nlist, progress=False)
            print(f"{codec}: compacted in {time.perf_counter() - start:.0f} s")
            path = Path(tmp, f"{codec}.index")
            faiss.write_index(index, str(path))
            del index
            rows += measure_compact(path, codec, args.nprobe, scale, flat, queries, exact_ids, exact, options)

    # 5. Report, with the targets each row misses
    print(f"\n{'path':<34} {'RAM MB':>7} {'RAM/flat':>8} {'recall':>6} {'cos min':>8} {'cos mean':>8} {'p50 ms':>7} {'p95 ms':>7} {'speedup':>7} {'3M p50':>7}  misses")
    for name, size, recall, cos_min, cos_mean, ms, ms3 in rows:
        ms3 = np.median(ms3) if ms3 is not None else np.nan
        targets = {"RAM": size / flat_bytes <= 0.25, "recall": recall >= 0.95, "cosine": cos_mean >= 0.999, "latency": np.median(ms) <= 10, "3M latency": not ms3 > 10}
        print(
            f"{name:<34} {size / 1e6:>7.0f} {size / flat_bytes:>8.3f} {recall:>6.3f} {cos_min:>8.5f} {cos_mean:>8.5f} {np.median(ms):>7.2f} "
            f"{np.percentile(ms, 95):>7.2f} {np.median(original_ms) / np.median(ms):>6.0f}x {ms3:>7.2f}  {', '.join(k for k, ok in targets.items() if not ok) or '-'}"
        )
    print(
        f"\nTargets: RAM/flat <= 0.25, recall >= 0.95, mean cosine >= 0.999, p50 <= 10 ms. Flat rows: {len(few)} queries, the others {len(queries)}.\n"
        f"3M entries: flat fp32 {flat_bytes * scale / 1e9:.1f} GB; RAM of each compact row x{scale:.0f}. '3M p50' times the flat paths "
        f"x{scale:.0f} (a linear scan) and the compact ones at {scale:.0f}x nprobe (the same fraction of lists over {scale:.0f}x the entries; nan where there are too few lists)."
    )


if __name__ == "__main__":
    main()

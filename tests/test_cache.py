"""The visual cache: section 8 against plain NumPy, compact vs flat, building, files, errors."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from demo.cache import (
    CacheConfig,
    VisualCache,
    build_from_embeddings,
    build_from_images,
    compact,
    compact_index,
    sources_path,
)
from demo.errors import InputError, WeightsError

D = 32  # a small embedding size keeps every test well under a second


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors [n, D] around a few centres, like image features."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, D)))
    return unit(centres[rng.integers(clusters, size=n)] + 0.5 * unit(rng.standard_normal((n, D)))).astype(np.float32)


def flat_index(vectors: np.ndarray, metric: int = faiss.METRIC_INNER_PRODUCT) -> faiss.Index:
    index = faiss.IndexFlat(vectors.shape[1], metric)
    index.add(vectors)
    return index


def numpy_blend(cache: np.ndarray, v: np.ndarray, k: int, t: float, w: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Section 8 written out independently, exhaustive search, float64: (v', ids, sims)."""
    sims = cache.astype(np.float64) @ v  # [N]
    ids = np.argsort(-sims)[:k]  # [k]
    a = np.exp(t * sims[ids] - np.max(t * sims[ids]))
    a /= a.sum()
    r = a @ cache[ids]
    r /= np.linalg.norm(r)
    out = (1 - w) * v + w * r
    return out / np.linalg.norm(out), ids, sims[ids]


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
@pytest.mark.parametrize("k, t, w", [(10, 20.0, 0.5), (1, 20.0, 0.5), (5, 0.0, 0.3), (7, 100.0, 1.0), (3, 5.0, 0.0)])
def test_formula_matches_numpy(metric, k, t, w):
    vectors = clustered(300)
    cache = VisualCache(flat_index(vectors, metric), dim=D)
    queries = clustered(4, seed=1) * np.array([[1.0], [1.0], [0.5], [3.0]], dtype=np.float32)  # some not unit
    result = cache.retrieve(torch.from_numpy(queries), k=k, temperature=t, weight=w)
    for b, v in enumerate(queries.astype(np.float64)):
        expected, ids, sims = numpy_blend(vectors, v, k, t, w)
        np.testing.assert_array_equal(result.ids[b], ids)
        np.testing.assert_allclose(result.similarities[b], sims, atol=1e-5)  # L2 scores converted back
        np.testing.assert_allclose(result.embedding[b].numpy(), expected, atol=1e-5)
        np.testing.assert_allclose(result.attention[b].sum(), 1.0, atol=1e-6)


def test_single_query_keeps_shape_dtype_and_reports_sources():
    vectors = clustered(50)
    cache = VisualCache(flat_index(vectors), sources=[f"img{i}.jpg" for i in range(50)], dim=D)
    query = torch.from_numpy(vectors[7]).half()
    result = cache.retrieve(query, k=3)
    assert result.embedding.shape == (D,) and result.embedding.dtype == torch.float16
    assert result.ids.shape == result.similarities.shape == result.attention.shape == (1, 3)
    assert result.ids[0, 0] == 7 and result.sources[0][0] == "img7.jpg"
    assert result.sources[0] == [f"img{i}.jpg" for i in result.ids[0]]


# SQ7 in 32-d: its 4-bit candidate index has 4 sub-quantizers (16 bits an entry), far coarser than
# the 128 it has at 1024-d, so here every entry is a candidate (k_factor 400 x k 10 = 4000) and what
# is tested is the 7-bit codes and their plumbing; the candidate stage is measured at 1024-d by
# benchmarks/bench_cache.py. 7 bits in 32-d lose a few near-ties more than 8 do.
@pytest.mark.parametrize("codec, options, min_recall", [("SQ7", dict(k_factor=400), 0.93), ("SQ8", {}, 0.95)])
def test_compact_agrees_with_flat(codec, options, min_recall):
    vectors = clustered(4000)
    flat = VisualCache(flat_index(vectors), dim=D)
    # Every list visited: what is left is the quantisation error.
    small = VisualCache(compact(flat.index, codec=codec, nlist=16, nprobe=16, progress=False, **options), dim=D)
    queries = torch.from_numpy(clustered(50, seed=2))
    exact, approx = flat.retrieve(queries), small.retrieve(queries)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids, exact.ids)])
    cosine = (exact.embedding * approx.embedding).sum(dim=1)
    assert recall >= min_recall
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.99  # one swapped neighbour costs ~0.004 in 32-d
    assert small.index.ntotal == flat.index.ntotal


def test_compact_round_trip_keeps_ids_and_settings(tmp_path):
    vectors = clustered(3000, seed=4)
    # SQ7, the codec with the most hand-written parts; trained on every entry, as a value outside the
    # training sample's range is clipped (like faiss's SQ ranges), which with a 312-vector sample can
    # cost one entry 2% of its norm.
    index = compact(flat_index(vectors), codec="SQ7", nlist=8, nprobe=5, train_size=len(vectors), progress=False)
    assert isinstance(faiss.downcast_index(index), faiss.IndexRefine)
    faiss.write_index(index, str(tmp_path / "c.index"))
    loaded = VisualCache.from_index(tmp_path / "c.index", dim=D)  # passes the load-time probe
    assert faiss.extract_index_ivf(loaded.index).nprobe == 5 and faiss.downcast_index(loaded.index).k_factor == 32
    # Entry i decodes to (nearly) vector i: ids are kept, and the vectors stay unit within the probe's tolerance.
    decoded = loaded.index.reconstruct_n(0, len(vectors))
    assert np.all(np.abs(np.linalg.norm(decoded, axis=1) - 1) < 0.01)
    cosine = np.sum(decoded * vectors, axis=1) / np.linalg.norm(decoded, axis=1)
    assert cosine.min() > 0.998
    np.testing.assert_array_equal(np.argmax(decoded @ vectors.T, axis=1), np.arange(len(vectors)))
    # Saved and loaded, the index answers as it did; scores are inner products with the vectors given back.
    queries = clustered(20, seed=5)
    before, after = index.search(queries, 10), loaded.index.search(queries, 10)
    np.testing.assert_array_equal(before[1], after[1])
    result = loaded.retrieve(torch.from_numpy(queries))
    np.testing.assert_allclose(result.similarities, np.einsum("bkd,bd->bk", decoded[result.ids], queries), atol=1e-5)


def test_sq7_codes_are_faiss_codes():
    # We write the 7-bit codes ourselves (faiss's PQ encoder is slow); faiss must read them as its own.
    vectors = clustered(500, seed=6)
    index = faiss.downcast_index(compact(flat_index(vectors), codec="SQ7", nlist=4, progress=False))
    codes = faiss.downcast_index(index.refine_index)
    stored = faiss.vector_to_array(codes.codes).reshape(len(vectors), codes.code_size)
    np.testing.assert_array_equal(stored, codes.sa_encode(vectors))


def test_build_from_embeddings_round_trip(tmp_path):
    rows = clustered(30) * 3.0  # not unit: the build normalises
    np.save(tmp_path / "a.npy", rows[:29])
    np.save(tmp_path / "b.npy", rows[29])  # a single [D] embedding
    files = [tmp_path / "a.npy", tmp_path / "b.npy"]
    out = build_from_embeddings(files, tmp_path / "cache.index", dim=D, batch_size=4, checkpoint_every=8, progress=False)

    cache = VisualCache.from_index(out, dim=D)
    np.testing.assert_allclose(cache.index.reconstruct_n(0, 30), unit(rows), atol=1e-6)
    assert cache.sources[0] == f"{files[0]}[0]" and cache.sources[29] == f"{files[1]}[0]"
    assert not list(tmp_path.glob("*.partial*"))

    # Compacting keeps ids and copies the sidecar; the result loads with the same sources.
    small = VisualCache.from_index(compact_index(out, tmp_path / "small.index", dim=D, codec="fp16", nlist=2, nprobe=2, progress=False), dim=D)
    assert small.sources == cache.sources
    assert small.retrieve(torch.from_numpy(rows[5]), k=1).sources == [[f"{files[0]}[5]"]]
    assert VisualCache.from_index(out, dim=D, mmap=True).index.ntotal == 30


def test_build_from_embeddings_with_captions(tmp_path):
    np.save(tmp_path / "a.npy", clustered(3))
    captions = ["a dog\non grass", "https://example.com/x.jpg", None]  # newlines survive JSONL
    out = build_from_embeddings([tmp_path / "a.npy"], tmp_path / "c.index", sources=captions, dim=D, progress=False)
    assert VisualCache.from_index(out, dim=D).sources == captions
    assert len(sources_path(out).read_text().splitlines()) == 3


def fake_encoder(calls: list[list[str]], fail_after: int | None = None):
    """encode_images stand-in: a fixed vector per path name; optionally crashes after some calls."""

    def encode(paths: list[str]) -> np.ndarray:
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated crash")
        calls.append(paths)
        return np.stack([np.random.default_rng(int(p.split("_")[-1].split(".")[0])).standard_normal(D) for p in paths])

    return encode


def test_build_from_images_resumes_after_a_crash(tmp_path):
    paths = [str(tmp_path / f"img_{i}.jpg") for i in range(20)]
    out = tmp_path / "cache.index"
    calls: list[list[str]] = []
    with pytest.raises(KeyboardInterrupt):
        build_from_images(paths, fake_encoder(calls, fail_after=3), out, dim=D, batch_size=4, checkpoint_every=4, progress=False)
    assert not out.exists() and len(calls) == 3

    calls.clear()
    build_from_images(paths, fake_encoder(calls), out, dim=D, batch_size=4, checkpoint_every=4, progress=False)
    assert calls[0][0] == paths[12]  # the 12 entries written before the crash are not encoded again

    calls.clear()
    build_from_images(paths, fake_encoder(calls), tmp_path / "once.index", dim=D, batch_size=4, progress=False)
    resumed, once = VisualCache.from_index(out, dim=D), VisualCache.from_index(tmp_path / "once.index", dim=D)
    np.testing.assert_array_equal(resumed.index.reconstruct_n(0, 20), once.index.reconstruct_n(0, 20))
    assert resumed.sources == once.sources == paths


def test_resume_with_other_inputs_is_refused_but_appending_is_fine(tmp_path):
    paths = [str(tmp_path / f"img_{i}.jpg") for i in range(8)]
    with pytest.raises(KeyboardInterrupt):
        build_from_images(paths, fake_encoder([], fail_after=2), tmp_path / "c.index", dim=D, batch_size=2, progress=False)
    for other in (paths[:3], paths[1:] + paths[:1]):  # fewer images than were done; another order
        with pytest.raises(InputError, match="other inputs"):
            build_from_images(other, fake_encoder([]), tmp_path / "c.index", dim=D, batch_size=2, progress=False)
    calls: list[list[str]] = []
    more = paths + [str(tmp_path / "img_8.jpg")]
    build_from_images(more, fake_encoder(calls), tmp_path / "c.index", dim=D, batch_size=2, progress=False)
    assert calls[0][0] == paths[4] and VisualCache.from_index(tmp_path / "c.index", dim=D).sources == more


def test_build_input_errors(tmp_path):
    np.save(tmp_path / "wrong.npy", np.ones((3, D + 1), np.float32))
    with pytest.raises(InputError, match="wrong.npy"):
        build_from_embeddings([tmp_path / "wrong.npy"], tmp_path / "c.index", dim=D, progress=False)
    np.save(tmp_path / "zero.npy", np.zeros((2, D), np.float32))
    with pytest.raises(InputError, match="entry 0"):
        build_from_embeddings([tmp_path / "zero.npy"], tmp_path / "z.index", dim=D, progress=False)
    (tmp_path / "text.npy").write_text("not an array")
    with pytest.raises(InputError, match="text.npy"):
        build_from_embeddings([tmp_path / "text.npy"], tmp_path / "t.index", dim=D, progress=False)
    with pytest.raises(InputError, match="shape|expected"):
        build_from_images(["x_1.jpg"], lambda paths: np.ones((1, D + 1)), tmp_path / "i.index", dim=D, progress=False)


def test_load_errors(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        VisualCache.from_index(tmp_path / "missing.index")
    (tmp_path / "junk.index").write_bytes(b"not a faiss index")
    with pytest.raises(WeightsError, match="not a readable faiss index"):
        VisualCache.from_index(tmp_path / "junk.index")

    vectors = clustered(40)
    faiss.write_index(flat_index(vectors), str(tmp_path / "ok.index"))
    with pytest.raises(WeightsError, match="32-d.*1024-d"):
        VisualCache.from_index(tmp_path / "ok.index")  # the default dim is ImageBind's 1024
    with pytest.raises(InputError, match="not an IVF index"):
        VisualCache.from_index(tmp_path / "ok.index", dim=D, nprobe=4)
    sources_path(tmp_path / "ok.index").write_text(json.dumps({"source": "only one"}) + "\n")
    with pytest.raises(WeightsError, match="sources"):
        VisualCache.from_index(tmp_path / "ok.index", dim=D)


def id_mapped(vectors: np.ndarray) -> faiss.Index:
    """Custom ids without a reverse map: faiss cannot reconstruct by id."""
    index = faiss.IndexIDMap(faiss.IndexFlatIP(D))
    index.add_with_ids(vectors, np.arange(len(vectors)) + 1000)
    return index


@pytest.mark.parametrize(
    "index, message",
    [
        (flat_index(clustered(40), faiss.METRIC_L1), "metric"),
        (flat_index(clustered(40) * 2.0, faiss.METRIC_L2), "not unit-norm"),  # distances -> sims needs unit vectors
        (id_mapped(clustered(40)), "cannot give back its vectors"),
        (faiss.IndexFlatIP(D), "empty"),
    ],
)
def test_unusable_indexes_are_refused(index, message):
    with pytest.raises(WeightsError, match=message):
        VisualCache(index, dim=D)


def test_non_unit_inner_product_cache_is_used_as_the_original_does(caplog):
    vectors = clustered(40) * 2.0
    with caplog.at_level("WARNING"):
        cache = VisualCache(flat_index(vectors), dim=D)
    assert "not unit-norm" in caplog.text
    query = clustered(1, seed=3)[0].astype(np.float64)
    expected, _, _ = numpy_blend(vectors, query, 10, 20.0, 0.5)
    np.testing.assert_allclose(cache.retrieve(torch.from_numpy(query)).embedding.numpy(), expected, atol=1e-5)


def test_retrieve_input_errors():
    cache = VisualCache(flat_index(clustered(40)), dim=D)
    good = torch.from_numpy(clustered(1)[0])
    for bad in (torch.zeros(D + 1), torch.zeros(2, 3, D), good.numpy(), torch.full((D,), float("nan"))):
        with pytest.raises(InputError):
            cache.retrieve(bad)
    for options in (dict(k=0), dict(k=101), dict(k=2.5), dict(temperature=-1.0), dict(weight=1.5), dict(weight=float("nan"))):
        with pytest.raises(InputError, match=next(iter(options))):
            cache.retrieve(good, **options)
    with pytest.raises(InputError, match="larger than the cache"):
        cache.retrieve(good, k=41)
    assert cache.retrieve(good, k=10.0).ids.shape == (1, 10)  # sliders send floats


def test_cache_off_and_config(tmp_path):
    assert VisualCache.from_config(CacheConfig()) is None  # off by default
    assert (CacheConfig().k, CacheConfig().temperature, CacheConfig().weight) == (10, 20.0, 0.5)
    with pytest.raises(InputError, match="index_path"):
        VisualCache.from_config(CacheConfig(enabled=True))
    with pytest.raises(WeightsError, match="not found"):
        VisualCache.from_config(CacheConfig(enabled=True, index_path=str(tmp_path / "none.index")))
    with pytest.raises(InputError, match="temperature"):
        CacheConfig(temperature=101).check()
    faiss.write_index(flat_index(clustered(40)), str(tmp_path / "ok.index"))
    cache = VisualCache.from_config(CacheConfig(enabled=True, index_path=str(tmp_path / "ok.index")), dim=D)
    assert cache.describe().startswith("on: 40 entries")


def test_command_line_build_and_compact(tmp_path, capsys):
    from weights.cache import main

    np.save(tmp_path / "a.npy", clustered(64))
    (tmp_path / "captions.txt").write_text("".join(f"caption {i}\n" for i in range(64)))
    main(["build", "--embeddings", str(tmp_path / "a.npy"), "--sources", str(tmp_path / "captions.txt"), "-o", str(tmp_path / "c.index"), "--dim", str(D), "--no-progress"])
    main(["compact", str(tmp_path / "c.index"), str(tmp_path / "s.index"), "--nlist", "4", "--dim", str(D), "--no-progress"])
    small = VisualCache.from_index(tmp_path / "s.index", dim=D)
    assert faiss.extract_index_ivf(small.index).nprobe == 32 and small.sources[63] == "caption 63"
    assert isinstance(faiss.downcast_index(small.index), faiss.IndexIVFScalarQuantizer)  # SQ8, the default
    main(["compact", str(tmp_path / "c.index"), str(tmp_path / "q.index"), "--codec", "SQ7", "--nlist", "4", "--dim", str(D), "--no-progress"])
    assert faiss.downcast_index(VisualCache.from_index(tmp_path / "q.index", dim=D).index).k_factor == 32
    with pytest.raises(SystemExit, match="error: .*not found"):
        main(["compact", str(tmp_path / "missing.index"), str(tmp_path / "x.index"), "--no-progress"])

"""The visual cache at run time: section 8 against plain NumPy, loading, files, errors (building: test_weights_tools.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch

from demo.cache import RetrievalSettings, VisualCache, sources_path
from demo.errors import InputError, WeightsError

ROOT = Path(__file__).resolve().parents[1]
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
    assert VisualCache.from_config(RetrievalSettings()) is None  # off by default
    assert (RetrievalSettings().k, RetrievalSettings().temperature, RetrievalSettings().weight) == (10, 20.0, 0.5)
    with pytest.raises(InputError, match="index_path"):
        VisualCache.from_config(RetrievalSettings(enabled=True))
    with pytest.raises(WeightsError, match="not found"):
        VisualCache.from_config(RetrievalSettings(enabled=True, index_path=str(tmp_path / "none.index")))
    with pytest.raises(InputError, match="temperature"):
        RetrievalSettings(temperature=101).check()
    faiss.write_index(flat_index(clustered(40)), str(tmp_path / "ok.index"))
    cache = VisualCache.from_config(RetrievalSettings(enabled=True, index_path=str(tmp_path / "ok.index")), dim=D)
    assert cache.describe().startswith("on: 40 entries")


def test_faiss_is_imported_only_when_a_cache_is_used():
    # The cache is optional: the app and a pipeline without one start without loading faiss (~0.3 s, 100 MB of libraries).
    code = (
        "import sys, app\n"
        "from demo.pipeline import ImageBindLLMPipeline\n"
        "pipe = ImageBindLLMPipeline.from_pretrained('tiny')\n"
        "assert pipe.cache is None and 'faiss' not in sys.modules, sorted(m for m in sys.modules if 'faiss' in m)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

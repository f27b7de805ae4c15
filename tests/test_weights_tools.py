"""The weights tools: download table, size checks, offline errors, conversion CLI, building and compacting caches."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch
from test_cache import D, clustered, flat_index, unit  # the cache tests' small vectors

from demo.cache import VisualCache, sources_path
from demo.errors import InputError, WeightsError
from demo.weights_tools import convert as convert_cli
from demo.weights_tools import download
from demo.weights_tools.cache import build_from_embeddings, build_from_images, compact, compact_index


def test_every_group_names_known_files():
    for keys in download.GROUPS.values():
        assert set(keys) <= set(download.FILES)
    for item in download.FILES.values():
        assert (item.url is None) != (item.repo_id is None), item.key


def test_size_check_catches_partial_files(tmp_path):
    path = tmp_path / "7B.pth"
    path.write_bytes(b"x" * 10)
    download.check_size(path, 10)
    with pytest.raises(WeightsError, match="incomplete.*again to resume"):
        download.check_size(path, 11)


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    with pytest.raises(WeightsError, match="copy it to the --dest folder as 7B.pth"):
        download.download_hub(download.FILES["adapter"], tmp_path)


def test_list_and_help(capsys):
    assert download.main(["--list", "--dest", "d"]) == 0
    assert "knn.index" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        download.main(["--help"])
    assert "Groups:" in capsys.readouterr().out


def test_convert_cli(tmp_path, tiny_release, capsys):
    code = convert_cli.main([
        "--base", str(tiny_release.llama_dir), "--adapter", str(tiny_release.adapter), "--delta", str(tiny_release.delta_dir),
        "--out", str(tmp_path / "out"), "--dtype", "float32",
    ])
    assert code == 0
    assert json.loads((tmp_path / "out" / "imagebind_llm.json").read_text())["format_version"] == 1
    assert "ibllm app --weights" in capsys.readouterr().out


def test_convert_cli_reports_errors(tmp_path, tiny_release, capsys):
    code = convert_cli.main(["--base", str(tmp_path), "--adapter", str(tiny_release.adapter), "--out", str(tmp_path / "o")])
    assert code == 1
    assert "neither a Meta-format LLaMA" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Visual caches: building and compacting (demo/weights_tools/cache.py)


# A Refine codec in 32-d: its 4-bit candidate index has 4 sub-quantizers (16 bits an entry), far coarser
# than the 128 it has at 1024-d, so here every entry is a candidate (k_factor 400 x k 10 = 4000) and what
# is tested is the plumbing; the candidate stage is measured at 1024-d by benchmarks/bench_cache.py.
@pytest.mark.parametrize("codec, options", [("SQ8", {}), ("PQ4x4fs,Refine(SQ8)", dict(k_factor=400))])
def test_compact_agrees_with_flat(codec, options):
    vectors = clustered(4000)
    flat = VisualCache(flat_index(vectors), dim=D)
    # Every list visited: what is left is the quantisation error.
    small = VisualCache(compact(flat.index, codec=codec, nlist=16, nprobe=16, progress=False, **options), dim=D)
    queries = torch.from_numpy(clustered(50, seed=2))
    exact, approx = flat.retrieve(queries), small.retrieve(queries)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.ids, exact.ids)])
    cosine = (exact.embedding * approx.embedding).sum(dim=1)
    assert recall >= 0.95
    assert cosine.mean() >= 0.999 and cosine.min() >= 0.99  # one swapped neighbour costs ~0.004 in 32-d
    assert small.index.ntotal == flat.index.ntotal


def test_compact_round_trip_keeps_ids_and_settings(tmp_path):
    vectors = clustered(3000, seed=4)
    # Trained on every entry, as a value outside the training sample's range is clipped by faiss's
    # SQ ranges, which with a 312-vector sample can cost one entry 2% of its norm.
    index = compact(flat_index(vectors), codec="PQ4x4fs,Refine(SQ8)", nlist=8, nprobe=5, train_size=len(vectors), progress=False)
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


def test_unknown_codec_is_refused():
    with pytest.raises(InputError, match="codec='SQ7' is not one of SQ8"):
        compact(flat_index(clustered(100)), codec="SQ7", nlist=2, progress=False)


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


def test_command_line_build_and_compact(tmp_path, capsys):
    from demo.weights_tools.cache import main

    np.save(tmp_path / "a.npy", clustered(64))
    (tmp_path / "captions.txt").write_text("".join(f"caption {i}\n" for i in range(64)))
    main(["build", "--embeddings", str(tmp_path / "a.npy"), "--sources", str(tmp_path / "captions.txt"), "-o", str(tmp_path / "c.index"), "--dim", str(D), "--no-progress"])
    main(["compact", str(tmp_path / "c.index"), str(tmp_path / "s.index"), "--nlist", "4", "--dim", str(D), "--no-progress"])
    small = VisualCache.from_index(tmp_path / "s.index", dim=D)
    assert faiss.extract_index_ivf(small.index).nprobe == 32 and small.sources[63] == "caption 63"
    assert isinstance(faiss.downcast_index(small.index), faiss.IndexIVFScalarQuantizer)  # SQ8, the default
    main(["compact", str(tmp_path / "c.index"), str(tmp_path / "q.index"), "--codec", "PQ4x4fs,Refine(SQ8)", "--nlist", "4", "--dim", str(D), "--no-progress"])
    assert faiss.downcast_index(VisualCache.from_index(tmp_path / "q.index", dim=D).index).k_factor == 32
    with pytest.raises(SystemExit, match="error: .*not found"):
        main(["compact", str(tmp_path / "missing.index"), str(tmp_path / "x.index"), "--no-progress"])

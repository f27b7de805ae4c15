"""Image output (demo/imagine, ImageBindLLMPipeline.imagine): reference section 13 on hand-made
vectors, then the whole path through a tiny random Stable unCLIP built here (as diffusers' own
fast tests do), saved to a folder and loaded by `from_pretrained(..., unclip_path=)`."""

from __future__ import annotations

import json
import math
import shutil
import threading

import faiss
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from demo.cache import RetrievalSettings, VisualCache
from demo.cancel import CancelToken
from demo.errors import Cancelled, InputError, WeightsError
from demo.imagine import ImageSettings, UnCLIPGenerator
from demo.imagine.embedding import blend_keeping_norm, mix_unnormalised, scaled_embedding
from demo.inputs.registry import load_input
from demo.pipeline import ImageBindLLMPipeline, InputItem
from tiny_unclip import write_tiny_unclip  # tests/tiny_unclip.py: test-only, not in the library

SMALL = dict(steps=2, size=32)  # fast settings for the tiny model


def unit(v):
    return np.asarray(v, dtype=np.float64) / np.linalg.norm(v)


def flat_cache(rows) -> VisualCache:
    rows = np.ascontiguousarray(np.stack([unit(r) for r in rows]), dtype=np.float32)
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    return VisualCache(index, dim=rows.shape[1])


# ---------------------------------------------------------------------------------------------
# Section 13 on hand-made vectors
# ---------------------------------------------------------------------------------------------
def test_point_clouds_are_divided_by_five_and_other_modalities_kept():
    v = torch.tensor([5.0, -10.0, 2.5])
    assert torch.equal(scaled_embedding("point", v), torch.tensor([1.0, -2.0, 0.5]))
    assert torch.equal(scaled_embedding("audio", v), v)


def test_mix_keeps_the_norm_and_divides_weights_by_their_sum():
    a, b = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 6.0, 0.0])  # norms 2 and 6: kept, not normalised
    mix = mix_unnormalised([a, b], [1.0, 3.0])
    total = 4.0 + 1e-6
    assert torch.allclose(mix, torch.tensor([2.0 / total, 18.0 / total, 0.0]), atol=1e-7)


def test_signed_weights_divide_by_the_sum_of_absolute_weights_as_the_text_path():
    a, b = torch.tensor([4.0, 1.0]), torch.tensor([0.0, 2.0])
    mix = mix_unnormalised([a, b], [1.0, -0.5])
    total = 1.5 + 1e-6
    assert torch.allclose(mix, torch.tensor([4.0 / total, (1.0 - 1.0) / total]), atol=1e-7)
    with pytest.raises(InputError, match="cancel out"):
        mix_unnormalised([a, a], [1.0, -1.0])


def test_cache_blend_works_on_the_direction_and_puts_the_norm_back():
    v = torch.tensor([3.0, 4.0, 0.0, 0.0])  # norm 5, direction (0.6, 0.8)
    cache = flat_cache([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    out, result = blend_keeping_norm(v, cache, k=2, temperature=20.0, weight=0.5)
    # By hand: neighbours e2 (sim 0.8) and e1 (sim 0.6); a = softmax(20 * sims); r = normalise(a @ e).
    a2, a1 = 1 / (1 + math.exp(-4)), math.exp(-4) / (1 + math.exp(-4))
    r = unit([a1, a2, 0, 0])
    expected = 5.0 * unit(0.5 * np.array([0.6, 0.8, 0, 0]) + 0.5 * r)
    assert np.allclose(out.numpy(), expected, atol=1e-5)
    assert result.ids[0].tolist() == [1, 0]
    assert math.isclose(float(out.norm()), 5.0, rel_tol=1e-6)


# ---------------------------------------------------------------------------------------------
# The pipeline with a tiny random unCLIP
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def unclip_folder(tmp_path_factory):
    from demo.encoders.encoder import EncoderConfig

    return write_tiny_unclip(tmp_path_factory.mktemp("unclip"), embed_dim=EncoderConfig.preset("tiny").out_dim)


@pytest.fixture(scope="module")
def pipe(unclip_folder):
    return ImageBindLLMPipeline.from_pretrained("tiny", device="cpu", unclip_path=unclip_folder)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    points = rng.uniform(-1, 1, (2048, 3)).astype(np.float32)
    return [InputItem("image", image, 1.0, name="noise.png"), InputItem("point", points, 0.5, name="cube.npy")]


def test_the_unclip_takes_the_encoders_width(pipe):
    assert pipe.image_generator.embed_dim == pipe.embed_dim == pipe.encoder.config.out_dim


def test_pre_normalisation_embedding_is_the_head_output_before_normalise_and_scale(pipe, inputs):
    for item in inputs:
        sample = load_input(item.modality, item.source)
        raw = pipe.encoder.encode_unnormalised(item.modality, sample)
        normalised = pipe.encoder.encode(item.modality, sample)  # image and point: logit scale 1
        assert not math.isclose(float(raw.norm()), 1.0, rel_tol=1e-3)
        assert torch.allclose(F.normalize(raw, dim=0), normalised, atol=1e-5)


def test_pre_normalisation_audio_averages_the_clips_head_outputs(pipe):
    clips = torch.randn(3, 1, 128, 204)  # three 2 s clips of one sound
    encoder = pipe.encoder
    each = [encoder.encode_unnormalised("audio", clip[None]) for clip in clips]
    assert torch.allclose(encoder.encode_unnormalised("audio", clips), torch.stack(each).mean(0), atol=1e-5)
    # One clip: ImageBind's embedding is this one normalised and scaled (audio's logit scale is 20)
    assert torch.allclose(20 * F.normalize(each[0], dim=0), encoder.encode("audio", clips[:1]), atol=1e-4)


def test_image_embedding_follows_section_13(pipe, inputs):
    image, point = (pipe.encoder.encode_unnormalised(i.modality, load_input(i.modality, i.source)) for i in inputs)
    expected = (1.0 * image + 0.5 * point / 5) / (1.5 + 1e-6)
    embedding, mix, neighbours, _ = pipe.image_embedding(inputs)
    assert torch.allclose(embedding, expected, atol=1e-6)
    assert [share for *_, share in mix] == pytest.approx([1 / 1.5, 0.5 / 1.5])
    assert neighbours is None
    # Not the LLM's (unit-norm, per-input normalised) mix
    assert not torch.allclose(F.normalize(embedding, dim=0), F.normalize(pipe.encode(inputs).embedding, dim=0), atol=1e-3)


def test_image_embedding_with_the_cache_keeps_the_mixs_norm(pipe, inputs):
    rng = np.random.default_rng(1)
    cache = flat_cache(rng.normal(size=(8, pipe.embed_dim)))
    cached = ImageBindLLMPipeline(pipe.model, pipe.encoder, cache, engine=pipe.engine, image_generator=pipe.image_generator)
    plain, *_ = pipe.image_embedding(inputs)
    embedding, _, neighbours, _ = cached.image_embedding(inputs, RetrievalSettings(enabled=True, k=3, temperature=20.0, weight=0.5))
    # By hand, from the cache rows the search returned
    u = unit(plain.numpy())
    rows = np.stack([cache.index.reconstruct(int(i)) for i in neighbours.ids[0]]).astype(np.float64)
    sims = rows @ u
    a = np.exp(20 * (sims - sims.max()))
    a /= a.sum()
    expected = np.linalg.norm(plain.numpy()) * unit(0.5 * u + 0.5 * unit(a @ rows))
    assert np.allclose(embedding.numpy(), expected, atol=1e-4)


def test_same_seed_same_image_other_seed_other_image(pipe, inputs):
    first = pipe.imagine(inputs, prompt="a red cube", seed=7, **SMALL)
    again = pipe.imagine(inputs, prompt="a red cube", seed=7, **SMALL)
    other = pipe.imagine(inputs, prompt="a red cube", seed=8, **SMALL)
    assert first.image.size == (32, 32)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))
    assert first.settings.seed == 7 and first.embedding.shape == (pipe.embed_dim,)


def test_no_seed_draws_one_that_replays_the_image(pipe, inputs):
    out = pipe.imagine(inputs, guidance=1.0, **SMALL)  # guidance <= 1: no classifier-free pass
    assert isinstance(out.settings.seed, int)
    again = pipe.imagine(inputs, guidance=1.0, seed=out.settings.seed, **SMALL)
    assert np.array_equal(np.asarray(out.image), np.asarray(again.image))


def test_progress_reports_each_step_and_cancel_stops_between_steps(pipe, inputs):
    seen = []
    pipe.imagine(inputs, steps=3, size=32, seed=0, progress=lambda k, n: seen.append((k, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    token, seen = CancelToken(), []

    def stop_after_first(k, n):
        seen.append(k)
        token.cancel()

    with pytest.raises(Cancelled):
        pipe.imagine(inputs, steps=3, size=32, seed=0, progress=stop_after_first, cancel=token)
    assert seen == [1]


def test_a_request_waiting_for_the_busy_generator_can_be_cancelled(pipe):
    generator, token, raised = pipe.image_generator, CancelToken(), []

    def wait_for_it():
        try:
            generator.generate(torch.zeros(pipe.embed_dim), ImageSettings(steps=2, size=32, seed=0), cancel=token)
        except Cancelled as exc:
            raised.append(exc)

    generator._lock.acquire()  # another image is being made
    try:
        waiter = threading.Thread(target=wait_for_it, daemon=True)
        waiter.start()
        token.cancel()
        waiter.join(timeout=5)
        assert raised and not waiter.is_alive()
    finally:
        generator._lock.release()


def test_bad_settings_fail_before_any_work(pipe, inputs):
    for bad in (dict(steps=0), dict(size=30), dict(guidance=-1.0), dict(noise_level=1000), dict(seed=-1), dict(size=(32,))):
        with pytest.raises(InputError):
            pipe.imagine(inputs, **{**SMALL, **bad})
    with pytest.raises(InputError, match="at least one input"):
        pipe.imagine([], **SMALL)


def test_without_unclip_weights_imagine_says_how_to_get_them(tiny_pipeline, inputs):
    with pytest.raises(WeightsError, match="ibllm download unclip"):
        tiny_pipeline.imagine(inputs)


def test_a_missing_unclip_folder_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="ibllm download unclip"):
        UnCLIPGenerator.from_pretrained(tmp_path / "nowhere")


def test_a_partial_unclip_folder_says_to_download_again(unclip_folder, tmp_path):
    partial = shutil.copytree(unclip_folder, tmp_path / "partial")
    for weights in (partial / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()  # an interrupted download
    with pytest.raises(WeightsError, match="incomplete.*ibllm download unclip"):
        UnCLIPGenerator.from_pretrained(partial, device="cpu")


def test_the_converted_folder_can_record_the_unclip_folder(pipe, unclip_folder, tmp_path):
    from demo.pipeline import ensure_tiny

    folder = shutil.copytree(ensure_tiny(), tmp_path / "converted")
    meta = json.loads((folder / "imagebind_llm.json").read_text())
    meta["unclip"] = str(unclip_folder)
    (folder / "imagebind_llm.json").write_text(json.dumps(meta))
    loaded = ImageBindLLMPipeline.from_pretrained(folder, device="cpu")
    assert isinstance(loaded.image_generator, UnCLIPGenerator)


def test_a_generator_of_another_width_is_refused(pipe, tmp_path):
    narrow = UnCLIPGenerator.from_pretrained(write_tiny_unclip(tmp_path / "narrow", embed_dim=16), device="cpu")
    with pytest.raises(WeightsError, match="16-d"):
        ImageBindLLMPipeline(pipe.model, pipe.encoder, engine=pipe.engine, image_generator=narrow)


# ---------------------------------------------------------------------------------------------
# ibllm download unclip
# ---------------------------------------------------------------------------------------------
def test_unclip_download_takes_the_diffusers_folder_in_fp16_only():
    from demo.weights_tools import download

    repo = [  # the layout of stabilityai/stable-diffusion-2-1-unclip (weights in several forms)
        "model_index.json", "sd21-unclip-h.ckpt", "README.md",
        "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.bin", "image_normalizer/config.json", "image_normalizer/diffusion_pytorch_model.safetensors",
        "tokenizer/vocab.json", "tokenizer/merges.txt", "feature_extractor/preprocessor_config.json",
    ]
    assert download.resolve(["unclip"]) == ["unclip"]
    assert download.select_files(download.FILES["unclip"], repo) == [
        "feature_extractor/preprocessor_config.json", "image_normalizer/config.json",
        "image_normalizer/diffusion_pytorch_model.safetensors",  # no fp16 copy: the full one
        "model_index.json", "tokenizer/merges.txt", "tokenizer/vocab.json",
        "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    # The LLaMA folder keeps its old selection
    assert download.select_files(download.FILES["llama-7b"], ["config.json", "a.safetensors", "x/b.safetensors", "a.bin"]) == [
        "a.safetensors", "config.json"]


def test_unclip_download_offline_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from demo.weights_tools import download

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="copy it to the --dest folder as stable-diffusion-2-1-unclip"):
        download.download_hub(download.FILES["unclip"], tmp_path)


def test_a_downloaded_fp16_folder_loads_on_the_cpu(unclip_folder, tmp_path):
    """What `ibllm download unclip` leaves (fp16 weights only) loads as float32 on a CPU."""
    from diffusers import StableUnCLIPImg2ImgPipeline

    folder = tmp_path / "fp16"
    StableUnCLIPImg2ImgPipeline.from_pretrained(unclip_folder).save_pretrained(folder, variant="fp16")
    generator = UnCLIPGenerator.from_pretrained(folder, device="cpu")
    assert generator.pipeline.unet.dtype == torch.float32


def test_noise_level_and_negative_prompt_reach_the_model(pipe, inputs):
    base = np.asarray(pipe.imagine(inputs, seed=3, **SMALL).image)
    noisy = np.asarray(pipe.imagine(inputs, seed=3, noise_level=500, **SMALL).image)
    negative = np.asarray(pipe.imagine(inputs, seed=3, negative_prompt="blurry", **SMALL).image)
    assert not np.array_equal(base, noisy)
    assert not np.array_equal(base, negative)

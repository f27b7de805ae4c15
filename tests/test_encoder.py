"""MultimodalEncoder with tiny random weights in the released file format: loading and encoding."""

from __future__ import annotations

import json

import pytest
import torch

from demo.encoders.encoder import CONFIG_FILENAME, EncoderConfig, MultimodalEncoder
from demo.encoders.imagebind_import import import_imagebind_model
from demo.encoders.point_bind import is_point_key
from demo.encoders.tiny import write_tiny_encoder
from demo.errors import InputError, WeightsError

# One sample per modality, in the layouts of demo/modalities.py.
SAMPLES = {
    "image": lambda g: torch.randn(3, 224, 224, generator=g),
    "video": lambda g: torch.randn(15, 3, 2, 224, 224, generator=g),
    "audio": lambda g: torch.randn(3, 1, 128, 204, generator=g),
    "text": lambda g: torch.randint(0, 49408, (77,), generator=g),
    "point": lambda g: torch.randn(8192, 3, generator=g),
    "depth": lambda g: torch.randn(1, 224, 224, generator=g),
    "thermal": lambda g: torch.randn(1, 224, 224, generator=g),
    "imu": lambda g: torch.randn(6, 2000, generator=g),
}
# ImageBind's fixed logit scale per modality (the norm of a single-clip embedding).
LOGIT_SCALE = {"image": 1.0, "point": 1.0, "depth": 5.0, "thermal": 10.0, "imu": 5.0}


def sample(modality: str, seed: int = 0) -> torch.Tensor:
    return SAMPLES[modality](torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def encoder(weights):
    return MultimodalEncoder.from_pretrained(weights, device="cpu")


def save(state: dict, folder, name: str = "weights.pth"):
    """Save a variant of the tiny weights with the tiny config beside it."""
    path = folder / name
    torch.save(state, path)
    (folder / CONFIG_FILENAME).write_text(json.dumps(EncoderConfig.preset("tiny").to_dict()))
    return path


@pytest.mark.parametrize("modality", list(SAMPLES))
def test_every_modality_encodes(encoder, modality):
    embedding = encoder.encode(modality, sample(modality))
    assert embedding.shape == (1024,) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()
    if modality in LOGIT_SCALE:
        assert embedding.norm().item() == pytest.approx(LOGIT_SCALE[modality], rel=1e-5)


@pytest.mark.parametrize("modality", ["image", "video", "audio", "text", "imu"])
def test_matches_imagebind_forward_of_an_independently_loaded_model(encoder, weights, modality):
    state = torch.load(weights, weights_only=True)
    reference = import_imagebind_model().ImageBindModel(**EncoderConfig.preset("tiny").imagebind)
    reference.load_state_dict({k: v for k, v in state.items() if not is_point_key(k)})
    key = {"image": "vision", "video": "vision"}.get(modality, modality)
    x = sample(modality)
    with torch.inference_mode():
        expected = reference.eval()({key: x[None]})[key][0]
    assert torch.allclose(encoder.encode(modality, x), expected, atol=1e-6)


@pytest.mark.parametrize("modality", ["imu", "point", "audio"])  # imu and point heads hold dropout 0.5
def test_eval_mode_two_calls_identical(encoder, modality):
    x = sample(modality)
    assert torch.equal(encoder.encode(modality, x), encoder.encode(modality, x))


def test_video_is_the_mean_of_its_views(encoder):
    video = sample("video")
    views = torch.stack([encoder.encode("image", view[:, 0]) for view in video[:2]])
    # A single 2-frame clip with identical frames equals the image (ImageBind repeats images to 2 frames).
    assert torch.allclose(encoder.encode("video", video[:1, :, :1].expand(1, 3, 2, 224, 224)), views[0], atol=1e-5)
    two = encoder.encode("video", video[:2, :, :1].expand(2, 3, 2, 224, 224))
    assert torch.allclose(two, views.mean(0), atol=1e-5)


def test_encode_batch_equals_single_encodes(encoder):
    images = torch.stack([sample("image", seed) for seed in range(5)])
    batched = encoder.encode_batch("image", images, batch_size=2)
    assert batched.shape == (5, 1024)
    assert torch.allclose(batched, torch.stack([encoder.encode("image", x) for x in images]), atol=1e-5)


def test_only_used_towers_are_placed(weights):
    # float64 on CPU makes the placement visible: a tower changes dtype when it moves.
    encoder = MultimodalEncoder.from_pretrained(weights, device="cpu", dtype=torch.float64)
    encoder.encode("image", sample("image"))
    assert encoder.imagebind.modality_trunks["vision"].blocks[0].attn.in_proj_weight.dtype == torch.float64
    assert encoder.imagebind.modality_trunks["text"].blocks[0].attn.in_proj_weight.dtype == torch.float32
    assert encoder.point.head[2].weight.dtype == torch.float32


@pytest.mark.parametrize("modality", ["image", "text", "point"])
def test_half_precision_agrees_with_float32(encoder, weights, modality):
    # The GPU default is float16; CPU float16 exercises the same casts (text ids stay integers).
    half = MultimodalEncoder.from_pretrained(weights, device="cpu", dtype=torch.float16)
    x = sample(modality)
    similarity = torch.nn.functional.cosine_similarity(half.encode(modality, x), encoder.encode(modality, x), dim=0)
    assert similarity > 0.999


def test_meta_format_without_point_branch_disables_points(weights, tmp_path):
    state = {k: v for k, v in torch.load(weights, weights_only=True).items() if not is_point_key(k)}
    encoder = MultimodalEncoder.from_pretrained(save(state, tmp_path), device="cpu")
    assert "point" not in encoder.modalities and "image" in encoder.modalities
    encoder.encode("image", sample("image"))
    with pytest.raises(WeightsError, match="imagebind_w3D.pth"):
        encoder.encode("point", sample("point"))


def test_nested_state_dict_loads(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    encoder = MultimodalEncoder.from_pretrained(save({"model": state}, tmp_path), device="cpu")
    assert encoder.point is not None


def test_missing_imagebind_key_is_named(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    del state["modality_heads.vision.2.weight"]
    with pytest.raises(WeightsError, match=r"1 missing \[modality_heads\.vision\.2\.weight\]"):
        MultimodalEncoder.from_pretrained(save(state, tmp_path))


def test_unexpected_key_is_named(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    state["modality_trunks.smell.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"1 unexpected \[modality_trunks\.smell\.weight\]"):
        MultimodalEncoder.from_pretrained(save(state, tmp_path))


def test_missing_point_key_is_named(weights, tmp_path):
    state = torch.load(weights, weights_only=True)
    del state["point_trunk.pc_projection"]
    with pytest.raises(WeightsError, match=r"point_trunk\.pc_projection"):
        MultimodalEncoder.from_pretrained(save(state, tmp_path))


def test_config_that_does_not_match_the_file_is_refused(weights):
    with pytest.raises(WeightsError, match="of another shape"):
        MultimodalEncoder.from_pretrained(weights, config="huge")


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        MultimodalEncoder.from_pretrained(tmp_path / "nothing.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        MultimodalEncoder.from_pretrained(tmp_path / "broken.pth")


@pytest.mark.parametrize(
    ("modality", "bad", "message"),
    [
        ("image", torch.randn(224, 224, 3), r"shape \[224, 224, 3\]"),
        ("audio", torch.randn(3, 128, 204), "expected"),
        ("text", torch.randn(77), "integer token ids"),
        ("point", torch.randn(10, 3), "at least 16"),
        ("point", torch.randn(8192, 6), "expected"),
        ("depth", torch.full((1, 224, 224), float("nan")), "NaN"),
        ("embedding", torch.randn(64), "nothing to encode"),
    ],
)
def test_bad_inputs_raise_input_error(encoder, modality, bad, message):
    with pytest.raises(InputError, match=message):
        encoder.encode(modality, bad)


def test_config_round_trips_through_json():
    for name in ("huge", "tiny"):
        config = EncoderConfig.preset(name)
        assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_huge_preset_is_metas_imagebind_huge():
    from accelerate import init_empty_weights

    imagebind_model = import_imagebind_model()
    with init_empty_weights():  # shapes only
        ours = imagebind_model.ImageBindModel(**EncoderConfig.preset("huge").imagebind)
        meta = imagebind_model.imagebind_huge()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in meta.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == 1_200_781_057


def test_tiny_weights_are_seeded(tmp_path):
    a = torch.load(write_tiny_encoder(tmp_path / "a", seed=1), weights_only=True)
    b = torch.load(write_tiny_encoder(tmp_path / "b", seed=1), weights_only=True)
    c = torch.load(write_tiny_encoder(tmp_path / "c", seed=2), weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["point_trunk.pc_projection"], c["point_trunk.pc_projection"])
    assert type(a) is dict and any(k.startswith("modality_heads.point.") for k in a)


def test_encoding_stops_at_the_next_check_once_cancelled(encoder):
    from demo.cancel import CancelToken
    from demo.errors import Cancelled

    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        encoder.encode("image", sample("image"), cancel=token)

    forwards = []
    tower = encoder.towers["imu"]
    original = tower.forward

    class CancelledAfterTwoBatches(CancelToken):
        def check(self):
            if len(forwards) == 2:
                self.cancel()
            super().check()

    tower.forward = lambda batch: forwards.append(len(batch)) or original(batch)
    try:
        with pytest.raises(Cancelled):
            encoder.encode_batch("imu", torch.randn(10, 6, 2000), batch_size=2, cancel=CancelledAfterTwoBatches())
    finally:
        del tower.forward
    assert forwards == [2, 2]  # stopped before the third of five batches

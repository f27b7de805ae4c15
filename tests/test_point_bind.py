"""Point-Bind point encoder: released key names, strict loading, grouping, determinism."""

from __future__ import annotations

import pytest
import torch

from demo.encoders.point_bind import (
    PointBindConfig,
    PointBindEncoder,
    farthest_point_sample,
    group_points,
    knn_indices,
    load_point_bind,
)
from demo.errors import WeightsError

# The point branch of the released imagebind_w3D.pth, as defined by the code that saved it
# (OpenGVLab/LLaMA-Adapter imagebind_LLM/ImageBind/models/imagebind_model.py, pointbert/
# point_encoder.py, pointbert/dvae.py; config PointTransformer_8192point.yaml: trans_dim 384,
# depth 12, 6 heads, 512 groups x 32, encoder_dims 256). Block keys are listed for block 0 and
# repeat for blocks 1..11.
_P = "point_trunk.point_encoder."
RELEASED_POINT_KEYS: dict[str, tuple[int, ...]] = {
    "point_trunk.pc_projection": (768, 512),
    _P + "cls_token": (1, 1, 384),
    _P + "cls_pos": (1, 1, 384),
    _P + "encoder.first_conv.0.weight": (128, 3, 1),
    _P + "encoder.first_conv.0.bias": (128,),
    _P + "encoder.first_conv.1.weight": (128,),
    _P + "encoder.first_conv.1.bias": (128,),
    _P + "encoder.first_conv.1.running_mean": (128,),
    _P + "encoder.first_conv.1.running_var": (128,),
    _P + "encoder.first_conv.1.num_batches_tracked": (),
    _P + "encoder.first_conv.3.weight": (256, 128, 1),
    _P + "encoder.first_conv.3.bias": (256,),
    _P + "encoder.second_conv.0.weight": (512, 512, 1),
    _P + "encoder.second_conv.0.bias": (512,),
    _P + "encoder.second_conv.1.weight": (512,),
    _P + "encoder.second_conv.1.bias": (512,),
    _P + "encoder.second_conv.1.running_mean": (512,),
    _P + "encoder.second_conv.1.running_var": (512,),
    _P + "encoder.second_conv.1.num_batches_tracked": (),
    _P + "encoder.second_conv.3.weight": (256, 512, 1),
    _P + "encoder.second_conv.3.bias": (256,),
    _P + "reduce_dim.weight": (384, 256),
    _P + "reduce_dim.bias": (384,),
    _P + "pos_embed.0.weight": (128, 3),
    _P + "pos_embed.0.bias": (128,),
    _P + "pos_embed.2.weight": (384, 128),
    _P + "pos_embed.2.bias": (384,),
    _P + "norm.weight": (384,),
    _P + "norm.bias": (384,),
    "modality_heads.point.0.weight": (512,),  # LayerNorm(512, eps=1e-6)
    "modality_heads.point.0.bias": (512,),
    "modality_heads.point.2.weight": (1024, 512),  # Linear(512, 1024, bias=False); index 1 is Dropout
    "modality_postprocessors.point.1.log_logit_scale": (),  # LearnableLogitScaling(1.0, learnable=False)
}
RELEASED_BLOCK_KEYS: dict[str, tuple[int, ...]] = {
    "norm1.weight": (384,),
    "norm1.bias": (384,),
    "attn.qkv.weight": (1152, 384),  # qkv_bias=False
    "attn.proj.weight": (384, 384),
    "attn.proj.bias": (384,),
    "norm2.weight": (384,),
    "norm2.bias": (384,),
    "mlp.fc1.weight": (1536, 384),
    "mlp.fc1.bias": (1536,),
    "mlp.fc2.weight": (384, 1536),
    "mlp.fc2.bias": (384,),
}
for _i in range(12):
    RELEASED_POINT_KEYS.update({f"{_P}blocks.blocks.{_i}.{k}": s for k, s in RELEASED_BLOCK_KEYS.items()})

TINY = PointBindConfig.preset("tiny")


def make_encoder(seed: int = 0) -> PointBindEncoder:
    torch.manual_seed(seed)
    return PointBindEncoder(TINY).eval()


def cloud(batch: int = 1, points: int = 512, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


def test_released_size_matches_released_keys_and_shapes():
    with torch.device("meta"):  # shapes only, no 23 M random numbers
        encoder = PointBindEncoder(PointBindConfig.preset("huge"))
    got = {k: tuple(v.shape) for k, v in encoder.released_state_dict().items()}
    assert got == RELEASED_POINT_KEYS


def test_load_round_trip_gives_identical_outputs():
    encoder = make_encoder()
    loaded = load_point_bind(encoder.released_state_dict(), TINY)
    x = cloud()
    with torch.inference_mode():
        assert torch.equal(encoder(x), loaded(x))


def test_load_reads_only_point_keys_of_a_full_state_dict():
    state = {"modality_trunks.vision.blocks.0.attn.in_proj_weight": torch.zeros(1), **make_encoder().released_state_dict()}
    load_point_bind(state, TINY)  # no error: ImageBind keys are someone else's


def test_missing_key_is_named():
    state = make_encoder().released_state_dict()
    del state["modality_heads.point.2.weight"]
    with pytest.raises(WeightsError, match=r"1 missing \[modality_heads\.point\.2\.weight\]"):
        load_point_bind(state, TINY)


def test_unexpected_key_is_named():
    state = make_encoder().released_state_dict()
    state["point_trunk.point_encoder.extra.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match=r"1 unexpected \[point_trunk\.point_encoder\.extra\.weight\]"):
        load_point_bind(state, TINY)


def test_wrong_shape_is_named():
    state = make_encoder().released_state_dict()
    state["point_trunk.pc_projection"] = torch.zeros(3, 3)
    with pytest.raises(WeightsError, match=r"point_trunk\.pc_projection: file \(3, 3\)"):
        load_point_bind(state, TINY)


def test_state_dict_without_point_keys_is_refused():
    with pytest.raises(WeightsError, match="imagebind_w3D"):
        load_point_bind({"modality_trunks.vision.x": torch.zeros(1)}, TINY)


def brute_force_fps(points: torch.Tensor, num_samples: int) -> list[int]:
    """Textbook FPS on one cloud [N, 3], starting at point 0."""
    chosen = [0]
    for _ in range(num_samples - 1):
        dist_to_set = [min(float(((p - points[c]) ** 2).sum()) for c in chosen) for p in points]
        chosen.append(max(range(len(points)), key=lambda i: (dist_to_set[i], -i)))
    return chosen


def test_farthest_point_sample_matches_brute_force():
    points = cloud(batch=2, points=60).double()
    got = farthest_point_sample(points, 12)
    assert got.shape == (2, 12)
    for b in range(2):
        assert got[b].tolist() == brute_force_fps(points[b], 12)


def test_farthest_point_sample_picks_distinct_points():
    idx = farthest_point_sample(cloud(points=300), 100)
    assert idx[0, 0] == 0 and len(set(idx[0].tolist())) == 100


def test_knn_matches_brute_force():
    points, queries = cloud(batch=2, points=200, seed=1), cloud(batch=2, points=7, seed=2)
    got = knn_indices(points, queries, 5)
    dist = ((queries[:, :, None] - points[:, None]) ** 2).sum(-1)  # (B, S, N)
    assert torch.equal(got, dist.argsort(-1)[..., :5])


def test_group_points_are_centred_neighbourhoods():
    points = cloud(points=256)
    neighbours, centres = group_points(points, num_group=8, group_size=4)
    assert neighbours.shape == (1, 8, 4, 3) and centres.shape == (1, 8, 3)
    assert torch.equal(centres[0, 0], points[0, 0])  # FPS starts at point 0
    assert torch.allclose(neighbours[:, :, 0], torch.zeros(1, 8, 3))  # nearest point is the centre itself


def test_forward_is_deterministic_and_dropout_off():
    encoder, x = make_encoder(), cloud(points=1024)
    with torch.inference_mode():
        first, second = encoder(x), encoder(x)
    assert torch.equal(first, second)
    assert first.shape == (1, TINY.out_dim)
    assert torch.allclose(first.norm(dim=-1), torch.ones(1))  # logit scale 1


def test_batch_equals_single_samples():
    encoder, x = make_encoder(), cloud(batch=3, points=512)
    with torch.inference_mode():
        batched = encoder(x)
        single = torch.cat([encoder(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-6)

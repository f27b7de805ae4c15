"""Point-Bind's 3D point encoder: a Point-BERT trunk aligned to ImageBind's embedding space.

Written from the published architecture (Point-BERT, Yu et al. 2022; Point-Bind, Guo et al. 2023)
so that parameter names and shapes match the point branch of the released `imagebind_w3D.pth`:

    point_trunk.point_encoder.*        Point-BERT (mini-PointNet tokens + 12 transformer blocks)
    point_trunk.pc_projection          [768, 512], used as `features @ pc_projection`
    modality_heads.point.{0,2}.*       LayerNorm(512, eps 1e-6), Dropout(0.5), Linear(512 -> 1024)
    modality_postprocessors.point.1.*  L2 normalisation, then a fixed logit scale of 1

Differences from the original code, on purpose:
- Farthest point sampling starts at point 0 instead of a random point, so the same cloud always
  gives the same embedding. Any start is an equally valid FPS; the original is not reproducible.
- FPS and kNN are plain torch (no pointnet2 / KNN_CUDA extensions), so they run on CPU too.
- Inference only: stochastic depth (drop path) is left out; it is the identity in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demo.errors import WeightsError

# Released checkpoint prefix -> prefix inside `PointBindEncoder`, checked strictly when loading.
RELEASED_PREFIXES: dict[str, str] = {
    "point_trunk.": "point_trunk.",
    "modality_heads.point.": "head.",
    "modality_postprocessors.point.": "postprocessor.",
}


@dataclass(frozen=True)
class PointBindConfig:
    """Sizes of the point encoder. Defaults are the released Point-Bind (Point-BERT, 8192 points)."""

    trans_dim: int = 384  # transformer width
    depth: int = 12  # transformer blocks
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_group: int = 512  # FPS centres = tokens
    group_size: int = 32  # kNN neighbours per centre
    encoder_dims: int = 256  # mini-PointNet output per group
    pointnet_dims: tuple[int, int, int] = (128, 256, 512)  # first conv hidden/out, second conv hidden
    pos_hidden: int = 128  # hidden width of the centre -> position-embedding MLP
    proj_dim: int = 512  # pc_projection output (768 -> 512)
    out_dim: int = 1024  # ImageBind's joint embedding size

    @classmethod
    def preset(cls, name: str) -> PointBindConfig:
        presets = {
            "huge": cls(),
            # About 38 k parameters, for tests and the offline demo.
            "tiny": cls(trans_dim=32, depth=2, num_heads=2, num_group=16, group_size=8,
                        encoder_dims=32, pointnet_dims=(16, 32, 64), pos_hidden=16,
                        proj_dim=32, out_dim=1024),
        }
        if name not in presets:
            raise KeyError(f"unknown point encoder preset {name!r}; known: {', '.join(presets)}")
        return presets[name]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> PointBindConfig:
        data = dict(data)
        data["pointnet_dims"] = tuple(data.get("pointnet_dims", cls.pointnet_dims))  # JSON gives a list
        return cls(**data)


# --- grouping: farthest point sampling + k nearest neighbours ------------------------------------


def farthest_point_sample(points: Tensor, num_samples: int) -> Tensor:
    """Indices [B, S] of `num_samples` points chosen by farthest point sampling, starting at point 0.

    Each step picks the point whose squared distance to the already chosen set is largest; ties go
    to the lowest index (argmax returns the first maximum), so the result is deterministic.
    """
    batch, num_points, _ = points.shape
    rows = torch.arange(batch, device=points.device)
    chosen = torch.empty(batch, num_samples, dtype=torch.long, device=points.device)
    dist_to_set = points.new_full((batch, num_points), float("inf"))  # (B, N)
    farthest = torch.zeros(batch, dtype=torch.long, device=points.device)  # (B,) start at point 0
    for i in range(num_samples):
        chosen[:, i] = farthest
        centre = points[rows, farthest]  # (B, 3)
        dist = ((points - centre[:, None]) ** 2).sum(-1)  # (B, N)
        dist_to_set = torch.minimum(dist_to_set, dist)
        farthest = dist_to_set.argmax(-1)
    return chosen


def knn_indices(points: Tensor, queries: Tensor, k: int) -> Tensor:
    """Indices [B, S, k] of the k points nearest to each query, nearest first.

    Squared distances use |q|^2 + |p|^2 - 2 q.p (one matmul, as Point-BERT does) instead of
    materialising the [B, S, N, 3] differences.
    """
    sq_dist = (
        (queries**2).sum(-1)[:, :, None]  # (B, S, 1)
        + (points**2).sum(-1)[:, None, :]  # (B, 1, N)
        - 2 * queries @ points.transpose(1, 2)  # (B, S, N)
    )
    return sq_dist.topk(k, dim=-1, largest=False, sorted=True).indices  # (B, S, k)


def group_points(points: Tensor, num_group: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Split clouds [B, N, 3] into `num_group` local patches of `group_size` points.

    Returns (neighbourhoods [B, G, K, 3] relative to their centre, centres [B, G, 3]). Computed in
    float32 whatever the model dtype: fp16 distances would change which neighbours are picked.
    """
    points = points.float()
    rows = torch.arange(points.shape[0], device=points.device)
    centres = points[rows[:, None], farthest_point_sample(points, num_group)]  # (B, G, 3)
    neighbours = points[rows[:, None, None], knn_indices(points, centres, group_size)]  # (B, G, K, 3)
    return neighbours - centres[:, :, None], centres


# --- Point-BERT ------------------------------------------------------------------------------------


class MiniPointNet(nn.Module):
    """Per-group PointNet: shared point-wise MLPs with max pooling, one token per group."""

    def __init__(self, dims: tuple[int, int, int], out_dim: int) -> None:
        super().__init__()
        hidden1, width, hidden2 = dims
        # Indices 0, 1, 3 carry weights (Conv, BatchNorm, -, Conv), as in the released keys.
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, hidden1, 1), nn.BatchNorm1d(hidden1), nn.ReLU(), nn.Conv1d(hidden1, width, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * width, hidden2, 1), nn.BatchNorm1d(hidden2), nn.ReLU(), nn.Conv1d(hidden2, out_dim, 1)
        )

    def forward(self, groups: Tensor) -> Tensor:
        batch, num_group, size, _ = groups.shape
        x = groups.reshape(batch * num_group, size, 3).transpose(1, 2)  # (BG, 3, K)
        x = self.first_conv(x)  # (BG, W, K)
        # Each point sees its own feature and the group's pooled one (global first).
        x = torch.cat([x.amax(2, keepdim=True).expand(-1, -1, size), x], dim=1)  # (BG, 2W, K)
        x = self.second_conv(x).amax(2)  # (BG, E)
        return x.reshape(batch, num_group, -1)  # (B, G, E)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)  # Point-BERT uses qkv_bias=False
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)  # (B, L, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, L, d)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, L, d), scale d ** -0.5 as the original
        return self.proj(x.transpose(1, 2).reshape(batch, length, dim))  # (B, L, D)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (timm ViT layout; LayerNorm eps 1e-5 as in Point-BERT)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        # Point-BERT re-adds the position embedding before every block, not only the first.
        for block in self.blocks:
            x = block(x + pos)
        return x


class PointBERT(nn.Module):
    """Point cloud [B, N, 3] -> [B, 2 * trans_dim] (CLS token and max-pooled group tokens)."""

    def __init__(self, config: PointBindConfig) -> None:
        super().__init__()
        self.num_group, self.group_size = config.num_group, config.group_size
        dim = config.trans_dim
        self.encoder = MiniPointNet(config.pointnet_dims, config.encoder_dims)
        self.reduce_dim = nn.Linear(config.encoder_dims, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, config.pos_hidden), nn.GELU(), nn.Linear(config.pos_hidden, dim))
        self.blocks = TransformerEncoder(dim, config.depth, config.num_heads, config.mlp_ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, points: Tensor) -> Tensor:
        dtype = self.reduce_dim.weight.dtype
        neighbours, centres = group_points(points, self.num_group, self.group_size)
        tokens = self.reduce_dim(self.encoder(neighbours.to(dtype)))  # (B, G, D)
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)  # (B, 1 + G, D)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centres.to(dtype))], dim=1)  # (B, 1 + G, D)
        x = self.norm(self.blocks(x, pos))  # (B, 1 + G, D)
        return torch.cat([x[:, 0], x[:, 1:].amax(1)], dim=-1)  # (B, 2D)


class PointTrunk(nn.Module):
    """Point-BERT features projected towards ImageBind's space (a bare matrix, as released)."""

    def __init__(self, config: PointBindConfig) -> None:
        super().__init__()
        self.point_encoder = PointBERT(config)
        self.pc_projection = nn.Parameter(torch.randn(2 * config.trans_dim, config.proj_dim) * config.proj_dim**-0.5)

    def forward(self, points: Tensor) -> Tensor:
        return self.point_encoder(points) @ self.pc_projection  # (B, P)


class L2Normalize(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class FixedLogitScale(nn.Module):
    """ImageBind's non-learnable logit scale: a stored log value, applied as exp(.) clipped to 100."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("log_logit_scale", torch.tensor(scale).log())

    def forward(self, x: Tensor) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=100) * x


class PointBindEncoder(nn.Module):
    """Point cloud [B, N, 3] (xyz, centred, in the unit sphere) -> unit-norm embedding [B, out_dim]."""

    def __init__(self, config: PointBindConfig) -> None:
        super().__init__()
        self.config = config
        self.point_trunk = PointTrunk(config)
        # Dropout keeps index 1 so the Linear is `head.2`, as in the released keys; off in eval mode.
        self.head = nn.Sequential(
            nn.LayerNorm(config.proj_dim, eps=1e-6), nn.Dropout(0.5), nn.Linear(config.proj_dim, config.out_dim, bias=False)
        )
        self.postprocessor = nn.Sequential(L2Normalize(), FixedLogitScale(1.0))

    def forward(self, points: Tensor) -> Tensor:
        return self.postprocessor(self.head(self.point_trunk(points)))

    def released_state_dict(self) -> dict[str, Tensor]:
        """This encoder's tensors under the key names of the released `imagebind_w3D.pth`."""
        return {released_key(key): tensor for key, tensor in self.state_dict().items()}


def released_key(key: str) -> str:
    """Our key (`head.2.weight`) -> its name in the released file (`modality_heads.point.2.weight`)."""
    for released, ours in RELEASED_PREFIXES.items():
        if key.startswith(ours):
            return released + key[len(ours):]
    raise KeyError(key)


def is_point_key(key: str) -> bool:
    """Whether a key of a full ImageBind(+3D) state dict belongs to the point branch."""
    return key.startswith(tuple(RELEASED_PREFIXES))


def load_point_bind(state_dict: Mapping[str, Tensor], config: PointBindConfig, assign: bool = False) -> PointBindEncoder:
    """Build a `PointBindEncoder` from a full `imagebind_w3D.pth` state dict, strictly.

    Only the point keys are read; every parameter and buffer must be present with its shape.
    `assign=True` keeps the given tensors (e.g. memory-mapped) instead of copying them.
    Raises WeightsError naming missing, unexpected or mis-shaped keys.
    """
    ours: dict[str, Tensor] = {}
    for key, tensor in state_dict.items():
        for released, prefix in RELEASED_PREFIXES.items():
            if key.startswith(released):
                ours[prefix + key[len(released):]] = tensor
    if not ours:
        raise WeightsError("the state dict has no point encoder keys (point_trunk.*); use imagebind_w3D.pth")
    return load_strictly(PointBindEncoder(config), ours, "point encoder", assign=assign, rename=released_key).eval()


def load_strictly(
    module: nn.Module,
    state_dict: dict[str, Tensor],
    what: str,
    assign: bool = False,
    rename: Callable[[str], str] = str,
) -> nn.Module:
    """`module.load_state_dict` that raises WeightsError naming missing, unexpected, mis-shaped keys.

    `what` names the part in the message, `rename` maps module keys to the file's names for it.
    (BatchNorm fills in a missing `num_batches_tracked`
    itself, as it does for every old checkpoint; the counter is unused in eval mode.)
    """
    expected = module.state_dict()
    # Checked before loading: torch raises a bare RuntimeError on a shape mismatch.
    shape_errors = [
        f"{rename(key)}: file {tuple(state_dict[key].shape)} vs model {tuple(tensor.shape)}"
        for key, tensor in expected.items()
        if key in state_dict and state_dict[key].shape != tensor.shape
    ]
    if not shape_errors:
        result = module.load_state_dict(state_dict, strict=False, assign=assign)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    else:
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected or shape_errors:
        raise WeightsError(
            f"{what} weights do not match the config: {len(missing)} missing {_preview(missing, rename)}, "
            f"{len(unexpected)} unexpected {_preview(unexpected, rename)}, {len(shape_errors)} of another shape "
            f"{_preview(shape_errors)}. Is the config the one the file was saved with?"
        )
    return module


def _preview(items: list[str], rename: Callable[[str], str] = str, limit: int = 8) -> str:
    """The first few items of a long key list, so the error stays readable."""
    shown = ", ".join(rename(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"

"""The bind network ("bridge"): ImageBind's embedding (1024) -> one LLaMA-width vector (4096).

Stable release (reference section 2): a linear projection, then residual SwiGLU blocks, each
preceded by an RMSNorm computed in fp32. Nothing here is zero-initialised: the zero-init lives
in the per-layer gates of `injection.py`.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F


class RMSNorm(nn.Module):
    """LLaMA's RMSNorm: normalise in fp32 (for fp16 stability), cast back, then scale."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class BindBlock(nn.Module):
    """x + W2(silu(W1 n) * W3 n) with n = RMSNorm(x); no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return x + self.w2(F.silu(self.w1(n)) * self.w3(n))


class BindNetwork(nn.Module):
    """(B, embed_dim) -> (B, llm_dim)."""

    def __init__(self, embed_dim: int = 1024, llm_dim: int = 4096, hidden_dim: int = 16384, num_blocks: int = 3):
        super().__init__()
        self.proj = nn.Linear(embed_dim, llm_dim)
        self.blocks = nn.ModuleList(BindBlock(llm_dim, hidden_dim) for _ in range(num_blocks))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = self.proj(embedding)  # (B, llm_dim)
        for block in self.blocks:
            x = block(x)
        return x

    @staticmethod
    def dims_from_state_dict(state: dict[str, torch.Tensor]) -> dict[str, int]:
        """Constructor arguments read off the tensors, so any size converts and loads."""
        llm_dim, embed_dim = state["proj.weight"].shape
        num_blocks = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        hidden_dim = state["blocks.0.w1.weight"].shape[0]
        return dict(embed_dim=embed_dim, llm_dim=llm_dim, hidden_dim=hidden_dim, num_blocks=num_blocks)


# Official key (7B.pth, block numbers from 1) -> our key (block index from 0).
# `{k}` is the official block number; `{k0}` is k - 1.
OFFICIAL_BIND_KEYS: dict[str, str] = {
    "image_bind_proj.weight": "proj.weight",
    "image_bind_proj.bias": "proj.bias",
    "image_bind_norm_{k}.weight": "blocks.{k0}.norm.weight",
    "image_bind_f1_{k}.weight": "blocks.{k0}.w1.weight",
    "image_bind_f2_{k}.weight": "blocks.{k0}.w2.weight",
    "image_bind_f3_{k}.weight": "blocks.{k0}.w3.weight",
}
_OFFICIAL_PATTERNS = [
    (re.compile("^" + re.escape(src).replace(r"\{k\}", r"(\d+)") + "$"), dst) for src, dst in OFFICIAL_BIND_KEYS.items()
]


def rename_official_bind_key(key: str) -> str | None:
    """Our name for an official bind-network key, or None if the key is not part of it."""
    for pattern, dst in _OFFICIAL_PATTERNS:
        match = pattern.match(key)
        if match:
            if match.groups():
                k = int(match.group(1))
                return dst.format(k0=k - 1)
            return dst
    return None

"""Modality arithmetic: one conditioning vector from several weighted embeddings.

The release's rule (reference section 1): each embedding L2-normalised, weights divided by their
sum + 1e-6, the weighted sum NOT re-normalised. We keep that exactly for non-negative weights and
extend it to signed weights ("image - 0.5 x text") by dividing by the sum of ABSOLUTE weights,
which equals the release's rule when no weight is negative. A signed mix can cancel out; a mix
whose norm is below MIN_MIX_NORM carries no direction and is rejected with an error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from .errors import InputError

EPS = 1e-6  # the release's denominator guard
MIN_MIX_NORM = 0.05  # a unit-vector mix shorter than this is mostly cancellation noise


def normalised_weights(weights: Sequence[float]) -> list[float]:
    """w_i / (sum |w| + 1e-6); checks the weights first."""
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise InputError(f"every weight must be a finite number, got {w!r}")
    total = sum(abs(w) for w in weights)
    if total == 0:
        raise InputError("all input weights are zero: give at least one input a non-zero weight")
    return [w / (total + EPS) for w in weights]


def mix_embeddings(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """[D] embeddings with weights -> the [D] mix (float32)."""
    if len(embeddings) != len(weights) or not embeddings:
        raise InputError(f"need one weight per embedding, got {len(embeddings)} embeddings and {len(weights)} weights")
    share = normalised_weights(weights)
    stacked = F.normalize(torch.stack([e.float().reshape(-1) for e in embeddings]), dim=-1)  # (N, D)
    mix = (torch.tensor(share)[:, None] * stacked).sum(0)  # (D,)
    if mix.norm() < MIN_MIX_NORM:
        raise InputError(
            f"the weighted inputs cancel out (mix norm {mix.norm():.3f} < {MIN_MIX_NORM}): "
            "change the weights or remove an input"
        )
    return mix

"""The vector an image is generated from (reference section 13), from per-input embeddings.

It differs from the LLM's mix (demo/arithmetic.py) on purpose: unCLIP was trained on OpenCLIP
ViT-H image embeddings, whose norm carries information, so the released demo feeds it each input's
PRE-normalisation embedding (after ImageBind's modality head, before its normalise-and-scale
postprocessor), keeps the mix's norm through the visual cache, and scales point clouds down:

    e_i   = head output of input i;  e_i / 5 for point clouds (Point-Bind's head is ~5x larger)
    s_i   = w_i / (sum_j |w_j| + 1e-6)                        # as demo.arithmetic.normalised_weights
    v     = sum_i s_i e_i
    cache on:  n = |v|;  v = n * normalise(blend(v / n))      # blend: VisualCache.retrieve (section 8)

Signed weights follow the text path's rule (demo/arithmetic.py): dividing by the sum of ABSOLUTE
weights, which is the release's `sum + 1e-6` whenever no weight is negative. A signed mix that
cancels out (norm below MIN_MIX_NORM of the inputs' weighted norms) is rejected the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ..arithmetic import MIN_MIX_NORM, normalised_weights
from ..errors import InputError

POINT_SCALE = 5.0  # the release divides point-cloud embeddings by 5 before mixing (section 13)


def scaled_embedding(modality: str, embedding: torch.Tensor) -> torch.Tensor:
    """One input's pre-normalisation embedding [D] -> its term before weighting (float32)."""
    embedding = embedding.float().reshape(-1)
    return embedding / POINT_SCALE if modality == "point" else embedding


def mix_unnormalised(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """[D] terms (already point-scaled) with signed weights -> the [D] mix, norm kept (float32)."""
    if len(embeddings) != len(weights) or not embeddings:
        raise InputError(f"need one weight per embedding, got {len(embeddings)} embeddings and {len(weights)} weights")
    shares = torch.tensor(normalised_weights(weights))  # (N,)
    stacked = torch.stack([e.float().reshape(-1) for e in embeddings])  # (N, D)
    mix = (shares[:, None] * stacked).sum(0)  # (D,)
    # The inputs' norms vary, so "cancels out" is relative to what the weighted inputs could add up to.
    reach = float((shares.abs() * stacked.norm(dim=-1)).sum())
    if not torch.isfinite(mix).all() or mix.norm() < MIN_MIX_NORM * reach:
        raise InputError(
            f"the weighted inputs cancel out (mix norm {mix.norm():.3g}, under {MIN_MIX_NORM} of {reach:.3g}): "
            "change the weights or remove an input"
        )
    return mix


def blend_keeping_norm(mix: torch.Tensor, cache, *, k: int, temperature: float, weight: float):
    """Section 13's cache step: remember |mix|, blend the unit direction (section 8), put |mix|
    back. Returns (the [D] vector, the demo.cache.RetrievalResult)."""
    norm = mix.norm()
    result = cache.retrieve(F.normalize(mix, dim=0), k=k, temperature=temperature, weight=weight)
    # retrieve returns normalise((1 - w) v + w r) already; normalising again is the release's step, a no-op here
    return F.normalize(result.embedding.float(), dim=0) * norm, result

"""Modality arithmetic: the release's rule, and its signed extension."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from demo.arithmetic import mix_embeddings, normalised_weights
from demo.errors import InputError


def test_positive_weights_follow_the_release_rule():
    a, b = torch.randn(1024), torch.randn(1024)
    mix = mix_embeddings([a, b], [1.0, 0.5])
    expected = (1.0 * F.normalize(a, dim=0) + 0.5 * F.normalize(b, dim=0)) / (1.5 + 1e-6)
    torch.testing.assert_close(mix, expected)
    assert mix.norm() < 1  # not re-normalised, as released


def test_signed_weights_divide_by_absolute_sum():
    a, b = F.normalize(torch.randn(64), dim=0), F.normalize(torch.randn(64), dim=0)
    mix = mix_embeddings([a, b], [1.0, -0.5])
    torch.testing.assert_close(mix, (a - 0.5 * b) / (1.5 + 1e-6))
    assert normalised_weights([1.0, -0.5]) == pytest.approx([1 / 1.5, -0.5 / 1.5])


def test_cancelling_mix_is_rejected():
    a = torch.randn(64)
    with pytest.raises(InputError, match="cancel out"):
        mix_embeddings([a, 2 * a], [1.0, -1.0])


@pytest.mark.parametrize("weights", [[0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0], ["1", 1.0]])
def test_bad_weights_are_rejected(weights):
    with pytest.raises(InputError):
        mix_embeddings([torch.randn(8), torch.randn(8)], weights)

"""f2d.mix: identity mixing is the weighted mean of MSID vectors, each person counted once."""
from __future__ import annotations

import pytest
import torch

from f2d.mix import MixError, mix_identities, normalised_weights
from f2d.msid import FEATURE_DIM


def test_weights_are_relative():
    assert normalised_weights([0.7, 0.3]) == pytest.approx([0.7, 0.3])
    assert normalised_weights([70, 30]) == pytest.approx([0.7, 0.3])
    assert normalised_weights([1, 0, 1]) == pytest.approx([0.5, 0, 0.5])


@pytest.mark.parametrize("weights, message", [([0, 0], "all weights are 0"), ([1, -1], "weight 2 is -1.0"),
                                              ([float("nan"), 1], "weight 1 is nan")])
def test_bad_weights_are_named(weights, message):
    with pytest.raises(MixError, match=message):
        normalised_weights(weights)


def test_mix_is_the_weighted_mean_and_a_person_of_several_photos_counts_once():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, FEATURE_DIM, generator=g)  # three photos of A
    b = torch.randn(1, FEATURE_DIM, generator=g)
    mixed = mix_identities([a, b], [0.7, 0.3])
    assert mixed.shape == (1, FEATURE_DIM)
    torch.testing.assert_close(mixed, 0.7 * a.mean(0, keepdim=True) + 0.3 * b)
    torch.testing.assert_close(mix_identities([a, b[0]], [1, 0]), a.mean(0, keepdim=True))


def test_wrong_vectors_are_named():
    with pytest.raises(MixError, match=r"identity 2: shape \(1, 768\)"):
        mix_identities([torch.zeros(1, FEATURE_DIM), torch.zeros(1, 768)], [1, 1])
    with pytest.raises(MixError, match="identity 1: holds NaN"):
        mix_identities([torch.full((1, FEATURE_DIM), float("nan")), torch.zeros(1, FEATURE_DIM)], [1, 1])
    with pytest.raises(MixError, match="2 identities but 1 weights"):
        mix_identities([torch.zeros(1, FEATURE_DIM)] * 2, [1])

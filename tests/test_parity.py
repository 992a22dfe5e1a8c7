"""Number-for-number agreement with the official Face2Diffusion code (../shared fixtures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from f2d.align import align_to_arcface_template, landmarks68_to_5, similarity_transform
from f2d.identity import IdentityEncoder

ATOL = 1e-4


@pytest.fixture(scope="module", params=["pt", "safetensors"])
def encoder(request, weight_files) -> IdentityEncoder:
    fmt = request.param
    return IdentityEncoder.from_files(weight_files["msid", fmt], weight_files["mapping", fmt])


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.float() - b.float()).abs().max().item()


def test_msid_features_match_official(encoder, reference):
    feats = encoder.features(reference["msid.input"])
    assert feats.shape == (1, 1536)
    assert _max_err(feats, reference["msid.features"]) <= ATOL


def test_identity_tokens_with_unconditional_expression_match_official(encoder, reference):
    tokens = encoder.tokens(reference["msid.features"])
    assert _max_err(tokens.first, reference["mapping.first.null_exp"]) <= ATOL
    assert _max_err(tokens.last, reference["mapping.last.null_exp"]) <= ATOL


def test_identity_tokens_with_explicit_expression_match_official(encoder, reference):
    tokens = encoder.tokens(reference["msid.features"], exp=reference["mapping.exp"])
    assert _max_err(tokens.first, reference["mapping.first.with_exp"]) <= ATOL
    assert _max_err(tokens.last, reference["mapping.last.with_exp"]) <= ATOL
    # The expression matters: the explicit one must not give the unconditional tokens.
    assert _max_err(tokens.first, reference["mapping.first.null_exp"]) > 1e-3


def test_expression_mask_selects_null_expression_per_sample(encoder, reference):
    feats = reference["msid.features"].expand(3, -1)
    exp = reference["mapping.exp"].expand(3, -1)
    tokens = encoder.tokens(feats, exp=exp, use_null=torch.tensor([True, False, True]))
    for i, name in ((0, "null_exp"), (1, "with_exp"), (2, "null_exp")):
        assert _max_err(tokens.first[i:i + 1], reference[f"mapping.first.{name}"]) <= ATOL
        assert _max_err(tokens.last[i:i + 1], reference[f"mapping.last.{name}"]) <= ATOL


def test_batch_of_two_matches_official(encoder, reference):
    feats = encoder.features(reference["batch.input"])
    assert _max_err(feats, reference["batch.features"]) <= ATOL
    tokens = encoder.tokens(feats)
    assert _max_err(tokens.first, reference["batch.first.null_exp"]) <= ATOL
    assert _max_err(tokens.last, reference["batch.last.null_exp"]) <= ATOL


def test_landmark_reduction_matches_official(reference):
    five = landmarks68_to_5(reference["align.landmarks68"].numpy())
    np.testing.assert_allclose(five, reference["align.landmarks5"].numpy(), atol=ATOL)


def test_similarity_transform_matches_official(reference):
    matrix = similarity_transform(landmarks68_to_5(reference["align.landmarks68"].numpy()))
    np.testing.assert_allclose(matrix, reference["align.matrix"].numpy(), atol=ATOL)


def test_aligned_crop_matches_official_within_one_grey_level(fixtures, reference):
    photo = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    crop, _ = align_to_arcface_template(photo, reference["align.landmarks68"].numpy())
    official = reference["align.crop_uint8"].numpy()
    assert crop.shape == official.shape == (112, 112, 3) and crop.dtype == np.uint8
    diff = np.abs(crop.astype(int) - official.astype(int))
    assert diff.max() <= 1
    # The published PNG is the same crop.
    assert np.array_equal(np.array(Image.open(fixtures / "astronaut_aligned_112.png")), official)


def test_five_points_and_68_landmarks_give_the_same_crop(fixtures, reference):
    photo = np.array(Image.open(fixtures / "astronaut.png"))
    a, _ = align_to_arcface_template(photo, reference["align.landmarks68"].numpy())
    b, _ = align_to_arcface_template(photo, reference["align.landmarks5"].numpy())
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_aligned_crop_through_encoder_matches_official_crop_features(encoder, reference):
    """The user's path: photo -> our crop -> MSID, against the official crop -> MSID."""
    ours = encoder.features(reference["align.crop_uint8"].numpy()[None])
    official_input = reference["align.crop_uint8"].permute(2, 0, 1)[None].float() / 127.5 - 1
    assert _max_err(ours, encoder.features(official_input)) <= ATOL


def test_fast_mode_keeps_identity_tokens_within_1e_2_of_official(weight_files, reference):
    fast = IdentityEncoder.from_files(weight_files["msid", "pt"], weight_files["mapping", "pt"])
    fast.reduce_precision(torch.bfloat16)
    assert fast.msid.blocks[0].mlp.fc1.weight.dtype == torch.bfloat16  # the mode is really on
    tokens = fast.tokens(fast.features(reference["batch.input"]))
    assert _max_err(tokens.first, reference["batch.first.null_exp"]) <= 1e-2
    assert _max_err(tokens.last, reference["batch.last.null_exp"]) <= 1e-2
    # Features move by about 1 % of their range (bench/encode.py reports it); bound it loosely
    # so that a broken fast path (wrong casts, skipped blocks) still fails.
    assert _max_err(fast.features(reference["batch.input"]), reference["batch.features"]) <= 0.1

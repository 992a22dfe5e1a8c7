"""Likeness scores and best-of-N on real photos, with the reference-formula MSID weights.
With those weights absolute similarities mean little; what is asserted is the arithmetic and
the orderings that hold for any encoder: a face is most similar to itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from f2d.detect import detect_and_align
from f2d.identity import IdentityEncoder, encode_photos
from f2d.likeness import Likeness, best_of, cosine, rank, score_images


@pytest.fixture(scope="module")
def encoder(weight_files):
    return IdentityEncoder.from_files(weight_files["msid", "pt"], weight_files["mapping", "pt"])


@pytest.fixture(scope="module")
def photos():
    a = data.astronaut()
    return {
        "astronaut": a,
        "mirrored": np.ascontiguousarray(a[:, ::-1]),
        "rotated": np.array(Image.fromarray(a).rotate(20, resample=Image.BILINEAR)),
        "coffee": data.coffee(),
        "chelsea": data.chelsea(),
    }


@pytest.fixture(scope="module")
def reference(encoder, detector, photos):
    return encode_photos(encoder, detector, [photos["astronaut"]]).mean


def test_similarity_is_exact_cosine_of_encoder_outputs(encoder, detector, photos, reference):
    images = [photos["mirrored"], photos["rotated"]]
    scores = score_images(encoder, detector, images, reference)
    feats = encoder.features(detect_and_align(images, detector).crops).double()
    ref = reference.double()[0]
    for s, f in zip(scores, feats):
        by_hand = float(f @ ref / (f.norm() * ref.norm()))
        assert s.has_face and s.similarity == pytest.approx(by_hand, abs=1e-9)


def test_a_face_is_most_similar_to_itself(encoder, detector, photos, reference):
    names = ["rotated", "astronaut", "coffee", "mirrored"]
    scores = score_images(encoder, detector, [photos[n] for n in names], reference)
    by_name = dict(zip(names, scores))
    assert by_name["astronaut"].similarity == pytest.approx(1.0, abs=1e-6)
    assert by_name["astronaut"].similarity > by_name["rotated"].similarity
    assert by_name["astronaut"].similarity > by_name["mirrored"].similarity
    assert by_name["coffee"] == Likeness(2, 0.0, False)  # no face: 0, and said so


def test_best_of_n_returns_the_right_images_in_order(encoder, detector, photos, reference):
    names = ["coffee", "rotated", "astronaut", "chelsea", "mirrored"]
    scores = score_images(encoder, detector, [photos[n] for n in names], reference)
    faces = sorted((s for s in scores if s.has_face), key=lambda s: -s.similarity)
    assert [s.index for s in best_of(scores, 3)] == [s.index for s in faces]
    assert best_of(scores, 1)[0].index == 2  # the reference photo itself
    # All five: faces by score, then the faceless ones in batch order.
    assert [s.index for s in best_of(scores, 5)] == [s.index for s in faces] + [0, 3]


def test_ranking_rules_for_ties_negatives_and_faceless():
    scores = [Likeness(0, 0.0, False), Likeness(1, -0.2, True), Likeness(2, 0.5, True), Likeness(3, 0.5, True),
              Likeness(4, 0.0, False)]
    assert [s.index for s in rank(scores)] == [2, 3, 1, 0, 4]  # a face below 0 still beats no face
    with pytest.raises(ValueError, match="keep must be at least 1"):
        best_of(scores, 0)


def test_batch_without_any_face_scores_zero(encoder, detector, photos, reference):
    scores = score_images(encoder, detector, [photos["coffee"], photos["chelsea"]], reference)
    assert scores == [Likeness(0, 0.0, False), Likeness(1, 0.0, False)]


def test_cosine_helper():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert cosine(a, torch.tensor([[2.0, 0.0]])).tolist() == pytest.approx([1.0, 2 ** -0.5])


def test_text_fidelity_combines_by_harmonic_mean_and_can_reorder():
    from f2d.likeness import harmonic_mean, with_text_scores

    assert harmonic_mean(0.8, 0.2) == pytest.approx(2 * 0.8 * 0.2 / 1.0)
    assert harmonic_mean(0.5, -0.3) == 0.0 and harmonic_mean(0.0, 0.0) == 0.0
    scores = [Likeness(0, 0.9, True), Likeness(1, 0.6, True), Likeness(2, 0.0, False)]
    assert [s.index for s in rank(scores)] == [0, 1, 2]
    # Image 0 ignores the text (orthogonal embed), image 1 follows it: 1 now ranks first.
    image_embeds = torch.tensor([[0.0, 1.0], [1.0, 0.2], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0]])
    both = with_text_scores(scores, image_embeds, text)
    assert both[0].text == pytest.approx(0.0, abs=1e-9) and both[0].score == 0.0
    assert both[1].score == pytest.approx(harmonic_mean(0.6, float(1 / np.hypot(1, 0.2))))
    assert [s.index for s in rank(both)] == [1, 0, 2]  # faceless still last

"""The face-detail pass without a host: geometry (crop, mask, paste), who gets which face, and
every face of a batch through the photo route (detect_and_align face="all")."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from f2d.detail import (
    DetailSettings,
    FoundFaces,
    assign_people,
    cosine_similarity,
    crop_face,
    crop_mask,
    face_region,
    image_mask,
    paste_face,
    run_detail,
)


def _image(h=200, w=300, seed=0):
    return torch.rand(h, w, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("box", [(120, 60, 180, 140), (0, 0, 50, 70), (260, 150, 300, 200), (-10, 170, 40, 230)],
                         ids=["middle", "top-left corner", "bottom-right corner", "partly outside"])
@pytest.mark.parametrize("feather", [0.0, 0.3, 1.0])
def test_paste_changes_nothing_outside_the_mask_and_the_mask_fits_the_crop(box, feather):
    image = _image()
    r = face_region(box, image.shape[:2], context=1.5, guide_size=64, feather=feather)
    assert r.size % 8 == 0 and r.size >= 64
    mask = crop_mask(r)
    # The mask's support lies inside the crop: its border is 0, so nothing is cut off.
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask[:, -1].max() == 0
    assert mask.max() == 1.0
    redone = torch.rand(r.size, r.size, 3, generator=torch.Generator().manual_seed(1))
    out, m = paste_face(image, redone, r)
    outside = m == 0
    assert torch.equal(out[outside], image[outside])  # bit for bit
    inside = m > 0.5
    if inside.any():
        assert (out[inside] - image[inside]).abs().mean() > 0.05
    # The image mask is the same ellipse as the crop mask: equal areas (in image px).
    area_crop = float(mask.sum()) * (r.side / r.size) ** 2
    area_image = float(image_mask(r, (10_000, 10_000))[max(0, r.y0):, max(0, r.x0):].sum()) if r.x0 >= 0 and r.y0 >= 0 \
        else area_crop
    assert area_image == pytest.approx(area_crop, rel=0.05)


def test_crop_and_paste_of_an_unchanged_crop_gives_back_the_image():
    """Crop, upscale, scale back: only resampling error, and only inside the mask."""
    y, x = torch.meshgrid(torch.linspace(0, 1, 200), torch.linspace(0, 1, 300), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2], -1)  # smooth, so resampling error is small
    r = face_region((130, 70, 170, 120), image.shape[:2], context=2.0, guide_size=256, feather=0.3)
    crop = crop_face(image, r)
    assert crop.shape == (256, 256, 3)
    out, m = paste_face(image, crop, r)
    assert (out - image).abs().max() < 0.01
    assert torch.equal(out[m == 0], image[m == 0])


def test_big_faces_are_worked_on_at_their_own_size_up_to_the_limit():
    assert face_region((0, 0, 100, 100), (1000, 1000), context=2.0, guide_size=512).size == 512
    assert face_region((0, 0, 400, 400), (1000, 1000), context=2.0, guide_size=512).size == 800
    assert face_region((0, 0, 900, 900), (1000, 1000), context=2.0, guide_size=512).size == 1024


def _vectors(n, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("people", [2, 3, 4])
def test_each_face_gets_its_own_person_in_any_order(people):
    vectors = _vectors(people)
    for order in itertools.permutations(range(people)):
        faces = vectors[list(order)] + 0.05 * _vectors(people, seed=1)
        got = assign_people(cosine_similarity(faces, vectors), [50.0] * people, people)
        assert [a.person for a in got] == list(order)


def test_one_to_one_beats_greedy():
    """Face 0 is a bit closer to both people; greedy would give it person 0 and leave face 1 the
    poor match. The best total pairs face 0 with person 1."""
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    got = assign_people(sim, [1, 1], 2)
    assert [a.person for a in got] == [1, 0]
    assert got[0].similarity == pytest.approx(0.8)


def test_faces_beyond_the_people_keep_their_pixels_or_get_the_nearest():
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    kept = assign_people(sim, [1, 1, 1], 2, extra="keep")
    assert [a.person for a in kept] == [0, 1, None] and "more faces than people" in kept[2].why
    nearest = assign_people(sim, [1, 1, 1], 2, extra="nearest person")
    assert [a.person for a in nearest] == [0, 1, 0]
    fewer = assign_people(sim[:1], [1], 2)  # one face, two people: the closer person
    assert [a.person for a in fewer] == [0]


def test_one_person_all_most_similar_largest():
    sim = torch.tensor([[0.2], [0.9], [0.5]])
    sizes = [40, 30, 80]
    assert [a.person for a in assign_people(sim, sizes, 1, "all")] == [0, 0, 0]
    assert [a.person for a in assign_people(sim, sizes, 1, "most similar")] == [None, 0, None]
    assert [a.person for a in assign_people(sim, sizes, 1, "largest")] == [None, None, 0]
    assert [a.person for a in assign_people(None, sizes, 1, "largest")] == [None, None, 0]
    with pytest.raises(ValueError, match="needs the person's MSID identity vector"):
        assign_people(None, sizes, 1, "most similar")


def _found(boxes_per_image, d=8):
    boxes, idx = [], []
    for i, bs in enumerate(boxes_per_image):
        for b in bs:
            boxes.append(np.array(b, float))
            idx.append(i)
    return FoundFaces(boxes, idx, _vectors(len(boxes), d), "test boxes")


def test_run_keeps_order_passes_faceless_and_small_faces_and_reports_failures():
    images = torch.stack([_image(seed=s) for s in range(3)])
    found = _found([[(40, 40, 100, 110), (200, 50, 210, 60)], [], [(150, 60, 220, 140)]])
    calls = []

    def inpaint(crop, mask, job):
        calls.append((job.image_index, job.face))
        if job.image_index == 2:
            raise RuntimeError("out of memory")
        return 1 - crop

    s = DetailSettings(guide_size=64, min_face_size=20)
    result = run_detail(images, found, None, 1, inpaint, s)
    assert calls == [(0, 0), (2, 0)]  # the 10 px face is too small
    assert result.done == 1 and result.failed == 1
    assert not torch.equal(result.images[0], images[0])
    assert torch.equal(result.images[1], images[1]) and torch.equal(result.images[2], images[2])
    assert result.masks[1].max() == 0 and result.masks[2].max() == 0
    text = "\n".join(result.notes)
    assert "image 0 face 0 -> person 1" in text
    # Worked on at the face's own size where it is larger than guide_size, and the note says so.
    assert "re-done at 144 px (the face is larger than guide_size 64)" in text
    assert "image 0 face 1 of 2 (from the left, 10 px): too small" in text
    assert "image 1: no face found, passed through unchanged" in text
    assert "image 2 face 0: FAILED, kept as it was: RuntimeError: out of memory" in text
    # Every face failing is an error, not a success with nothing done.
    with pytest.raises(RuntimeError, match="out of memory"):
        run_detail(images[2:], _found([[(150, 60, 220, 140)]]), None, 1,
                   lambda *a: (_ for _ in ()).throw(RuntimeError("out of memory")), s)
    # The host's interrupt is never swallowed.
    with pytest.raises(KeyboardInterrupt):
        run_detail(images[:1], _found([[(40, 40, 100, 110)]]), None, 1,
                   lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()), s, fatal=(KeyboardInterrupt,))


def test_max_faces_keeps_the_largest():
    images = _image()[None]
    found = _found([[(10, 10, 50, 50), (100, 10, 190, 100), (200, 10, 260, 70)]])
    done = []
    run_detail(images, found, None, 1, lambda c, m, j: done.append(j.face) or c, DetailSettings(guide_size=64,
                                                                                               max_faces=2))
    assert done == [1, 2]


def test_every_face_of_every_image_through_the_photo_route(detector):
    """detect_and_align(face="all"): one crop per face, image order then left to right; images
    without a face contribute nothing, even when none has one."""
    from face_photos import face_free_photos, group_photos

    from f2d.detect import detect_and_align

    pair = next(p for p in group_photos() if p.name == "pair, one turned")
    faceless = face_free_photos()[0].image
    got = detect_and_align([faceless, pair.image, pair.image[:, ::-1]], detector, face="all", skip_faceless=True)
    assert got.image_indices == [1, 1, 2, 2]
    assert got.skipped == [0] and len(got.crops) == len(got.matrices) == 4
    xs = [f.centre_x for f in got.chosen]
    assert xs[0] < xs[1] and xs[2] < xs[3]
    assert torch.equal(torch.tensor(got.crops[0]), torch.tensor(detect_and_align([pair.image], detector, face="0").crops[0]))
    none = detect_and_align([faceless], detector, face="all", skip_faceless=True)
    assert none.crops.shape[0] == 0 and none.image_indices == []

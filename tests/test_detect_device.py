"""MTCNN's ``device`` argument (the host passes its torch device) and where the turned passes run."""
from __future__ import annotations

import numpy as np
from PIL import Image
from skimage import data

from f2d.detect import MTCNNDetector, get_detector
from face_photos import group_photos, match


def test_device_cpu_gives_identical_faces():
    photo = next(p for p in group_photos() if p.name == "pair, one turned")
    default = MTCNNDetector().detect(photo.image)
    on_cpu = get_detector("mtcnn", device="cpu")
    assert on_cpu.net.device.type == "cpu"
    faces = on_cpu.detect(photo.image)
    assert len(faces) == len(default) == 2
    for a, b in zip(default, faces):
        assert np.array_equal(a.points, b.points) and np.array_equal(a.box, b.box) and a.score == b.score
    errs, false = match([f.points for f in faces], photo.points)
    assert all(e is not None for e in errs) and false == 0


def test_strongly_rolled_face_beside_an_upright_one_is_found():
    """The turned passes run only near what the upright pass could not confirm: a face rolled
    55 degrees next to an upright one must still be found, and framed upright."""
    astro = data.astronaut()
    canvas = np.zeros((512, 1100, 3), np.uint8)
    canvas[:, :512] = astro
    canvas[:, 560:1072] = np.asarray(Image.fromarray(astro).rotate(55, resample=Image.BILINEAR))
    faces = sorted(MTCNNDetector().detect(canvas), key=lambda f: f.centre_x)
    assert len(faces) == 2
    eyes = faces[1].points[1] - faces[1].points[0]
    assert abs(np.degrees(np.arctan2(-eyes[1], eyes[0])) - 55) <= 8  # PIL turns counter-clockwise

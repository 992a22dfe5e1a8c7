"""insightface backend, without its weights (which cannot be had here): model discovery, the
messages users see, and keypoints -> alignment through a stand-in for FaceAnalysis.
Real-model detection is not verified by these tests."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from f2d.detect import (
    DetectorUnavailable,
    InsightFaceDetector,
    detect_and_align,
    find_insightface_pack,
    get_detector,
)


def make_pack(root, pack, files):
    folder = root / "models" / pack
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in files.items():
        (folder / name).write_bytes(b"\0" * size)
    return folder


def test_discovery_needs_a_real_detection_model(tmp_path):
    assert find_insightface_pack([tmp_path]) is None
    make_pack(tmp_path, "buffalo_l", {"w600k_r50.onnx": 10, "1k3d68.onnx": 10})  # no detector
    assert find_insightface_pack([tmp_path]) is None
    make_pack(tmp_path, "buffalo_l", {"det_10g.onnx": 0})  # an interrupted download
    assert find_insightface_pack([tmp_path]) is None
    make_pack(tmp_path, "antelopev2", {"scrfd_10g_bnkps.onnx": 10})
    assert find_insightface_pack([tmp_path]) == (tmp_path, "antelopev2")
    assert find_insightface_pack([tmp_path], "buffalo_l") is None
    other = tmp_path / "second"
    make_pack(other, "buffalo_l", {"det_10g.onnx": 10})
    assert find_insightface_pack([tmp_path, other], "buffalo_l") == (other, "buffalo_l")


def test_missing_models_message_says_which_files_go_where(tmp_path):
    with pytest.raises(DetectorUnavailable) as e:
        get_detector("insightface", insightface_roots=[tmp_path / "insightface"])
    msg = str(e.value)
    assert str(tmp_path / "insightface" / "models" / "<pack>") in msg
    for word in ("antelopev2", "scrfd_10g_bnkps.onnx", "buffalo_l", "det_10g.onnx", "pip install insightface onnxruntime"):
        assert word in msg


def test_models_present_but_insightface_not_installed(tmp_path, monkeypatch):
    make_pack(tmp_path, "antelopev2", {"scrfd_10g_bnkps.onnx": 10})
    monkeypatch.setitem(sys.modules, "insightface", None)
    monkeypatch.setitem(sys.modules, "insightface.app", None)
    with pytest.raises(DetectorUnavailable, match=r"models are in .*antelopev2, but insightface cannot be imported"):
        get_detector("insightface", insightface_roots=[tmp_path])
    # auto: falls back to mediapipe instead of failing.
    assert get_detector("auto", insightface_roots=[tmp_path]).name == "mediapipe"


def test_no_detector_at_all_lists_both_ways(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(DetectorUnavailable) as e:
        get_detector("auto", insightface_roots=[tmp_path])
    msg = str(e.value)
    assert "No face detector is available" in msg
    assert "python install.py" in msg and "mediapipe" in msg and "antelopev2" in msg


class FakeFaceAnalysis:
    """Returns what insightface's FaceAnalysis.get returns: bbox, kps (5 points), det_score."""

    def __init__(self, faces):
        self.faces, self.seen = faces, []

    def get(self, image_bgr):
        self.seen.append(image_bgr)
        return [SimpleNamespace(bbox=np.array(b, np.float32), kps=np.array(k, np.float32), det_score=np.float32(s))
                for b, k, s in self.faces]


def test_insightface_keypoints_feed_the_same_alignment(tmp_path, fixtures, reference):
    make_pack(tmp_path, "antelopev2", {"scrfd_10g_bnkps.onnx": 10})
    photo = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    kps = reference["align.landmarks5"].numpy()
    small_face = kps * 0.3 + 350  # a second, smaller face
    app = FakeFaceAnalysis([(small_face.min(0).tolist() + small_face.max(0).tolist(), small_face, 0.8),
                            ([170, 60, 280, 175], kps, 0.9)])
    det = InsightFaceDetector([tmp_path], app=app)
    assert det.pack == "antelopev2"
    result = detect_and_align([photo], det)
    assert np.array_equal(app.seen[0], photo[..., ::-1])  # insightface is given BGR
    assert result.chosen[0].score == pytest.approx(0.9)  # the largest face, as with mediapipe
    official = reference["align.crop_uint8"].numpy().astype(int)
    assert np.abs(result.crops[0].astype(int) - official).max() <= 1

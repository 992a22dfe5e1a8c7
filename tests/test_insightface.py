"""insightface backend, without its weights (which cannot be had here): model discovery (nested
folders too), the messages users see, the close-up retry, and keypoints -> alignment through a
stand-in for FaceAnalysis. Real-model detection is not verified by these tests."""
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
    found = find_insightface_pack([tmp_path])
    assert (found.root, found.name, found.folder, found.nested) == (tmp_path, "antelopev2",
                                                                    tmp_path / "models" / "antelopev2", False)
    assert find_insightface_pack([tmp_path], "buffalo_l") is None
    other = tmp_path / "second"
    make_pack(other, "buffalo_l", {"det_10g.onnx": 10})
    found = find_insightface_pack([tmp_path, other], "buffalo_l")
    assert (found.root, found.name) == (other, "buffalo_l")


def test_pack_unzipped_one_folder_too_deep_is_found_and_named(tmp_path, caplog):
    """models/antelopev2/antelopev2/*.onnx -- what unzipping antelopev2.zip into a folder of the
    same name gives, a common mistake."""
    folder = make_pack(tmp_path, "antelopev2/antelopev2", {"scrfd_10g_bnkps.onnx": 10, "glintr100.onnx": 10})
    found = find_insightface_pack([tmp_path])
    assert (found.name, found.folder, found.nested) == ("antelopev2", folder, True)
    assert "nested one folder deeper than usual" in found.describe()
    det = InsightFaceDetector([tmp_path], app=FakeFaceAnalysis([]))
    assert det.found.folder == folder
    det.why = "insightface"
    with caplog.at_level("WARNING"):
        InsightFaceDetector([tmp_path], app=FakeFaceAnalysis([]))
    assert "nested folder" in caplog.text and str(folder) in caplog.text


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
    # auto: falls back to MTCNN instead of failing, and says why.
    det = get_detector("auto", insightface_roots=[tmp_path])
    assert det.name == "mtcnn" and det.why == "mtcnn (auto: insightface models present but unusable)"


def test_no_detector_at_all_lists_every_way(tmp_path, monkeypatch):
    """No MTCNN weights (install.py not run), no mediapipe, no insightface models."""
    import f2d.mtcnn

    monkeypatch.setattr(f2d.mtcnn, "WEIGHTS_FILE", tmp_path / "missing.safetensors")
    monkeypatch.setattr(f2d.mtcnn, "facenet_pytorch_data", lambda: None)
    monkeypatch.setitem(sys.modules, "mediapipe.python.solutions", None)
    with pytest.raises(DetectorUnavailable) as e:
        get_detector("auto", insightface_roots=[tmp_path])
    msg = str(e.value)
    assert "No face detector is available" in msg
    assert "python install.py" in msg and "MTCNN" in msg and "mediapipe" in msg and "antelopev2" in msg
    with pytest.raises(DetectorUnavailable, match=r"MTCNN face detector's weights were not found.*python install.py"):
        get_detector("mtcnn")


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


class CloseUpBlindFaceAnalysis(FakeFaceAnalysis):
    """Like SCRFD at 640 px: a face filling the whole photo is not found; with margin it is."""

    def get(self, image_bgr):
        if image_bgr.shape[0] <= 112:
            self.seen.append(image_bgr)
            return []
        return super().get(image_bgr)


def test_close_up_is_retried_with_margin(tmp_path, fixtures, reference):
    make_pack(tmp_path, "buffalo_l", {"det_10g.onnx": 10})
    crop = np.array(Image.open(fixtures / "astronaut_aligned_112.png").convert("RGB"))
    from f2d.align import ARCFACE_TEMPLATE

    kps = ARCFACE_TEMPLATE + 56  # where the face sits in the doubled canvas (56 px margin)
    app = CloseUpBlindFaceAnalysis([((50, 50, 170, 170), kps, 0.9)])
    det = InsightFaceDetector([tmp_path], app=app)
    result = detect_and_align([crop], det)
    assert [im.shape[:2] for im in app.seen] == [(112, 112), (224, 224)]
    assert np.allclose(result.chosen[0].points, ARCFACE_TEMPLATE)  # back in the photo's pixels
    assert np.abs(result.crops[0].astype(int) - crop).mean() <= 2

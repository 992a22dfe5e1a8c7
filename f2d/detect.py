"""Face detection backends that yield the five alignment points.

- ``mediapipe``: needs no download -- mediapipe 0.10.21 ships its face models in the wheel. The
  full-range detector finds faces; face mesh then runs on a padded crop around each one (mesh
  on the whole frame misses faces that are small in it) and gives the five points.
- ``insightface``: the ecosystem standard, when the user has a model pack (antelopev2, buffalo_l)
  in ``models/insightface/models/<pack>/``. insightface ships no weights.
- ``landmarks``: five (or 68) points from elsewhere, e.g. another node pack.
- ``auto``: insightface when its models are present, else mediapipe.

Every backend returns :class:`Face` objects in full-resolution image pixels; alignment is done
by :mod:`f2d.align` from the full image whatever size the detector saw.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .align import CROP_SIZE, align_to_arcface_template, as_five_points, to_uint8_rgb

log = logging.getLogger(__name__)

BACKENDS = ("auto", "mediapipe", "insightface")
INSIGHTFACE_PACKS = ("antelopev2", "buffalo_l")

# Face-mesh indices of the five points (checked against the mesh topology and, on the
# astronaut photo, against the official 68-point landmarks): eye centres as the mean of the
# six lid/corner points that match the 68-point eye contours 36-41 and 42-47; mesh point 4 for
# the nose tip (1.7 px from the official point 30 there, where mesh point 1 sits 5 px lower,
# on the underside of the tip); mouth corners 61 and 291 (68-point 48 and 54).
MESH_EYE_IMAGE_LEFT = (33, 160, 158, 133, 153, 144)
MESH_EYE_IMAGE_RIGHT = (362, 385, 387, 263, 373, 380)
MESH_NOSE_TIP = 4
MESH_MOUTH_CORNERS = (61, 291)

DETECT_MAX_SIDE = 1024  # detection input; alignment always samples the full image
MESH_CROP = 256  # side of the square crop that face mesh sees
MESH_PAD = 0.6  # crop = detection box grown by this fraction on every side


class DetectorUnavailable(RuntimeError):
    """No usable face detector; the message lists the ways to get one."""

    __module__ = "f2d.detect"


class NoFaceError(ValueError):
    """An image in which no face was found (or not the requested one)."""

    __module__ = "f2d.detect"

    def __init__(self, message: str, image_index: int):
        super().__init__(message)
        self.image_index = image_index


@dataclass
class Face:
    box: np.ndarray  # (4,) x0, y0, x1, y1 in image pixels
    points: np.ndarray  # (5, 2) eye centres, nose tip, mouth corners (image left first)
    score: float = 1.0

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def centre_x(self) -> float:
        return float(self.box[0] + self.box[2]) / 2


@dataclass
class AlignedFaces:
    """Result of :func:`detect_and_align` over a batch of images."""

    crops: np.ndarray  # (N, 112, 112, 3) uint8, one per image that kept a face
    chosen: list[Face]  # the face aligned from each kept image
    image_indices: list[int]  # which input image each crop came from
    faces: list[list[Face]] = field(default_factory=list)  # every face found, per input image, left to right
    skipped: list[int] = field(default_factory=list)  # faceless images skipped
    matrices: list[np.ndarray] = field(default_factory=list)  # image -> crop similarity per crop

    def describe(self) -> list[str]:
        """One line per input image: which face was used, or that it was skipped."""
        lines = {i: f"photo {i}: no face, skipped" for i in self.skipped}
        for i, face in zip(self.image_indices, self.chosen):
            found = self.faces[i]
            k = next(j for j, f in enumerate(found) if f is face)
            where = "the only face" if len(found) == 1 else f"face {k} of {len(found)} from the left"
            lines[i] = f"photo {i}: {where} (score {face.score:.2f})"
        return [lines[i] for i in sorted(lines)]


def _box_from_points(points: np.ndarray) -> np.ndarray:
    lo, hi = points.min(0), points.max(0)
    pad = (hi - lo) * 0.35
    return np.concatenate([lo - pad, hi + pad])


def _scaled_for_detection(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return image, 1.0
    from PIL import Image

    small = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    return np.asarray(small), scale


class LandmarksDetector:
    """Faces given as points from elsewhere: one (5, 2)/(68, 2) array per face, per image."""

    name = "landmarks"

    def __init__(self, landmarks: Sequence[Sequence[np.ndarray]] | np.ndarray):
        arr = landmarks
        if isinstance(arr, np.ndarray) and arr.ndim == 2:
            arr = [[arr]]  # one image, one face
        elif isinstance(arr, np.ndarray) and arr.ndim == 3:
            arr = [[a] for a in arr]  # one face per image
        self.landmarks = [[as_five_points(p) for p in faces] for faces in arr]

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        if index >= len(self.landmarks):
            raise NoFaceError(
                f"image {index}: no landmarks were given for it ({len(self.landmarks)} sets for the batch); "
                "give one set of points per image", index)
        return [Face(box=_box_from_points(p), points=p) for p in self.landmarks[index]]


class MediaPipeDetector:
    """mediapipe's full-range face detector, then face mesh on each padded detection crop."""

    name = "mediapipe"

    def __init__(self, min_confidence: float = 0.5):
        try:
            from mediapipe.python.solutions import face_detection, face_mesh
        except ImportError as e:
            raise DetectorUnavailable(
                f"mediapipe cannot be imported ({e}). " + how_to_get_a_detector()
            ) from None
        self._detector = face_detection.FaceDetection(model_selection=1, min_detection_confidence=min_confidence)
        # Two faces: a padded crop can hold a neighbour; the one nearest the box is kept.
        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=2, refine_landmarks=False,
                                        min_detection_confidence=0.3)

    def close(self) -> None:
        self._detector.close()
        self._mesh.close()

    def _boxes(self, image: np.ndarray) -> list[tuple[np.ndarray, float]]:
        small, scale = _scaled_for_detection(image, DETECT_MAX_SIDE)
        h, w = small.shape[:2]
        result = self._detector.process(np.ascontiguousarray(small))
        boxes = []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]) / scale
            boxes.append((box, float(det.score[0])))
        return boxes

    def _mesh_points(self, image: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """Five points of the face in ``box``, by face mesh on a square padded crop."""
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        side = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * MESH_PAD)
        x0, y0 = cx - side / 2, cy - side / 2
        scale = MESH_CROP / side
        # Crop + resize in one affine sample, black outside the image.
        matrix = np.array([[scale, 0, -x0 * scale], [0, scale, -y0 * scale]])
        import cv2  # mediapipe's own dependency; 100x faster than numpy for this crop

        crop = cv2.warpAffine(image, matrix, (MESH_CROP, MESH_CROP), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        result = self._mesh.process(crop)
        if not result.multi_face_landmarks:
            return None
        centre = np.array([MESH_CROP / 2, MESH_CROP / 2])
        best = None
        for lm in result.multi_face_landmarks:
            pts = np.array([[p.x, p.y] for p in lm.landmark]) * MESH_CROP
            five = np.stack([
                pts[list(MESH_EYE_IMAGE_LEFT)].mean(0),
                pts[list(MESH_EYE_IMAGE_RIGHT)].mean(0),
                pts[MESH_NOSE_TIP],
                pts[MESH_MOUTH_CORNERS[0]],
                pts[MESH_MOUTH_CORNERS[1]],
            ])
            dist = np.linalg.norm(five[2] - centre)
            if best is None or dist < best[0]:
                best = (dist, five)
        return best[1] / scale + np.array([x0, y0])

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        image = to_uint8_rgb(image)
        faces = []
        for box, score in self._boxes(image):
            points = self._mesh_points(image, box)
            if points is None:
                log.info("image %d: face mesh found no landmarks in the face at %s; ignored", index, box.round())
                continue
            faces.append(Face(box=box, points=points, score=score))
        return faces


def find_insightface_pack(roots: Sequence[str | os.PathLike], pack: str | None = None) -> tuple[Path, str] | None:
    """(root, pack) for the first pack with a detection model, or None."""
    packs = [pack] if pack else list(INSIGHTFACE_PACKS)
    for root in map(Path, roots):
        for name in packs:
            folder = root / "models" / name
            if any(_is_detection_model(f) for f in folder.glob("*.onnx")):
                return root, name
    return None


def _is_detection_model(path: Path) -> bool:
    n = path.name.lower()
    return n.startswith(("det_", "scrfd")) and path.stat().st_size > 0


def insightface_setup_help(roots: Sequence[str | os.PathLike]) -> str:
    where = ", ".join(str(Path(r) / "models" / "<pack>") for r in roots) or "models/insightface/models/<pack>"
    return (
        "insightface needs a model pack: put the .onnx files of antelopev2 (scrfd_10g_bnkps.onnx, ...) "
        f"or buffalo_l (det_10g.onnx, ...) into {where} -- the same files IPAdapter FaceID, InstantID "
        "and PuLID use -- and install insightface and onnxruntime (`pip install insightface onnxruntime`)."
    )


class InsightFaceDetector:
    name = "insightface"

    def __init__(self, roots: Sequence[str | os.PathLike], pack: str | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), det_size: int = 640, app=None):
        found = find_insightface_pack(roots, pack)
        if found is None:
            wanted = f"the '{pack}' pack" if pack else "a model pack"
            raise DetectorUnavailable(f"insightface: {wanted} with a detection model was not found. "
                                      + insightface_setup_help(roots))
        self.root, self.pack = found
        if app is None:
            try:
                from insightface.app import FaceAnalysis
            except ImportError as e:
                raise DetectorUnavailable(
                    f"insightface models are in {self.root / 'models' / self.pack}, but insightface cannot be "
                    f"imported ({e}). Install it: pip install insightface onnxruntime"
                ) from None
            app = FaceAnalysis(name=self.pack, root=str(self.root), providers=list(providers),
                               allowed_modules=["detection"])
            app.prepare(ctx_id=0, det_size=(det_size, det_size))
        self.app = app

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        found = self.app.get(np.ascontiguousarray(to_uint8_rgb(image)[..., ::-1]))  # insightface reads BGR
        return [Face(box=np.asarray(f.bbox, dtype=np.float64)[:4], points=np.asarray(f.kps, dtype=np.float64),
                     score=float(f.det_score)) for f in found]


def how_to_get_a_detector(insightface_roots: Sequence[str | os.PathLike] = ()) -> str:
    return (
        "Two ways to get a face detector: (1) mediapipe, no download needed: run "
        "`python install.py` in the Face2Diffusion pack folder with ComfyUI's Python (it installs "
        "mediapipe 0.10.21 and keeps your numpy); (2) " + insightface_setup_help(insightface_roots)
    )


def get_detector(backend: str = "auto", insightface_roots: Sequence[str | os.PathLike] = (),
                 insightface_pack: str | None = None, insightface_providers: Sequence[str] = ("CPUExecutionProvider",)):
    """A detector object with ``.name`` and ``.detect(image, index) -> list[Face]``."""
    if backend == "mediapipe":
        return MediaPipeDetector()
    if backend == "insightface":
        return InsightFaceDetector(insightface_roots, insightface_pack, insightface_providers)
    if backend != "auto":
        raise ValueError(f"unknown face detector '{backend}'; choose one of {', '.join(BACKENDS)}")
    problems = []
    if find_insightface_pack(insightface_roots, insightface_pack) is not None:
        try:
            return InsightFaceDetector(insightface_roots, insightface_pack, insightface_providers)
        except DetectorUnavailable as e:
            problems.append(str(e))
            log.warning("insightface models found but unusable, trying mediapipe: %s", e)
    try:
        return MediaPipeDetector()
    except DetectorUnavailable:
        pass
    raise DetectorUnavailable(" ".join(["No face detector is available."] + problems
                                       + [how_to_get_a_detector(insightface_roots)]))


def choose_face(faces: list[Face], face: str | int, index: int) -> Face:
    """``"largest"`` or an index into the faces ordered left to right."""
    if face == "largest":
        return max(faces, key=lambda f: f.area)
    i = int(face)
    if not 0 <= i < len(faces):
        raise NoFaceError(
            f"image {index}: face {i} was asked for, but {len(faces)} face(s) were found "
            f"(counted from 0, left to right); pick 0..{len(faces) - 1} or 'largest'", index)
    return faces[i]


def detect_and_align(images: Sequence[np.ndarray] | np.ndarray, detector, face: str | int = "largest",
                     skip_faceless: bool = False, progress: Callable[[int, int], None] | None = None) -> AlignedFaces:
    """Detect, choose one face per image and align it onto the ArcFace 112x112 template.

    ``images``: a sequence (or a batch array) of (H, W[, C]) images, uint8 or float in [0, 1],
    grey, RGB or RGBA. Faceless images raise :class:`NoFaceError` naming the image, or with
    ``skip_faceless`` are skipped with a warning while at least one face remains.
    ``progress(done, total)`` is called before each image (hosts use it to interrupt).
    """
    crops, chosen, kept, all_faces, skipped, matrices = [], [], [], [], [], []
    for i, raw in enumerate(images):
        if progress is not None:
            progress(i, len(images))
        image = to_uint8_rgb(raw)
        faces = sorted(detector.detect(image, i), key=lambda f: f.centre_x)
        all_faces.append(faces)
        if not faces:
            if skip_faceless:
                skipped.append(i)
                continue
            raise NoFaceError(
                f"image {i}: no face found by the {detector.name} detector ({image.shape[1]}x{image.shape[0]} px). "
                "Use a photo where the face is clearly visible and upright, or turn on skip_faceless "
                "to leave such images out of a batch", i)
        f = choose_face(faces, face, i)
        crop, matrix = align_to_arcface_template(image, f.points)
        crops.append(crop)
        chosen.append(f)
        kept.append(i)
        matrices.append(matrix)
    if skipped:
        if not crops:
            raise NoFaceError(f"no face found in any of the {len(skipped)} image(s) by the {detector.name} detector; "
                              "use photos where the face is clearly visible", skipped[0])
        log.warning("no face in image(s) %s: skipped", ", ".join(map(str, skipped)))
    return AlignedFaces(np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8),
                        chosen, kept, all_faces, skipped, matrices)

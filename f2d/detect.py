"""Face detection backends that yield the five alignment points.

- ``mtcnn``: MTCNN in plain torch (:mod:`f2d.mtcnn`), weights (2 MB, MIT) copied by install.py
  out of the facenet-pytorch wheel. Runs wherever ComfyUI's torch runs -- every Python,
  Windows, macOS, Linux -- with nothing downloaded at run time. Upright and turned passes, a
  confirming second look per face and a padded retry for close-ups (see MTCNNDetector).
- ``mediapipe``: needs no download -- mediapipe 0.10.21 ships its face models in the wheel (not
  for Python 3.13). The full-range detector finds faces; face mesh then runs on a padded crop
  around each one (mesh on the whole frame misses faces that are small in it) and gives the
  five points.
- ``insightface``: the ecosystem standard, when the user has a model pack (antelopev2, buffalo_l)
  in ``models/insightface/models/<pack>/``. insightface ships no weights.
- ``landmarks``: five (or 68) points given from elsewhere (F2D Encode Identity's ``points`` input).
- ``auto``: insightface when its models are present, else mtcnn, else mediapipe; the result
  says which one was used and why.

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

BACKENDS = ("auto", "mtcnn", "mediapipe", "insightface")
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

# Below this eye distance (px in the photo) the 112 px crop is mostly upsampled blur: the
# identity still encodes, but the result says it will be poor.
TINY_EYE_DISTANCE = 20.0
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


class NoFaceInBatchError(NoFaceError):
    """skip_faceless, and not one image of the batch had a face."""

    __module__ = "f2d.detect"


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

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.points[1] - self.points[0]))


@dataclass
class AlignedFaces:
    """Result of :func:`detect_and_align` over a batch of images."""

    crops: np.ndarray  # (N, 112, 112, 3) uint8, one per image that kept a face
    chosen: list[Face]  # the face aligned from each kept image
    image_indices: list[int]  # which input image each crop came from
    faces: list[list[Face]] = field(default_factory=list)  # every face found, per input image, left to right
    skipped: list[int] = field(default_factory=list)  # faceless images skipped
    matrices: list[np.ndarray] = field(default_factory=list)  # image -> crop similarity per crop
    detector: str = ""  # which detector found the faces (why auto chose it, where it runs)
    tiny_photos: dict[int, str] = field(default_factory=dict)  # photos too small to search, and their size

    def tiny(self) -> list[int]:
        """Input images whose chosen face is too small for a good identity."""
        return [i for i, f in zip(self.image_indices, self.chosen) if f.eye_distance < TINY_EYE_DISTANCE]

    def describe(self) -> list[str]:
        """One line per input image: which face was used (with face="all": one line per face),
        or that it was skipped; then the detector. A face too small for a good identity says so
        on its line."""
        lines: dict[int, list[str]] = {i: [f"photo {i}: no face, skipped"] for i in self.skipped}
        for i, face in zip(self.image_indices, self.chosen):
            found = self.faces[i]
            k = next(j for j, f in enumerate(found) if f is face)
            where = "the only face" if len(found) == 1 else f"face {k} of {len(found)} from the left"
            line = f"photo {i}: {where} (score {face.score:.2f})"
            if face.eye_distance < TINY_EYE_DISTANCE:
                line += (f" -- TINY FACE: eyes {face.eye_distance:.0f} px apart (under {TINY_EYE_DISTANCE:.0f}), "
                         "the identity will be poor; use a photo where the face is larger")
            lines.setdefault(i, []).append(line)
        out = [line for i in sorted(lines) for line in lines[i]]
        return out + ([f"detector: {self.detector}"] if self.detector else [])


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
    """Faces given as points from elsewhere: one (5, 2)/(68, 2) array per face, per image, or
    what :func:`f2d.points.parse_face_points` reads (OpenPose/DWPose keypoints, JSON)."""

    name = "landmarks"
    why = "given points (no detection)"

    def __init__(self, landmarks):
        from .points import GivenFaces, parse_face_points

        arr = landmarks
        if isinstance(arr, (str, dict)) or (isinstance(arr, list) and arr and isinstance(arr[0], dict)):
            self.given = parse_face_points(arr)
        elif isinstance(arr, list) and arr and isinstance(arr[0], GivenFaces):
            self.given = arr
        else:
            if isinstance(arr, np.ndarray) and arr.ndim == 2:
                arr = [[arr]]  # one image, one face
            elif isinstance(arr, np.ndarray) and arr.ndim == 3:
                arr = [[a] for a in arr]  # one face per image
            self.given = [GivenFaces([as_five_points(p) for p in faces]) for faces in arr]

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        if index >= len(self.given):
            raise NoFaceError(
                f"image {index}: no points were given for it ({len(self.given)} sets for the batch); "
                "give one set of points per image", index)
        h, w = np.asarray(image).shape[:2]
        points = [as_five_points(p) for p in self.given[index].in_pixels(w, h)]
        for k, p in enumerate(points):
            # A face whose eyes lie off the photo would align to an empty (black) crop.
            eyes = p[:2]
            if not ((eyes >= -0.1 * np.array([w, h])) & (eyes <= 1.1 * np.array([w, h]))).all():
                raise NoFaceError(
                    f"image {index}: the given points of face {k} put its eyes at "
                    f"{np.round(eyes).astype(int).tolist()}, outside the {w}x{h} px photo; give points in "
                    "this photo's pixels (or 0..1 of its size)", index)
        return [Face(box=_box_from_points(p), points=p) for p in points]


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

    runs_on = "CPU (mediapipe's own runtime)"

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



def _affine_sample(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` mapped by the 2x3/3x3 forward ``matrix`` into a (w, h) canvas, bilinear, black outside."""
    from PIL import Image

    inv = np.linalg.inv(np.vstack([np.asarray(matrix, np.float64)[:2], [0, 0, 1]]))
    return np.asarray(Image.fromarray(image).transform(size, Image.AFFINE, tuple(inv[:2].ravel()), Image.BILINEAR))


def _rotation(image_wh: tuple[int, int], degrees: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Forward matrix turning an image by ``degrees`` (counter-clockwise on screen) about its
    centre onto a canvas that holds all of it, and the canvas size."""
    w, h = image_wh
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    cw, ch = int(np.ceil(abs(w * c) + abs(h * s))), int(np.ceil(abs(w * s) + abs(h * c)))
    rot = np.array([[c, s], [-s, c]])
    t = np.array([cw / 2, ch / 2]) - rot @ np.array([w / 2, h / 2])
    return np.vstack([np.column_stack([rot, t]), [0, 0, 1]]), (cw, ch)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _square_inside(box: np.ndarray, w: int, h: int) -> bool:
    """Whether the square O-Net sees around ``box`` lies in the image with a margin (a face
    that touches or fills the frame is framed poorly there; the second look pads it)."""
    centre, side = (box[:2] + box[2:4]) / 2, max(box[2] - box[0], box[3] - box[1])
    half = 0.6 * side
    return bool(np.all(centre - half >= 0) and np.all(centre + half <= [w, h]))


def _roll(points: np.ndarray) -> float:
    """How far the eye line of five points is from level, degrees (0-180)."""
    dx, dy = np.asarray(points)[1] - np.asarray(points)[0]
    return float(abs(np.degrees(np.arctan2(dy, dx))))


def eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(points)[1] - np.asarray(points)[0]))


class MTCNNDetector:
    """MTCNN in plain torch (:mod:`f2d.mtcnn`), made to find every visible face:

    1. the cascade runs on the photo upright (it finds faces rolled up to ~60 degrees there,
       though it frames them poorly);
    2. where the upright pass saw something face-like that it did not confirm (R-Net accepted
       it, O-Net or the second look did not), the cascade runs again on that neighbourhood turned
       by +-30 degrees -- the turned passes cost time only where they can find something new;
    3. detections of the same face from several passes are merged;
    4. each face gets a second look: the photo is sampled so that face stands upright at a
       fixed size in the middle of a small canvas, and the cascade runs again there. That look
       places the five points (MTCNN's points are best on upright, well-framed faces) and must
       confirm the face, which removes the rare false face a turned pass produces (a face the
       upright pass is sure of gets a quick look: O-Net alone on that canvas, see TRUST);
    5. a photo with no face is padded and tried again: a face that fills the frame (a tight
       112 px crop) has no margin for the 12 px proposal windows to fit around it.

    ``device``: where the networks run ("cpu", "cuda", ...); the results are the same wherever
    they run, up to float rounding.
    """

    name = "mtcnn"
    ROLLS = (30.0, -30.0)  # the turned passes, around unconfirmed candidates
    CANVAS = 224  # side of the second-look canvas
    CANVAS_EYES = 48.0  # eye distance there, px: the face spans ~150 px, O-Net sees it at 48
    CONFIRM = 0.9  # second-look score a face must reach
    # An upright face the upright pass is sure of (O-Net score, eyes near level, not cut by the
    # frame) gets a quick second look: the same canvas, but O-Net alone on the box where the
    # second look's cascade puts such a face (QUICK_BOX), not the whole cascade (~1/5 of the
    # cost; most faces of most photos are such faces). It needs only O-Net's own threshold: the
    # reference implementation accepts every upright face at 0.7 once, this one has passed 0.98
    # already; CONFIRM guards against the turned passes' rare false faces, never seen here.
    TRUST = 0.98
    TRUST_ROLL = 15.0  # degrees
    TRUST_LOOK = 0.7
    QUICK_BOX = (-0.04, -0.19, 2.86)  # centre offset x, y from the canvas centre and side, in eye distances
    MIN_FACE = 24.0  # smallest face box (px) the upright pass looks for
    UPRIGHT_MAX_SIDE = 2048
    CLOSE_UP_SIDE = 256
    WINDOW = 3.0  # a turned pass's neighbourhood: this many candidate sides across
    WINDOW_FACE = 64.0  # the candidate's side there, px
    MAX_WINDOWS = 8  # turned neighbourhoods per photo, best R-Net scores first

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None):
        from .mtcnn import MTCNN, MTCNNWeightsError

        self.device = str(device or "cpu")
        try:
            self.net = MTCNN.from_available_weights(Path(weights) if weights else None, self.device)
        except (MTCNNWeightsError, OSError) as e:
            raise DetectorUnavailable(str(e)) from None

    def _upright(self, image: np.ndarray) -> tuple[list[tuple[float, np.ndarray]], np.ndarray, list]:
        """(score, five points) per face of the upright pass, its candidates (M, 5: square box,
        R-Net score), and the faces it is sure of (score, points; see TRUST), in ``image``
        pixels. The photo is seen at up to UPRIGHT_MAX_SIDE px, faces from MIN_FACE px (a
        4000 px group photo keeps faces with ~20 px eye distance)."""
        small, scale = _scaled_for_detection(image, self.UPRIGHT_MAX_SIDE)
        boxes, scores, points, candidates = self.net.cascade(small, min_size=self.MIN_FACE)
        candidates = candidates.copy()
        candidates[:, :4] /= scale
        h, w = small.shape[:2]
        sure = [(float(s), p / scale) for s, p, b in zip(scores, points, boxes)
                if s >= self.TRUST and _roll(p) <= self.TRUST_ROLL and _square_inside(b, w, h)]
        return [(float(s), p / scale) for s, p in zip(scores, points)], candidates, sure

    def _sample(self, image: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``image`` mapped by forward matrix ``m`` into a ``size`` canvas; shrinking by more than
        2 samples a reduced copy, as bilinear sampling would alias."""
        shrink = 1.0 / np.sqrt(abs(np.linalg.det(m[:2, :2])))
        if shrink > 2:
            from PIL import Image

            f = int(shrink // 1.5)
            return _affine_sample(np.asarray(Image.fromarray(image).reduce(f)), m @ np.diag([f, f, 1.0]), size)
        return _affine_sample(image, m, size)

    def _turned_near(self, image: np.ndarray, candidates: np.ndarray, faces: list[np.ndarray]) -> list:
        """(score, points) from the turned passes around each candidate that no face explains."""
        found, windows = [], []
        for x0, y0, x1, y1, _ in candidates[np.argsort(-candidates[:, 4])]:
            centre, side = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, 1.0)
            near = lambda p, r: np.linalg.norm(centre - p) <= r  # noqa: E731
            if any(near(f[:2].mean(0), 1.5 * eye_distance(f)) for f in faces) \
                    or any(near(c, 0.5 * s) for c, s in windows):
                continue
            windows.append((centre, side))
            if len(windows) >= self.MAX_WINDOWS:
                break
        canvas = int(np.ceil(self.WINDOW * self.WINDOW_FACE))
        matrices = []
        for centre, side in windows:
            for roll in self.ROLLS:
                a = np.radians(roll)
                rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * (self.WINDOW_FACE / side)
                matrices.append(np.vstack([np.column_stack([rot, canvas / 2 - rot @ centre]), [0, 0, 1]]))
        if not matrices:
            return found
        # All windows and rolls in one batch (same canvas size).
        results = self.net.cascade_many([self._sample(image, m, (canvas, canvas)) for m in matrices],
                                        min_size=self.WINDOW_FACE / 2, near=(canvas / 2, canvas / 2, self.WINDOW_FACE))
        for m, (_, scores, points, _) in zip(matrices, results):
            inv = np.linalg.inv(m)
            found += [(float(s), _apply(inv, p)) for s, p in zip(scores, points)]
        return found

    @staticmethod
    def _groups(found: list[tuple[float, np.ndarray]]) -> list[list[tuple[float, np.ndarray]]]:
        """Detections of the same face (eye midpoints within half an eye distance), best first."""
        groups: list[list[tuple[float, np.ndarray]]] = []
        for score, pts in sorted(found, key=lambda f: -f[0]):
            mid = pts[:2].mean(0)
            for g in groups:
                k = g[0][1]
                if np.linalg.norm(mid - k[:2].mean(0)) <= 0.5 * max(eye_distance(k), eye_distance(pts)):
                    g.append((score, pts))
                    break
            else:
                groups.append([(score, pts)])
        return groups

    def _second_look(self, image: np.ndarray, points: np.ndarray):
        """Re-detect the face at ``points`` upright and centred: (score, points, box) in
        ``image`` pixels, or None."""
        return self._second_looks(image, [points])[0]

    def _second_looks(self, image: np.ndarray, points: list[np.ndarray], quick: bool = False) -> list:
        """:meth:`_second_look` for several faces, the cascade run once over all their canvases
        (``quick``: O-Net alone, on QUICK_BOX)."""
        from .align import ARCFACE_TEMPLATE, similarity_transform

        if not points:
            return []
        tpl = ARCFACE_TEMPLATE - ARCFACE_TEMPLATE.mean(0)
        tpl = tpl * self.CANVAS_EYES / np.linalg.norm(tpl[1] - tpl[0]) + self.CANVAS / 2
        matrices = [similarity_transform(p, tpl) for p in points]
        canvases = [self._sample(image, m, (self.CANVAS, self.CANVAS)) for m in matrices]
        chosen = {}
        if quick:
            dx, dy, side = np.array(self.QUICK_BOX) * self.CANVAS_EYES
            c = np.array([self.CANVAS / 2 + dx, self.CANVAS / 2 + dy])
            box = np.concatenate([c - side / 2, c + side / 2])
            scores, boxes, pts = self.net.look(canvases, [box] * len(canvases))
            found = [(boxes[k:k + 1], scores[k:k + 1], None, pts[k]) if scores[k] >= self.TRUST_LOOK else
                     (np.zeros((0, 4)), np.zeros(0), None, None) for k in range(len(canvases))]
        else:
            found = self.net.cascade_many(canvases, min_size=self.CANVAS_EYES * 1.5,
                                          near=(self.CANVAS / 2, self.CANVAS / 2, self.CANVAS_EYES))
        placed = {}  # the quick look's points, placed on its fixed box
        for k, (boxes, scores, pts, quick_points) in enumerate(found):
            if not len(scores):
                continue
            if pts is None:  # the quick look: its one box
                chosen[k], placed[k] = (float(scores[0]), boxes[0]), quick_points
                continue
            i = int(np.argmin([np.linalg.norm(p[:2].mean(0) - tpl[:2].mean(0)) for p in pts]))
            if np.linalg.norm(pts[i][:2].mean(0) - tpl[:2].mean(0)) <= 0.5 * self.CANVAS_EYES:
                chosen[k] = (float(scores[i]), boxes[i])
        # Points from O-Net run on its own final box (the cascade places them on the box it had
        # before the last regression; the quick look's box is fixed in the canvas, so its points
        # follow the face alone).
        todo = [k for k in chosen if k not in placed]
        refined = dict(zip(todo, self.net.points_in_boxes([canvases[k] for k in todo], [chosen[k][1] for k in todo])))
        refined.update(placed)
        out = [None] * len(points)
        for k, (score, (x0, y0, x1, y1)) in chosen.items():
            inv = np.linalg.inv(matrices[k])
            corners = _apply(inv, np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]))
            out[k] = (score, _apply(inv, refined[k]), np.concatenate([corners.min(0), corners.max(0)]))
        return out

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        import torch

        # The cascade's convolutions are tiny (3-64 channels): extra threads gain little and,
        # when the cores are busy, their wake-ups cost 10-25x (measured on 2 shared cores:
        # 5.5 s with 2 threads, 0.2 s with 1, per 600x400 photo). The host's setting is restored.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._detect(to_uint8_rgb(image), index)
        finally:
            torch.set_num_threads(threads)

    def _confirm(self, image: np.ndarray, groups, index: int, quiet: bool = False) -> list:
        """The faces of ``groups`` that their second look confirms: (score, points, box) each.

        The best-scoring pass can still place the points badly on a rolled face (the upright
        pass sees a 35 degree face as a face, its eyes nearly level); the second look then frames
        it wrongly and fails, and the group's next detection is tried. Each round looks at one
        detection of every group still open, in one batch."""
        confirmed: list = []
        open_groups = list(enumerate(groups))
        depth = 0
        while open_groups:
            trying = [(g, group[depth]) for g, group in open_groups if depth < len(group)]
            if not trying:
                break
            looks = self._second_looks(image, [pts for _, (_, pts) in trying])
            done = set()
            for (g, (score, _)), look in zip(trying, looks):
                if look is not None and look[0] >= self.CONFIRM:
                    confirmed.append((g, (max(score, look[0]), look[1], look[2])))
                    done.add(g)
            open_groups = [(g, group) for g, group in open_groups if g not in done and depth + 1 < len(group)]
            depth += 1
        if not quiet:
            for g, group in enumerate(groups):
                if g not in {c[0] for c in confirmed}:
                    log.debug("image %d: a face candidate at %s was not confirmed; ignored", index,
                             group[0][1][2].round())
        return [c for _, c in sorted(confirmed, key=lambda c: c[0])]

    def _detect(self, image: np.ndarray, index: int) -> list[Face]:
        upright, candidates, sure = self._upright(image)
        groups = self._groups(upright)
        # The quick look must still find the face where the upright pass put it.
        trusted = [(max(s, look[0]), look[1], look[2]) for (s, p), look in zip(sure, self._second_looks(
            image, [p for _, p in sure], quick=True)) if look is not None
            and np.linalg.norm(look[1][:2].mean(0) - p[:2].mean(0)) <= 0.5 * eye_distance(p)]
        sure = [p for _, p, _ in trusted]
        unsure = [g for g in groups if not any(
            np.linalg.norm(g[0][1][:2].mean(0) - d[:2].mean(0)) <= 0.5 * eye_distance(d) for d in sure)]
        confirmed = trusted + self._confirm(image, unsure, index, quiet=True)
        turned = self._turned_near(image, candidates, [p for _, p, _ in confirmed])
        if turned:
            # Unconfirmed upright detections get another chance with the turned ones' points.
            done = [p for _, p, _ in confirmed]
            rest = [(s, p) for s, p in upright + turned
                    if not any(np.linalg.norm(p[:2].mean(0) - d[:2].mean(0)) <= 0.5 * eye_distance(d) for d in done)]
            confirmed += self._confirm(image, self._groups(rest), index)
        if not confirmed and not groups and not turned:
            # A face that fills the frame is large at any size: retry small, so the retry costs
            # little on the photos that truly hold no face.
            small, scale = _scaled_for_detection(image, self.CLOSE_UP_SIDE)
            h, w = small.shape[:2]
            pad = max(h, w) // 3
            m = np.array([[1.0, 0, pad], [0, 1, pad], [0, 0, 1]])
            framed = _affine_sample(small, m, (w + 2 * pad, h + 2 * pad))
            _, scores, points = self.net.detect(framed, min_size=self.MIN_FACE)
            groups = self._groups([(float(s), (p - pad) / scale) for s, p in zip(scores, points)])
            confirmed = self._confirm(image, groups, index)
        # Two candidates can settle on the same face in their second looks.
        kept = [g[0][1] for g in self._groups([(s, p) for s, p, _ in confirmed])]
        return [Face(box=b, points=p, score=s) for s, p, b in confirmed if any(p is k for k in kept)]


@dataclass(frozen=True)
class InsightFacePack:
    root: Path  # the insightface root (holds models/)
    name: str  # antelopev2, buffalo_l
    folder: Path  # the folder holding the .onnx files
    nested: bool = False  # found one level down (models/antelopev2/antelopev2/), as some zips unpack

    def describe(self) -> str:
        where = f"{self.name} in {self.folder}"
        return where + (" (nested one folder deeper than usual; it works, moving the .onnx files up one "
                        "level is the usual layout)" if self.nested else "")


def find_insightface_pack(roots: Sequence[str | os.PathLike], pack: str | None = None) -> InsightFacePack | None:
    """The first pack with a detection model under ``<root>/models/<pack>/``, also one folder
    deeper (``<pack>/<pack>/``, what unzipping into a same-named folder gives), or None."""
    packs = [pack] if pack else list(INSIGHTFACE_PACKS)
    for root in map(Path, roots):
        for name in packs:
            folder = root / "models" / name
            for candidate, nested in ((folder, False), (folder / name, True)):
                if candidate.is_dir() and any(_is_detection_model(f) for f in candidate.glob("*.onnx")):
                    return InsightFacePack(root, name, candidate, nested)
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
    """insightface's FaceAnalysis (0.7.3 and 2.x) with the detection model only.

    The pack folder is passed as an absolute path: 2.x takes a folder as ``name`` directly and
    0.7.3 joins it onto its root (an absolute path wins the join), so both load from exactly
    the folder found here, nested or not, and neither tries to download."""

    name = "insightface"
    # A face that fills the photo is larger than the detector's 640 px window sees whole;
    # a second try on the photo centred in a canvas this many times larger shrinks it.
    CLOSE_UP_CANVAS = 2.0

    def __init__(self, roots: Sequence[str | os.PathLike], pack: str | None = None,
                 providers: Sequence[str] = ("CPUExecutionProvider",), det_size: int = 640, app=None):
        found = find_insightface_pack(roots, pack)
        if found is None:
            wanted = f"the '{pack}' pack" if pack else "a model pack"
            raise DetectorUnavailable(f"insightface: {wanted} with a detection model was not found. "
                                      + insightface_setup_help(roots))
        self.found = found
        self.root, self.pack = found.root, found.name
        if found.nested:
            log.warning("insightface models found in a nested folder: %s", found.describe())
        if app is None:
            try:
                from insightface.app import FaceAnalysis
            except ImportError as e:
                raise DetectorUnavailable(
                    f"insightface models are in {found.folder}, but insightface cannot be "
                    f"imported ({e}). Install it: pip install insightface onnxruntime"
                ) from None
            app = FaceAnalysis(name=str(found.folder.resolve()), root=str(found.root), providers=list(providers),
                               allowed_modules=["detection"])
            app.prepare(ctx_id=0, det_size=(det_size, det_size))
        self.app = app
        self.runs_on = _onnx_providers(app) or ", ".join(providers)

    def _faces(self, bgr: np.ndarray) -> list[Face]:
        return [Face(box=np.asarray(f.bbox, dtype=np.float64)[:4], points=np.asarray(f.kps, dtype=np.float64),
                     score=float(f.det_score)) for f in self.app.get(np.ascontiguousarray(bgr))]

    def detect(self, image: np.ndarray, index: int = 0) -> list[Face]:
        bgr = to_uint8_rgb(image)[..., ::-1]  # insightface reads BGR
        faces = self._faces(bgr)
        if faces:
            return faces
        h, w = bgr.shape[:2]
        pad_y, pad_x = int(h * (self.CLOSE_UP_CANVAS - 1) / 2), int(w * (self.CLOSE_UP_CANVAS - 1) / 2)
        canvas = np.zeros((h + 2 * pad_y, w + 2 * pad_x, 3), np.uint8)
        canvas[pad_y:pad_y + h, pad_x:pad_x + w] = bgr
        faces = self._faces(canvas)
        for f in faces:
            f.box = f.box - [pad_x, pad_y, pad_x, pad_y]
            f.points = f.points - [pad_x, pad_y]
        if faces:
            log.info("image %d: insightface found the face on the close-up retry", index)
        return faces


def _onnx_providers(app) -> str:
    """The execution providers onnxruntime really uses (a CUDA provider it could not load drops
    out silently there; the note must say so)."""
    try:
        return ", ".join(app.models["detection"].session.get_providers())
    except Exception:  # another FaceAnalysis layout: fall back to what was asked for
        return ""


def how_to_get_a_detector(insightface_roots: Sequence[str | os.PathLike] = ()) -> str:
    return (
        "Ways to get a face detector: (1) MTCNN, no download at run time, every Python and platform: run "
        "`python install.py` in the Face2Diffusion pack folder with ComfyUI's Python (it copies 2 MB of "
        "weights out of the facenet-pytorch wheel and changes no installed package); (2) on Python 3.9-3.12, "
        "mediapipe 0.10.21 (the same `python install.py` installs it, keeping your numpy); (3) "
        + insightface_setup_help(insightface_roots)
    )


def get_detector(backend: str = "auto", insightface_roots: Sequence[str | os.PathLike] = (),
                 insightface_pack: str | None = None, insightface_providers: Sequence[str] = ("CPUExecutionProvider",),
                 device: str | None = None):
    """A detector object with ``.name``, ``.detect(image, index) -> list[Face]``, ``.why``
    (which backend and, for auto, why that one) and ``.runs_on`` (device or execution providers).

    ``device`` ("cpu", "cuda:0", ...): where MTCNN's cascade runs, for MTCNN versions that take
    one (the others run on the CPU); None keeps the detector's default."""
    if backend == "mtcnn":
        det = _mtcnn(device)
    elif backend == "mediapipe":
        det = MediaPipeDetector()
    elif backend == "insightface":
        det = InsightFaceDetector(insightface_roots, insightface_pack, insightface_providers)
    elif backend != "auto":
        raise ValueError(f"unknown face detector '{backend}'; choose one of {', '.join(BACKENDS)}")
    else:
        return _auto(insightface_roots, insightface_pack, insightface_providers, device)
    det.why = det.name
    return det


def _mtcnn(device: str | None):
    import inspect

    if device is not None and "device" in inspect.signature(MTCNNDetector.__init__).parameters:
        det = MTCNNDetector(device=device)
    else:
        det = MTCNNDetector()
    if not getattr(det, "runs_on", None):  # an MTCNN that says where its cascade runs is believed
        det.runs_on = str(getattr(det, "device", "cpu")).replace("cpu", "CPU")
    return det


def _auto(roots, pack, providers, device=None):
    """insightface (the reference the ecosystem uses) when its models are there, else MTCNN
    (every face in the composed group photos, every platform), else mediapipe."""
    problems = []
    found = find_insightface_pack(roots, pack)
    if found is not None:
        try:
            det = InsightFaceDetector(roots, pack, providers)
            det.why = f"insightface (auto: model pack {found.describe()})"
            return det
        except DetectorUnavailable as e:
            problems.append(str(e))
            log.warning("insightface models found but unusable, trying the others: %s", e)
    reason = "insightface models present but unusable" if problems else "no insightface model pack"
    for make in (lambda: _mtcnn(device), MediaPipeDetector):
        try:
            det = make()
        except DetectorUnavailable:
            continue
        det.why = f"{det.name} (auto: {reason})"
        return det
    raise DetectorUnavailable(" ".join(["No face detector is available."] + problems
                                       + [how_to_get_a_detector(roots)]))


def describe_detector(detector) -> str:
    """The detector line of the notes: which detector, why, and where it runs."""
    why = getattr(detector, "why", detector.name)
    runs_on = getattr(detector, "runs_on", "")
    return f"{why}, running on {runs_on}" if runs_on else why


class DetectorCache:
    """Detectors built once per configuration and reused (building MTCNN, a mediapipe graph or an
    insightface session costs far more than detecting one photo).

    The key is the whole configuration: backend, insightface roots, pack and providers, device --
    and, for auto/insightface, the pack folder found on disk now, so a pack the user installs
    later is picked up without a restart. ``acquire``/``release`` count users, so that a detector
    dropped (``drop``: its host unloaded it) while a run still holds it is closed only after that
    run; :meth:`close_all` closes everything (tests, shutdown).
    """

    def __init__(self, make=get_detector):
        import threading

        self._make = make
        self._lock = threading.RLock()
        self._entries: dict[tuple, object] = {}
        self._users: dict[int, int] = {}
        self._dropped: dict[int, object] = {}

    @staticmethod
    def key(backend: str, insightface_roots=(), insightface_pack=None, insightface_providers=("CPUExecutionProvider",),
            device=None) -> tuple:
        roots = tuple(str(Path(r)) for r in insightface_roots)
        found = None
        if backend in ("auto", "insightface"):
            pack = find_insightface_pack(roots, insightface_pack)
            found = None if pack is None else str(pack.folder)
        return (backend, roots, insightface_pack, tuple(insightface_providers), None if device is None else str(device),
                found)

    def acquire(self, backend: str, insightface_roots=(), insightface_pack=None,
                insightface_providers=("CPUExecutionProvider",), device=None):
        """(key, detector, built): the cached detector for this configuration, built if needed."""
        key = self.key(backend, insightface_roots, insightface_pack, insightface_providers, device)
        with self._lock:
            det = self._entries.get(key)
            built = det is None
            if built:
                det = self._make(backend, insightface_roots=list(insightface_roots), insightface_pack=insightface_pack,
                                 insightface_providers=list(insightface_providers), device=device)
                self._entries[key] = det
            self._users[id(det)] = self._users.get(id(det), 0) + 1
            return key, det, built

    def release(self, detector) -> None:
        with self._lock:
            n = self._users.get(id(detector), 1) - 1
            if n > 0:
                self._users[id(detector)] = n
                return
            self._users.pop(id(detector), None)
            if self._dropped.pop(id(detector), None) is not None:
                _close(detector)

    def drop(self, key: tuple) -> None:
        """Forget the detector of ``key`` and close it (now, or when its last user releases it)."""
        with self._lock:
            det = self._entries.pop(key, None)
            if det is None:
                return
            if self._users.get(id(det)):
                self._dropped[id(det)] = det
            else:
                _close(det)

    def close_all(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self.drop(key)

    def __len__(self) -> int:
        return len(self._entries)


def _close(detector) -> None:
    close = getattr(detector, "close", None)
    if close is not None:
        try:
            close()
        except Exception as e:  # a detector that cannot close must not stop the host's unload
            log.warning("closing the %s face detector failed: %s", getattr(detector, "name", "?"), e)


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


def no_face_message(index: int, detector, image: np.ndarray) -> str:
    return (f"image {index}: no face found by the {detector.name} detector ({image.shape[1]}x{image.shape[0]} px). "
            "Use a photo where the face is clearly visible and upright; in a batch, turn on skip_faceless "
            "to leave such images out; to go on without an identity, turn on allow_no_face")


def detect_and_align(images: Sequence[np.ndarray] | np.ndarray, detector, face: str | int = "largest",
                     skip_faceless: bool = False, progress: Callable[[int, int], None] | None = None) -> AlignedFaces:
    """Detect, choose the face(s) of each image and align them onto the ArcFace 112x112 template.

    ``face="all"``: every face of each image, image order then left to right (``image_indices``
    repeats per face); with ``skip_faceless`` images without a face contribute nothing, even all.

    ``images``: a sequence (or a batch array) of (H, W[, C]) images, uint8 or float in [0, 1],
    grey, RGB or RGBA, each converted to 8-bit RGB once here. ``face``: "largest", the n-th face
    from the left, or "all" (one crop per face found, image order then left to right;
    ``image_indices`` repeats the image per face). Faceless images raise :class:`NoFaceError`
    naming the image, or with ``skip_faceless`` are skipped with a warning while at least one face
    remains. ``progress(done, total)`` is called before each image (hosts use it to interrupt).

    Most callers want :func:`f2d.identity.align_photos`, the photo route's first stage (it adds
    the small-photo check and the intake report).
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
            raise NoFaceError(no_face_message(i, detector, image), i)
        for f in faces if face == "all" else [choose_face(faces, face, i)]:
            crop, matrix = align_to_arcface_template(image, f.points)
            crops.append(crop)
            chosen.append(f)
            kept.append(i)
            matrices.append(matrix)
    if skipped:
        if not crops and face != "all":
            raise NoFaceInBatchError(f"no face found in any of the {len(skipped)} image(s) by the {detector.name} detector; "
                              "use photos where the face is clearly visible", skipped[0])
        log.warning("no face in image(s) %s: skipped", ", ".join(map(str, skipped)))
    tiny = sorted({i for i, f in zip(kept, chosen) if f.eye_distance < TINY_EYE_DISTANCE})
    if tiny:
        log.warning("tiny face in image(s) %s (eyes under %.0f px apart): the identity will be poor; "
                    "use photos where the face is larger", ", ".join(map(str, tiny)), TINY_EYE_DISTANCE)
    return AlignedFaces(np.stack(crops) if crops else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8),
                        chosen, kept, all_faces, skipped, matrices, describe_detector(detector))

"""Face points given from elsewhere, in the formats other ComfyUI packs produce.

- OpenPose / DWPose keypoints (``POSE_KEYPOINT`` of comfyui_controlnet_aux, or its JSON): one
  dict per image, ``{"people": [{"face_keypoints_2d": [...]}, ...], "canvas_width": W,
  "canvas_height": H}``; face points as a flat ``[x, y, c, x, y, c, ...]`` list or as
  ``[[x, y, c], ...]``, 68 points (70 with the two pupils, which are dropped), in canvas pixels
  or normalised to 0..1.
- Plain points (JSON or nested lists), ``[x, y]`` pairs of 5 points (eye centres, nose tip,
  mouth corners; image left first) or 68 landmarks: one face (``[[x, y], ...]``), one face per
  image (``[face, face, ...]``) or several faces per image (``[[face, ...], [face, ...]]``).

Coordinates are scaled onto each photo when the keypoints came from a canvas of another size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from .align import AlignmentError, as_five_points


class PointsError(ValueError):
    """Given face points that cannot be read; the message says what is wrong and what works."""

    __module__ = "f2d.points"


FORMATS = ("OpenPose/DWPose keypoints ({'people': [{'face_keypoints_2d': [...]}], 'canvas_width': ..., "
           "'canvas_height': ...} per image) or [x, y] points: 5 (eyes, nose tip, mouth corners) or 68 per face, "
           "as one face, one face per image, or a list of faces per image")


@dataclass
class GivenFaces:
    """The faces of one image: (n, 2) point arrays, and the canvas they are measured on."""

    faces: list[np.ndarray]
    canvas: tuple[float, float] | None = None  # (width, height) the coordinates refer to
    normalised: bool = False  # coordinates in 0..1 of the canvas (or of the photo)

    def in_pixels(self, width: int, height: int) -> list[np.ndarray]:
        out = []
        for pts in self.faces:
            p = pts.astype(np.float64)
            if self.normalised:
                p = p * [width, height]
            elif self.canvas and (self.canvas[0], self.canvas[1]) != (width, height):
                p = p * [width / self.canvas[0], height / self.canvas[1]]
            out.append(p)
        return out


def _depth(x) -> int:
    d = 0
    while isinstance(x, (list, tuple)) and x:
        x, d = x[0], d + 1
    return d


# Coordinates beyond this are no photo's pixels (nor 0..1 fractions): overflowed values such as
# 1e308. Smaller ones off the photo are named against the photo's size when it is known.
MAX_COORDINATE = 1e12


def _numbers(values, what: str) -> np.ndarray:
    """``values`` as a float array, or PointsError naming ``what`` and the first bad value."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PointsError(f"face points: {what} is not a list of numbers ({str(e)[:80]}); give {FORMATS}") from None
    if not np.isfinite(arr).all():
        raise PointsError(f"face points: {what} holds NaN or infinite coordinates; give finite pixel coordinates "
                          "of the photo (or 0..1 of its size)")
    if arr.size and np.abs(arr).max() > MAX_COORDINATE:
        raise PointsError(f"face points: {what} holds the coordinate {np.abs(arr).max():.3g}, far outside any photo; "
                          "give pixel coordinates of the photo (or 0..1 of its size)")
    return arr


def _canvas_size(entry: dict, key: str) -> float:
    value = entry[key]
    try:
        size = float(value)
    except (TypeError, ValueError):
        size = float("nan")
    if not (np.isfinite(size) and 1 <= size <= 1e6):
        raise PointsError(f"face points: {key} is {str(value)[:40]!r}; it must be the width/height in pixels (a positive "
                          "number) of the image the keypoints were measured on, as the pose preprocessor writes it")
    return size


def _openpose_face(values) -> np.ndarray | None:
    """face_keypoints_2d (flat x, y, c triples or [x, y, c] rows) -> (68, 2), or None if empty /
    not detected (all zero)."""
    arr = _numbers(values, "face_keypoints_2d")
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[-1] < 2) or (arr.ndim == 1 and arr.size % 3):
        raise PointsError(f"face points: face_keypoints_2d has the shape {arr.shape}; expected a flat list of x, y, "
                          "confidence triples or a list of [x, y, c] rows")
    if arr.size == 0:
        return None
    arr = arr.reshape(-1, 3) if arr.ndim == 1 else arr[:, :3] if arr.shape[-1] >= 3 else arr
    if len(arr) not in (68, 70):
        raise PointsError(f"face_keypoints_2d holds {len(arr)} points; expected 68 (or 70 with the pupils)")
    pts = arr[:68, :2]
    if (arr.shape[1] >= 3 and (arr[:68, 2] <= 0).mean() > 0.5) or not np.any(pts):
        return None  # the pose detector saw no face for this person
    return pts


def _openpose_image(entry: dict) -> GivenFaces:
    people = entry.get("people") or []
    if not isinstance(people, list) or not all(isinstance(p, dict) for p in people):
        raise PointsError(f"face points: 'people' must be a list of {{'face_keypoints_2d': [...]}} entries; give {FORMATS}")
    faces = [f for person in people if (f := _openpose_face(person.get("face_keypoints_2d") or [])) is not None]
    canvas = ((_canvas_size(entry, "canvas_width"), _canvas_size(entry, "canvas_height"))
              if "canvas_width" in entry or "canvas_height" in entry else None)
    normalised = bool(faces) and max(float(np.abs(f).max()) for f in faces) <= 1.0
    return GivenFaces(faces, canvas, normalised)


def parse_face_points(value) -> list[GivenFaces]:
    """Any of the formats above (a JSON string, or the parsed object) -> one entry per image."""
    try:
        return _parse(value)
    except PointsError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        # Any other shape of nonsense: one message naming the formats, not a Python error.
        raise PointsError(f"face points: could not be read ({type(e).__name__}: {str(e)[:80]}); give {FORMATS}") from None


def _parse(value) -> list[GivenFaces]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as e:
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:80]
            raise PointsError(f"face points are not valid JSON ({why}); "
                              f"give {FORMATS}") from None
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        if not all("people" in v for v in value):
            raise PointsError(f"face points: a dict without 'people'; give {FORMATS}")
        return [_openpose_image(v) for v in value]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    depth = _depth(value)
    if depth == 2:
        images = [[value]]
    elif depth == 3:
        images = [[face] for face in value]
    elif depth == 4:
        images = value
    else:
        raise PointsError(f"face points: could not read the structure (nesting depth {depth}); give {FORMATS}")
    out = []
    for i, faces in enumerate(images):
        if not isinstance(faces, (list, tuple)):
            raise PointsError(f"face points for image {i}: expected a list of faces, got {type(faces).__name__}; "
                              f"give {FORMATS}")
        arrays = []
        for k, face in enumerate(faces):
            pts = _numbers(face, f"face {k} of image {i}")
            try:
                arrays.append(pts if pts.shape == (68, 2) else as_five_points(pts))
            except AlignmentError as e:
                raise PointsError(f"face points for image {i}: {e}") from None
        normalised = bool(arrays) and max(float(np.abs(a).max()) for a in arrays) <= 1.0
        out.append(GivenFaces(arrays, None, normalised))
    return out

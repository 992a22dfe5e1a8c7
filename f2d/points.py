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


def _openpose_face(values) -> np.ndarray | None:
    """face_keypoints_2d (flat x, y, c triples or [x, y, c] rows) -> (68, 2), or None if empty /
    not detected (all zero)."""
    arr = np.asarray(values, dtype=np.float64)
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
    faces = [f for person in entry.get("people") or [] if (f := _openpose_face(person.get("face_keypoints_2d") or []))
             is not None]
    canvas = (float(entry["canvas_width"]), float(entry["canvas_height"])) if "canvas_width" in entry else None
    normalised = bool(faces) and max(float(np.abs(f).max()) for f in faces) <= 1.0
    return GivenFaces(faces, canvas, normalised)


def parse_face_points(value) -> list[GivenFaces]:
    """Any of the formats above (a JSON string, or the parsed object) -> one entry per image."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise PointsError(f"face points are not valid JSON ({e}); give {FORMATS}") from None
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
        arrays = []
        for face in faces:
            try:
                arrays.append(as_five_points(np.asarray(face, dtype=np.float64)) if np.asarray(face).shape != (68, 2)
                              else np.asarray(face, dtype=np.float64))
            except (AlignmentError, ValueError) as e:
                raise PointsError(f"face points for image {i}: {e}") from None
        normalised = bool(arrays) and max(float(np.abs(a).max()) for a in arrays) <= 1.0
        out.append(GivenFaces(arrays, None, normalised))
    return out

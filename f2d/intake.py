"""The photo intake report: for each reference photo, what a user needs to judge it.

- face size: the eye distance in the photo, px (under ~20 px the 112 px crop is upsampled blur);
- sharpness: the variance of the Laplacian of the aligned crop's grey levels (the usual focus
  measure), on the crop so that it measures the face at the size MSID sees it, with a grade;
- head pose: yaw, roll and pitch estimated from the five points (below);
- likeness to the others: 1 - cosine of the photo's identity vector to the mean of the others
  (leave one out), and whether that makes it *unlike* them (another person, or a bad crop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .detect import AlignedFaces

# Variance of the Laplacian on the 112 px crop (grey 0..255). Measured on the astronaut photo:
# 620 as it is, 940 for the close-up, 180 downscaled to 300 px (eyes 25 px apart), 6 after a
# 3 px Gaussian blur. Under 30 the face is soft enough to lose identity detail; under 100 it is
# visibly soft.
BLURRY = 30.0
SOFT = 100.0

# Head pose from five points, with a simple face model: the nose tip stands NOSE_DEPTH eye
# distances in front of the eyes (about 0.5 for adult faces), so turning the head by yaw moves
# it sideways by depth * sin(yaw) while the seen eye distance shrinks by cos(yaw). Pitch moves
# it up or down: seen below the eye line at NOSE_BELOW_EYES * cos(pitch) + depth * sin(pitch)
# eye distances. NOSE_BELOW_EYES: the ArcFace template's (a frontal face, 20.1 / 35.2 px). The
# mouth is left out of pitch: a smile lifts the mouth corners, which read as a head bent down
# (+10..+23 deg on frontal smiling photos when pitch was measured against the mouth).
NOSE_DEPTH = 0.5
NOSE_BELOW_EYES = 0.571
TURNED = 30.0  # degrees of yaw or pitch beyond which the report warns

# "Unlike the others": the photo's distance to the others' mean (1 - cosine) is UNLIKE_RATIO
# times the median of the other photos' own such distances, or more. A ratio, not a cosine
# threshold: the scale of distances depends on the weights, and the official weights cannot be
# measured here (they are not reachable). The tests' reference weights give nearly one vector for any
# input, so the rule was measured with a seeded, photo-sensitive test encoder (tests/f2d_testkit.py
# write_input_sensitive_msid): one photo's crops, resizes and mirror image sit within ~1.2x of
# each other, another person's photo ~15x (seeds 0-2). 8x is between the two; it is a cue to check
# that photo, not a verdict. Needs 3 faces (with 2 neither is "the others"), and flags at most a
# minority: without a majority there is no "the others".
UNLIKE_RATIO = 8.0
UNLIKE_MIN_FACES = 3
# Whatever the ratio, a vector within cosine 0.99 of the others' mean is not unlike them: where
# every vector is nearly the same (the test weights: distances of 2e-4..4e-3), the ratio would
# follow rounding and flag a photo of the same person. Another person is far beyond (0.25 with
# the photo-sensitive test encoder, whose same-person photos sit at ~0.016).
UNLIKE_MIN_DISTANCE = 0.01


@dataclass
class PhotoReport:
    image_index: int
    eye_distance: float  # px in the photo
    sharpness: float  # variance of the Laplacian on the aligned crop
    yaw: float  # degrees, + = nose towards the image's right
    roll: float  # degrees, + = the eye line turned clockwise on screen
    pitch: float  # degrees, + = looking down
    distance: float | None = None  # 1 - cosine to the others' mean; None with fewer than 3 faces
    unlike: bool = False
    left_out: bool = False

    @property
    def sharpness_grade(self) -> str:
        if self.sharpness < BLURRY:
            return "blurry"
        if self.sharpness < SOFT:
            return "soft"
        return "sharp"

    def line(self) -> str:
        out = (f"photo {self.image_index}: eyes {self.eye_distance:.0f} px apart, {self.sharpness_grade} "
               f"(sharpness {self.sharpness:.0f}), pose yaw {self.yaw:+.0f} roll {self.roll:+.0f} "
               f"pitch {self.pitch:+.0f} deg")
        warnings = []
        if self.sharpness < BLURRY:
            warnings.append("blurry: the identity loses detail")
        if max(abs(self.yaw), abs(self.pitch)) > TURNED:
            warnings.append("head turned away: a frontal photo gives a better identity")
        if self.unlike:
            warnings.append("UNLIKE THE OTHERS (another person or a bad crop?)"
                            + (": left out" if self.left_out else ""))
        return out + "".join(f" -- {w}" for w in warnings)


def sharpness(crop: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the crop's grey levels."""
    g = np.asarray(crop, np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]
    return float(lap.var())


def head_pose(points: np.ndarray) -> tuple[float, float, float]:
    """(yaw, roll, pitch) in degrees from five points (eyes, nose tip, mouth corners; image left
    first): rough, for telling a frontal photo from a turned one."""
    p = np.asarray(points, np.float64)
    eyes = p[1] - p[0]
    eye_distance = float(np.linalg.norm(eyes))
    if eye_distance < 1e-6:
        return 0.0, 0.0, 0.0
    across = eyes / eye_distance
    down = np.array([-across[1], across[0]])  # image y points down
    roll = math.degrees(math.atan2(eyes[1], eyes[0]))
    nose = p[2] - p[:2].mean(0)
    yaw = math.degrees(math.atan2(float(nose @ across) / eye_distance, NOSE_DEPTH))
    # The seen eye distance shrinks with yaw; pitch is read against the unturned one.
    below = float(nose @ down) / eye_distance * max(math.cos(math.radians(yaw)), 0.3)
    reach, lean = math.hypot(NOSE_BELOW_EYES, NOSE_DEPTH), math.atan2(NOSE_BELOW_EYES, NOSE_DEPTH)
    pitch = math.degrees(math.asin(min(1.0, max(-1.0, below / reach))) - lean)
    return yaw, roll, pitch


def distances_to_the_others(vectors: torch.Tensor) -> list[float]:
    """1 - cosine of each vector to the mean of the other vectors."""
    v = vectors.double()
    n = len(v)
    total = v.sum(0)
    out = []
    for k in range(n):
        others = (total - v[k]) / (n - 1)
        out.append(float(1 - torch.nn.functional.cosine_similarity(v[k:k + 1], others[None]).item()))
    return out


def unlike_the_others(distances: list[float]) -> list[bool]:
    n = len(distances)
    if n < UNLIKE_MIN_FACES:
        return [False] * n
    flags = []
    for k, d in enumerate(distances):
        typical = float(np.median([x for j, x in enumerate(distances) if j != k]))
        flags.append(d >= UNLIKE_MIN_DISTANCE and d >= UNLIKE_RATIO * typical)
    if sum(flags) * 2 >= n:  # no majority to be unlike
        return [False] * n
    return flags


def assess(aligned: "AlignedFaces", vectors: torch.Tensor) -> list[PhotoReport]:
    """One report per aligned face, in the order of the crops."""
    reports = []
    for i, face, crop in zip(aligned.image_indices, aligned.chosen, aligned.crops):
        yaw, roll, pitch = head_pose(face.points)
        reports.append(PhotoReport(i, face.eye_distance, sharpness(crop), yaw, roll, pitch))
    if len(reports) >= UNLIKE_MIN_FACES:
        distances = distances_to_the_others(vectors)
        for r, d, flag in zip(reports, distances, unlike_the_others(distances)):
            r.distance, r.unlike = d, flag
    return reports


def describe(identity) -> list[str]:
    """The note's lines for an f2d.identity.IdentityVectors: for each photo which face was used
    and its report, then what the user must know (no face, photos left out), then the detector."""
    faces = identity.faces
    if faces is None:
        return list(identity.notes)
    found = faces.describe()
    detector = found[-1:] if faces.detector and found and found[-1].startswith("detector: ") else []
    lines = found[:len(found) - len(detector)]
    by_photo = {r.image_index: r for r in identity.report}
    out = []
    for line in lines:
        out.append(line)
        index = int(line.split(":", 1)[0].split()[1])
        r = by_photo.get(index)
        if r is not None and "skipped" not in line:
            out.append("  " + r.line().split(": ", 1)[1])
    return out + list(identity.notes) + detector

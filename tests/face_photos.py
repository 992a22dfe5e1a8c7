"""Photos composed from skimage's astronaut, with the true five points of every face.

The astronaut's five points are the official ones (reference fixture, from the official 68
landmarks); every composed face is the astronaut's head moved by a known similarity (plus a
sideways squeeze that stands in for a turned head), so its true points are those points moved
the same way. Used by tests/test_detect.py and bench/detect.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HEAD_CENTRE = (225.0, 120.0)  # astronaut's head (between the eyes and the mouth), image px
HEAD_RADII = (78.0, 100.0)  # soft elliptical mask around hair, face and chin


@dataclass
class Photo:
    name: str
    image: np.ndarray  # (H, W, 3|4) or (H, W) uint8
    points: list[np.ndarray] = field(default_factory=list)  # true (5, 2) points per face


def _skimage(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def official_points() -> np.ndarray:
    from f2d_testkit import require_fixtures
    from safetensors.numpy import load_file

    return load_file(str(require_fixtures() / "reference.safetensors"))["align.landmarks5"].astype(np.float64)


def _head_matrix(centre, eye_px: float, roll: float, squeeze: float = 1.0, mirror: bool = False) -> np.ndarray:
    """Forward 3x3 matrix: astronaut pixels -> canvas, head centre onto ``centre``."""
    s = eye_px / 39.0  # the astronaut's eye distance
    a = np.radians(roll)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])  # counter-clockwise on screen
    lin = rot @ np.diag([s * squeeze * (-1 if mirror else 1), s])
    t = np.asarray(centre, float) - lin @ np.asarray(HEAD_CENTRE)
    return np.vstack([np.column_stack([lin, t]), [0, 0, 1]])


def _paste(canvas: np.ndarray, matrix: np.ndarray) -> None:
    astro = _skimage("astronaut")
    mask = Image.new("L", (512, 512), 0)
    cx, cy = HEAD_CENTRE
    rx, ry = HEAD_RADII
    ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(6))
    inv = tuple(np.linalg.inv(matrix)[:2].ravel())
    size = (canvas.shape[1], canvas.shape[0])
    head = np.asarray(Image.fromarray(astro).transform(size, Image.AFFINE, inv, Image.BILINEAR), np.float32)
    alpha = np.asarray(mask.transform(size, Image.AFFINE, inv, Image.BILINEAR), np.float32)[..., None] / 255
    canvas[:] = np.rint(canvas * (1 - alpha) + head * alpha).astype(np.uint8)


def _moved(points: np.ndarray, matrix: np.ndarray, mirror: bool) -> np.ndarray:
    p = points @ matrix[:2, :2].T + matrix[:2, 2]
    return p[[1, 0, 2, 4, 3]] if mirror else p  # a mirrored face's image-left eye is its other eye


def background(w: int, h: int, name: str = "rocket") -> np.ndarray:
    """A face-free photo, blurred and stretched, as the room behind a group."""
    bg = Image.fromarray(_skimage(name)).resize((w, h), Image.BILINEAR).filter(ImageFilter.GaussianBlur(3))
    return np.array(bg.convert("RGB"))


def group(name: str, size: tuple[int, int], heads, bg: str = "rocket") -> Photo:
    """heads: (x, y, eye_px, roll, squeeze, mirror) per face."""
    canvas = background(*size, name=bg)
    official = official_points()
    photo = Photo(name, canvas)
    for x, y, eye, roll, squeeze, mirror in heads:
        m = _head_matrix((x, y), eye, roll, squeeze, mirror)
        _paste(canvas, m)
        photo.points.append(_moved(official, m, mirror))
    return photo


def group_photos() -> list[Photo]:
    """Group photos: 24-80 px eye distances, rolls up to 35 degrees, turned (squeezed) and
    mirrored heads, side by side and in two rows."""
    return [
        group("row of five", (1280, 480), [
            (130, 240, 40, 0, 1.0, False), (370, 230, 30, 20, 1.0, True), (620, 250, 55, -35, 1.0, False),
            (880, 230, 26, 35, 1.0, True), (1120, 240, 45, -15, 0.8, False)]),
        group("two rows", (1024, 768), [
            (160, 200, 28, -25, 1.0, True), (420, 190, 24, 10, 1.0, False), (690, 200, 30, 30, 0.85, False),
            (900, 210, 26, -10, 1.0, True), (250, 540, 50, 15, 1.0, False), (580, 560, 60, -30, 0.8, True),
            (860, 560, 45, 0, 1.0, False)], bg="coffee"),
        group("pair, one turned", (900, 500), [
            (250, 250, 80, 5, 0.75, False), (650, 260, 64, -20, 1.0, True)], bg="chelsea"),
        group("small group", (800, 420), [
            (140, 210, 24, -35, 1.0, False), (400, 200, 35, 25, 0.8, True), (660, 210, 28, -5, 1.0, False)],
            bg="hubble_deep_field"),
        # A phone photo's size: detected downscaled, yet 28 px eye distances must survive.
        group("large photo", (3200, 1800), [
            (500, 900, 28, 0, 1.0, False), (1300, 850, 32, -20, 1.0, True), (2100, 950, 36, 15, 0.85, False),
            (2800, 900, 40, 30, 1.0, True)], bg="coffee"),
    ]


def single_face_photos() -> list[Photo]:
    """The astronaut as users pass single photos: as is, turned 35 degrees, a tight 112 px crop,
    grey, RGBA."""
    astro = _skimage("astronaut")
    official = official_points()
    out = [Photo("astronaut", astro, [official])]
    m = _head_matrix(HEAD_CENTRE, 39.0, 35.0)
    turned = np.asarray(Image.fromarray(astro).transform((512, 512), Image.AFFINE, tuple(np.linalg.inv(m)[:2].ravel()),
                                                         Image.BILINEAR))
    out.append(Photo("astronaut turned 35", turned, [_moved(official, m, False)]))
    # Tight crop: the face box (brow to chin) scaled to 112 px, as pre-cropped faces come.
    x0, y0, side = 170.0, 62.0, 116.0
    crop = np.asarray(Image.fromarray(astro).resize((112, 112), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side)))
    out.append(Photo("tight 112 px crop", crop, [(official - [x0, y0]) * 112 / side]))
    out.append(Photo("grey", np.asarray(Image.fromarray(astro).convert("L")), [official]))
    out.append(Photo("rgba", np.dstack([astro, np.full(astro.shape[:2], 255, np.uint8)]), [official]))
    return out


FACE_FREE = ("chelsea", "coffee", "rocket", "cat", "horse", "hubble_deep_field", "coins", "immunohistochemistry")


def face_free_photos() -> list[Photo]:
    out = [Photo(n, _skimage(n)) for n in FACE_FREE]
    out.append(Photo("group background", background(1024, 768, "coffee")))
    return out


def match(found_points: list[np.ndarray], truth: list[np.ndarray]) -> tuple[list[float | None], int]:
    """Per true face: mean point error in % of its eye distance (None if missed); and the
    number of found faces that match no true face (false faces)."""
    used = set()
    errors: list[float | None] = []
    for t in truth:
        eye = float(np.linalg.norm(t[1] - t[0]))
        best = None
        for j, f in enumerate(found_points):
            if j in used:
                continue
            if np.linalg.norm(f[:2].mean(0) - t[:2].mean(0)) <= 0.5 * eye and (best is None or
                    np.linalg.norm(f - t, axis=1).mean() < np.linalg.norm(found_points[best] - t, axis=1).mean()):
                best = j
        if best is None:
            errors.append(None)
        else:
            used.add(best)
            errors.append(float(np.linalg.norm(found_points[best] - t, axis=1).mean() / eye * 100))
    return errors, len(found_points) - len(used)

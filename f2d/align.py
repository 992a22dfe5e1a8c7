"""Face alignment onto the ArcFace 112x112 five-point template.

Takes five points from any detector (or 68 landmarks, reduced as the official code does),
fits a similarity transform (Umeyama least squares) and warps the full-resolution image.
The warp is exact bilinear sampling, which agrees with the official OpenCV crop
(``warpPerspective``, whose INTER_AREA falls back to bilinear for warps) to one grey level
without making OpenCV a dependency of the pack.
"""
from __future__ import annotations

import numpy as np

CROP_SIZE = 112

# ArcFace template: left eye, right eye, nose tip, left mouth corner, right mouth corner
# (image left/right), in the 112x112 crop's pixel coordinates.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)



class AlignmentError(ValueError):
    """Landmarks or an image that cannot be aligned; the message says what is wrong."""

    __module__ = "f2d.align"


def landmarks68_to_5(landmarks68: np.ndarray) -> np.ndarray:
    """The official 68 -> 5 reduction: eye centres, nose tip, mouth corners."""
    p = np.asarray(landmarks68, dtype=np.float64)
    if p.shape != (68, 2):
        raise AlignmentError(f"expected 68 landmarks of shape (68, 2), got {p.shape}")
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def as_five_points(landmarks: np.ndarray) -> np.ndarray:
    """Accept 5 points or 68 landmarks (x, y in image pixels); return 5 points."""
    p = np.asarray(landmarks, dtype=np.float64)
    if p.shape == (68, 2):
        return landmarks68_to_5(p)
    if p.shape != (5, 2):
        raise AlignmentError(
            f"landmarks must be 5 points (eyes, nose tip, mouth corners) or 68 points, "
            f"each (x, y); got an array of shape {p.shape}"
        )
    if not np.isfinite(p).all():
        raise AlignmentError("landmarks contain NaN or infinite coordinates")
    return p


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto
    ``dst`` (Umeyama 1991), as a 3x3 float64 matrix."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    n, d = src.shape
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    sign = np.ones(d)
    if np.linalg.det(cov) < 0:
        sign[-1] = -1
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    if rank == 0:
        raise AlignmentError("landmarks are degenerate (all points coincide)")
    if rank == d - 1 and np.linalg.det(u) * np.linalg.det(vt) <= 0:
        # Collinear points: keep a proper rotation.
        sign_fix = sign.copy()
        sign_fix[-1] = -1
        r = u @ np.diag(sign_fix) @ vt
    else:
        r = u @ np.diag(sign) @ vt
    var_src = src_c.var(0).sum()
    scale = (s * sign).sum() / var_src
    m = np.eye(d + 1)
    m[:d, :d] = scale * r
    m[:d, d] = dst_mean - scale * (r @ src_mean)
    return m


def warp_affine_uint8(image: np.ndarray, matrix: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp ``image`` (H, W, C) uint8 by the 3x3 forward matrix into a ``size`` square:
    bilinear sampling at the inverse-mapped pixel centres, black outside the image."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise AlignmentError("warp_affine_uint8 expects an (H, W, C) uint8 image")
    h, w, _ = image.shape
    inv = np.linalg.inv(np.asarray(matrix, dtype=np.float64))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    wq = inv[2, 0] * xs + inv[2, 1] * ys + inv[2, 2]
    x = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]) / wq
    y = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]) / wq
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out = np.zeros((size, size, image.shape[2]), dtype=np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            px, py = x0 + dx, y0 + dy
            inside = ((px >= 0) & (px < w) & (py >= 0) & (py < h))[..., None]
            # Gather first, convert after: only the sampled pixels, never the whole photo.
            vals = image[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)]
            out += np.where(inside, vals, 0) * (wx * wy)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """Any of: (H, W) grey, (H, W, 1|3|4), uint8 or float in [0, 1] -> (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3 and img.flags.c_contiguous:
        return img  # already what every step wants: no copy, so the photo route converts once
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3, 4):
        raise AlignmentError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {img.shape}")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    elif np.issubdtype(img.dtype, np.integer) and img.dtype != np.uint8:
        raise AlignmentError(f"{img.dtype} images are not supported; give 8-bit or float (0..1) images")
    elif img.dtype != np.uint8:
        # float32, not float64: an 8k float photo is already 400 MB
        img = np.clip(np.rint(img.astype(np.float32, copy=False) * 255.0), 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] == 4:
        img = img[..., :3]  # alpha is ignored, as a photo viewer shows the colour planes
    return np.ascontiguousarray(img)


def align_to_arcface_template(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop the face given by ``landmarks`` (5 or 68 points) out of ``image``.

    Returns the 112x112x3 uint8 crop and the 3x3 similarity matrix image -> crop. The photo
    route (f2d.identity.align_photos) converts each photo once and passes (H, W, 3) uint8 RGB,
    which is used as it is; other images are converted here.
    """
    matrix = similarity_transform(as_five_points(landmarks))
    return warp_affine_uint8(to_uint8_rgb(image), matrix), matrix

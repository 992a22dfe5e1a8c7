"""The identity-aware face-detail pass: every face of a generated image is cropped with context,
upscaled, resampled inside a feathered mask with its own person's identity, and pasted back.

Host-free: the geometry (regions, masks, crop, paste), the assignment of people to faces and the
driver that runs them live here; the front doors (nodes/detail.py on ComfyUI's sampler, the CLI
on diffusers) only supply ``inpaint``, the one step that samples.

Exactness: a pixel whose mask value is 0 is never written, so everything outside the pasted
masks is bit-identical to the input; the mask's support lies inside the crop by construction.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

FACE_MODES = ("all", "most similar", "largest")  # which faces one person gets
EXTRA_FACES = ("keep", "nearest person")  # faces beyond the people given
MAX_PEOPLE = 4
MASK_GROW = 1.1  # the full-strength ellipse: the face box grown by this (brow, chin and cheeks)


# --- geometry ----------------------------------------------------------------------------------

@dataclass
class FaceRegion:
    """A square of the image around one face (may reach past the image's edges) and the
    feathered ellipse inside it that is resampled."""

    x0: int  # top-left of the square, image px (can be negative)
    y0: int
    side: int  # square side in image px
    size: int  # working side in px (the upscaled crop the sampler sees), a multiple of 8
    centre: tuple[float, float]  # ellipse centre, image px
    radii: tuple[float, float]  # full-strength ellipse radii, image px
    feather: float  # the mask falls from 1 to 0 between radius 1 and 1 + feather (relative)


def face_region(box: Sequence[float], image_hw: tuple[int, int], context: float = 2.0, guide_size: int = 512,
                feather: float = 0.3, max_size: int = 1024) -> FaceRegion:
    """The square of side ``context`` x the face box's longer side, centred on the face, large
    enough that the feathered mask fits inside it; worked on at ``guide_size`` px, or at the
    square's own size (up to ``max_size``) when the face is larger than the guide."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ax, ay = max(1.0, (x1 - x0) / 2 * MASK_GROW), max(1.0, (y1 - y0) / 2 * MASK_GROW)
    feather = max(0.0, float(feather))
    need = 2 * (1 + feather) * max(ax, ay) + 4  # the mask's support, with a pixel of margin each side
    side = int(math.ceil(max(context * max(x1 - x0, y1 - y0), need)))
    left, top = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    size = int(math.ceil(min(max(guide_size, side), max(guide_size, max_size)) / 8) * 8)
    return FaceRegion(left, top, side, size, (cx, cy), (ax, ay), feather)


def _ellipse_mask(xs: torch.Tensor, ys: torch.Tensor, r: FaceRegion) -> torch.Tensor:
    """Mask value at image coordinates (xs, ys): 1 inside the ellipse, a smoothstep to 0 at
    1 + feather radii, exactly 0 beyond."""
    d = torch.sqrt(((xs - r.centre[0]) / r.radii[0]) ** 2 + ((ys - r.centre[1]) / r.radii[1]) ** 2)
    if r.feather <= 0:
        return (d <= 1).to(torch.float32)
    t = ((1 + r.feather - d) / r.feather).clamp(0, 1)
    return (t * t * (3 - 2 * t)).to(torch.float32)


def crop_mask(r: FaceRegion) -> torch.Tensor:
    """(size, size) mask over the working crop (pixel centres mapped back into the image)."""
    c = (torch.arange(r.size, dtype=torch.float64) + 0.5) * (r.side / r.size)
    return _ellipse_mask((r.x0 + c)[None, :], (r.y0 + c)[:, None], r)


def image_mask(r: FaceRegion, image_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask over the whole image: the same ellipse at the image's pixel centres."""
    h, w = image_hw
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    return _ellipse_mask(xs[None, :], ys[:, None], r)


def _resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w, C) float -> (size) float, bicubic with antialiasing (for both directions), clamped."""
    if tuple(image.shape[:2]) == tuple(size):
        return image
    x = image.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1).to(image.dtype)


def crop_face(image: torch.Tensor, r: FaceRegion) -> torch.Tensor:
    """(H, W, C) float image in 0..1 -> the (size, size, C) working crop; parts of the square
    outside the image repeat the nearest edge pixel (they are never pasted back)."""
    h, w = image.shape[:2]
    pad = (max(0, -r.x0), max(0, r.x0 + r.side - w), max(0, -r.y0), max(0, r.y0 + r.side - h))
    x = image.permute(2, 0, 1)[None].float()
    if any(pad):
        x = F.pad(x, pad, mode="replicate")
    x0, y0 = r.x0 + pad[0], r.y0 + pad[2]
    square = x[0, :, y0:y0 + r.side, x0:x0 + r.side].permute(1, 2, 0)
    return _resize(square, (r.size, r.size))


def paste_face(image: torch.Tensor, crop: torch.Tensor, r: FaceRegion) -> tuple[torch.Tensor, torch.Tensor]:
    """The image with the resampled ``crop`` (size, size, C) blended back through the feathered
    mask, and that mask (H, W). Pixels where the mask is 0 are the input's, bit for bit."""
    h, w = image.shape[:2]
    back = _resize(crop.float(), (r.side, r.side))
    mask = image_mask(r, (h, w))
    ix0, iy0, ix1, iy1 = max(0, r.x0), max(0, r.y0), min(w, r.x0 + r.side), min(h, r.y0 + r.side)
    out = image.clone()
    if ix0 >= ix1 or iy0 >= iy1:
        return out, mask
    m = mask[iy0:iy1, ix0:ix1, None]
    old = image[iy0:iy1, ix0:ix1].float()
    new = back[iy0 - r.y0:iy1 - r.y0, ix0 - r.x0:ix1 - r.x0, :old.shape[-1]]
    blended = (old + m * (new - old)).to(image.dtype)
    out[iy0:iy1, ix0:ix1] = torch.where(m > 0, blended, image[iy0:iy1, ix0:ix1])
    return out, mask


# --- who gets which face -----------------------------------------------------------------------

def cosine_similarity(faces: torch.Tensor, people: torch.Tensor) -> torch.Tensor:
    """(F, D) face vectors x (K, D) identity vectors -> (F, K) cosine similarities."""
    return F.normalize(faces.float(), dim=-1) @ F.normalize(people.float(), dim=-1).T


@dataclass
class Assignment:
    person: int | None  # index into the people given, or None: the face keeps its pixels
    similarity: float | None  # cosine between the face and that person (None: no vector to compare)
    why: str = ""  # for a face left as it was


def assign_people(similarity: torch.Tensor | None, sizes: Sequence[float], people: int, mode: str = "all",
                  extra: str = "keep") -> list[Assignment]:
    """Which person each face of one image gets.

    One person: every face (``mode="all"``), only the most similar face, or only the largest.
    Several: one-to-one, the pairing of faces and people with the highest total cosine
    similarity (every pairing is tried: at most 4 people, so a few thousand sums); faces beyond
    the people keep their pixels (``extra="keep"``) or get their nearest person.
    ``similarity``: (F, K), or None when the people carry no identity vectors (then only
    ``mode`` "all"/"largest" with one person can decide).
    """
    n = len(sizes)
    if mode not in FACE_MODES:
        raise ValueError(f"faces: '{mode}' is not one of {', '.join(FACE_MODES)}")
    if extra not in EXTRA_FACES:
        raise ValueError(f"extra_faces: '{extra}' is not one of {', '.join(EXTRA_FACES)}")
    sim = None if similarity is None else similarity.detach().cpu().double().numpy()
    s = (lambda f, k: None) if sim is None else (lambda f, k: float(sim[f, k]))  # noqa: E731
    if n == 0:
        return []
    if people == 1:
        if mode == "all":
            return [Assignment(0, s(f, 0)) for f in range(n)]
        if mode == "most similar":
            if sim is None:
                raise ValueError("faces: 'most similar' needs the person's MSID identity vector, which this "
                                 "identity lacks (a file saved without it): choose 'all' or 'largest', or re-save "
                                 "the person from F2D Encode Identity")
            pick = int(np.argmax(sim[:, 0]))
        else:
            pick = int(np.argmax(np.asarray(sizes, dtype=np.float64)))
        return [Assignment(0, s(f, 0)) if f == pick else Assignment(None, s(f, 0), f"not the {mode} face")
                for f in range(n)]
    if sim is None:
        raise ValueError("several people need each person's MSID identity vector to tell who is who")
    best, best_total = None, -math.inf
    if n >= people:  # each person gets a distinct face
        for faces in itertools.permutations(range(n), people):
            total = sum(sim[f, k] for k, f in enumerate(faces))
            if total > best_total + 1e-12:
                best, best_total = {f: k for k, f in enumerate(faces)}, total
    else:  # each face gets a distinct person
        for chosen in itertools.permutations(range(people), n):
            total = sum(sim[f, k] for f, k in enumerate(chosen))
            if total > best_total + 1e-12:
                best, best_total = dict(enumerate(chosen)), total
    out = []
    for f in range(n):
        if f in best:
            out.append(Assignment(best[f], s(f, best[f])))
        elif extra == "nearest person":
            k = int(np.argmax(sim[f]))
            out.append(Assignment(k, s(f, k)))
        else:
            out.append(Assignment(None, None, f"more faces than people ({people}); extra faces keep their pixels"))
    return out


# --- the pass ----------------------------------------------------------------------------------

@dataclass
class DetailSettings:
    context: float = 2.0  # crop side / face box side
    guide_size: int = 512  # the crop is worked on at this many px (SD1.x: 512)
    feather: float = 0.3  # mask edge width, as a fraction of the face's radius
    max_faces: int = 4  # per image, largest first
    min_face_size: int = 32  # px: smaller faces keep their pixels
    faces: str = "all"  # with one person: all / most similar / largest
    extra_faces: str = "keep"  # with several: faces beyond the people


@dataclass
class FoundFaces:
    """Every face of a batch: what :func:`find_faces` returns."""

    boxes: list[np.ndarray]  # (4,) per face
    image_indices: list[int]
    vectors: torch.Tensor  # (N, 1536) MSID identity of each face
    detector: str = ""


def find_faces(images: Sequence[np.ndarray], detector, encoder, progress: Callable[[], None] | None = None,
               chunk: int = 4) -> FoundFaces:
    """Every face of every image, detected, aligned and encoded by the photo route (the same
    detection and alignment as identity photos; image order, then left to right). Without an
    ``encoder`` the vectors are zeros (one person, faces "all" or "largest", needs none)."""
    from .identity import FEATURE_DIM, align_photos, encode_faces

    tick = None if progress is None else (lambda *_: progress())
    aligned = align_photos(images, detector, face="all", skip_faceless=True, progress=tick)
    vectors = (encode_faces(encoder, aligned, progress=tick, chunk=chunk).float().cpu() if encoder is not None
               else torch.zeros(len(aligned.crops), FEATURE_DIM))
    return FoundFaces([np.asarray(f.box, dtype=np.float64) for f in aligned.chosen], list(aligned.image_indices),
                      vectors, aligned.detector)


@dataclass
class FaceJob:
    image_index: int
    face: int  # left to right within its image
    box: np.ndarray
    region: FaceRegion
    person: int
    similarity: float | None
    seed_offset: int


@dataclass
class DetailResult:
    images: torch.Tensor  # (B, H, W, C) as given, faces re-done
    masks: torch.Tensor  # (B, H, W) union of the pasted masks
    crops: list[torch.Tensor]  # the re-done working crops (size, size, C), in job order
    notes: list[str] = field(default_factory=list)
    done: int = 0
    failed: int = 0


def plan(found: FoundFaces, batch: int, people_vectors: torch.Tensor | None, people: int, s: DetailSettings,
         image_hw: tuple[int, int]) -> tuple[list[FaceJob], dict[int, list[str]]]:
    """The faces to re-do (with their person and region) and a note per image."""
    notes: dict[int, list[str]] = {i: [] for i in range(batch)}
    jobs: list[FaceJob] = []
    for i in range(batch):
        idx = [j for j, k in enumerate(found.image_indices) if k == i]
        if not idx:
            notes[i].append(f"image {i}: no face found, passed through unchanged")
            continue
        boxes = [found.boxes[j] for j in idx]
        sizes = [float(max(b[2] - b[0], b[3] - b[1])) for b in boxes]
        small = {f for f, z in enumerate(sizes) if z < s.min_face_size}
        big = [f for f in range(len(idx)) if f not in small]
        kept = set(sorted(big, key=lambda f: -sizes[f])[:s.max_faces])
        use = [f for f in range(len(idx)) if f in kept]
        sim = None
        if people_vectors is not None and use:
            sim = cosine_similarity(found.vectors[[idx[f] for f in use]], people_vectors)
        chosen = dict(zip(use, assign_people(sim, [sizes[f] for f in use], people, s.faces, s.extra_faces)))
        for f in range(len(idx)):
            # Counted from 0 from the left, as F2D Encode Identity's face widget and note count.
            where = f"image {i} face {f} of {len(idx)} (from the left, {sizes[f]:.0f} px)"
            if f in small:
                notes[i].append(f"{where}: too small (under min_face_size {s.min_face_size} px), kept as it was")
            elif f not in kept:
                notes[i].append(f"{where}: beyond max_faces {s.max_faces}, kept as it was")
            elif chosen[f].person is None:
                notes[i].append(f"{where}: {chosen[f].why}, kept as it was")
            else:
                a = chosen[f]
                jobs.append(FaceJob(i, f, boxes[f], face_region(boxes[f], image_hw, s.context, s.guide_size, s.feather),
                                    a.person, a.similarity, len(jobs)))
    return jobs, notes


def describe_person(k: int, similarity: float | None) -> str:
    sim = "similarity n/a (no identity vector)" if similarity is None else f"similarity {similarity:.3f}"
    return f"person {k + 1} ({sim})"


def run_detail(images: torch.Tensor, found: FoundFaces, people_vectors: torch.Tensor | None, people: int,
               inpaint: Callable[[torch.Tensor, torch.Tensor, FaceJob], torch.Tensor], s: DetailSettings,
               fatal: tuple[type[BaseException], ...] = (), on_face: Callable[[int, int], None] | None = None
               ) -> DetailResult:
    """Re-do every planned face of ``images`` (B, H, W, C) in 0..1.

    ``inpaint(crop (size, size, C), mask (size, size), job) -> crop``: the front door's sampler.
    A face whose inpaint raises keeps its pixels and the note says why, unless the error is one
    of ``fatal`` (the host's interrupt); if every face fails, the first error is raised (no
    success is reported for a batch that was not re-done). ``on_face(done, total)`` between faces.
    """
    batch, h, w = images.shape[:3]
    jobs, notes = plan(found, batch, people_vectors, people, s, (h, w))
    out = images.clone()
    masks = torch.zeros(batch, h, w, dtype=torch.float32)
    crops, first_error, done = [], None, 0
    for n, job in enumerate(jobs):
        if on_face is not None:
            on_face(n, len(jobs))
        where = f"image {job.image_index} face {job.face}"
        try:
            crop = crop_face(out[job.image_index], job.region)
            redone = inpaint(crop, crop_mask(job.region), job)
            if redone.shape != crop.shape or not torch.isfinite(redone).all():
                raise ValueError(f"the sampler returned {tuple(redone.shape)} values"
                                 + ("" if torch.isfinite(redone).all() else " with NaN/inf"))
            out[job.image_index], m = paste_face(out[job.image_index], redone, job.region)
        except fatal:
            raise
        except Exception as e:  # noqa: BLE001 -- one failed face must not lose the others
            first_error = first_error or e
            notes[job.image_index].append(f"{where}: FAILED, kept as it was: {type(e).__name__}: {e}")
            continue
        masks[job.image_index] = torch.maximum(masks[job.image_index], m)
        crops.append(redone)
        done += 1
        notes[job.image_index].append(f"{where} -> {describe_person(job.person, job.similarity)}, re-done at "
                                      f"{job.region.size} px" + (f" (the face is larger than guide_size {s.guide_size})"
                                                                  if job.region.size > s.guide_size else ""))
    if on_face is not None:
        on_face(len(jobs), len(jobs))
    if jobs and not done:
        raise first_error
    lines = []
    for i in range(batch):
        lines += sorted(notes[i], key=_face_order)
    if found.detector:
        lines.append(f"detector: {found.detector}")
    return DetailResult(out, masks, crops, lines, done, len(jobs) - done)


def _face_order(line: str) -> int:
    """Notes of one image in face order (left to right)."""
    parts = line.split(" face ")
    try:
        return int(parts[1].split()[0])
    except (IndexError, ValueError):
        return 0


def preview_crops(crops: list[torch.Tensor], size: int, channels: int = 3) -> torch.Tensor:
    """The re-done crops as one (N, size, size, C) batch for a preview (one black square if none)."""
    if not crops:
        return torch.zeros(1, size, size, channels)
    return torch.stack([_resize(c.float(), (size, size))[..., :channels] for c in crops])

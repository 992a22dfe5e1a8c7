"""The photo route of Face2Diffusion: photos -> aligned faces -> identity vectors -> identity tokens.

One route, written once; the ComfyUI nodes, the CLI, training (data preparation, precomputed
vectors, sample images), the benchmarks and the likeness tools all call it. Each stage gives one
named value:

1. :func:`align_photos` -> :class:`f2d.detect.AlignedFaces`: each photo converted to 8-bit RGB
   once, its face(s) found and aligned to the ArcFace 112x112 template, with what was found.
2. :func:`encode_faces` -> :class:`IdentityVectors`: one 1536-d MSID vector per aligned face,
   their mean (what the mapping network reads), where they came from, and the intake report
   (:mod:`f2d.intake`: face size, sharpness, head pose, photos unlike the others).
3. :func:`map_to_tokens` -> :class:`IdentityTokens`: the mapping network's two word embeddings,
   with the mean vector and a provenance record (what identity files store).

:func:`encode_photos` runs stages 1-2 for a batch of photos; :meth:`IdentityEncoder.for_device`
is the one place the precision policy (:mod:`f2d.precision`) is applied.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from .mapping import MappingNetwork
from .msid import FEATURE_DIM, MSIDEncoder, msid_input
from .precision import choose_mode, compute_dtype, precision_for, tf32_matmuls
from .weights import load_mapping, load_msid

if TYPE_CHECKING:
    from .detect import AlignedFaces
    from .intake import PhotoReport

log = logging.getLogger(__name__)


@dataclass
class IdentityTokens:
    """What stands in for the identifier words ("f", "l"): the mapping network's two word
    embeddings, the mean identity vector they were mapped from (None when not known, e.g. an
    identity file saved without it) and where they came from (``info``: weights, photos,
    expression; what identity files keep as metadata).

    Empty (``first`` is None) when the reference photos held no face and the user chose to go on:
    prompts then say 'a person' where the identifier stands (see :attr:`is_empty`)."""

    first: torch.Tensor | None  # (B, 768)
    last: torch.Tensor | None  # (B, 768)
    identity: torch.Tensor | None = None  # (1, 1536) the mean MSID vector that was mapped
    info: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, why: str) -> "IdentityTokens":
        return cls(None, None, None, {"empty": why})

    @property
    def is_empty(self) -> bool:
        return self.first is None


class IdentityEncoder(nn.Module):
    """The MSID encoder (aligned faces -> identity vectors) and the mapping network (identity
    vector -> identity tokens) as one model, the way hosts load and move it. ``mapping`` is None
    where only vectors are needed (training, whose mapping network is the one being trained)."""

    def __init__(self, msid: MSIDEncoder, mapping: MappingNetwork | None):
        super().__init__()
        self.msid = msid
        self.mapping = mapping
        self.tf32 = False  # the MSID's float32 products on TF32 tensor cores (CUDA; precision "tf32")

    @classmethod
    def from_files(cls, msid_path: str | os.PathLike, mapping_path: str | os.PathLike | None) -> "IdentityEncoder":
        """Loaded as stored (float32), without the precision policy: see :meth:`for_device`."""
        return cls(load_msid(msid_path), load_mapping(mapping_path) if mapping_path else None).eval()

    @classmethod
    def for_device(cls, msid_path: str | os.PathLike, mapping_path: str | os.PathLike | None,
                   device: torch.device | str = "cpu", precision: str = "auto", move: bool = True) -> "IdentityEncoder":
        """Load and apply the precision policy for ``device`` (:mod:`f2d.precision`) -- the one
        place every front door (CLI, F2D Load MSID, training, benchmarks) applies it: "auto" is
        float32 on the CPU and the mode measured fastest within 1e-4 of it on a GPU (measured once
        per device and process, on copies: this encoder is not moved for it). ``move``: move the
        weights there too (hosts with their own model management, such as ComfyUI, pass False and
        move it themselves; ``.to(device)`` keeps the per-module dtypes)."""
        encoder = cls.from_files(msid_path, mapping_path)
        chosen = choose_mode(encoder, device) if precision == "auto" else precision_for(device, precision)
        encoder.set_precision(chosen)
        return encoder.to(device) if move else encoder

    def set_precision(self, precision: str) -> "IdentityEncoder":
        """Run the MSID's attention and MLPs in ``precision`` ("fp32", "tf32", "bf16", "fp16"); the
        norms, the residual stream and the mapping network stay float32 (see f2d.precision).
        Hosts that move models between devices keep these dtypes (``.to(device)`` does)."""
        self.msid.set_compute_dtype(compute_dtype(precision))
        self.tf32 = precision == "tf32"
        return self

    @property
    def precision(self) -> str:
        if self.tf32:
            return "tf32"
        dtype = self.msid.compute_dtype
        return next(name for name in ("fp32", "bf16", "fp16") if compute_dtype(name) == dtype)

    # Not named device/dtype: hosts' model managers (ComfyUI's ModelPatcher) set those attributes.
    @property
    def weight_device(self) -> torch.device:
        return self.msid.cls_token.device

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype of inputs and outputs (the residual stream's: float32 in every precision)."""
        return self.msid.cls_token.dtype

    @torch.no_grad()
    def features(self, faces: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Aligned faces -> identity vectors ``(B, 1536)`` in float32 (the MSID alone).

        ``faces``: ``(B, 112, 112, 3)`` uint8 crops, or a ``(B, 3, 112, 112)`` tensor already in
        [-1, 1] (:func:`f2d.msid.msid_input`).
        """
        if isinstance(faces, np.ndarray):
            faces = msid_input(faces)
        with tf32_matmuls(self.tf32 and self.weight_device.type == "cuda"):
            return self.msid(faces.to(device=self.weight_device, dtype=self.weight_dtype)).float()

    @torch.no_grad()
    def tokens(
        self,
        features: torch.Tensor,
        exp: torch.Tensor | None = None,
        use_null: torch.Tensor | None = None,
    ) -> IdentityTokens:
        """Identity vectors -> the two identity tokens, by the mapping network (unconditional
        expression by default). :func:`map_to_tokens` adds the checks and the provenance."""
        if self.mapping is None:
            raise ValueError("this encoder was loaded without a mapping network; load mapping.pt with it")
        f = features.to(device=self.weight_device, dtype=self.weight_dtype)
        if exp is not None:
            exp = exp.to(device=self.weight_device, dtype=self.weight_dtype)
        if use_null is not None:
            use_null = use_null.to(self.weight_device)
        first, last = self.mapping(f, exp, use_null)
        return IdentityTokens(first.float(), last.float())

    def forward(self, faces: torch.Tensor) -> IdentityTokens:
        return self.tokens(self.features(faces))


@dataclass
class IdentityVectors:
    """One person as MSID identity vectors: one per aligned face that was kept, their mean (what
    the mapping network reads), where they came from, and the intake report.

    ``source``: "photos" (F2D Encode Identity, the CLI, training), "identity file", "mix".
    Empty (no vectors) only when no photo held a face and the user chose to go on."""

    vectors: torch.Tensor  # (N, 1536)
    faces: "AlignedFaces | None" = None  # what detection and alignment found (photos only)
    source: str = "photos"
    report: "list[PhotoReport]" = field(default_factory=list)  # one per photo (f2d.intake)
    notes: list[str] = field(default_factory=list)  # what the user must know (no face, photos left out)

    @property
    def mean(self) -> torch.Tensor | None:
        """(1, 1536): several photos become one identity by averaging their MSID vectors --
        the mapping network then sees one vector, as in training; per-photo noise (pose,
        light, expression) averages out while what the photos share stays. None when empty."""
        return self.vectors.mean(0, keepdim=True) if len(self.vectors) else None

    @property
    def is_empty(self) -> bool:
        return len(self.vectors) == 0

    @property
    def used_crops(self) -> np.ndarray:
        """The aligned crops whose vectors are in the mean, (N, 112, 112, 3) uint8: those of the
        photos left out (leave_out_unlike) are not among them."""
        from .align import CROP_SIZE

        crops = self.faces.crops if self.faces is not None else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8)
        keep = [k for k in range(len(crops)) if not (k < len(self.report) and self.report[k].left_out)]
        return crops[keep]

    def describe(self) -> list[str]:
        """The intake report as lines for a note or a terminal: each photo, then the detector."""
        from .intake import describe

        return describe(self)


ENCODE_CHUNK = 4  # crops per MSID pass: bounds the encoder's memory and how long a Cancel waits (~1 s on 2 CPU cores)
MIN_SIDE = 32  # below this no detector finds a face, and the 112 px crop would be mostly interpolation


class _SizeGuard:
    """The detector, except that photos too small to hold a face are reported as faceless (so
    skip_faceless applies to them) and remembered, to say why."""

    def __init__(self, detector):
        self.detector, self.tiny = detector, {}

    def __getattr__(self, name):  # name, why, runs_on, ...: the detector's own
        return getattr(self.detector, name)

    def detect(self, image: np.ndarray, index: int = 0):
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            self.tiny[index] = f"{w}x{h} px"
            return []
        return self.detector.detect(image, index)


def load_photos(paths: Sequence[str | os.PathLike]) -> list[np.ndarray]:
    """Photos from files, upright by their EXIF orientation (:func:`f2d.files.load_photo`)."""
    from .files import load_photo

    return [load_photo(p) for p in paths]


def align_photos(images, detector, face: str | int = "largest", skip_faceless: bool = False,
                 allow_no_face: bool = False, progress=None) -> "AlignedFaces":
    """Stage 1: each photo converted to 8-bit RGB once, its face found and aligned
    (:func:`f2d.detect.detect_and_align`; ``face="all"`` aligns every face).

    Photos under MIN_SIDE px count as faceless and the error says so. ``allow_no_face``: a batch
    in which no photo has a face gives empty AlignedFaces (every photo in ``skipped``) instead of
    NoFaceError; a batch where only some photos lack a face still needs ``skip_faceless``.
    """
    from .align import to_uint8_rgb
    from .detect import AlignedFaces, NoFaceError, NoFaceInBatchError, describe_detector, detect_and_align, no_face_message

    photos = [to_uint8_rgb(im) for im in images]
    n = len(photos)
    guard = _SizeGuard(detector)

    def too_small(i: int) -> NoFaceError:
        hint = ", or turn on skip_faceless to leave such photos out of the batch" if n > 1 and not skip_faceless else ""
        return NoFaceError(f"image {i}: {guard.tiny[i]} is too small to find a face in (under {MIN_SIDE} px on a "
                           f"side). Use a photo where the face is at least about 100 px wide{hint}", i)

    try:
        aligned = detect_and_align(photos, guard, face=face, skip_faceless=skip_faceless or allow_no_face,
                                   progress=progress)
    except NoFaceError as e:
        if allow_no_face and isinstance(e, NoFaceInBatchError):
            from .align import CROP_SIZE

            return AlignedFaces(np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.uint8), [], [], [[] for _ in range(n)],
                                list(range(n)), [], describe_detector(detector))
        if e.image_index not in guard.tiny:
            raise
        raise too_small(e.image_index) from None
    if aligned.skipped and not skip_faceless:  # allow_no_face alone: some photos have a face
        i = aligned.skipped[0]
        raise too_small(i) if i in guard.tiny else NoFaceError(no_face_message(i, detector, photos[i]), i)
    aligned.tiny_photos = dict(guard.tiny)
    return aligned


def encode_faces(encoder: IdentityEncoder, aligned: "AlignedFaces", progress=None, chunk: int = ENCODE_CHUNK,
                 done: int = 0, total: int | None = None) -> torch.Tensor:
    """The MSID vectors ``(N, 1536)`` of the aligned crops, ``chunk`` crops per pass (the encoder's
    memory does not grow with the batch); ``progress(done + k, total)`` before each pass."""
    crops = aligned.crops
    total = len(crops) if total is None else total
    vectors = []
    for start in range(0, len(crops), chunk):
        if progress is not None:
            progress(done + start, total)
        vectors.append(encoder.features(crops[start:start + chunk]))
    if progress is not None:
        progress(total, total)
    vectors = torch.cat(vectors) if vectors else torch.zeros(0, FEATURE_DIM)
    return check_finite(vectors, "the MSID identity vectors",
                        "The msid weights give broken numbers for these photos: load the official msid.pt (in float32 "
                        "if it runs in float16 on this device).")


def encode_photos(encoder: IdentityEncoder, detector, images, face: str | int = "largest",
                  skip_faceless: bool = False, progress=None, chunk: int = ENCODE_CHUNK,
                  leave_out_unlike: bool = False, allow_no_face: bool = False) -> IdentityVectors:
    """Stages 1-2 for a batch of photos of one person: aligned faces -> IdentityVectors with the
    intake report (:mod:`f2d.intake`).

    ``progress(done, total)`` is called before each photo is detected and before each chunk of
    ``chunk`` aligned faces is encoded (total = photos + faces); hosts raise from it to interrupt.
    ``leave_out_unlike``: photos the report flags as unlike the others (probably another person,
    or a bad crop) are left out of the mean. ``allow_no_face``: see :func:`align_photos`; the
    result is then empty and its notes say why.
    """
    from .intake import UNLIKE_MIN_FACES, assess

    n = len(images)
    aligned = align_photos(images, detector, face=face, skip_faceless=skip_faceless, allow_no_face=allow_no_face,
                           progress=None if progress is None else (lambda i, _: progress(i, 2 * n)))
    vectors = encode_faces(encoder, aligned, progress, chunk, done=n, total=n + len(aligned.crops))
    report = assess(aligned, vectors)
    result = IdentityVectors(vectors, aligned, "photos", report)
    if result.is_empty:
        result.notes.append(f"NO IDENTITY: no face in any of the {n} photo(s); prompts will say 'a person' "
                            "where the identifier stands")
        log.warning("no face in any of the %d reference photo(s): going on without an identity", n)
        return result
    unlike = [r for r in report if r.unlike]
    if unlike and leave_out_unlike:
        keep = [k for k, r in enumerate(report) if not r.unlike]
        for r in unlike:
            r.left_out = True
        result.vectors = vectors[keep]
        result.notes.append(f"left out {len(unlike)} photo(s) unlike the others: "
                            + ", ".join(str(r.image_index) for r in unlike))
    elif unlike:
        result.notes.append("photo(s) " + ", ".join(str(r.image_index) for r in unlike) + " look unlike the others "
                            "(another person, or a bad crop?): turn on leave_out_unlike to leave them out")
    elif leave_out_unlike:  # asked for: say that it looked, and what it found
        kept = len(result.vectors)
        result.notes.append(f"leave_out_unlike: no photo is unlike the others; all {kept} kept" if kept >= UNLIKE_MIN_FACES
                            else f"leave_out_unlike: needs {UNLIKE_MIN_FACES} or more faces to compare; all {kept} kept")
    return result


def map_to_tokens(encoder: IdentityEncoder, identity: IdentityVectors | torch.Tensor, expression: torch.Tensor | None = None,
                  strength: float = 1.0, info: dict | None = None) -> IdentityTokens:
    """Stage 3: the mean identity vector -> the two identity tokens by the mapping network, with
    the unconditional expression (``expression`` None: the prompt decides it, as the paper does at
    inference) or ``expression`` blended in at ``strength``. Empty identity -> empty tokens."""
    # By attribute, not isinstance: hosts may import the library under a package name of their own.
    vectors = getattr(identity, "vectors", identity)
    if len(vectors) == 0:
        why = "no face in the reference photos"
        return IdentityTokens.empty(why)
    mean = vectors.float().mean(0, keepdim=True)
    use_null = None if expression is None else torch.full((1,), 1.0 - strength)
    tokens = check_tokens(encoder.tokens(mean, exp=expression, use_null=use_null), "the identity tokens",
                          "The mapping network gave broken numbers: check the expression values (or leave the "
                          "expression unconnected) and the mapping weights.")
    photos = len(vectors)
    record = {"photos": photos,
              "expression": "unconditional" if expression is None else f"explicit, strength {strength:g}"}
    return IdentityTokens(tokens.first, tokens.last, mean.cpu(), {**record, **(info or {})})


class NonFiniteError(ValueError):
    """Identity vectors or tokens holding NaN/inf: they would give a black image."""

    __module__ = "f2d.identity"


def check_finite(values: torch.Tensor, what: str, fix: str) -> torch.Tensor:
    """``values`` unchanged, or NonFiniteError naming ``what`` went wrong and ``fix``."""
    bad = ~torch.isfinite(values)
    if bad.any():
        raise NonFiniteError(f"{what}: {int(bad.sum())} of {values.numel()} values are NaN or infinite, which "
                             f"would give a black image. {fix}")
    return values


def check_tokens(tokens: IdentityTokens, what: str, fix: str) -> IdentityTokens:
    check_finite(torch.cat([tokens.first.reshape(-1), tokens.last.reshape(-1)]), what, fix)
    return tokens

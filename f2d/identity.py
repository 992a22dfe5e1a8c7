"""The identity path of Face2Diffusion: aligned face crops -> MSID features -> identity tokens.

One object that the ComfyUI nodes, the CLI and the benchmarks share, so that every front door
runs the same code.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .align import crop_to_tensor_input
from .mapping import MappingNetwork
from .msid import MSIDEncoder
from .precision import compute_dtype, precision_for
from .weights import load_mapping, load_msid

if TYPE_CHECKING:
    from .detect import AlignedFaces


@dataclass
class IdentityTokens:
    """The two word embeddings that stand in for the identifier words ("f", "l")."""

    first: torch.Tensor  # (B, 768)
    last: torch.Tensor  # (B, 768)


class IdentityEncoder(nn.Module):
    def __init__(self, msid: MSIDEncoder, mapping: MappingNetwork):
        super().__init__()
        self.msid = msid
        self.mapping = mapping

    @classmethod
    def from_files(cls, msid_path: str | os.PathLike, mapping_path: str | os.PathLike) -> "IdentityEncoder":
        return cls(load_msid(msid_path), load_mapping(mapping_path)).eval()

    @classmethod
    def for_device(cls, msid_path: str | os.PathLike, mapping_path: str | os.PathLike,
                   device: torch.device | str = "cpu", precision: str = "auto") -> "IdentityEncoder":
        """Load, apply the precision policy for ``device`` (see :mod:`f2d.precision`), move there."""
        return cls.from_files(msid_path, mapping_path).set_precision(precision_for(device, precision)).to(device)

    def set_precision(self, precision: str) -> "IdentityEncoder":
        """Run the MSID's attention and MLPs in ``precision`` ("fp32", "bf16", "fp16"); the
        norms, the residual stream and the mapping network stay float32 (see f2d.precision).
        Hosts that move models between devices keep these dtypes (``.to(device)`` does)."""
        self.msid.set_compute_dtype(compute_dtype(precision))
        return self

    @property
    def precision(self) -> str:
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
        """Aligned faces -> identity features ``(B, 1536)`` in float32.

        ``faces``: ``(B, 112, 112, 3)`` uint8 crops, or a ``(B, 3, 112, 112)`` tensor already in
        [-1, 1].
        """
        if isinstance(faces, np.ndarray):
            faces = crop_to_tensor_input(faces)
        return self.msid(faces.to(device=self.weight_device, dtype=self.weight_dtype)).float()

    @torch.no_grad()
    def tokens(
        self,
        features: torch.Tensor,
        exp: torch.Tensor | None = None,
        use_null: torch.Tensor | None = None,
    ) -> IdentityTokens:
        """Identity features -> the two identity tokens (unconditional expression by default)."""
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
class Identity:
    """One person from one or more reference photos."""

    features: torch.Tensor  # (N, 1536) MSID identity of each kept photo
    faces: "AlignedFaces"  # detection + alignment result (crops, chosen faces, skipped photos)

    @property
    def mean(self) -> torch.Tensor:
        """(1, 1536): several photos become one identity by averaging their MSID vectors --
        the mapping network then sees one vector, as in training; per-photo noise (pose,
        light, expression) averages out while what the photos share stays."""
        return self.features.mean(0, keepdim=True)


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


ENCODE_CHUNK = 4  # crops per MSID pass: bounds the encoder's memory and how long a Cancel waits (~1 s on 2 CPU cores)
MIN_SIDE = 32  # below this no detector finds a face, and the 112 px crop would be mostly interpolation


class _SizeGuard:
    """The detector, except that photos too small to hold a face are reported as faceless (so
    skip_faceless applies to them) and remembered, to say why."""

    def __init__(self, detector):
        self.detector, self.tiny = detector, {}

    def __getattr__(self, name):  # name, why, ...: the detector's own
        return getattr(self.detector, name)

    def detect(self, image: np.ndarray, index: int = 0):
        h, w = image.shape[:2]
        if min(h, w) < MIN_SIDE:
            self.tiny[index] = f"{w}x{h} px"
            return []
        return self.detector.detect(image, index)


def encode_photos(encoder: IdentityEncoder, detector, images, face: str | int = "largest",
                  skip_faceless: bool = False, progress=None, chunk: int = ENCODE_CHUNK) -> Identity:
    """Detect, align and encode the face in each photo (see :func:`f2d.detect.detect_and_align`).

    ``progress(done, total)`` is called before each photo is detected and before each chunk of
    ``chunk`` aligned faces is encoded (total = photos + faces); hosts raise from it to interrupt.
    The encoder sees one chunk at a time, so its memory does not grow with the batch.
    """
    from .detect import NoFaceError, detect_and_align

    n = len(images)
    guard = _SizeGuard(detector)
    try:
        aligned = detect_and_align(images, guard, face=face, skip_faceless=skip_faceless,
                                   progress=None if progress is None else (lambda i, _: progress(i, 2 * n)))
    except NoFaceError as e:
        if e.image_index not in guard.tiny:
            raise
        hint = ", or turn on skip_faceless to leave such photos out of the batch" if n > 1 and not skip_faceless else ""
        raise NoFaceError(f"image {e.image_index}: {guard.tiny[e.image_index]} is too small to find a face in "
                          f"(under {MIN_SIDE} px on a side). Use a photo where the face is at least about 100 px "
                          f"wide{hint}", e.image_index) from None
    crops = aligned.crops
    total = n + len(crops)
    features = []
    for start in range(0, len(crops), chunk):
        if progress is not None:
            progress(n + start, total)
        features.append(encoder.features(crops[start:start + chunk]))
    if progress is not None:
        progress(total, total)
    features = torch.cat(features)
    check_finite(features, "the MSID identity vectors",
                 "The msid weights give broken numbers for these photos: load the official msid.pt (in float32 "
                 "if it runs in float16 on this device).")
    return Identity(features, aligned)

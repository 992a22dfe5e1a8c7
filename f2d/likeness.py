"""Likeness: how much a generated face looks like the reference identity, and best-of-N.

The score is the cosine similarity of MSID identity vectors (the 1536-d features the mapping
network reads): the reference identity against the largest face in each image. An image without
a face scores 0 and is marked faceless; ranking puts faceless images last, then orders by score
(highest first), ties by position in the batch, so the same batch always ranks the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .detect import NoFaceError, detect_and_align


@dataclass(frozen=True)
class Likeness:
    index: int  # position in the batch
    similarity: float  # cosine similarity to the reference, 0.0 when faceless
    has_face: bool


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) against (1, D) or (N, D), in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def score_images(encoder, detector, images: Sequence[np.ndarray], reference: torch.Tensor,
                 progress=None) -> list[Likeness]:
    """Likeness of the largest face in each image to ``reference`` (1, 1536)."""
    scores = [Likeness(i, 0.0, False) for i in range(len(images))]
    try:
        aligned = detect_and_align(images, detector, face="largest", skip_faceless=True, progress=progress)
    except NoFaceError:
        return scores  # not one face in the batch
    if len(aligned.crops):
        feats = encoder.features(aligned.crops)
        sims = cosine(feats, reference.to(feats.device)).tolist()
        for i, s in zip(aligned.image_indices, sims):
            scores[i] = Likeness(i, float(s), True)
    return scores


def rank(scores: Sequence[Likeness]) -> list[Likeness]:
    """Faces first, by similarity (highest first); ties and faceless images by batch position."""
    return sorted(scores, key=lambda s: (not s.has_face, -s.similarity, s.index))


def best_of(scores: Sequence[Likeness], keep: int) -> list[Likeness]:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return rank(scores)[:keep]

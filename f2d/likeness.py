"""Likeness: how much a generated face looks like the reference identity, and best-of-N.

The score is the cosine similarity of MSID identity vectors (the 1536-d features the mapping
network reads): the reference identity against the largest face in each image. An image without
a face scores 0 and is marked faceless; ranking puts faceless images last, then orders by score
(highest first), ties by position in the batch, so the same batch always ranks the same way.
With a CLIP image and text model, the score becomes the harmonic mean of identity similarity and
image-text similarity, as in the paper's identity x text-fidelity analysis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .identity import align_photos, encode_faces


@dataclass(frozen=True)
class Likeness:
    index: int  # position in the batch
    similarity: float  # cosine similarity to the reference, 0.0 when faceless
    has_face: bool
    text: float | None = None  # image-text cosine similarity (CLIP), when scored

    @property
    def score(self) -> float:
        """What ranks: the identity similarity, or with a text score the harmonic mean of the two
        (the paper's combination of identity and text fidelity)."""
        return self.similarity if self.text is None else harmonic_mean(self.similarity, self.text)


def harmonic_mean(a: float, b: float) -> float:
    """Of two scores clamped at 0: high only when both are high; 0 when either is."""
    a, b = max(a, 0.0), max(b, 0.0)
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def with_text_scores(scores: Sequence[Likeness], image_embeds: torch.Tensor, text_embed: torch.Tensor) -> list[Likeness]:
    """Add each image's CLIP image-text cosine similarity (image embeds (N, D) against one
    text embed (1, D), both from the same CLIP model's projection space)."""
    sims = cosine(image_embeds.reshape(len(scores), -1), text_embed.reshape(1, -1)).tolist()
    return [Likeness(s.index, s.similarity, s.has_face, float(t)) for s, t in zip(scores, sims)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity of (N, D) against (1, D) or (N, D), in float64."""
    a, b = a.double(), b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def score_images(encoder, detector, images: Sequence[np.ndarray], reference: torch.Tensor | None,
                 progress=None) -> list[Likeness]:
    """Likeness of the largest face in each image to ``reference`` (1, 1536), by the photo route
    (the same detection, alignment and MSID encoding as the reference had). Without a reference
    (no face in the reference photos) every image scores 0, unranked."""
    scores = [Likeness(i, 0.0, False) for i in range(len(images))]
    aligned = align_photos(images, detector, face="largest", skip_faceless=True, allow_no_face=True,
                           progress=progress)
    if len(aligned.crops) and reference is not None:
        feats = encode_faces(encoder, aligned)
        sims = cosine(feats, reference.to(feats.device)).tolist()
        for i, s in zip(aligned.image_indices, sims):
            scores[i] = Likeness(i, float(s), True)
    elif reference is None:
        for i in aligned.image_indices:
            scores[i] = Likeness(i, 0.0, True)
    return scores


def rank(scores: Sequence[Likeness]) -> list[Likeness]:
    """Faces first, by score (highest first); ties and faceless images by batch position."""
    return sorted(scores, key=lambda s: (not s.has_face, -s.score, s.index))


def best_of(scores: Sequence[Likeness], keep: int) -> list[Likeness]:
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    return rank(scores)[:keep]

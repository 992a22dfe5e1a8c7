"""Identity mixing: several people -> one identity, as a weighted mean of MSID identity vectors.

Mixing happens before the mapping network, on the 1536-d vectors MSID produces: the mapping then
sees one vector, exactly as it does for one person (or for several photos of one person, which
are averaged the same way). Mixing the identity tokens instead would feed the text encoder a
blend the mapping never produced.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .msid import FEATURE_DIM


class MixError(ValueError):
    __module__ = "f2d.mix"


def normalised_weights(weights: Sequence[float]) -> list[float]:
    """Relative weights -> fractions that sum to 1 (0.7/0.3 and 7/3 mean the same mix)."""
    weights = [float(w) for w in weights]
    bad = [i for i, w in enumerate(weights) if not math.isfinite(w) or w < 0]
    if bad:
        raise MixError(f"weight {bad[0] + 1} is {weights[bad[0]]}: weights must be finite and 0 or more")
    total = sum(weights)
    if total <= 0:
        raise MixError("all weights are 0: give at least one identity a weight above 0")
    return [w / total for w in weights]


def mix_identities(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean of identity vectors, ``(1, 1536)`` float32.

    Each entry of ``vectors`` is one person's ``(N, 1536)`` MSID vectors (N photos, averaged
    first, so a person given by five photos counts once) or a ``(1536,)`` vector.
    """
    if len(vectors) != len(weights):
        raise MixError(f"{len(vectors)} identities but {len(weights)} weights")
    if not vectors:
        raise MixError("nothing to mix: give at least one identity")
    fractions = normalised_weights(weights)
    means = []
    for i, v in enumerate(vectors):
        v = torch.as_tensor(v).float()
        if v.ndim == 1:
            v = v[None]
        if v.ndim != 2 or v.shape[1] != FEATURE_DIM or v.shape[0] == 0:
            raise MixError(f"identity {i + 1}: shape {tuple(v.shape)}, expected (N, {FEATURE_DIM}) MSID vectors")
        if not torch.isfinite(v).all():
            raise MixError(f"identity {i + 1}: holds NaN or infinite values")
        means.append(v.mean(0).cpu())
    return (torch.stack(means) * torch.tensor(fractions)[:, None]).sum(0, keepdim=True)

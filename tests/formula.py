"""Deterministic stand-in weights built from the reference fixtures' formula.

Real F2D weights cannot be shipped (CC BY-NC-SA) nor downloaded in CI; the reference outputs
of the official code were computed on weights from this formula, so tests and benchmarks
build the same weights and compare numbers.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch


def formula_tensor(key: str, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    phase = (zlib.crc32(key.encode("utf-8")) % 10000) / 1000.0
    s = np.sin(0.7 * np.arange(n, dtype=np.float64) + phase)
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * s**2
    elif key.endswith(".weight") and len(shape) == 1:
        v = 1.0 + 0.05 * s
    else:
        v = 0.05 * s
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def formula_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The formula weights for every entry of ``module``'s state dict (integer buffers keep
    their natural values)."""
    out = {}
    for key, ref in module.state_dict().items():
        if ref.is_floating_point():
            out[key] = formula_tensor(key, tuple(ref.shape))
        else:
            out[key] = ref.clone()
    return out

"""The identity path of Face2Diffusion: aligned face crops -> MSID features -> identity tokens.

One object that the ComfyUI nodes, the CLI and the benchmarks share, so that every front door
runs the same code.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .align import crop_to_tensor_input
from .mapping import MappingNetwork
from .msid import MSIDEncoder
from .weights import load_mapping, load_msid


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

    def reduce_precision(self, dtype: torch.dtype = torch.bfloat16) -> "IdentityEncoder":
        """Run the MSID's attention and MLPs in ``dtype``; norms and the mapping stay float32.

        Measured on the reference weights (bench/encode.py): the identity tokens move by ~2e-4,
        while a bfloat16 mapping alone moves them by ~8e-3 -- its 1600-wide dot products are
        where bfloat16's 8-bit mantissa shows -- so the mapping, 0.3 % of the work, stays float32.
        """
        self.msid.set_compute_dtype(dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.msid.cls_token.device

    @property
    def dtype(self) -> torch.dtype:
        """The storage dtype of inputs and outputs (the residual stream's)."""
        return self.msid.cls_token.dtype

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None or dtype == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.no_grad()
    def features(self, faces: torch.Tensor | np.ndarray, compute_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Aligned faces -> identity features ``(B, 1536)`` in float32.

        ``faces``: ``(B, 112, 112, 3)`` uint8 crops, or a ``(B, 3, 112, 112)`` tensor already in
        [-1, 1]. ``compute_dtype`` (e.g. bfloat16) runs the encoder under autocast.
        """
        if isinstance(faces, np.ndarray):
            faces = crop_to_tensor_input(faces)
        x = faces.to(device=self.device, dtype=self.dtype)
        with self._autocast(compute_dtype):
            return self.msid(x).float()

    @torch.no_grad()
    def tokens(
        self,
        features: torch.Tensor,
        exp: torch.Tensor | None = None,
        use_null: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> IdentityTokens:
        """Identity features -> the two identity tokens (unconditional expression by default)."""
        f = features.to(device=self.device, dtype=self.dtype)
        if exp is not None:
            exp = exp.to(device=self.device, dtype=self.dtype)
        if use_null is not None:
            use_null = use_null.to(self.device)
        with self._autocast(compute_dtype):
            first, last = self.mapping(f, exp, use_null)
        return IdentityTokens(first.float(), last.float())

    def forward(self, faces: torch.Tensor) -> IdentityTokens:
        return self.tokens(self.features(faces))

"""MSID encoder: the multi-scale identity encoder of Face2Diffusion.

A plain ViT (timm's ``vit_*_patch8`` layout: 112 px input, patch 8, width 384, depth 12,
12 heads, qkv bias, LayerNorm eps 1e-6) whose CLS token is read after several blocks; each
read-out goes through BatchNorm1d then LayerNorm and the read-outs are concatenated.

Written here rather than imported from timm: the model is ~80 lines, timm would be a heavy
runtime dependency for ComfyUI users, and timm renames or reshapes internals between
releases. Module names follow timm's, so the state-dict keys are those of the official
``msid.pt`` and it loads with ``strict=True``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGE_SIZE = 112
PATCH_SIZE = 8
WIDTH = 384
DEPTH = 12
HEADS = 12
MLP_RATIO = 4
EXTRACT_DEPTHS = (2, 5, 8, 11)
FEATURE_DIM = WIDTH * len(EXTRACT_DEPTHS)  # 1536


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, width * 3, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        """``queries``: compute outputs for the first that many tokens only (keys and values
        still come from all tokens)."""
        b, n, c = x.shape
        out_dtype = x.dtype
        x = x.to(self.qkv.weight.dtype)  # see MSIDEncoder.set_compute_dtype
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if queries is not None:
            q, n = q[:, :, :queries], queries
        if q.dtype == torch.bfloat16 and q.device.type == "cpu":
            # The CPU's bfloat16 attention kernel is slower than its float32 one (1.22 vs 1.07 ms
            # per block at batch 1, one thread) and rounds the logits: the products run in float32.
            x = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c)).to(out_dtype)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype)))).to(x.dtype)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, width * mlp_ratio)

    def forward(self, x: torch.Tensor, queries: int | None = None) -> torch.Tensor:
        x = (x if queries is None else x[:, :queries]) + self.attn(self.norm1(x), queries)
        return x + self.mlp(self.norm2(x))


class MSIDEncoder(nn.Module):
    """Aligned face in [-1, 1], ``(B, 3, 112, 112)`` -> identity features ``(B, 1536)``."""

    def __init__(self, extract_depths: tuple[int, ...] = EXTRACT_DEPTHS):
        super().__init__()
        self.extract_depths = tuple(extract_depths)
        grid = IMAGE_SIZE // PATCH_SIZE
        self.patch_embed = PatchEmbed(PATCH_SIZE, WIDTH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, WIDTH))
        self.blocks = nn.ModuleList(Block(WIDTH, HEADS, MLP_RATIO) for _ in range(DEPTH))
        # The final norm is unused by the identity read-out but is part of the official
        # checkpoint, so it is kept for strict loading.
        self.norm = nn.LayerNorm(WIDTH, eps=1e-6)
        self.norms = nn.ModuleDict(
            {f"layer_{d}": nn.Sequential(nn.BatchNorm1d(WIDTH), nn.LayerNorm(WIDTH)) for d in self.extract_depths}
        )

    def set_compute_dtype(self, dtype: torch.dtype) -> "MSIDEncoder":
        """Run attention and MLPs in ``dtype`` (the policy is in f2d.precision); the residual
        stream, every norm and the output stay in float32. Weights are cast once here, not at
        each call as autocast does -- that is what makes it pay off at batch 1."""
        for block in self.blocks:
            block.attn.to(dtype)
            block.mlp.to(dtype)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.blocks[0].mlp.fc1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        feats = []
        last = self.extract_depths[-1]
        for depth, block in enumerate(self.blocks[: last + 1]):
            # Only the CLS token of the last read-out block is used: its other rows are skipped
            # (row-wise maths, so the result is the same as running the whole block).
            x = block(x, queries=1 if depth == last else None)
            if depth in self.extract_depths:
                feats.append(self.norms[f"layer_{depth}"](x[:, 0]))
        return torch.cat(feats, dim=-1)


def msid_input(crops_uint8) -> torch.Tensor:
    """The MSID's input: (B, 112, 112, 3) uint8 RGB aligned crops -> (B, 3, 112, 112) float32
    in [-1, 1]. Kept with the encoder (not with alignment): it is what this model expects."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(crops_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0

"""Mapping network: MSID identity (+ expression) -> the two identity word embeddings.

Two independent MLPs, ``i2t_first`` and ``i2t_last``, one per identifier word ("f", "l").
Each sees ``[identity (1536), expression (64)]``. ``null_exp`` is the learned
"unconditional expression" of Expression Guidance: feeding it at inference leaves the
expression to the text prompt.
"""
from __future__ import annotations

import torch
from torch import nn

from .msid import FEATURE_DIM

EXPRESSION_DIM = 64
TOKEN_DIM = 768  # SD1.x CLIP-L text width
HIDDEN_DIM = 1536


class IdentityToWord(nn.Module):
    """(identity ++ expression) -> one 768-d word embedding."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * num_layers
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), nn.LeakyReLU(0.2)) for a, b in zip(dims[:-1], dims[1:])
        )
        self.fc_out = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.fc_out(x)


class MappingNetwork(nn.Module):
    def __init__(
        self,
        identity_dim: int = FEATURE_DIM,
        hidden_dim: int = HIDDEN_DIM,
        token_dim: int = TOKEN_DIM,
        expression_dim: int = EXPRESSION_DIM,
    ):
        super().__init__()
        self.expression_dim = expression_dim
        self.null_exp = nn.Parameter(torch.zeros(expression_dim))
        self.i2t_first = IdentityToWord(identity_dim + expression_dim, hidden_dim, token_dim)
        self.i2t_last = IdentityToWord(identity_dim + expression_dim, hidden_dim, token_dim)

    def expression(
        self, batch: int, exp: torch.Tensor | None = None, use_null: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The expression each sample is conditioned on.

        ``exp=None`` gives ``null_exp`` for all. ``use_null`` (shape ``(B,)``, bool or a 0..1
        weight) selects ``null_exp`` per sample -- the training-time drop of Expression Guidance,
        and at inference a strength blend between ``exp`` and ``null_exp``.
        """
        null = self.null_exp.unsqueeze(0).expand(batch, -1)
        if exp is None:
            return null
        exp = exp.to(null.dtype).expand(batch, -1) if exp.shape[0] == 1 else exp.to(null.dtype)
        if use_null is None:
            return exp
        w = use_null.to(null.dtype).reshape(-1, 1)
        return w * null + (1 - w) * exp

    def forward(
        self, identity: torch.Tensor, exp: torch.Tensor | None = None, use_null: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """identity ``(B, 1536)`` -> (first word, last word), each ``(B, 768)``."""
        x = torch.cat([identity, self.expression(identity.shape[0], exp, use_null)], dim=-1)
        return self.i2t_first(x), self.i2t_last(x)

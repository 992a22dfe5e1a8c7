"""CGDR: class-guided denoising regularisation (the paper's training objective).

With ε the sampled noise, ε_θ the UNet's prediction for the identity prompt and ε_c its
prediction for the class prompt ("a photo of a person", no gradient), and M the face mask at
latent resolution (1 = face):

    L = ‖M ⊙ (ε − ε_θ)‖² + ‖(1 − M) ⊙ (ε_c − ε_θ)‖²

The face learns to reconstruct the noise (the person); the rest of the image is held to what
the model would draw for a generic person, which keeps the identity tokens from taking over the
background and keeps prompts editable. Each ‖·‖² here is a mean over all elements (batch,
channels, pixels), so the value does not depend on resolution and the two terms share one scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CGDRLoss:
    total: torch.Tensor
    face: torch.Tensor
    background: torch.Tensor


def mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, H, W) mask in 0..1 -> (B, 1, h, w): the face share of each latent pixel."""
    return F.interpolate(mask.float(), size=size, mode="area")


def cgdr_loss(noise: torch.Tensor, eps_identity: torch.Tensor, eps_class: torch.Tensor,
              mask: torch.Tensor) -> CGDRLoss:
    """``mask`` (B, 1, h, w) at latent resolution broadcasts over channels."""
    mask = mask.to(eps_identity.dtype)
    face = (mask * (noise - eps_identity)).pow(2).mean()
    background = ((1 - mask) * (eps_class.detach() - eps_identity)).pow(2).mean()
    return CGDRLoss(face + background, face, background)

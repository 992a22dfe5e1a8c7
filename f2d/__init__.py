"""Face2Diffusion method library: MSID encoder, mapping network, alignment, weights.

Imports nothing from ComfyUI, so the CLI, training and tests use it without the host.
"""
from .mapping import MappingNetwork
from .msid import MSIDEncoder

__all__ = ["MSIDEncoder", "MappingNetwork"]

"""Socket types of the pack. `F2D_*` names keep other packs' objects out of our sockets.

What travels on each (Python objects never outlive a ComfyUI session, so only the type ids are
part of saved workflows):
- F2D_MODEL: :class:`F2DModel` (the MSID encoder + mapping network, owned by the host's model management);
- F2D_IDENTITY: :class:`f2d.identity.IdentityVectors` (MSID vectors, their mean, the intake report);
- F2D_ID_TOKENS: :class:`f2d.identity.IdentityTokens` (the two tokens with their provenance);
- F2D_EXPRESSION: a (1, 64) expression tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from comfy_api.latest import io

CATEGORY = "Face2Diffusion"

F2DModelType = "F2D_MODEL"
F2DIdentityType = "F2D_IDENTITY"
F2DIdTokensType = "F2D_ID_TOKENS"
F2DExpressionType = "F2D_EXPRESSION"

F2DModelIO = io.Custom(F2DModelType)
F2DIdentityIO = io.Custom(F2DIdentityType)
F2DIdTokensIO = io.Custom(F2DIdTokensType)
F2DExpressionIO = io.Custom(F2DExpressionType)


@dataclass
class F2DModel:
    patcher: "comfy.model_patcher.ModelPatcher"  # noqa: F821
    msid_name: str
    mapping_name: str

    @property
    def encoder(self):
        return self.patcher.model


def unknown_choice(name: str, value, options) -> str | None:
    """The message for a combo value that is not among its options (API prompts can send anything;
    ComfyUI 0.3.75 does not check V3 combos and would run with a silent substitute), else None."""
    options = list(options)
    if value is None or value in options:  # None: fed by a link, checked when it arrives
        return None
    shown = ", ".join(map(str, options[:8])) + (", ..." if len(options) > 8 else "")
    return f"{name}: '{value}' is not one of the choices ({shown}); pick one from the list"


def check_run_values(choices=(), numbers=()) -> None:
    """Run-time checks of what an API prompt can send past the host's own: combo values
    (``(name, value, options)``, see :func:`unknown_choice`) and numbers (``(name, value)`` or
    ``(name, value, hint)``: "nan" passes the host's min/max). Raises ValueError naming the input."""
    for name, value, options in choices:
        problem = unknown_choice(name, value, options)
        if problem:
            raise ValueError(problem)
    for name, value, *hint in numbers:
        if not math.isfinite(value):
            raise ValueError(f"{name} is {value}, not a number: set {name} to a finite value"
                             + (f" ({hint[0]})" if hint else ""))

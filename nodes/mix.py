"""F2D Mix Identities: two to four people -> one identity (weighted mean of MSID vectors)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d.identity import IdentityVectors
from ..f2d.mix import mix_identities
from .types import CATEGORY, F2DIdentityIO

SLOTS = 4
REQUIRED = 2


def _weight_input(i: int, default: float) -> io.Float.Input:
    return io.Float.Input(f"weight_{i}", default=default, min=0.0, max=100.0, step=0.05, optional=i > REQUIRED,
                          tooltip=f"How much of identity_{i}. Weights are relative: 0.7 and 0.3, or 70 and 30, "
                                  "give the same 70 % / 30 % mix; 0 leaves this identity out.")


class F2DMixIdentities(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = []
        for i in range(1, SLOTS + 1):
            inputs.append(F2DIdentityIO.Input(
                f"identity_{i}", optional=i > REQUIRED,
                tooltip="From F2D Encode Identity, F2D Load Identity (its identity output) or another F2D Mix "
                        "Identities." + ("" if i <= REQUIRED else " Optional.")))
            inputs.append(_weight_input(i, 0.5 if i <= REQUIRED else 0.0))
        return io.Schema(
            node_id="F2DMixIdentities",
            display_name="F2D Mix Identities",
            category=CATEGORY,
            description=("Blends two to four people into one identity, e.g. 70 % A + 30 % B: the weighted mean of "
                         "their MSID identity vectors, taken before the mapping network. Connect the result to "
                         "F2D Expression Guidance, as an identity from F2D Encode Identity."),
            inputs=inputs,
            outputs=[F2DIdentityIO.Output("identity", tooltip="The mixed identity, for F2D Expression Guidance.")],
        )

    @classmethod
    def execute(cls, identity_1, weight_1, identity_2, weight_2, **optional) -> io.NodeOutput:
        given = [(identity_1, weight_1), (identity_2, weight_2)]
        for i in range(REQUIRED + 1, SLOTS + 1):
            ident, weight = optional.get(f"identity_{i}"), optional.get(f"weight_{i}", 0.0)
            if ident is None and weight:
                raise ValueError(f"weight_{i} is {weight:g} but identity_{i} is not connected; connect it or set "
                                 f"weight_{i} to 0")
            if ident is not None:
                given.append((ident, weight))
        for i, (ident, _) in enumerate(given, 1):
            if ident is None or getattr(ident, "vectors", None) is None:
                raise ValueError(f"identity_{i} carries no MSID identity vector (an identity file saved without "
                                 "one); re-save that person from F2D Encode Identity with F2D Save Identity")
        # A person whose photos held no face (allow_no_face) has nothing to mix: left out, and said so.
        empty = [i for i, (ident, _) in enumerate(given, 1) if ident.is_empty]
        given = [g for g in given if not g[0].is_empty]
        note = [f"identity_{i}: no identity (no face in its photos), left out of the mix" for i in empty]
        if not given:
            return io.NodeOutput(IdentityVectors(torch.zeros(0, 1536), source="mix", notes=note), ui={"f2d_note": note})
        mixed = mix_identities([ident.vectors for ident, _ in given], [w for _, w in given])
        return io.NodeOutput(IdentityVectors(mixed, source="mix", notes=note), ui={"f2d_note": note} if note else None)

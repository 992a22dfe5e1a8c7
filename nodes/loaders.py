"""F2D Load MSID: the identity encoder and mapping network as one ComfyUI model."""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
from comfy_api.latest import io

from ..f2d.identity import IdentityEncoder
from ..f2d.weights import WeightsError
from . import paths
from .types import CATEGORY, F2DModel, F2DModelIO


def _default(files: list[str], stem: str) -> str | None:
    return next((f for f in files if os.path.splitext(os.path.basename(f))[0] == stem), files[0] if files else None)


def _missing(role: str, name) -> str | None:
    if name is None or name in paths.model_files():  # None: fed by a link, checked when it arrives
        return None
    if not isinstance(name, str):
        return _no_file(role, name)
    return (f"{role}: '{name}' is not in the face2diffusion model folder ({paths.searched_folders()}). "
            "Put msid.pt and mapping.pt there (see the README, 'Weights') and press R to refresh.")


def _no_file(role: str, value) -> str:
    return (f"{role}: no file chosen (got {'null' if value is None else type(value).__name__}); pick "
            f"{'msid.pt' if role == 'msid' else 'mapping.pt'} from the list (files in {paths.searched_folders()}; "
            "see the README, 'Weights')")


class F2DLoadMSID(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = paths.model_files()
        return io.Schema(
            node_id="F2DLoadMSID",
            display_name="F2D Load MSID",
            category=CATEGORY,
            description=(
                "Loads Face2Diffusion's MSID identity encoder and its mapping network from "
                "models/face2diffusion (official .pt files or .safetensors). The weights are checked "
                "key by key; .pt files are read without running any code they contain."
            ),
            inputs=[
                io.Combo.Input(
                    "msid", options=files, default=_default(files, "msid"),
                    tooltip="The MSID identity encoder (official msid.pt), in models/face2diffusion.",
                ),
                io.Combo.Input(
                    "mapping", options=files, default=_default(files, "mapping"),
                    tooltip="The mapping network (official mapping.pt), in models/face2diffusion.",
                ),
            ],
            outputs=[F2DModelIO.Output("f2d_model", tooltip="MSID encoder + mapping network.")],
        )

    @classmethod
    def validate_inputs(cls, msid: str) -> bool | str:
        # One input only: ComfyUI 0.3.75 repeats a validation message once per input the method
        # takes. The mapping file is checked the same way as the run starts.
        return _missing("msid", msid) or True

    @classmethod
    def execute(cls, msid: str, mapping: str) -> io.NodeOutput:
        # A null in an API prompt arrives here as None (validation cannot tell it from a link).
        problem = next((_no_file(role, v) for role, v in (("msid", msid), ("mapping", mapping))
                        if not isinstance(v, str)), None) or _missing("mapping", mapping)
        if problem:
            raise FileNotFoundError(problem)
        load_device = mm.get_torch_device()
        try:
            # The library's one precision site, for the device the host will run it on; ComfyUI
            # moves the model there itself (.to(device) keeps the per-module dtypes).
            encoder = IdentityEncoder.for_device(paths.full_path(msid), paths.full_path(mapping), load_device,
                                                 move=False)
        except WeightsError as e:
            raise WeightsError(f"F2D Load MSID: {e}") from None
        patcher = comfy.model_patcher.ModelPatcher(
            encoder, load_device=load_device, offload_device=mm.unet_offload_device()
        )
        return io.NodeOutput(F2DModel(patcher=patcher, msid_name=msid, mapping_name=mapping))

"""ComfyUI adapter of the f2d library: thin V3 nodes, no maths."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .paths import register_model_folder

register_model_folder()

# Imported after the folder is registered: their schemas list its files.
from .conditioning import F2DSampler, F2DTextEncode  # noqa: E402
from .detail import F2DFaceDetail  # noqa: E402
from .identity import (  # noqa: E402
    F2DEncodeIdentity,
    F2DExpressionGuidance,
    F2DExpressionVector,
    F2DLoadIdentity,
    F2DSaveIdentity,
)
from .likeness import F2DBestOfN, F2DIdentitySimilarity  # noqa: E402
from .loaders import F2DLoadMSID  # noqa: E402
from .mix import F2DMixIdentities  # noqa: E402

NODES = [
    F2DLoadMSID,
    F2DEncodeIdentity,
    F2DExpressionGuidance,
    F2DExpressionVector,
    F2DTextEncode,
    F2DSampler,
    F2DSaveIdentity,
    F2DLoadIdentity,
    F2DIdentitySimilarity,
    F2DBestOfN,
    F2DMixIdentities,
    F2DFaceDetail,
]


class Face2DiffusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)

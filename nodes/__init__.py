"""ComfyUI adapter of the f2d library: thin V3 nodes, no maths."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .paths import register_model_folder

register_model_folder()

from .loaders import F2DLoadMSID  # noqa: E402  (needs the folder registered)


class Face2DiffusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [F2DLoadMSID]

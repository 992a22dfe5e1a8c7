"""Socket types of the pack. `F2D_*` names keep other packs' objects out of our sockets."""
from __future__ import annotations

from dataclasses import dataclass

import comfy.model_patcher

F2DModelType = "F2D_MODEL"


@dataclass
class F2DModel:
    patcher: comfy.model_patcher.ModelPatcher
    msid_name: str
    mapping_name: str

    @property
    def encoder(self):
        return self.patcher.model

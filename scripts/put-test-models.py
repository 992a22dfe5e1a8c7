"""Writes the test suite's stand-in models into a ComfyUI base folder, for contributors who want to
click through the example workflows without the real weights (`make run-test-models`):

    .venv/bin/python scripts/put-test-models.py .comfy-test

- the tiny SD1.5-shaped checkpoint (noise pictures in ~1 s on a CPU), a tiny LoRA and ControlNet,
  under the file names the example workflows use;
- formula weights as msid.pt and mapping.pt (the shapes of the official files, values from a
  formula: the nodes run, the identity means nothing).

They are NOT Face2Diffusion or Stable Diffusion: pictures made with them show nothing about the
method. Existing files are never overwritten, so this cannot replace real weights.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from f2d_testkit import (  # noqa: E402
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd15_checkpoint,
    comfy_tree,
    make_workflows_module,
    write_formula_weights,
)

sys.path.insert(1, str(comfy_tree()))  # the tiny models are built with ComfyUI's own model classes
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True  # building them needs no GPU


def main(base: Path) -> int:
    mw = make_workflows_module()
    models = base / "models"
    wanted = {
        models / "checkpoints" / mw.CHECKPOINT: build_tiny_sd15_checkpoint,
        models / "loras" / mw.LORA: build_tiny_lora,
        models / "controlnet" / mw.CONTROLNET: build_tiny_controlnet,
        models / "face2diffusion" / "msid.pt": lambda p: write_formula_weights(p.parent, "msid", "pt"),
        models / "face2diffusion" / "mapping.pt": lambda p: write_formula_weights(p.parent, "mapping", "pt"),
    }
    for path, build in wanted.items():
        if path.exists():
            print(f"kept   {path.relative_to(base)} (already there)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        build(path)
        print(f"wrote  {path.relative_to(base)} (test stand-in)")
    (models / "face2diffusion" / "identities").mkdir(parents=True, exist_ok=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]).resolve()))

"""Regenerates docs/basic_workflow.jpg, the README's picture: workflow 01 as it opens in the real
front end (the one ComfyUI 0.3.75 bundles), in Debian's Chromium driven by Playwright, with the
files the workflow names present (an empty checkpoint file and the tests' formula weights: only
their names show) so its notes read as
a user's would once the weights are in place.

    .venv/bin/python scripts/make_readme_picture.py
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from f2d_testkit import (  # noqa: E402
    CHROMIUM,
    ComfyServer,
    copy_into,
    make_workflows_module,
    write_formula_weights,
)

OUT = ROOT / "docs" / "basic_workflow.jpg"


def main() -> int:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    mw = make_workflows_module()
    workflow = json.loads((ROOT / "workflows" / "01_basic_f2d_sampler.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "models" / "checkpoints").mkdir(parents=True)
        (base / "models" / "checkpoints" / mw.CHECKPOINT).write_bytes(b"")  # listed by name, never loaded
        for kind in ("msid", "mapping"):
            write_formula_weights(base / "models" / "face2diffusion", kind, "pt")
        copy_into(ROOT / "workflows" / mw.PHOTO, base / "input")
        with ComfyServer(base) as server, sync_playwright() as p:
            server.post("/settings/Comfy.TutorialCompleted", True)
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(server.url)
            page.wait_for_function("window.app?.graph && app.extensions?.some(e => e.name === 'Face2Diffusion.ui')",
                                   timeout=90_000)
            page.evaluate("wf => app.loadGraphData(wf)", workflow)
            page.wait_for_function("() => app.graph._nodes.find(n => n.type === 'F2DLoadMSID')"
                                   "?.f2dNote?.element.textContent.includes('weights found')", timeout=30_000)
            page.wait_for_timeout(1500)
            png = page.screenshot()
            browser.close()
    Image.open(io.BytesIO(png)).convert("RGB").save(OUT, quality=85, optimize=True)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

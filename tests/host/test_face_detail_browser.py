"""F2D Face Detail in the real front end (Debian's Chromium through Playwright), in the bundled
front end and in 1.58.1, classic view and Nodes 2.0: workflow 11 loads, runs from the Run button,
and the node's note (which face got whom) shows inside the node. At test size the tiny UNet draws
no face, so the note says the image passed through unchanged; the lines for faces come the same
way (tests/host/test_face_detail_workflows.py checks their text on a real photo)."""
from __future__ import annotations

import json
import time

import pytest

from f2d_testkit import (
    CHROMIUM,
    NEW_FRONTEND,
    REPO,
    ComfyServer,
    build_tiny_sd15_checkpoint,
    copy_into,
    front_end_args,
    make_workflows_module,
    require_chromium,
    write_formula_weights,
)

pytestmark = [pytest.mark.host, pytest.mark.browser]
WF11 = REPO / "workflows" / "11_face_detail.json"
CONFIGS = [("bundled", "classic"), (NEW_FRONTEND, "classic"), (NEW_FRONTEND, "nodes2")]


@pytest.fixture(scope="module", params=["bundled", NEW_FRONTEND])
def server(request, tmp_path_factory, f2d_nodes):
    require_chromium()
    mw = make_workflows_module()
    base = tmp_path_factory.mktemp(f"comfy_detail_browser_{request.param}")
    build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / mw.CHECKPOINT)
    for kind in ("msid", "mapping"):
        write_formula_weights(base / "models" / "face2diffusion", kind, "pt")
    copy_into(REPO / "workflows" / "astronaut.png", base / "input")
    args = front_end_args(request.param)
    with ComfyServer(base, args) as s:
        assert s.post("/settings/Comfy.TutorialCompleted", True)[0] == 200
        s.front_end = request.param
        yield s


@pytest.mark.parametrize("view", ["classic", "nodes2"])
def test_face_detail_note_shows_in_the_node_after_a_run(server, view, tmp_path):
    from playwright.sync_api import sync_playwright

    if server.front_end == "bundled" and view == "nodes2":
        pytest.skip("Nodes 2.0 exists only in the newer front end")
    assert server.post("/settings/Comfy.VueNodes.Enabled", view == "nodes2")[0] == 200
    server.free_node_cache()  # run every node again
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("window.app?.graph && app.extensions?.some(e => e.name === 'Face2Diffusion.ui')",
                               timeout=90_000)
        page.evaluate("wf => app.loadGraphData(wf)", json.loads(WF11.read_text()))
        page.wait_for_timeout(1000)
        node = page.evaluate("app.graph._nodes.find(n => n.type === 'F2DFaceDetail').id")
        note = (page.locator(f'[data-node-id="{node}"] .f2d-note') if view == "nodes2"
                else page.locator(f'.f2d-note[data-f2d-node="{node}"]'))

        def wait_text(*texts, timeout_s=15.0):
            deadline, seen = time.monotonic() + timeout_s, None
            while time.monotonic() < deadline:
                if note.count() == 1 and note.is_visible():
                    seen = note.inner_text()
                    if all(t in seen for t in texts):
                        return seen
                page.wait_for_timeout(200)
            raise AssertionError(f"{server.front_end} {view}: note {seen!r} lacks {texts}")

        # Zoom to 100 % on the node, as a user looks at it.
        page.evaluate(f"""() => {{ const n = app.graph.getNodeById({node});
            app.canvas.ds.scale = 1; app.canvas.ds.offset = [160 - n.pos[0], 180 - n.pos[1]];
            app.canvas.setDirty(true, true); }}""")
        wait_text("which face got which person shows here after a run")
        page.evaluate("""() => { for (const n of app.graph._nodes) for (const w of n.widgets ?? []) {
            if (n.type === 'EmptyLatentImage' && (w.name === 'width' || w.name === 'height')) w.value = 64;
            if ((n.type === 'F2DSampler' || n.type === 'F2DFaceDetail') && w.name === 'steps') w.value = 2; } }""")
        page.get_by_role("button", name="Run").first.click()
        text = wait_text("image 0: no face found, passed through unchanged", "detector:", timeout_s=240)
        assert "after a run" not in text
        # Inside the node as drawn.
        box = note.bounding_box()
        assert box["width"] >= 60 and box["height"] >= 12
        page.screenshot(path=str(tmp_path / f"face_detail_{server.front_end}_{view}.png"))
        assert not errors, errors
        browser.close()

"""The pack's front end in a real browser (Debian's Chromium, driven by Playwright; no browser
download) on a real ComfyUI with its real front end. Screenshots of each state go to
<pytest tmp>/screenshots/ (the path is printed)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from f2d_testkit import (
    REPO,
    ComfyServer,
    build_tiny_sd15_checkpoint,
    copy_into,
    write_formula_weights,
)

pytestmark = [pytest.mark.host, pytest.mark.browser]
CHROMIUM = Path(os.environ.get("F2D_CHROMIUM", "/usr/bin/chromium"))
UI = sorted((REPO / "workflows").glob("*.json"))
MISSING_DIALOG = "This workflow has missing nodes"


@pytest.fixture(scope="module")
def server(tmp_path_factory, f2d_nodes):
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set F2D_CHROMIUM)")
    base = tmp_path_factory.mktemp("comfy_browser")
    build_tiny_sd15_checkpoint(base / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    (base / "models" / "face2diffusion").mkdir(parents=True)  # empty on purpose: see the note test
    copy_into(REPO / "workflows" / "astronaut.png", base / "input")
    with ComfyServer(base) as s:
        assert s.post("/settings/Comfy.TutorialCompleted", True)[0] == 200  # no Templates dialog
        yield s


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("screenshots")
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url)
        page.wait_for_function("window.app?.graph && app.extensions?.some(e => e.name === 'Face2Diffusion.ui')",
                               timeout=90_000)
        page.f2d_errors = errors
        yield page
        browser.close()


def load(page, path: Path):
    page.keyboard.press("Escape")
    page.evaluate("wf => app.loadGraphData(wf)", json.loads(path.read_text()))
    page.wait_for_timeout(800)


def node_value(page, node_type: str, expr: str):
    return page.evaluate(f"() => {{ const node = app.graph._nodes.find(n => n.type === '{node_type}'); return {expr}; }}")


def show_node(page, node_type: str):
    """Zoom to 100 % on the node: the front end hides text boxes at low zoom, as a user sees it."""
    page.evaluate(f"""() => {{ const n = app.graph._nodes.find(n => n.type === '{node_type}');
        app.canvas.ds.scale = 1; app.canvas.ds.offset = [120 - n.pos[0], 140 - n.pos[1]];
        app.canvas.setDirty(true, true); }}""")
    page.wait_for_timeout(500)


def wait_for(page, node_type: str, expr: str, timeout_s: float = 15):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = node_value(page, node_type, expr)
        if value:
            return value
        page.wait_for_timeout(250)
    raise AssertionError(f"{node_type}: {expr} stayed falsy for {timeout_s} s")


def test_missing_model_note_appears_and_goes(page, server, shots):
    load(page, REPO / "workflows" / "01_basic_f2d_sampler.json")
    show_node(page, "F2DLoadMSID")
    note = wait_for(page, "F2DLoadMSID", "node.f2dModelNote")
    assert "models/face2diffusion/ is empty" in note[0] and "msid.pt" in " ".join(note)
    page.screenshot(path=str(shots / "01_missing_models.png"))
    folder = server.base / "models" / "face2diffusion"
    write_formula_weights(folder, "msid", "pt")
    write_formula_weights(folder, "mapping", "pt")
    wait_for(page, "F2DLoadMSID", "node.f2dModelNote === null")  # the page looks again by itself
    page.screenshot(path=str(shots / "02_models_present.png"))
    # A file the graph names but the folder lacks is called out by name.
    page.evaluate("""() => { const n = app.graph._nodes.find(n => n.type === 'F2DLoadMSID');
                             const w = n.widgets.find(w => w.name === 'msid'); w.value = 'old_msid.pt'; w.callback(w.value); }""")
    assert "msid: 'old_msid.pt' is not in models/face2diffusion/" in wait_for(page, "F2DLoadMSID", "node.f2dModelNote")[0]


def test_every_workflow_loads_without_missing_nodes(page, shots):
    for path in UI:
        for close in page.locator(".p-toast-close-button").all():
            close.click()
        load(page, path)
        assert page.get_by_text(MISSING_DIALOG).count() == 0, path.name
        alerts = page.locator(".p-toast-message").all_inner_texts()
        assert not any("Invalid workflow" in a for a in alerts), (path.name, alerts)
        unknown = page.evaluate("app.graph._nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)")
        assert unknown == [], (path.name, unknown)
        page.screenshot(path=str(shots / f"workflow_{path.stem}.png"))
    # The check can fail: a graph with an unknown node raises the dialog.
    broken = json.loads(UI[0].read_text())
    broken["nodes"][0]["type"] = "NoSuchNodeF2DTest"
    page.evaluate("wf => app.loadGraphData(wf)", broken)
    page.get_by_text(MISSING_DIALOG).wait_for(timeout=10_000)
    page.keyboard.press("Escape")


def test_identifier_indicator_follows_the_prompt_text(page, shots):
    load(page, REPO / "workflows" / "02_text_encode_ksampler.json")
    show_node(page, "F2DTextEncode")
    assert node_value(page, "F2DTextEncode", "node.f2dIdentifierCount") == 1
    textarea = page.evaluate_handle(
        "() => { const n = app.graph._nodes.find(n => n.type === 'F2DTextEncode');"
        " const w = n.widgets.find(w => w.name === 'text'); return w.inputEl ?? w.element; }").as_element()
    textarea.fill("a photo of a man on a beach")
    assert node_value(page, "F2DTextEncode", "node.f2dIdentifierCount") == 0
    assert "no \"f l\"" in node_value(page, "F2DTextEncode", "node.f2dIdentifierNote[0]")
    page.screenshot(path=str(shots / "identifier_missing.png"))
    textarea.fill("(f l:1.2) talking to f l in a mirror")
    assert node_value(page, "F2DTextEncode", "node.f2dIdentifierCount") == 2
    textarea.fill("a photo of ")
    page.evaluate("() => app.graph._nodes.find(n => n.type === 'F2DTextEncode')"
                  ".widgets.find(w => w.name === 'insert identifier').callback()")
    assert node_value(page, "F2DTextEncode", "node.widgets.find(w => w.name === 'text').value") == "a photo of f l"
    assert textarea.input_value() == "a photo of f l"
    assert node_value(page, "F2DTextEncode", "node.f2dIdentifierCount") == 1
    page.screenshot(path=str(shots / "identifier_inserted.png"))


def test_queue_basic_workflow_from_the_page_shows_image_and_chosen_face(page, server, shots):
    folder = server.base / "models" / "face2diffusion"
    if not (folder / "msid.pt").exists():
        write_formula_weights(folder, "msid", "pt")
        write_formula_weights(folder, "mapping", "pt")
    load(page, REPO / "workflows" / "01_basic_f2d_sampler.json")
    # Small and quick on the tiny test checkpoint; everything else as shipped.
    page.evaluate("""() => { for (const n of app.graph._nodes) for (const w of n.widgets ?? []) {
                      if (n.type === 'EmptyLatentImage' && (w.name === 'width' || w.name === 'height')) w.value = 64;
                      if (n.type === 'F2DSampler' && w.name === 'steps') w.value = 4; } }""")
    for close in page.locator(".p-toast-close-button").all():
        close.click()
    page.get_by_role("button", name="Run").first.click()
    wait_for(page, "SaveImage", "node.imgs?.length > 0", timeout_s=120)
    faces = wait_for(page, "F2DEncodeIdentity", "node.f2dFacesNote")
    assert faces[0].startswith("✓ photo 0: the only face")
    assert wait_for(page, "F2DEncodeIdentity", "node.imgs?.length") == 1  # the aligned crop on the node
    page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "queued_result.png"))
    show_node(page, "F2DEncodeIdentity")
    page.screenshot(path=str(shots / "queued_result_chosen_face.png"))
    saved = list((server.base / "output").glob("f2d_basic_*.png"))
    assert saved, "no image saved"
    assert not page.f2d_errors, page.f2d_errors

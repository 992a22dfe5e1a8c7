"""The example workflows as a new user opens them: from the front end's template browser (the
Templates button of the left toolbar), in the front end the host bundles (1.32.9) and the newest
(1.58.1), in a 1600x1000 window. 1.58.1 ignores a template's saved view and fits the graph to the
window; below the zoom where it stops drawing text (font 8 px / 14 px, 57 %) nodes are blank boxes.
Checks: this pack's cards in their numbered order, and every workflow opened from its card at a
zoom where text is drawn, whole on screen. Screenshots go to <pytest tmp>/template_view_*/."""
from __future__ import annotations


import pytest

from f2d_testkit import (
    CHROMIUM,
    NEW_FRONTEND,
    REPO,
    ComfyServer,
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd15_checkpoint,
    copy_into,
    front_end_args,
    make_workflows_module,
    require_chromium,
    write_formula_weights,
)

pytestmark = [pytest.mark.host, pytest.mark.browser]
NAMES = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
PACK = "ComfyUI-Face2Diffusion"
SIDEBAR = 60  # the left toolbar covers the canvas there


@pytest.fixture(scope="module", params=["bundled", NEW_FRONTEND])
def page(request, tmp_path_factory, f2d_nodes):
    require_chromium()
    from playwright.sync_api import sync_playwright

    mw = make_workflows_module()
    base = tmp_path_factory.mktemp(f"comfy_templates_{request.param}")
    models = base / "models"
    build_tiny_sd15_checkpoint(models / "checkpoints" / mw.CHECKPOINT)
    build_tiny_lora(models / "loras" / mw.LORA)
    build_tiny_controlnet(models / "controlnet" / mw.CONTROLNET)
    for kind in ("msid", "mapping"):
        write_formula_weights(models / "face2diffusion", kind, "pt")
    (models / "face2diffusion" / "identities").mkdir()
    (models / "face2diffusion" / "identities" / "astronaut.safetensors").write_bytes(b"")  # listed, not read
    for photo in mw.PHOTOS:
        copy_into(REPO / "workflows" / photo, base / "input")
    extra = front_end_args(request.param)
    shots = tmp_path_factory.mktemp(f"template_view_{request.param}")
    print(f"\nscreenshots: {shots}")
    with ComfyServer(base, extra_args=extra) as server, sync_playwright() as p:
        assert server.post("/settings/Comfy.TutorialCompleted", True)[0] == 200
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function("window.app?.graph && app.extensions?.some(e => e.name === 'Face2Diffusion.ui')",
                               timeout=90_000)
        page.wait_for_timeout(1000)
        page.f2d_shots, page.f2d_front_end = shots, request.param
        yield page
        browser.close()


def open_our_templates(page):
    """The Templates button of the left toolbar, then this pack under Extensions."""
    dialog = page.get_by_role("dialog")
    if not dialog.count() or not dialog.first.is_visible():
        page.get_by_text("Templates", exact=True).first.click()
    dialog.first.wait_for(timeout=15_000)
    dialog.first.get_by_text(PACK, exact=True).first.click()
    dialog.first.get_by_text(NAMES[0], exact=True).first.wait_for(timeout=15_000)
    return dialog.first


def card_names(page) -> list[str]:
    return page.evaluate("""(names) => [...document.querySelectorAll('*')]
        .filter(e => e.children.length === 0 && names.includes(e.textContent.trim()))
        .map(e => e.textContent.trim())""", NAMES)


def test_cards_come_in_numbered_order(page):
    open_our_templates(page)
    shown = card_names(page)
    assert shown == NAMES, shown  # the server lists them in its folder's order
    page.screenshot(path=str(page.f2d_shots / "cards.png"))


@pytest.mark.parametrize("name", NAMES)
def test_workflow_opened_from_its_card_is_readable(page, name, request):
    if name == "09_two_people" and page.f2d_front_end == NEW_FRONTEND:
        # Known: with F2D Face Detail, 09 is seven columns wide; 1.58.1 fits a template to 0.75 of a
        # 1600 px window (0.52), below the zoom where it draws text. Its saved view (0.65) is readable
        # when the file is loaded directly and in the bundled front end. Strict: passing reports it.
        request.applymarker(pytest.mark.xfail(strict=True, reason="09 with per-person detail is too wide for "
                                                                  "1.58.1's template fit at 1600x1000"))
    open_our_templates(page).get_by_text(name, exact=True).first.click()
    page.get_by_role("dialog").first.wait_for(state="hidden", timeout=15_000)
    page.wait_for_function("() => app.graph._nodes.some(x => x.type === 'MarkdownNote')", timeout=15_000)
    page.wait_for_timeout(1500)  # the front end sets the view after the first frame
    view = page.evaluate("""() => ({scale: app.canvas.ds.scale, offset: [...app.canvas.ds.offset],
        lowQuality: app.canvas.low_quality, w: app.canvas.canvas.clientWidth, h: app.canvas.canvas.clientHeight,
        boxes: app.graph._nodes.map(n => { const b = n.getBounding ? n.getBounding() :
            [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30]; return [n.title, b[0], b[1], b[2], b[3]]; })})""")
    page.screenshot(path=str(page.f2d_shots / f"{name}.png"))
    assert not view["lowQuality"], f"{name} opens at {view['scale']:.3f}: nodes are drawn without their text"
    s, (ox, oy) = view["scale"], view["offset"]
    for title, x, y, w, h in view["boxes"]:
        assert (x + ox) * s >= SIDEBAR - 1 and (y + oy) * s >= 0, (name, title, "off the left or top")
        assert (x + w + ox) * s <= view["w"] + 1 and (y + h + oy) * s <= view["h"] + 1, (name, title, view["scale"])

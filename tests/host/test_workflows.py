"""Every example workflow, queued over HTTP on a real ComfyUI with a tiny SD1.x checkpoint.

The tiny checkpoint (ComfyUI's own UNet class, one level; the full CLIP-L with the reference
weights; a TAESD VAE) is written under the file names the workflows use. To keep the suite
short, the graphs are queued at 64x64 and 4 steps instead of 512x512 and 30; nothing else changes.
"""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from f2d_testkit import (
    REPO,
    ComfyServer,
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd15_checkpoint,
    copy_into,
    write_formula_weights,
)

pytestmark = pytest.mark.host

API = sorted((REPO / "workflows" / "api").glob("*.json"))
UI = sorted((REPO / "workflows").glob("*.json"))


def _make_workflows():
    spec = importlib.util.spec_from_file_location("make_workflows", REPO / "scripts" / "make_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def server(tmp_path_factory, f2d_nodes):
    mw = _make_workflows()
    base = tmp_path_factory.mktemp("comfy_e2e")
    models = base / "models"
    build_tiny_sd15_checkpoint(models / "checkpoints" / mw.CHECKPOINT)
    build_tiny_lora(models / "loras" / mw.LORA)
    build_tiny_controlnet(models / "controlnet" / mw.CONTROLNET)
    write_formula_weights(models / "face2diffusion", "msid", "pt")
    write_formula_weights(models / "face2diffusion", "mapping", "pt")
    copy_into(REPO / "workflows" / mw.PHOTO, base / "input")
    from skimage import data

    Image.fromarray(data.coffee()).save(base / "input" / "coffee.png")
    with ComfyServer(base) as s:
        yield s


def shrink(api: dict) -> dict:
    api = copy.deepcopy(api)
    for node in api.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 4
    return api


def run(server, api: dict) -> dict:
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 200, body
    return server.wait_history(body["prompt_id"])


def test_there_are_example_workflows_in_both_formats():
    assert len(API) >= 8
    assert [p.name for p in API] == [p.name for p in UI]


@pytest.mark.parametrize("path", API, ids=[p.stem for p in API])
def test_workflow_runs_and_saves_its_images(server, path):
    api = shrink(json.loads(path.read_text()))
    result = run(server, api)
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1]
    saved = [img for out in result["outputs"].values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved, f"{path.name} saved no image"
    for img in saved:
        pixels = np.array(Image.open(server.base / "output" / img["subfolder"] / img["filename"]))
        assert pixels.shape[:2] == (64, 64) and pixels.std() > 1.0, "a constant image"


def test_ui_workflows_use_only_installed_nodes_and_match_their_api_twins(server):
    """What a user drags in loads with no missing node, and the drag-in files are the ones the
    tests queue (regenerate with scripts/make_workflows.py after changing a node)."""
    info = server.get("/object_info")
    for path in UI:
        ui = json.loads(path.read_text())
        missing = {n["type"] for n in ui["nodes"]} - set(info)
        assert not missing, f"{path.name}: missing node types {missing}"
    stale = [p.name for p, text in _make_workflows().render(info).items() if p.read_text() != text]
    assert not stale, f"out of date, run scripts/make_workflows.py: {stale}"


def test_faceless_photo_fails_with_our_message_and_the_next_prompt_runs(server):
    api = shrink(json.loads((REPO / "workflows" / "api" / "01_basic_f2d_sampler.json").read_text()))
    photo = next(k for k, n in api.items() if n["class_type"] == "LoadImage")
    api[photo]["inputs"]["image"] = "coffee.png"
    result = run(server, api)
    assert result["status"]["status_str"] == "error"
    err = next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")
    assert err["node_type"] == "F2DEncodeIdentity"
    assert err["exception_type"].endswith("NoFaceError")
    assert "image 0: no face found" in err["exception_message"] and "skip_faceless" in err["exception_message"]
    api[photo]["inputs"]["image"] = "astronaut.png"
    assert run(server, api)["status"]["status_str"] == "success"


def test_prompt_without_identifier_fails_before_sampling_with_our_message(server):
    api = shrink(json.loads((REPO / "workflows" / "api" / "01_basic_f2d_sampler.json").read_text()))
    sampler = next(k for k, n in api.items() if n["class_type"] == "F2DSampler")
    api[sampler]["inputs"]["text"] = "a photo of a man eating ice cream"
    result = run(server, api)
    err = next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")
    assert err["exception_type"].endswith("IdentifierError")
    assert "'f l'" in err["exception_message"] and "a photo of a man eating ice cream" in err["exception_message"]


def test_best_of_8_saves_exactly_the_kept_images(server):
    api = shrink(json.loads((REPO / "workflows" / "api" / "08_best_of_8.json").read_text()))
    keep = next(n for n in api.values() if n["class_type"] == "F2DBestOfN")["inputs"]["keep"]
    result = run(server, api)
    assert result["status"]["status_str"] == "success"
    save = next(k for k, n in api.items() if n["class_type"] == "SaveImage")
    assert len(result["outputs"][save]["images"]) == keep == 2

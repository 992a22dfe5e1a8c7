"""The face-detail workflows (11_face_detail, 09_two_people) queued over HTTP on a real ComfyUI:
their F2D Face Detail part changes the picture, only around the faces, and its note (sent to the
page as f2d_faces) says which face got whom. The tiny test UNet draws no face, so the detail
node is fed a real photo instead of the generated image; everything else is the shipped graph
(at test size, as tests/host/test_workflows.py runs them)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from f2d_testkit import REPO, ComfyServer, copy_into, make_workflows_module, \
    tame_encoder_checkpoint, write_formula_weights

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def server(tmp_path_factory, f2d_nodes):
    mw = make_workflows_module()
    base = tmp_path_factory.mktemp("comfy_detail")
    models = base / "models"
    tame_encoder_checkpoint(models / "checkpoints" / mw.CHECKPOINT, base / "tiny.safetensors")
    write_formula_weights(models / "face2diffusion", "msid", "pt")
    write_formula_weights(models / "face2diffusion", "mapping", "pt")
    for photo in mw.PHOTOS:
        copy_into(REPO / "workflows" / photo, base / "input")
    side = 320
    pair = [np.array(Image.open(REPO / "workflows" / p).convert("RGB").resize((side, side))) for p in mw.PHOTOS[::2]]
    Image.fromarray(np.concatenate(pair, 1)).save(base / "input" / "pair.png")  # astronaut | grace_hopper
    with ComfyServer(base) as s:
        yield s


def _api(name: str, photo: str) -> tuple[dict, str, str]:
    api = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
    for node in api.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if "steps" in node["inputs"]:
            node["inputs"]["steps"] = 2
    detail = next(k for k, n in api.items() if n["class_type"] == "F2DFaceDetail")
    save = next(k for k, n in api.items() if n["class_type"] == "SaveImage" and n["inputs"]["images"][0] == detail)
    api["900"] = {"class_type": "LoadImage", "inputs": {"image": photo}}
    api[detail]["inputs"].update(image=["900", 0], guide_size=64)
    return api, detail, save


def _run(server, api: dict) -> dict:
    status, body = server.post("/prompt", {"prompt": api})
    assert status == 200, body
    result = server.wait_history(body["prompt_id"])
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1][1].get("exception_message")
    return result


def _saved(server, result, node: str) -> np.ndarray:
    (img,) = result["outputs"][node]["images"]
    return np.array(Image.open(server.base / "output" / img["subfolder"] / img["filename"]).convert("RGB"))


def test_face_detail_workflow_redoes_only_the_face(server):
    api, detail, save = _api("11_face_detail", "astronaut.png")
    result = _run(server, api)
    before = np.array(Image.open(server.base / "input" / "astronaut.png").convert("RGB"))
    after = _saved(server, result, save)
    changed = np.any(after != before, axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 2000, "the face was not re-done"
    # Only around the face (the astronaut's head is at about x 170-290, y 40-200 in the photo).
    assert 100 < xs.min() and xs.max() < 360 and ys.max() < 280
    notes = result["outputs"][detail]["f2d_faces"]
    assert any("image 0 face 0 -> person 1 (similarity" in n for n in notes), notes
    # The node's own settings reach the picture: another denoise, another face.
    other = copy.deepcopy(api)
    other[detail]["inputs"]["denoise"] = 0.9
    assert not np.array_equal(_saved(server, _run(server, other), save), after)


def test_two_people_workflow_gives_each_face_its_person(server):
    api, detail, save = _api("09_two_people", "pair.png")
    result = _run(server, api)
    notes = result["outputs"][detail]["f2d_faces"]
    assert any(n.startswith("image 0 face 0 -> person 1 ") for n in notes), notes
    assert any(n.startswith("image 0 face 1 -> person 2 ") for n in notes), notes
    before = np.array(Image.open(server.base / "input" / "pair.png").convert("RGB"))
    after = _saved(server, result, save)
    changed = np.any(after != before, axis=-1)
    assert changed[:, :320].sum() > 500 and changed[:, 320:].sum() > 500  # both faces re-done
    assert not changed[:, 300:340].any()  # and nothing between them

"""Every example workflow, queued over HTTP on a real ComfyUI with a tiny SD1.x checkpoint.

The tiny checkpoint (ComfyUI's own UNet class, one level; the full CLIP-L with the reference
weights; a TAESD VAE) is written under the file names the workflows use. To keep the suite
short, the graphs are queued at 64x64 and 4 steps instead of 512x512 and 30; nothing else changes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from f2d_testkit import REPO, make_workflows_module

pytestmark = pytest.mark.host

API = sorted((REPO / "workflows" / "api").glob("*.json"))
UI = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(comfy_server):
    """The run's shared server: the tiny checkpoint, LoRA and ControlNet under the workflows' file
    names, msid.pt and an identity-sensitive mapping.pt, the example photos and coffee.png."""
    return comfy_server


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


def load_api(name: str) -> dict:
    return shrink(json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text()))


def node_id(api: dict, class_type: str, title: str | None = None) -> str:
    return next(k for k, n in api.items() if n["class_type"] == class_type
                and (title is None or n["_meta"]["title"] == title))


def saved_images(server, api: dict) -> list[np.ndarray]:
    result = run(server, api)
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1]
    out = [img for o in result["outputs"].values() for img in o.get("images", []) if img["type"] == "output"]
    return [np.array(Image.open(server.base / "output" / i["subfolder"] / i["filename"])).astype(np.float64)
            for i in out]


def test_there_are_example_workflows_in_both_formats():
    assert len(API) >= 10
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
        missing = {n["type"] for n in ui["nodes"]} - set(info) - {"MarkdownNote"}  # the front end's own node
        assert not missing, f"{path.name}: missing node types {missing}"
    stale = [p.name for p, text in make_workflows_module().render(info).items() if p.read_text() != text]
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


# What each workflow adds has an effect: change only that part, and the image changes.

def sampled_latent(server, api: dict, tag: str) -> torch.Tensor:
    """The sampler's output latent (saved by an added SaveLatent): continuous, where the tiny test
    model's 8-bit images are nearly black and white."""
    api = copy.deepcopy(api)
    sampler = next(k for k, n in api.items() if n["class_type"] in ("F2DSampler", "KSampler"))
    api["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": f"latents/{tag}"}}
    result = run(server, api)
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1]
    saved = result["outputs"]["900"]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def _differs(server, api: dict, change) -> float:
    """Relative change of the sampled latent when only ``change`` is applied. The runs are
    deterministic (the same graph gives the same latent bit for bit, checked in the first test), so
    any change comes from the part changed; the thresholds are ~1/3 of what the tiny test model
    shows (its one cross-attention block hears the prompt faintly: another person moves the latent
    by ~0.07 %, identity_start 0.5 by ~0.4 %, a LoRA by ~2 %, ControlNet by ~45 %)."""
    before = sampled_latent(server, api, "before")
    changed = copy.deepcopy(api)
    change(changed)
    after = sampled_latent(server, changed, "after")
    return float((before - after).abs().mean() / before.abs().mean())


def test_another_photo_gives_another_image(server):
    api = load_api("01_basic_f2d_sampler")
    photo = node_id(api, "LoadImage")
    assert torch.equal(sampled_latent(server, api, "same1"), sampled_latent(server, api, "same2"))
    assert _differs(server, api, lambda a: a[photo]["inputs"].update(image="grace_hopper.png")) > 2e-4


def test_lora_strength_changes_the_image(server):
    api = load_api("03_lora")
    lora = node_id(api, "LoraLoader")
    api[lora]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    assert _differs(server, api, lambda a: a[lora]["inputs"].update(strength_model=1.0, strength_clip=1.0)) > 5e-3


def test_controlnet_strength_changes_the_image(server):
    api = load_api("04_controlnet")
    apply = node_id(api, "ControlNetApplyAdvanced")
    api[apply]["inputs"]["strength"] = 0.0
    assert _differs(server, api, lambda a: a[apply]["inputs"].update(strength=1.0)) > 0.1


def test_identity_start_changes_the_image(server):
    api = load_api("01_basic_f2d_sampler")
    sampler = node_id(api, "F2DSampler")
    assert _differs(server, api, lambda a: a[sampler]["inputs"].update(identity_start=0.5)) > 1e-3


def test_second_photo_of_several_photos_counts(server):
    api = load_api("05_several_photos")
    second = node_id(api, "LoadImage", "Photo 2 of the same person")
    assert _differs(server, api, lambda a: a[second]["inputs"].update(image="grace_hopper.png")) > 3e-4


# Two people: each identity acts in its own half of the picture.

def _two_people_latent(server, photo_a: str, photo_b: str) -> torch.Tensor:
    """One sampling step, so that each half of the result depends only on the prompts that cover it
    (more steps mix the halves through the UNet's convolutions on the whole image)."""
    api = load_api("09_two_people")
    api[node_id(api, "EmptyLatentImage")]["inputs"].update(width=128, height=64)
    api[node_id(api, "KSampler")]["inputs"]["steps"] = 1
    api[node_id(api, "LoadImage", "Photo of the person (A)")]["inputs"]["image"] = photo_a
    api[node_id(api, "LoadImage", "Photo of the person (B)")]["inputs"]["image"] = photo_b
    api["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [node_id(api, "KSampler"), 0],
                                                         "filename_prefix": f"latents/two_{Path(photo_a).stem}_{Path(photo_b).stem}"}}
    result = run(server, api)
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1]
    saved = result["outputs"]["900"]["latents"][0]
    return load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))["latent_tensor"]


def test_two_people_each_identity_acts_in_its_own_half(server):
    both = _two_people_latent(server, "astronaut.png", "grace_hopper.png")
    b_changed = _two_people_latent(server, "astronaut.png", "astronaut_closeup.png")
    a_changed = _two_people_latent(server, "astronaut_closeup.png", "grace_hopper.png")
    half = both.shape[-1] // 2
    left, right = (slice(None), slice(None), slice(None), slice(0, half)), \
        (slice(None), slice(None), slice(None), slice(half, None))
    # Another person B: the right half changes, the left half (person A's) stays exactly.
    assert torch.equal(both[left], b_changed[left])
    assert (both[right] - b_changed[right]).abs().mean() > 1e-3
    # Another person A: the other way round.
    assert torch.equal(both[right], a_changed[right])
    assert (both[left] - a_changed[left]).abs().mean() > 1e-3


# Identity mixing: the tokens are the mapping of the weighted mean of the MSID vectors.

def _identity_file(server, name: str) -> Path:
    return server.base / "models" / "face2diffusion" / "identities" / f"{name}.safetensors"


def _people_from_photos() -> dict:
    """Person A (astronaut) and B (Grace Hopper), each encoded from the photo: {key: (nodes, identity ref)}."""
    out = {}
    for key, nid, photo in (("a", "10", "astronaut.png"), ("b", "12", "grace_hopper.png")):
        photo_id = str(int(nid) + 1)
        out[key] = ({photo_id: {"class_type": "LoadImage", "inputs": {"image": photo}},
                     nid: {"class_type": "F2DEncodeIdentity", "inputs": {
                         "f2d_model": ["1", 0], "image": [photo_id, 0], "detector": "auto", "face": "largest",
                         "skip_faceless": False}}}, [nid, 0])
    return out


def _people_from_files(prefix: str) -> dict:
    """The same people from their saved identity files (F2D Load Identity's identity output)."""
    return {key: ({nid: {"class_type": "F2DLoadIdentity", "inputs": {"identity_file": f"{prefix}{key}.safetensors"}}},
                  [nid, 1]) for key, nid in (("a", "10"), ("b", "12"))}


def _mix_graph(people: dict, save: dict[str, str], weights=(0.7, 0.3)) -> dict:
    """Mixes A and B with ``weights``; saves the identities named in ``save`` ("a", "b", "mix")."""
    api = {"1": {"class_type": "F2DLoadMSID", "inputs": {"msid": "msid.pt", "mapping": "mapping.pt"}}}
    for nodes, _ in people.values():
        api.update(copy.deepcopy(nodes))
    api["20"] = {"class_type": "F2DMixIdentities", "inputs": {
        "identity_1": people["a"][1], "weight_1": weights[0], "identity_2": people["b"][1], "weight_2": weights[1]}}
    refs = {"a": people["a"][1], "b": people["b"][1], "mix": ["20", 0]}
    for i, (key, name) in enumerate(save.items()):
        api[f"3{i}"] = {"class_type": "F2DExpressionGuidance",
                        "inputs": {"f2d_model": ["1", 0], "identity": refs[key], "strength": 1.0}}
        api[f"4{i}"] = {"class_type": "F2DSaveIdentity", "inputs": {"id_tokens": [f"3{i}", 0], "name": name}}
    return api


def _ok(server, api) -> None:
    result = run(server, api)
    assert result["status"]["status_str"] == "success", result["status"]["messages"][-1]


def test_mixed_identity_tokens_are_the_mapping_of_the_weighted_mean(server):
    from f2d.identity import IdentityEncoder
    from f2d.identity_file import load_identity

    _ok(server, _mix_graph(_people_from_photos(), {"a": "mix_a", "b": "mix_b", "mix": "mix_70_30"}))
    (_, a, _), (_, b, _) = load_identity(_identity_file(server, "mix_a")), load_identity(_identity_file(server, "mix_b"))
    tokens, mixed, _ = load_identity(_identity_file(server, "mix_70_30"))
    assert (a - b).abs().max() > 1e-2, "two different people"
    torch.testing.assert_close(mixed, 0.7 * a + 0.3 * b, atol=1e-5, rtol=0)
    folder = server.base / "models" / "face2diffusion"
    encoder = IdentityEncoder.from_files(folder / "msid.pt", folder / "mapping.pt")
    expected = encoder.tokens(0.7 * a + 0.3 * b)
    torch.testing.assert_close(tokens.first, expected.first, atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens.last, expected.last, atol=1e-4, rtol=0)
    assert (tokens.first - encoder.tokens(a).first).abs().max() > 1e-3, "not simply person A"

    # Saved identities mix the same way, and weights are relative (7 and 3 = 0.7 and 0.3).
    _ok(server, _mix_graph(_people_from_files("mix_"), {"mix": "mix_saved_7_3"}, weights=(7, 3)))
    saved_tokens, saved_mixed, _ = load_identity(_identity_file(server, "mix_saved_7_3"))
    torch.testing.assert_close(saved_mixed, mixed, atol=1e-6, rtol=0)
    torch.testing.assert_close(saved_tokens.first, tokens.first, atol=1e-5, rtol=0)

    # All weights 0 stops the mix with one message naming the fix (checked as the node runs: ComfyUI
    # 0.3.75 would repeat a validation message once per weight input), and nothing is saved.
    result = run(server, _mix_graph(_people_from_files("mix_"), {"mix": "mix_zero"}, weights=(0, 0)))
    shown = " ".join(m[1].get("exception_message", "") for m in result["status"]["messages"] if m[0] == "execution_error")
    assert result["status"]["status_str"] == "error" and shown.count("all weights are 0") == 1, result["status"]
    assert "give at least one identity a weight above 0" in shown
    assert not list((server.base / "models" / "face2diffusion" / "identities").glob("mix_zero*"))


def test_mix_names_an_identity_without_its_vector_and_an_unconnected_weight(f2d_nodes):
    from f2d.identity import IdentityVectors

    person = IdentityVectors(torch.ones(1, 1536))
    with pytest.raises(ValueError, match="identity_2 carries no MSID identity vector.*re-save"):
        f2d_nodes.F2DMixIdentities.execute(person, 0.5, None, 0.5)
    with pytest.raises(ValueError, match="weight_3 is 0.5 but identity_3 is not connected"):
        f2d_nodes.F2DMixIdentities.execute(person, 0.5, person, 0.5, weight_3=0.5)
    three = f2d_nodes.F2DMixIdentities.execute(person, 1, IdentityVectors(torch.zeros(2, 1536)), 1,
                                               identity_3=IdentityVectors(torch.full((1, 1536), 4.0)), weight_3=2)
    torch.testing.assert_close(three.args[0].mean, torch.full((1, 1536), 2.25))

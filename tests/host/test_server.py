"""The real ComfyUI 0.3.75 host serves this pack from the working tree."""
from __future__ import annotations

import pytest

from f2d_testkit import PACK_NAME

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def server(comfy_server):
    """The run's shared server: msid.pt and mapping.safetensors in models/face2diffusion, and
    mapping_shared.pt in a second folder given by the user's extra_model_paths.yaml."""
    return comfy_server


def test_pack_loads_without_import_errors(server):
    lines = [ln for ln in server.log().splitlines() if ln.rstrip().endswith(f"custom_nodes/{PACK_NAME}")]
    assert lines, "the pack is not in ComfyUI's import list"
    assert not any("IMPORT FAILED" in ln for ln in lines), lines


def test_nodes_are_listed_with_tooltips_and_category(server):
    info = server.get("/object_info")
    node = info.get("F2DLoadMSID")
    assert node, f"F2DLoadMSID missing from /object_info; server log:\n{server.log()[-3000:]}"
    assert node["category"] == "Face2Diffusion"
    assert node["description"]
    for name, spec in node["input"]["required"].items():
        assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert node["output"] == ["F2D_MODEL"]


def test_model_folder_lists_weights_from_models_dir_and_extra_paths(server):
    files = server.get("/models/face2diffusion")
    assert {"msid.pt", "mapping.safetensors", "mapping_shared.pt"} <= set(files)
    options = server.get("/object_info/F2DLoadMSID")["F2DLoadMSID"]["input"]["required"]["msid"]
    assert "msid.pt" in options[0] if isinstance(options[0], list) else "msid.pt" in options[1]["options"]


def _load_and_preview(msid, mapping):
    return {
        "1": {"class_type": "F2DLoadMSID", "inputs": {"msid": msid, "mapping": mapping}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}},
    }


def test_loader_runs_in_a_prompt(server):
    status, body = server.post("/prompt", {"prompt": _load_and_preview("msid.pt", "mapping_shared.pt")})
    assert status == 200, body
    result = server.wait_history(body["prompt_id"])
    assert result["status"]["status_str"] == "success", result["status"]
    assert "msid.pt" in str(result["outputs"]["2"])


def test_missing_file_is_explained_before_the_run(server):
    status, body = server.post("/prompt", {"prompt": _load_and_preview("nope.pt", "mapping.safetensors")})
    assert status == 400
    details = str(body["node_errors"])
    assert "nope.pt" in details and "face2diffusion" in details and "README" in details


def test_wrong_file_fails_with_our_message_and_server_keeps_serving(server):
    status, body = server.post("/prompt", {"prompt": _load_and_preview("mapping.safetensors", "mapping.safetensors")})
    assert status == 200, body
    result = server.wait_history(body["prompt_id"])
    assert result["status"]["status_str"] == "error"
    err = next(m[1] for m in result["status"]["messages"] if m[0] == "execution_error")
    assert err["exception_type"].endswith("WeightsError")
    assert "not the MSID identity encoder" in err["exception_message"]
    assert "mapping network" in err["exception_message"]
    # The next prompt still runs.
    status, body = server.post("/prompt", {"prompt": _load_and_preview("msid.pt", "mapping.safetensors")})
    assert status == 200
    assert server.wait_history(body["prompt_id"])["status"]["status_str"] == "success"

"""F2D Encode Identity's intake in the real host: the per-photo report on its note, photos unlike
the others left out on request, a batch without a face going on as 'no identity' through every
downstream node, the detector built once and closed when ComfyUI unloads models, and every
shipped workflow still matching the nodes' inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from f2d_testkit import REPO, formula_clip_state_dict, write_input_sensitive_msid

pytestmark = pytest.mark.host


def photos(*arrays) -> torch.Tensor:
    size = max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays)
    out = np.zeros((len(arrays), *size, 3), np.uint8)
    for k, a in enumerate(arrays):  # padded onto one canvas size, as a batch of photos is
        out[k, :a.shape[0], :a.shape[1]] = a
    return torch.from_numpy(out).float() / 255


def _png(name: str) -> np.ndarray:
    return np.array(Image.open(REPO / "workflows" / name).convert("RGB"))


@pytest.fixture(scope="module")
def model(f2d_nodes):
    return f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]


@pytest.fixture(scope="module")
def photo_model(f2d_nodes, host_base):
    """Formula vectors barely depend on the photo (see write_input_sensitive_msid)."""
    write_input_sensitive_msid(host_base / "models" / "face2diffusion" / "msid_photo_sensitive.safetensors")
    return f2d_nodes.F2DLoadMSID.execute("msid_photo_sensitive.safetensors", "mapping.pt").args[0]


def test_note_reports_each_photo_and_leaves_out_another_person_on_request(f2d_nodes, photo_model):
    model = photo_model
    astronaut = data.astronaut()
    batch = photos(astronaut, _png("astronaut_closeup.png"), np.array(Image.fromarray(astronaut).resize((300, 300))),
                   _png("grace_hopper.png"))
    out = f2d_nodes.F2DEncodeIdentity.execute(model, batch, "mtcnn", "largest", False)
    note = out.ui["f2d_faces"]
    report = [line for line in note if line.startswith("  eyes ")]
    assert len(report) == 4 and all(" px apart" in r and "sharpness" in r and "yaw" in r for r in report)
    assert "UNLIKE THE OTHERS" in report[3] and not any("UNLIKE" in r for r in report[:3])
    assert out.args[0].vectors.shape == (4, 1536)
    assert note[-1] == "detector: mtcnn, running on CPU"

    kept = f2d_nodes.F2DEncodeIdentity.execute(model, batch, "mtcnn", "largest", False, leave_out_unlike=True)
    assert kept.args[0].vectors.shape == (3, 1536)
    assert any("left out 1 photo(s) unlike the others: 3" in line for line in kept.ui["f2d_faces"])
    assert "left out" in [r for r in kept.ui["f2d_faces"] if r.startswith("  eyes ")][3]
    # The crops shown and output are those in the identity: Grace Hopper's is not among them.
    assert out.args[1].shape[0] == 4 and len(out.ui["images"]) == 4
    assert kept.args[1].shape[0] == 3 and len(kept.ui["images"]) == 3
    assert torch.equal(kept.args[1], out.args[1][:3])


def test_no_face_goes_on_as_a_person_through_every_node(f2d_nodes, model, host_base):
    import comfy.sd

    faceless = photos(data.coffee())
    with pytest.raises(ValueError, match="no face found"):
        f2d_nodes.F2DEncodeIdentity.execute(model, faceless, "mtcnn", "largest", False)
    out = f2d_nodes.F2DEncodeIdentity.execute(model, faceless, "mtcnn", "largest", False, allow_no_face=True)
    identity, crops = out.args
    assert identity.is_empty and crops.shape == (1, 112, 112, 3)
    assert any("NO IDENTITY" in line for line in out.ui["f2d_faces"])

    guided = f2d_nodes.F2DExpressionGuidance.execute(model, identity, 1.0)
    tokens = guided.args[0]
    assert tokens.is_empty and "'a person'" in guided.ui["f2d_note"][0]

    clip = comfy.sd.load_text_encoder_state_dicts([formula_clip_state_dict()], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
                                                  model_options={"dtype": torch.float32})
    cond = f2d_nodes.F2DTextEncode.execute(clip, tokens, "a photo of f l smiling", "f l", 0.0, 1.0).args[0]
    plain = clip.encode_from_tokens_scheduled(clip.tokenize("a photo of a person smiling"))
    assert torch.equal(cond[0][0], plain[0][0])

    saved = f2d_nodes.F2DSaveIdentity.execute(tokens, "nobody")
    assert saved.ui["text"][0].startswith("nothing saved: no identity")
    assert not list((host_base / "models" / "face2diffusion" / "identities").glob("nobody*"))

    astronaut = photos(data.astronaut())
    scored = f2d_nodes.F2DIdentitySimilarity.execute(model, astronaut, "mtcnn", id_tokens=tokens)
    assert scored.args[0] == [0.0] and scored.args[1].startswith("no reference identity")
    mixed = f2d_nodes.F2DMixIdentities.execute(identity, 1.0, f2d_nodes.F2DEncodeIdentity.execute(
        model, astronaut, "mtcnn", "largest", False).args[0], 1.0)
    assert mixed.args[0].vectors.shape == (1, 1536) and "identity_1: no identity" in mixed.ui["f2d_note"][0]


@pytest.fixture
def detectors(f2d_nodes):
    import importlib

    return importlib.import_module(f2d_nodes.__name__ + ".detectors")


def test_detector_is_built_once_and_closed_when_the_host_unloads_models(f2d_nodes, model, detectors):
    import comfy.model_management as mm

    mm.unload_all_models()
    closed = []
    astronaut = photos(data.astronaut())
    f2d_nodes.F2DEncodeIdentity.execute(model, astronaut, "mediapipe", "largest", False)
    (key,) = [k for k in detectors._patchers if k[0] == "mediapipe"]
    first = detectors.CACHE._entries[key]
    first_close = first.close
    first.close = lambda: (closed.append(first), first_close())  # count the host's close, then close
    f2d_nodes.F2DIdentitySimilarity.execute(model, astronaut, "mediapipe", identity=f2d_nodes.F2DEncodeIdentity.execute(
        model, astronaut, "mediapipe", "largest", False).args[0])
    assert detectors.CACHE._entries[key] is first and not closed  # reused by every node that detects
    assert any(m.model is detectors._patchers[key] for m in mm.current_loaded_models)  # the host holds it

    mm.unload_all_models()  # what "Unload Models" (/free) and out-of-memory recovery call
    assert closed == [first] and key not in detectors.CACHE._entries
    mm.unload_all_models()  # again, with the closed detector's patcher still known: nothing breaks
    f2d_nodes.F2DEncodeIdentity.execute(model, astronaut, "mediapipe", "largest", False)
    assert detectors.CACHE._entries[key] is not first  # built again when needed


def _widgets(schema):
    """The widget inputs of a node in order (socket-only inputs hold no widget value)."""
    widget_types = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
    return [i for i in schema.inputs if i.get_io_type() in widget_types and not getattr(i, "force_input", False)]


def test_every_shipped_workflow_fits_the_nodes_inputs(f2d_nodes):
    classes = {c.define_schema().node_id: c for c in f2d_nodes.NODES}
    for path in sorted((REPO / "workflows" / "api").glob("*.json")):
        for node_id, node in json.loads(path.read_text()).items():
            cls = classes.get(node["class_type"])
            if cls is None:
                continue
            schema = cls.define_schema()
            names = {i.id for i in schema.inputs}
            required = {i.id for i in schema.inputs if not i.optional}
            assert set(node["inputs"]) <= names, (path.name, node_id, set(node["inputs"]) - names)
            assert required <= set(node["inputs"]), (path.name, node_id, required - set(node["inputs"]))
    for path in sorted((REPO / "workflows").glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            cls = classes.get(node["type"])
            if cls is None:
                continue
            widgets = _widgets(cls.define_schema())
            values = [v for v in node.get("widgets_values") or []]
            values = [v for v in values if v not in ("fixed", "randomize", "increment", "decrement")]
            # Saved before the new inputs: fewer values, each still for the widget at its place.
            assert len(values) <= len(widgets), (path.name, node["type"], values)
            for w, v in zip(widgets, values):
                kind = w.get_io_type()
                ok = {"BOOLEAN": isinstance(v, bool), "INT": isinstance(v, int) and not isinstance(v, bool),
                      "FLOAT": isinstance(v, (int, float)) and not isinstance(v, bool), "STRING": isinstance(v, str),
                      "COMBO": isinstance(v, str)}.get(kind, True)
                assert ok, (path.name, node["type"], w.id, v)

"""Writes the example workflows: API format (workflows/api/*.json, queued by the tests) and the
UI format users drag into ComfyUI (workflows/*.json), from one definition each.

The UI format needs each node's widget order, read from a running ComfyUI's /object_info:

    .venv/bin/python scripts/make_workflows.py            # starts a ComfyUI on a free port
    .venv/bin/python scripts/make_workflows.py --check    # exit 1 if the files are out of date
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
sys.path.insert(0, str(ROOT / "tests"))

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
LORA = "f2d-example-lora.safetensors"
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
PHOTO = "astronaut.png"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def common(g: dict, photo_node: str = "photo") -> None:
    g["checkpoint"] = ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})
    g["f2d"] = ("F2DLoadMSID", {"msid": "msid.pt", "mapping": "mapping.pt"})
    g["photo"] = ("LoadImage", {"image": PHOTO})
    g["identity"] = ("F2DEncodeIdentity", {"f2d_model": ["f2d", 0], "image": [photo_node, 0], "detector": "auto",
                                           "face": "largest", "skip_faceless": False})
    g["tokens"] = ("F2DExpressionGuidance", {"f2d_model": ["f2d", 0], "identity": ["identity", 0], "strength": 1.0})
    g["latent"] = ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1})


def f2d_sampler(model, clip, tokens, text, prefix) -> dict:
    return {
        "sampler": ("F2DSampler", {"model": model, "clip": clip, "id_tokens": tokens, "text": text,
                                   "negative": "blurry, low quality", "latent_image": ["latent", 0], "seed": 42,
                                   "steps": 30, "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
                                   "denoise": 1.0, "identifier": "f l", "identity_start": 0.0, "identity_end": 1.0}),
        "decode": ("VAEDecode", {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}),
        "save": ("SaveImage", {"images": ["decode", 0], "filename_prefix": prefix}),
    }


def ksampler_tail(positive, negative, model, prefix) -> dict:
    return {
        "sampler": ("KSampler", {"model": model, "seed": 42, "steps": 30, "cfg": 7.0, "sampler_name": "euler_ancestral",
                                 "scheduler": "normal", "positive": positive, "negative": negative,
                                 "latent_image": ["latent", 0], "denoise": 1.0}),
        "decode": ("VAEDecode", {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}),
        "save": ("SaveImage", {"images": ["decode", 0], "filename_prefix": prefix}),
    }


def graphs() -> dict[str, dict]:
    out = {}

    g = {}
    common(g)
    g.update(f2d_sampler(["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                         "a photo of f l eating ice cream at a rooftop terrace", "f2d_basic"))
    out["01_basic_f2d_sampler"] = g

    g = {}
    common(g)
    g["positive"] = ("F2DTextEncode", {"clip": ["checkpoint", 1], "id_tokens": ["tokens", 0],
                                       "text": "a photo of f l smiling on a beach", "identifier": "f l",
                                       "identity_start": 0.0, "identity_end": 1.0})
    g["negative"] = ("CLIPTextEncode", {"clip": ["checkpoint", 1], "text": "blurry, low quality"})
    g.update(ksampler_tail(["positive", 0], ["negative", 0], ["checkpoint", 0], "f2d_ksampler"))
    out["02_text_encode_ksampler"] = g

    g = {}
    common(g)
    g["lora"] = ("LoraLoader", {"model": ["checkpoint", 0], "clip": ["checkpoint", 1], "lora_name": LORA,
                                "strength_model": 0.8, "strength_clip": 0.8})
    g.update(f2d_sampler(["lora", 0], ["lora", 1], ["tokens", 0], "an oil painting of f l as a knight", "f2d_lora"))
    out["03_lora"] = g

    g = {}
    common(g)
    g["edges"] = ("Canny", {"image": ["photo", 0], "low_threshold": 0.4, "high_threshold": 0.8})
    g["controlnet"] = ("ControlNetLoader", {"control_net_name": CONTROLNET})
    g["positive"] = ("F2DTextEncode", {"clip": ["checkpoint", 1], "id_tokens": ["tokens", 0],
                                       "text": "a photo of f l in a space station", "identifier": "f l",
                                       "identity_start": 0.0, "identity_end": 1.0})
    g["negative"] = ("CLIPTextEncode", {"clip": ["checkpoint", 1], "text": "blurry, low quality"})
    g["apply"] = ("ControlNetApplyAdvanced", {"positive": ["positive", 0], "negative": ["negative", 0],
                                              "control_net": ["controlnet", 0], "image": ["edges", 0],
                                              "strength": 0.6, "start_percent": 0.0, "end_percent": 0.8})
    g.update(ksampler_tail(["apply", 0], ["apply", 1], ["checkpoint", 0], "f2d_controlnet"))
    out["04_controlnet"] = g

    g = {}
    g["mirror"] = ("ImageFlip", {"image": ["photo", 0], "flip_method": "y-axis: horizontally"})
    g["photos"] = ("ImageBatch", {"image1": ["photo", 0], "image2": ["mirror", 0]})
    common(g, photo_node="photos")
    g.update(f2d_sampler(["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                         "a portrait of f l reading in a library", "f2d_multi_photo"))
    out["05_several_photos"] = g

    g = {}
    common(g)
    g["save_identity"] = ("F2DSaveIdentity", {"id_tokens": ["tokens", 0], "name": "astronaut"})
    g.update(f2d_sampler(["checkpoint", 0], ["checkpoint", 1], ["save_identity", 0],
                         "a photo of f l hiking in the mountains", "f2d_saved"))
    out["06_save_identity"] = g

    g = {
        "checkpoint": ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
        "load_identity": ("F2DLoadIdentity", {"identity_file": "astronaut.safetensors"}),
        "latent": ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}),
    }
    g.update(f2d_sampler(["checkpoint", 0], ["checkpoint", 1], ["load_identity", 0],
                         "a photo of f l as an astronaut on the moon", "f2d_reused"))
    out["07_reuse_saved_identity"] = g

    g = {}
    common(g)
    g["latent"] = ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 8})
    g.update(f2d_sampler(["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                         "a photo of f l laughing at a birthday party", "f2d_best"))
    g["best"] = ("F2DBestOfN", {"f2d_model": ["f2d", 0], "images": ["decode", 0], "detector": "auto", "keep": 2,
                                "identity": ["identity", 0]})
    g["save"] = ("SaveImage", {"images": ["best", 0], "filename_prefix": "f2d_best_of_8"})
    out["08_best_of_8"] = g
    return out


def to_api(graph: dict) -> dict:
    ids = {name: str(i + 1) for i, name in enumerate(graph)}
    api = {}
    for name, (cls, inputs) in graph.items():
        fixed = {k: [ids[v[0]], v[1]] if isinstance(v, list) else v for k, v in inputs.items()}
        api[ids[name]] = {"class_type": cls, "inputs": fixed, "_meta": {"title": name.replace("_", " ")}}
    return api


def _is_widget(spec) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = []
    for group in ("required", "optional"):
        for name in order.get(group, info["input"].get(group, {}).keys()):
            specs.append((name, info["input"][group][name]))
    return specs


def to_ui(api: dict, object_info: dict) -> dict:
    """LiteGraph workflow (version 0.4) for the front end, laid out in columns by depth."""
    depth: dict[str, int] = {}

    def d(node_id: str) -> int:
        if node_id not in depth:
            ups = [v[0] for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((d(u) for u in ups), default=-1)
        return depth[node_id]

    for nid in api:
        d(nid)
    links, nodes, column_y = [], {}, {}
    for nid, node in api.items():
        info = object_info[node["class_type"]]
        col = depth[nid]
        y = column_y.get(col, 60)
        specs = _input_specs(info)
        # A size estimate from the widget count (the front end's schema requires one, and grows
        # a node that is too small); it also keeps the nodes of one column from overlapping.
        multiline = sum(1 for _, sp in specs if len(sp) > 1 and isinstance(sp[1], dict) and sp[1].get("multiline"))
        height = 46 + 26 * len(specs) + 20 * len(info["output"]) + 90 * multiline
        height += 260 if node["class_type"] in ("LoadImage", "SaveImage") else 0
        column_y[col] = y + height + 50
        entry = {
            "id": int(nid), "type": node["class_type"], "pos": [60 + col * 420, y], "size": [380, height],
            "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": [],
            "title": node.get("_meta", {}).get("title", node["class_type"]),
        }
        for name, spec in specs:
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            value = node["inputs"].get(name, extra.get("default"))
            if isinstance(value, list):
                entry["inputs"].append({"name": name, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                                        "link": None, "_from": value})
            elif _is_widget(spec):
                entry["widgets_values"].append(value)
                if extra.get("control_after_generate"):
                    entry["widgets_values"].append("fixed")
                if extra.get("image_upload"):
                    entry["widgets_values"].append("image")
        entry["outputs"] = [{"name": n, "type": t, "links": [], "slot_index": i}
                            for i, (n, t) in enumerate(zip(info["output_name"], info["output"]))]
        nodes[nid] = entry
    for nid in sorted(api, key=lambda n: (depth[n], int(n))):
        for slot, inp in enumerate(nodes[nid]["inputs"]):
            src, src_slot = inp.pop("_from")
            link_id = len(links) + 1
            links.append([link_id, int(src), src_slot, int(nid), slot, inp["type"]])
            inp["link"] = link_id
            nodes[src]["outputs"][src_slot]["links"].append(link_id)
    for order, nid in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        nodes[nid]["order"] = order
    return {"last_node_id": max(map(int, api)), "last_link_id": len(links), "nodes": list(nodes.values()),
            "links": links, "groups": [], "config": {}, "extra": {"f2d_generated": True}, "version": 0.4}


def render(object_info: dict) -> dict[Path, str]:
    files = {}
    for name, graph in graphs().items():
        api = to_api(graph)
        files[OUT / "api" / f"{name}.json"] = json.dumps(api, indent=1) + "\n"
        files[OUT / f"{name}.json"] = json.dumps(to_ui(api, object_info), indent=1) + "\n"
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    from f2d_testkit import ComfyServer

    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        info = server.get("/object_info")
    files = render(info)
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    print(f"wrote {len(files)} files in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Writes the example workflows: API format (workflows/api/*.json, queued by the tests) and the
UI format users drag into ComfyUI (workflows/*.json, with a note, titles, groups, a saved view and
download metadata), plus a thumbnail per workflow (workflows/*.jpg), from one definition each.

The UI format needs each node's widget order, read from a running ComfyUI's /object_info:

    .venv/bin/python scripts/make_workflows.py            # starts a ComfyUI on a free port
    .venv/bin/python scripts/make_workflows.py --check    # exit 1 if the files are out of date
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "workflows"
sys.path.insert(0, str(ROOT / "tests"))

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CNR_ID, VERSION = PROJECT["name"], PROJECT["version"]  # what ComfyUI-Manager matches a missing node to
CORE_ID, CORE_VERSION = "comfy-core", "0.3.75"

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
LORA = "add_detail.safetensors"
CONTROLNET = "control_v11p_sd15_canny_fp16.safetensors"
PHOTO = "astronaut.png"
PHOTO_CLOSEUP = "astronaut_closeup.png"
PHOTO_B = "grace_hopper.png"
PHOTOS = (PHOTO, PHOTO_CLOSEUP, PHOTO_B)
# Each passes the pack's own checks (one face, eyes well over the TINY FACE limit; tests/test_example_photos.py).
PHOTO_SOURCES = {PHOTO: "NASA portrait, public domain; from scikit-image's data",
                 PHOTO_CLOSEUP: "a closer crop of the same NASA portrait",
                 PHOTO_B: "US Navy portrait of Grace Hopper, public domain; from matplotlib's sample data"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

# Public homes of every file the workflows name. `url` is what ComfyUI's front end offers as the
# download in its missing-models panel (only files it accepts: from civitai.com or huggingface.co);
# `page` is where a person reads about the file.
F2D_RELEASE = "https://github.com/mapooon/Face2Diffusion#2-download-checkpoints"
FILES = {
    # No `url`: the official files sit on a file host the front ends refuse to download from (1.32.9
    # shows "Download not allowed from source ..."); the note and the node point to the page instead.
    "msid": {"name": "msid.pt", "directory": "face2diffusion", "url": None,
             "page": F2D_RELEASE, "what": "MSID identity encoder (official Face2Diffusion release, CC BY-NC-SA 4.0)"},
    "mapping": {"name": "mapping.pt", "directory": "face2diffusion", "url": None,
                "page": F2D_RELEASE, "what": "mapping network (same release, same licence)"},
    "checkpoint": {"name": CHECKPOINT, "directory": "checkpoints",
                   "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/" + CHECKPOINT,
                   "page": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive",
                   "what": "Stable Diffusion 1.5 (any SD1.x checkpoint works)"},
    "lora": {"name": LORA, "directory": "loras", "url": "https://civitai.com/api/download/models/62833",
             "page": "https://civitai.com/models/58390/detail-tweaker-lora-lora",
             "what": "Detail Tweaker, an SD1.5 LoRA (any SD1.5 LoRA works)"},
    "controlnet": {"name": CONTROLNET, "directory": "controlnet",
                   "url": "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                          + CONTROLNET,
                   "page": "https://huggingface.co/comfyanonymous/ControlNet-v1-1_fp16_safetensors",
                   "what": "ControlNet 1.1 canny for SD1.5, fp16"},
}
LOADER_FILES = {"CheckpointLoaderSimple": ["checkpoint"], "F2DLoadMSID": ["msid", "mapping"],
                "LoraLoader": ["lora"], "ControlNetLoader": ["controlnet"]}
PAPER = "https://arxiv.org/abs/2403.05094"
OFFICIAL = "https://github.com/mapooon/Face2Diffusion"
PACK = "https://github.com/face2diffusion/ComfyUI-Face2Diffusion"

# Layout: the note at the top of column 0, the model loaders under it, one column per step after.
COL0_WIDTH, NODE_WIDTH, PITCH, TOP = 400, 280, 310, 90
# Nodes the front end draws wider than NODE_WIDTH (1.58.1 sizes F2D Face Detail to its widgets, 343 px);
# each stands in the last column of its workflow, so the saved view makes room for it.
WIDE_NODES = {"F2DFaceDetail": 350}
# The canvas of a 1600x1000 window, less the left toolbar (~60 px) and the banner and tab bar on top
# (~80 px), the workflow menu and Run bar floating below them: the saved view puts the graph at
# ORIGIN on screen and fits it into VIEWPORT.
ORIGIN, VIEWPORT = (75, 135), (1500, 840)
MIN_READABLE_SCALE = 0.6  # below this the front end stops drawing widget text
# Front end 1.58.1 opens a template from its template browser with its own fit-to-view, not the saved
# view: scale = 0.75 x (canvas / graph), the nodes' bounds only. For that to stay readable in a
# 1600x1000 window the graph is at most (0.75 x 1600 / 0.6) x (0.75 x 1000 / 0.6) = 2000 x 1250; the
# limits below leave room for nodes the front end draws a little larger than estimated here.
TEMPLATE_FIT, TEMPLATE_WINDOW = 0.75, (1600, 1000)
MAX_GRAPH = tuple(int(TEMPLATE_FIT * v / MIN_READABLE_SCALE) - 40 for v in TEMPLATE_WINDOW)  # 1960 x 1210
GROUP_COLORS = ["#3f789e", "#8A8", "#b06634", "#a1309b", "#88A"]
NEGATIVE = "blurry, low quality, deformed face, extra fingers"


@dataclass
class N:
    cls: str
    inputs: dict
    title: str
    group: int
    col: int


@dataclass
class Workflow:
    title: str
    shows: str
    groups: list[str]
    nodes: dict[str, N] = field(default_factory=dict)
    files: list[str] = field(default_factory=lambda: ["msid", "mapping", "checkpoint"])
    photos: list[str] = field(default_factory=lambda: [PHOTO])
    tips: list[str] = field(default_factory=list)


def models_part(w: Workflow, *, lora: bool = False, controlnet: bool = False) -> None:
    w.nodes["checkpoint"] = N("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, "Load SD1.5 checkpoint", 1, 0)
    if lora:
        w.nodes["lora"] = N("LoraLoader", {"model": ["checkpoint", 0], "clip": ["checkpoint", 1], "lora_name": LORA,
                                           "strength_model": 0.8, "strength_clip": 0.8}, "Apply a LoRA", 1, 0)
        w.files.append("lora")
    if controlnet:
        w.nodes["controlnet"] = N("ControlNetLoader", {"control_net_name": CONTROLNET}, "Load ControlNet (canny)", 1, 0)
        w.files.append("controlnet")
    w.nodes["f2d"] = N("F2DLoadMSID", {"msid": "msid.pt", "mapping": "mapping.pt"},
                       "Load Face2Diffusion (MSID + mapping)", 1, 0)


# F2D Encode Identity's widgets in every example: its defaults.
ENCODE = {"detector": "auto", "face": "largest", "skip_faceless": False, "leave_out_unlike": False,
          "allow_no_face": False}


def person_part(w: Workflow, key: str = "", photo: str = PHOTO, group: int = 2, photo_node: str | None = None,
                who: str = "") -> None:
    """Photo -> identity -> identity tokens. ``key`` suffixes node names for a second person."""
    if photo_node is None:
        photo_node = f"photo{key}"
        w.nodes[photo_node] = N("LoadImage", {"image": photo}, f"Photo of the person{who}", group, 1)
    w.nodes[f"identity{key}"] = N("F2DEncodeIdentity", {"f2d_model": ["f2d", 0], "image": [photo_node, 0], **ENCODE},
                                  f"Find, align and encode the face{who}", group, 2)
    w.nodes[f"tokens{key}"] = N("F2DExpressionGuidance", {"f2d_model": ["f2d", 0], "identity": [f"identity{key}", 0],
                                                          "strength": 1.0},
                                f"Identity -> identity tokens{who}", group, 2)


def latent(w: Workflow, group: int, col: int, width: int = 512, height: int = 512, batch: int = 1) -> None:
    w.nodes["latent"] = N("EmptyLatentImage", {"width": width, "height": height, "batch_size": batch},
                          "Image size", group, col)


def f2d_sampler_part(w: Workflow, model, clip, tokens, text: str, prefix: str, group: int = 3, col: int = 3) -> None:
    latent(w, group, col)
    w.nodes["sampler"] = N("F2DSampler", {
        "model": model, "clip": clip, "id_tokens": tokens, "text": text, "negative": NEGATIVE,
        "latent_image": ["latent", 0], "seed": 42, "steps": 30, "cfg": 7.0, "sampler_name": "euler_ancestral",
        "scheduler": "normal", "denoise": 1.0, "identifier": "f l", "identity_start": 0.0, "identity_end": 1.0},
        "Generate: prompt with f l + identity", group, col + 1)
    decode_save(w, prefix, group, col + 2)


def decode_save(w: Workflow, prefix: str, group: int, col: int) -> None:
    w.nodes["decode"] = N("VAEDecode", {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}, "Decode to pixels",
                          group, col)
    w.nodes["save"] = N("SaveImage", {"images": ["decode", 0], "filename_prefix": prefix}, "Save the image", group, col)


def face_detail(w: Workflow, tokens: list, prompt: str, group: int, col: int, save_col: int,
                people: list | None = None, prefix: str = "f2d_face_detail", crops: bool = True) -> None:
    """Generated image -> F2D Face Detail (each face re-done with its person) -> saved."""
    inputs = {"image": ["decode", 0], "model": ["checkpoint", 0], "clip": ["checkpoint", 1], "vae": ["checkpoint", 2],
              "f2d_model": ["f2d", 0], "id_tokens": tokens, "text": prompt, "negative": "blurry, deformed face",
              "seed": 7, "steps": 20, "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
              "denoise": 0.45, "guide_size": 512, "context": 2.0, "feather": 0.3, "max_faces": 4, "min_face_size": 32,
              "faces": "all", "extra_faces": "keep", "detector": "auto", "identifier": "f l"}
    for i, more in enumerate(people or [], 2):
        inputs[f"id_tokens_{i}"] = more
    w.nodes["detail"] = N("F2DFaceDetail", inputs, "Face detail: each face re-done with its person", group, col)
    w.nodes["save"] = N("SaveImage", {"images": ["detail", 0], "filename_prefix": prefix}, "Save the image", group,
                        save_col)
    if crops:
        w.nodes["crops"] = N("PreviewImage", {"images": ["detail", 2]}, "The re-done face crops", group, save_col)


DETAIL_TIP = ("The face pass's likeness gain has not been measured by the pack (no official weights on its test "
              "machines); what is tested is that only the masked faces change and each person lands on their face.")


def text_encode(clip, tokens, text: str, title: str, group: int, col: int) -> N:
    return N("F2DTextEncode", {"clip": clip, "id_tokens": tokens, "text": text, "identifier": "f l",
                               "identity_start": 0.0, "identity_end": 1.0}, title, group, col)


def ksampler_part(w: Workflow, positive, negative, model, prefix: str, group: int, col: int) -> None:
    w.nodes["sampler"] = N("KSampler", {
        "model": model, "seed": 42, "steps": 30, "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
        "positive": positive, "negative": negative, "latent_image": ["latent", 0], "denoise": 1.0},
        "Generate (KSampler)", group, col)
    decode_save(w, prefix, group, col + 1)


STANDARD_GROUPS = ["1 Load models", "2 The person", "3 Generate"]


def workflows() -> dict[str, Workflow]:
    out = {}

    w = Workflow("Basic: one photo, one prompt",
                 "One photo of a person and a prompt with the identifier `f l`: F2D Sampler generates that person "
                 "in the scene. Start here.", STANDARD_GROUPS)
    models_part(w)
    person_part(w)
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                     "a photo of f l eating ice cream at a rooftop terrace", "f2d_basic")
    out["01_basic_f2d_sampler"] = w

    w = Workflow("F2D Text Encode + KSampler",
                 "The identity as CONDITIONING: F2D Text Encode replaces CLIP Text Encode, so the standard "
                 "KSampler (or any sampler, ControlNet, regional prompting) can use it.", STANDARD_GROUPS)
    models_part(w)
    person_part(w)
    w.nodes["positive"] = text_encode(["checkpoint", 1], ["tokens", 0], "a photo of f l smiling on a beach",
                                      "Prompt with f l + identity", 3, 3)
    w.nodes["negative"] = N("CLIPTextEncode", {"clip": ["checkpoint", 1], "text": NEGATIVE}, "Negative prompt", 3, 3)
    latent(w, 3, 3)
    ksampler_part(w, ["positive", 0], ["negative", 0], ["checkpoint", 0], "f2d_ksampler", 3, 4)
    out["02_text_encode_ksampler"] = w

    w = Workflow("With a LoRA",
                 "A LoRA between the checkpoint and F2D Sampler: the LoRA's style, the photo's person.",
                 STANDARD_GROUPS, tips=["LoRA strength 0 gives the plain result; try 0.5 to 1."])
    models_part(w, lora=True)
    person_part(w)
    f2d_sampler_part(w, ["lora", 0], ["lora", 1], ["tokens", 0], "an oil painting of f l as a knight", "f2d_lora")
    out["03_lora"] = w

    w = Workflow("With ControlNet (canny)",
                 "The pose and outline of the photo through ControlNet canny, the identity through F2D Text Encode.",
                 STANDARD_GROUPS, tips=["ControlNet strength 0.4 to 0.8 keeps the pose without copying the photo."])
    models_part(w, controlnet=True)
    person_part(w)
    w.nodes["edges"] = N("Canny", {"image": ["photo", 0], "low_threshold": 0.4, "high_threshold": 0.8},
                         "Edges of the photo (pose)", 2, 1)
    w.nodes["positive"] = text_encode(["checkpoint", 1], ["tokens", 0], "a photo of f l in a space station",
                                      "Prompt with f l + identity", 3, 3)
    w.nodes["negative"] = N("CLIPTextEncode", {"clip": ["checkpoint", 1], "text": NEGATIVE}, "Negative prompt", 3, 3)
    w.nodes["apply"] = N("ControlNetApplyAdvanced", {
        "positive": ["positive", 0], "negative": ["negative", 0], "control_net": ["controlnet", 0],
        "image": ["edges", 0], "strength": 0.6, "start_percent": 0.0, "end_percent": 0.8},
        "Apply ControlNet to both prompts", 3, 4)
    latent(w, 3, 4)
    ksampler_part(w, ["apply", 0], ["apply", 1], ["checkpoint", 0], "f2d_controlnet", 3, 5)
    out["04_controlnet"] = w

    w = Workflow("Several photos of one person",
                 "Two photos of the same person become one identity (their MSID vectors are averaged): more "
                 "photos, steadier likeness. Load 2 to 5 different photos of your person.", STANDARD_GROUPS,
                 photos=[PHOTO, PHOTO_CLOSEUP],
                 tips=["The example's two files are two framings of one NASA photo, so it runs as shipped; "
                       "use different photos (other days, light, angles) of one person.",
                       "Image Batch resizes the second photo to the first one's size; more photos: chain "
                       "another Image Batch."])
    models_part(w)
    w.nodes["photo"] = N("LoadImage", {"image": PHOTO}, "Photo 1 of the person", 2, 1)
    w.nodes["photo2"] = N("LoadImage", {"image": PHOTO_CLOSEUP}, "Photo 2 of the same person", 2, 1)
    w.nodes["photos"] = N("ImageBatch", {"image1": ["photo", 0], "image2": ["photo2", 0]}, "Both photos as a batch",
                          2, 2)
    person_part(w, photo_node="photos")
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                     "a portrait of f l reading in a library", "f2d_multi_photo")
    out["05_several_photos"] = w

    w = Workflow("Save an identity",
                 "Encode a person once and save the identity tokens (and the averaged MSID vector) to "
                 "`models/face2diffusion/identities/astronaut.safetensors`, to reuse without the photo "
                 "(workflow 07) or to mix (workflow 10).", STANDARD_GROUPS)
    models_part(w)
    person_part(w)
    w.nodes["save_identity"] = N("F2DSaveIdentity", {"id_tokens": ["tokens", 0], "name": "astronaut"},
                                 "Save the identity to a file", 2, 2)
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["save_identity", 0],
                     "a photo of f l hiking in the mountains", "f2d_saved")
    out["06_save_identity"] = w

    w = Workflow("Reuse a saved identity",
                 "A person saved by workflow 06, without the photo, the face detector or the encoder.",
                 ["1 Load models", "2 The saved person", "3 Generate"], files=["checkpoint"], photos=[],
                 tips=["Run workflow 06 first (it writes `astronaut.safetensors`), then press R to refresh "
                       "the file list."])
    w.nodes["checkpoint"] = N("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, "Load SD1.5 checkpoint", 1, 0)
    w.nodes["load_identity"] = N("F2DLoadIdentity", {"identity_file": "astronaut.safetensors"},
                                 "Load the saved identity", 2, 1)
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["load_identity", 0],
                     "a photo of f l as an astronaut on the moon", "f2d_reused", col=2)
    out["07_reuse_saved_identity"] = w

    w = Workflow("Best of 8",
                 "Eight images in one batch; F2D Best of N scores each against the photo's identity and keeps "
                 "the two most alike, best first.", STANDARD_GROUPS)
    models_part(w)
    person_part(w)
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                     "a photo of f l laughing at a birthday party", "f2d_best")
    w.nodes["latent"].inputs["batch_size"] = 8
    w.nodes["best"] = N("F2DBestOfN", {"f2d_model": ["f2d", 0], "images": ["decode", 0], "detector": "auto",
                                       "keep": 2, "identity": ["identity", 0]}, "Keep the 2 most alike", 3, 5)
    w.nodes["save"] = N("SaveImage", {"images": ["best", 0], "filename_prefix": "f2d_best_of_8"},
                        "Save the best 2", 3, 6)
    out["08_best_of_8"] = w

    w = Workflow("Two people in one picture",
                 "Two identities in one image: each person gets their own F2D Text Encode, and ComfyUI's "
                 "Conditioning (Set Area with Percentage) gives person A the left half and person B the right "
                 "half; a prompt for the whole scene holds them together.",
                 ["1 Load models", "2 Person A (left)", "3 Person B (right)", "4 Generate"],
                 photos=[PHOTO, PHOTO_B],
                 tips=["Describe each person in their own prompt (`f l` is that person); keep the scene prompt "
                       "free of `f l`.", "A wide image (768x512) leaves each person room; move the split with "
                       "the areas' width and x."])
    models_part(w)
    person_part(w, "_a", PHOTO, group=2, who=" (A)")
    person_part(w, "_b", PHOTO_B, group=3, who=" (B)")
    w.nodes["scene"] = N("CLIPTextEncode", {"clip": ["checkpoint", 1],
                                            "text": "a photo of two people standing side by side in a park"},
                         "Scene prompt (whole image)", 4, 3)
    w.nodes["text_a"] = text_encode(["checkpoint", 1], ["tokens_a", 0], "a photo of f l smiling, standing in a park",
                                    "Person A's prompt (f l = A)", 4, 3)
    w.nodes["text_b"] = text_encode(["checkpoint", 1], ["tokens_b", 0], "a photo of f l smiling, standing in a park",
                                    "Person B's prompt (f l = B)", 4, 3)
    w.nodes["area_a"] = N("ConditioningSetAreaPercentage", {"conditioning": ["text_a", 0], "width": 0.5,
                                                            "height": 1.0, "x": 0.0, "y": 0.0, "strength": 1.0},
                          "A on the left half", 4, 4)
    w.nodes["area_b"] = N("ConditioningSetAreaPercentage", {"conditioning": ["text_b", 0], "width": 0.5,
                                                            "height": 1.0, "x": 0.5, "y": 0.0, "strength": 1.0},
                          "B on the right half", 4, 4)
    w.nodes["both"] = N("ConditioningCombine", {"conditioning_1": ["area_a", 0], "conditioning_2": ["area_b", 0]},
                        "A and B", 4, 4)
    w.nodes["positive"] = N("ConditioningCombine", {"conditioning_1": ["both", 0], "conditioning_2": ["scene", 0]},
                            "A, B and the scene", 4, 4)
    w.nodes["negative"] = N("CLIPTextEncode", {"clip": ["checkpoint", 1], "text": NEGATIVE}, "Negative prompt", 4, 3)
    latent(w, 4, 5, width=768, height=512)
    ksampler_part(w, ["positive", 0], ["negative", 0], ["checkpoint", 0], "f2d_two_people", 4, 5)
    w.nodes["decode"].col = 6
    del w.nodes["save"]
    # Per-person detail: each face is re-done with the person whose identity is closest to it.
    face_detail(w, ["tokens_a", 0], "a close-up photo of f l smiling", 4, 6, 5, people=[["tokens_b", 0]],
                prefix="f2d_two_people", crops=False)  # the widest workflow: no room for the crops' preview
    w.groups[3] = "4 Generate, then re-do each face with its person"
    w.shows += (" F2D Face Detail then re-does each face at 512 px with its own person: it tells A from B by "
                "their MSID identities, and its note says which face got whom.")
    w.tips.append(DETAIL_TIP)
    out["09_two_people"] = w

    w = Workflow("Mix two identities",
                 "A new face between two people: F2D Mix Identities blends their MSID identity vectors, "
                 "here 70 % A + 30 % B, before the mapping network turns the blend into identity tokens.",
                 ["1 Load models", "2 Two people, mixed", "3 Generate"], photos=[PHOTO, PHOTO_B],
                 tips=["Weights are relative: 0.7/0.3 and 70/30 are the same mix; up to four people.",
                       "Saved identities mix too: use the `identity` output of F2D Load Identity."])
    models_part(w)
    w.nodes["photo_a"] = N("LoadImage", {"image": PHOTO}, "Photo of person A", 2, 1)
    w.nodes["photo_b"] = N("LoadImage", {"image": PHOTO_B}, "Photo of person B", 2, 1)
    for key in ("a", "b"):
        w.nodes[f"identity_{key}"] = N("F2DEncodeIdentity", {"f2d_model": ["f2d", 0], "image": [f"photo_{key}", 0],
                                                            **ENCODE}, f"Encode person {key.upper()}", 2, 2)
    w.nodes["mix"] = N("F2DMixIdentities", {"identity_1": ["identity_a", 0], "weight_1": 0.7,
                                            "identity_2": ["identity_b", 0], "weight_2": 0.3},
                       "Mix: 70 % A + 30 % B", 2, 3)
    w.nodes["tokens"] = N("F2DExpressionGuidance", {"f2d_model": ["f2d", 0], "identity": ["mix", 0],
                                                    "strength": 1.0}, "Mixed identity -> identity tokens", 2, 3)
    f2d_sampler_part(w, ["checkpoint", 0], ["checkpoint", 1], ["tokens", 0],
                     "a photo of f l reading a newspaper in a cafe", "f2d_mix", col=4)
    out["10_mix_identities"] = w

    w = Workflow("Face detail: the face again, at 512 px",
                 "Generate as in workflow 01, then F2D Face Detail crops the face, upscales it to 512 px, redraws "
                 "it inside a feathered mask with the person's identity (denoise 0.45) and pastes it back: more "
                 "face pixels for the identity when the face is small in the picture. Pixels outside the mask "
                 "stay exactly as generated.", STANDARD_GROUPS[:2] + ["3 Generate, then re-do the face"],
                 tips=["Use it when the face covers less than about a quarter of the image (full body, groups).",
                       "denoise 0.3-0.5 keeps pose and expression; higher redraws more.",
                       "faces: 'all' re-does every face with the person; 'most similar' or 'largest' only one.",
                       DETAIL_TIP])
    models_part(w)
    person_part(w)
    latent(w, 3, 3)
    w.nodes["sampler"] = N("F2DSampler", {
        "model": ["checkpoint", 0], "clip": ["checkpoint", 1], "id_tokens": ["tokens", 0],
        "text": "a full-body photo of f l walking on a beach at sunset", "negative": NEGATIVE,
        "latent_image": ["latent", 0], "seed": 42, "steps": 30, "cfg": 7.0, "sampler_name": "euler_ancestral",
        "scheduler": "normal", "denoise": 1.0, "identifier": "f l", "identity_start": 0.0, "identity_end": 1.0},
        "Generate: prompt with f l + identity", 3, 4)
    w.nodes["decode"] = N("VAEDecode", {"samples": ["sampler", 0], "vae": ["checkpoint", 2]}, "Decode to pixels",
                          3, 5)
    face_detail(w, ["tokens", 0], "a close-up photo of f l, detailed face", 3, 6, 5)
    out["11_face_detail"] = w
    return out


def note_markdown(w: Workflow) -> str:
    lines = [f"## {w.title}", "", w.shows, "", "### Files this workflow needs", ""]
    for key in w.files:
        f = FILES[key]
        lines.append(f"- **{f['name']}** -> `ComfyUI/models/{f['directory']}/`: {f['what']}. "
                     f"[Where to get it]({f['page']})" + (f" ([file]({f['url']}))" if f["url"] not in (None, f["page"]) else ""))
    if any(k in w.files for k in ("msid", "mapping")):
        lines.append("- Face detector: the pack's MTCNN, set up once by the pack's `install.py` (ComfyUI-Manager runs "
                     "it; nothing is downloaded while ComfyUI runs); insightface **antelopev2** or **buffalo_l** in "
                     "`ComfyUI/models/insightface/models/` are used when present.")
    for p in w.photos:
        who = PHOTO_SOURCES[p]
        lines.append(f"- **{p}** -> `ComfyUI/input/` ({who}; ships in the pack's `workflows/` folder), or "
                     "upload your own photo in the Load Image node.")
    lines += ["", "Press **R** after adding files, so the lists refresh. Write `f l` in the prompt where the "
              "person goes."]
    if w.tips:
        lines += ["", "### Tips", ""] + [f"- {t}" for t in w.tips]
    lines += ["", f"[Face2Diffusion paper]({PAPER}) - [official code and weights]({OFFICIAL}) - "
              f"[this node pack]({PACK})"]
    return "\n".join(lines)


def to_api(w: Workflow) -> dict:
    ids = {name: str(i + 1) for i, name in enumerate(w.nodes)}
    api = {}
    for name, n in w.nodes.items():
        fixed = {k: [ids[v[0]], v[1]] if isinstance(v, list) else v for k, v in n.inputs.items() if v is not None}
        api[ids[name]] = {"class_type": n.cls, "inputs": fixed, "_meta": {"title": n.title}}
    return api


def _is_widget(spec) -> bool:
    kind = spec[0]
    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("forceInput"):
        return False  # a socket only (e.g. F2D Encode Identity's face_points): no widget, no saved value
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _input_specs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order", {})
    specs = []
    for group in ("required", "optional"):
        for name in order.get(group, info["input"].get(group, {}).keys()):
            specs.append((name, info["input"][group][name]))
    return specs


def _height(cls: str, specs, info: dict, extra_room: dict[str, int] | None = None) -> int:
    """A size estimate the front end's own minimum never exceeds by much (it grows a node that is
    too small); it keeps the nodes of one column apart. ``extra_room``: px more for some classes."""
    widgets = [sp for _, sp in specs if _is_widget(sp)]
    sockets = max(len(specs) - len(widgets), len(info["output"]))
    multiline = sum(1 for sp in widgets if len(sp) > 1 and isinstance(sp[1], dict) and sp[1].get("multiline"))
    h = 40 + 22 * sockets + 26 * len(widgets) + 80 * multiline
    return (h + (280 if cls in ("LoadImage", "SaveImage", "PreviewImage") else 0) + PACK_UI_HEIGHT.get(cls, 0)
            + (extra_room or {}).get(cls, 0))


# What web/js/face2diffusion.js adds below these nodes: its note panel (two or three 16 px lines
# with margins; a result node's lines after a run) and, on the prompt nodes, the "insert identifier"
# button. F2D Encode Identity also shows the aligned crops after a run: room for them and for the
# note's lines as Nodes 2.0 lays them out (it grew 24-44 px past 70 + 150; 66 px with two note
# lines; the intake report adds a line per photo and the detector line names where it runs: 64 px
# more), so it does not grow over the node below.
PACK_UI_HEIGHT = {"F2DLoadMSID": 70, "F2DEncodeIdentity": 70 + 150 + 80, "F2DTextEncode": 60, "F2DSampler": 60,
                  "F2DSaveIdentity": 60, "F2DBestOfN": 230, "F2DIdentitySimilarity": 170,
                  "F2DFaceDetail": 90}


def _note_height(text: str) -> int:
    """Lines as rendered (links show their text only; ~68 characters a line of the note's width)."""
    shown = re.sub(r"\]\([^)]*\)", "]", text).replace("**", "").replace("`", "")
    return 70 + sum(15 * max(1, -(-len(line) // 68)) for line in shown.splitlines())


def node_properties(cls: str) -> dict:
    pack = cls.startswith("F2D")
    props = {"Node name for S&R": cls, "cnr_id": CNR_ID if pack else CORE_ID, "ver": VERSION if pack else CORE_VERSION}
    models = [{k: FILES[key][k] for k in ("name", "url", "directory")} for key in LOADER_FILES.get(cls, [])
              if FILES[key]["url"]]
    if models:
        props["models"] = models
    return props


def _x_of(col: int) -> int:
    return 40 if col == 0 else 40 + COL0_WIDTH + 40 + (col - 1) * PITCH


def _stack_height(heights: list[int], groups: list[int]) -> int:
    return sum(heights) + 40 * (len(heights) - 1) + 100 * sum(a != b for a, b in zip(groups, groups[1:]))


def compact_columns(w: Workflow, heights: dict[str, int], note_height: int) -> dict[str, int]:
    """Each node's column on the canvas: its step's column, except that two groups stacked over the
    same two columns and too tall for MAX_GRAPH become a column each, and two neighbouring columns of
    one group are stacked into one (the pair whose stack is lowest) while the graph is wider than
    MAX_GRAPH (if the stack stays within MAX_GRAPH's height), and wherever a stack is no taller than
    the tallest column already is: every workflow -- new ones too -- opens readable from the
    template browser."""
    col = {name: n.col for name, n in w.nodes.items()}
    order = list(w.nodes)

    def stack(c: int) -> list[str]:
        return sorted((k for k in order if col[k] == c), key=lambda k: (w.nodes[k].group, w.nodes[k].col, order.index(k)))

    def height(names: list[str]) -> int:
        return _stack_height([heights[k] for k in names], [w.nodes[k].group for k in names])

    # Too tall: two groups stacked over the same columns (two people, one above the other) become
    # one column each, side by side, when each fits the height; the width is dealt with below.
    for c in range(1, max(col.values()) + 1):
        if TOP + height(stack(c)) - 40 <= MAX_GRAPH[1]:
            continue
        groups = sorted({w.nodes[k].group for k in stack(c)})
        spans = [sorted({col[k] for k in col if w.nodes[k].group == g}) for g in groups]
        if len(groups) != 2 or spans[0] != spans[1] or len(spans[0]) != 2:
            continue
        members = [[k for k in order if w.nodes[k].group == g] for g in groups]
        if any(TOP + height(sorted(m, key=lambda k: (w.nodes[k].col, order.index(k)))) - 40 > MAX_GRAPH[1]
               for m in members):
            continue
        for i, m in enumerate(members):
            for k in m:
                col[k] = spans[0][0] + i
        break

    while True:
        too_wide = _x_of(max(col.values())) + NODE_WIDTH - 40 > MAX_GRAPH[0]
        tallest = max([note_height + 80 + height(stack(0))] + [height(stack(c)) for c in range(1, max(col.values()) + 1)])
        best = None
        for c in range(1, max(col.values())):
            both = stack(c) + stack(c + 1)
            if len({w.nodes[k].group for k in both}) != 1:
                continue  # a group's box must not reach into another's
            h = height(both)
            # Stack while too wide, within the height limit; else only where it costs no height.
            fits = TOP + h - 40 <= MAX_GRAPH[1] if too_wide else h <= tallest
            if fits and (best is None or h < best[0]):
                best = (h, c)
        if best is None:
            break  # a graph that stays too large fails tests/test_template_view.py
        for k in col:
            if col[k] > best[1]:
                col[k] -= 1
    return col


def to_ui(w: Workflow, api: dict, object_info: dict, extra_room: dict[str, int] | None = None) -> dict:
    """LiteGraph workflow (version 0.4): the note, titled nodes in columns, groups, a saved view.
    ``extra_room``: px more below some node classes (see render)."""
    note = note_markdown(w)
    nodes, links = {}, []
    note_h = _note_height(note)
    column_y: dict[int, int] = {0: TOP + note_h + 80}
    last_group: dict[int, int] = {}
    group_bottom: dict[int, int] = {}
    names = list(w.nodes)
    heights = {name: _height(n.cls, _input_specs(object_info[n.cls]), object_info[n.cls], extra_room)
               for name, n in w.nodes.items()}
    col = compact_columns(w, heights, note_h)
    pos = {}
    # Group by group, then by step: a stacked column keeps the data flow top to bottom.
    for name in sorted(names, key=lambda k: (w.nodes[k].group, w.nodes[k].col, names.index(k))):
        n, c = w.nodes[name], col[name]
        y = column_y.get(c, TOP)
        if c in last_group and last_group[c] != n.group:
            # Below the whole group above (all its columns), with room for this group's title bar.
            y = max(y, group_bottom[last_group[c]] + 100)
        last_group[c] = n.group
        column_y[c] = y + heights[name] + 40
        group_bottom[n.group] = max(group_bottom.get(n.group, 0), y + heights[name])
        pos[name] = [_x_of(c), y]
    for name, nid in zip(names, api):
        n, node = w.nodes[name], api[nid]
        info = object_info[n.cls]
        specs = _input_specs(info)
        height = heights[name]
        entry = {
            "id": int(nid), "type": n.cls, "pos": pos[name],
            "size": [COL0_WIDTH if col[name] == 0 else WIDE_NODES.get(n.cls, NODE_WIDTH), height], "flags": {}, "order": 0, "mode": 0,
            "inputs": [], "outputs": [], "properties": node_properties(n.cls), "widgets_values": [], "title": n.title,
        }
        for iname, spec in specs:
            extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            value = node["inputs"].get(iname, extra.get("default"))
            if isinstance(value, list):
                entry["inputs"].append({"name": iname, "type": spec[0] if isinstance(spec[0], str) else "COMBO",
                                        "link": None, "_from": value})
            elif _is_widget(spec):
                entry["widgets_values"].append(value)
                if extra.get("control_after_generate"):
                    entry["widgets_values"].append("fixed")
                if extra.get("image_upload"):
                    entry["widgets_values"].append("image")
        entry["outputs"] = [{"name": o, "type": t, "links": [], "slot_index": i}
                            for i, (o, t) in enumerate(zip(info["output_name"], info["output"]))]
        nodes[nid] = entry
    order = sorted(api, key=lambda i: (w.nodes[names[int(i) - 1]].col, int(i)))
    for nid in order:
        for slot, inp in enumerate(nodes[nid]["inputs"]):
            src, src_slot = inp.pop("_from")
            link_id = len(links) + 1
            links.append([link_id, int(src), src_slot, int(nid), slot, inp["type"]])
            inp["link"] = link_id
            nodes[src]["outputs"][src_slot]["links"].append(link_id)
    for i, nid in enumerate(order):
        nodes[nid]["order"] = i
    note_id = len(api) + 1
    note_node = {"id": note_id, "type": "MarkdownNote", "pos": [40, TOP], "size": [COL0_WIDTH, note_h],
                 "flags": {}, "order": len(order), "mode": 0, "inputs": [], "outputs": [],
                 "properties": {}, "widgets_values": [note], "title": "About this workflow (read me)",
                 "color": "#432", "bgcolor": "#653"}
    groups = []
    for gi, title in enumerate(w.groups, 1):
        members = [nodes[nid] for nid, name in zip(api, names) if w.nodes[name].group == gi]
        x0 = min(m["pos"][0] for m in members) - 12
        y0 = min(m["pos"][1] for m in members) - 70
        x1 = max(m["pos"][0] + m["size"][0] for m in members) + 12
        y1 = max(m["pos"][1] + m["size"][1] for m in members) + 20
        groups.append({"id": gi, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                       "color": GROUP_COLORS[(gi - 1) % len(GROUP_COLORS)], "font_size": 24, "flags": {}})
    everything = [n["pos"] + [n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]] for n in nodes.values()]
    everything += [[g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
                    g["bounding"][1] + g["bounding"][3]] for g in groups]
    everything.append([40, TOP, 40 + COL0_WIDTH, TOP + note_h])
    bx0, by0 = min(b[0] for b in everything), min(b[1] for b in everything)
    bx1, by1 = max(b[2] for b in everything), max(b[3] for b in everything)
    scale = math.floor(1000 * min(1.0, VIEWPORT[0] / (bx1 - bx0), VIEWPORT[1] / (by1 - by0))) / 1000  # never rounded past the edge
    # Screen = (canvas + offset) * scale.
    offset = [round(ORIGIN[0] / scale - bx0, 1), round(ORIGIN[1] / scale - by0, 1)]
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": list(nodes.values()) + [note_node],
            "links": links, "groups": groups, "config": {},
            "extra": {"ds": {"scale": scale, "offset": offset}, "f2d_generated": True}, "version": 0.4}


def thumbnail(w: Workflow) -> bytes:
    """What the workflow starts from and what it does, for the front end's template browser
    (it asks for workflows/<name>.jpg). The reference photos, not a generated picture: an image made
    here would come from test weights, not from Face2Diffusion."""
    from PIL import Image, ImageDraw, ImageFont

    size = (400, 300)
    img = Image.new("RGB", size, (32, 36, 44))
    photos = w.photos or [PHOTO]
    side = min(220, (size[0] - 20 * (len(photos) + 1)) // len(photos))
    x = (size[0] - len(photos) * side - (len(photos) - 1) * 20) // 2
    for p in photos:
        im = Image.open(OUT / p).convert("RGB").resize((side, side), Image.LANCZOS)
        img.paste(im, (x, 16))
        x += side + 20
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=22)
    title = w.title if len(w.title) <= 30 else w.title[:29] + "."
    box = draw.textbbox((0, 0), title, font=font)
    draw.text(((size[0] - (box[2] - box[0])) // 2, 250), title, fill=(235, 235, 235), font=font)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# More room below F2D Encode Identity for its intake report (a line per photo; the detector line
# says where it runs) where the workflow still opens at a readable zoom with it; the most first.
# The several-photos workflow first tries room for the five photos its note invites and one of
# another person (two lines each, the lines that wrap and the crops), so that adding photos does
# not grow the node over the one below.
ENCODE_REPORT_ROOM = (48, 32, 16, 0)
ENCODE_REPORT_ROOM_FOR = {"05_several_photos": (48 + 4 * 2 * 16 + 112, 48 + 3 * 2 * 16 + 80, 48 + 3 * 2 * 16 + 16,
                                               48 + 2 * 2 * 16)}


def render(object_info: dict) -> dict[Path, str]:
    """The JSON files (API and UI format), compared byte for byte by --check and the tests."""
    files = {}
    for name, w in workflows().items():
        api = to_api(w)
        files[OUT / "api" / f"{name}.json"] = json.dumps(api, indent=1) + "\n"
        for room in ENCODE_REPORT_ROOM_FOR.get(name, ()) + ENCODE_REPORT_ROOM:
            ui = to_ui(w, api, object_info, {"F2DEncodeIdentity": room})
            if ui["extra"]["ds"]["scale"] >= MIN_READABLE_SCALE:
                break
        files[OUT / f"{name}.json"] = json.dumps(ui, indent=1) + "\n"
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
    thumbs = {OUT / f"{name}.jpg": w for name, w in workflows().items()}
    if args.check:
        stale += [p for p in thumbs if not p.is_file()]
        for p in stale:
            print(f"out of date: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for p, w in thumbs.items():
        p.write_bytes(thumbnail(w))
    print(f"wrote {len(files)} workflow files and {len(thumbs)} thumbnails in {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

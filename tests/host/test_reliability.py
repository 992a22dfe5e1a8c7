"""The bad-input matrix, queued over HTTP against one real ComfyUI server.

Every case asserts what a user sees: (a) the message names the cause and the fix (once), (b) the
next normal prompt completes with a real image (checked after every test, with a new seed so it
really runs), (c) no file appears outside models/face2diffusion/identities (checked after every
test over the whole temporary tree). Models are tiny (tests/f2d_testkit.py) and images small, so
the module runs in a few minutes on two cores. Timings are measured by bench/reliability.py.
"""
from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crafted_files import deeply_nested_json, deflated_zeros_pt, many_empty_tensors_safetensors
from f2d_testkit import ComfyServer, build_tiny_sd15_checkpoint, copy_into, write_formula_weights

pytestmark = pytest.mark.host

CKPT = "tiny_sd15.safetensors"
SEEDS = itertools.count(1000)


class _Exploit:
    """A pickle that would create a marker file if it were ever unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


def _write_weight_files(folder: Path, marker: Path) -> None:
    from safetensors.torch import load_file, save_file

    write_formula_weights(folder, "msid", "pt")
    write_formula_weights(folder, "mapping", "pt")
    (folder / "bad_random.pt").write_bytes(b"\x13" + random.Random(0).randbytes(65535))
    msid = (folder / "msid.pt").read_bytes()
    (folder / "bad_truncated.pt").write_bytes(msid[: len(msid) // 2])
    torch.save({"weight": torch.zeros(2), "payload": _Exploit(marker)}, folder / "bad_pickle.pt")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
               "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(8)},
              str(folder / "bad_sd_checkpoint.safetensors"))
    # Finite weights whose output is not: 1e30 in two layers overflows float32 in the tokens.
    sd = load_file(str(write_formula_weights(folder / "tmp", "mapping", "safetensors")))
    shutil.rmtree(folder / "tmp")
    for k in list(sd):
        if k.endswith(("layers.0.0.weight", "fc_out.weight")):
            sd[k] = sd[k] * 1e30
    save_file(sd, str(folder / "mapping_overflowing.safetensors"))
    # Issue 21: a deflated .pt of 512 MB of zeros (~0.5 MB on disk), 1.3 million empty tensors,
    # integer weights, and an MSID of another size.
    deflated_zeros_pt(folder / "bad_zeros_deflated.pt", 2**29)
    many_empty_tensors_safetensors(folder / "bad_empties.safetensors", 1_300_000)
    msid = load_file(str(write_formula_weights(folder / "tmp", "msid", "safetensors")))
    shutil.rmtree(folder / "tmp")
    save_file({**msid, "blocks.0.attn.qkv.weight": msid["blocks.0.attn.qkv.weight"].to(torch.int32)},
              str(folder / "msid_integer.safetensors"))
    save_file({**msid, "pos_embed": torch.zeros(1, 785, 384)}, str(folder / "msid_224px.safetensors"))


def _write_identity_files(folder: Path, reference: dict) -> None:
    from safetensors.torch import save_file

    from f2d.identity import IdentityTokens
    from f2d.identity_file import save_identity

    folder.mkdir(parents=True, exist_ok=True)
    tokens = IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])
    good = save_identity(folder / "ref.safetensors", tokens, reference["msid.features"].mean(0, keepdim=True),
                         {"name": "ref"})
    first = reference["mapping.first.null_exp"].reshape(-1).clone()
    first[5] = float("nan")
    save_file({"first": first, "last": reference["mapping.last.null_exp"].reshape(-1).contiguous()},
              str(folder / "nan.safetensors"), metadata={"f2d": json.dumps({"format": "f2d-identity", "version": 1})})
    (folder / "corrupt.safetensors").write_bytes(random.Random(1).randbytes(4096))
    plain = {"first": reference["mapping.first.null_exp"].reshape(-1).contiguous(),
             "last": reference["mapping.last.null_exp"].reshape(-1).contiguous()}
    save_file(plain, str(folder / "deep_metadata.safetensors"), metadata={"f2d": deeply_nested_json()})
    save_file(plain, str(folder / "list_metadata.safetensors"), metadata={"f2d": "[1, 2]"})
    save_file({k: v.to(torch.int64) for k, v in plain.items()}, str(folder / "integer.safetensors"),
              metadata={"f2d": json.dumps({"format": "f2d-identity", "version": 1})})
    # Put there by hand or another program: a right-to-left override would show as another name.
    save_identity(folder / "\u202egnp.exe.safetensors", tokens)
    (folder / "empty.safetensors").write_bytes(b"")
    data = good.read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])


def _write_text_encoders(folder: Path) -> None:
    """Just the keys ComfyUI detects a text encoder by (CLIP-L, SD2's CLIP-H, SDXL's CLIP-G);
    the rest stays uninitialised, which is enough: the F2D nodes refuse them before encoding."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, layer, width in (("clip_l_only", 0, 768), ("clip_h_sd2", 22, 1024), ("clip_g_sdxl", 30, 1280)):
        key = f"text_model.encoder.layers.{layer}.mlp.fc1.weight"
        save_file({key: torch.zeros(4 * width, width, dtype=torch.float16)}, str(folder / f"{name}.safetensors"))


def _write_photos(folder: Path, fixtures: Path) -> None:
    from skimage import data

    photo = Image.open(fixtures / "astronaut.png").convert("RGB")
    copy_into(fixtures / "astronaut.png", folder)
    Image.fromarray(data.coffee()).resize((320, 240)).save(folder / "coffee.png")
    photo.resize((16, 16), Image.LANCZOS).save(folder / "tiny16.png")
    photo.convert("L").save(folder / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    rgba.save(folder / "rgba.png")
    big = Image.new("RGB", (8000, 6000), (128, 128, 128))
    big.paste(photo.resize((3000, 3000), Image.BILINEAR), (2500, 1500))
    big.save(folder / "big_8000x6000.jpg", quality=80)


@pytest.fixture(scope="module")
def server(root, f2d_nodes, fixtures, reference, tmp_path_factory):
    base = root / "comfy"
    models = base / "models"
    # One tiny checkpoint for the session's modules that need it; linked, not copied.
    ckpt = build_tiny_sd15_checkpoint(tmp_path_factory.getbasetemp() / "tiny_checkpoint" / CKPT)
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / CKPT).symlink_to(ckpt)
    _write_weight_files(models / "face2diffusion", root / "pwned")
    _write_identity_files(models / "face2diffusion" / "identities", reference)
    _write_text_encoders(models / "text_encoders")
    _write_photos(base / "input", fixtures)
    # An LRU output cache keeps the checkpoint loaded while the matrix switches graphs (the default
    # cache keeps only the last graph's outputs); caching of the save node is the same either way.
    with ComfyServer(base, ["--cache-lru", "32"]) as s:
        yield s


# What may change between tests: ComfyUI's own output, temp, user and input folders, the log.
def _snapshot(root: Path, base: Path) -> set[str]:
    skip = {base / "output", base / "temp", base / "user", base / "input", base / "server.log"}
    found = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = [n for n in dirnames if d / n not in skip]
        found |= {str((d / f).relative_to(root)) for f in filenames if d / f not in skip}
    return found


@pytest.fixture(autouse=True)
def recovers(server, root):
    """(b) and (c) for every test of the module."""
    before = _snapshot(root, server.base)
    yield
    new = _snapshot(root, server.base) - before
    allowed = str(Path("comfy", "models", "face2diffusion", "identities"))
    assert all(f.startswith(allowed + os.sep) for f in new), f"files written outside the identities folder: {new}"
    assert not (root / "pwned").exists(), "a pickle ran code"
    result = run(server, generate())
    assert result.ok, f"the next normal prompt failed: {result.message}"
    assert_real_image(server, result)


# ---------------------------------------------------------------- graphs and outcomes

def _nodes(**nodes) -> dict:
    return {k: {"class_type": v[0], "inputs": v[1]} for k, v in nodes.items()}


def photo_graph(image="astronaut.png", face="largest", detector="auto", skip=False, extra_images=()) -> dict:
    """F2D Load MSID + photo(s) -> F2D Encode Identity -> preview of the aligned faces."""
    api = _nodes(**{
        "1": ("F2DLoadMSID", {"msid": "msid.pt", "mapping": "mapping.pt"}),
        "2": ("LoadImage", {"image": image}),
        "4": ("F2DEncodeIdentity", {"f2d_model": ["1", 0], "image": ["2", 0], "detector": detector, "face": face,
                                    "skip_faceless": skip}),
        "5": ("PreviewImage", {"images": ["4", 1]}),
    })
    last = "2"
    for i, name in enumerate(extra_images):
        api[f"2{i}"] = {"class_type": "LoadImage", "inputs": {"image": name}}
        api[f"3{i}"] = {"class_type": "ImageBatch", "inputs": {"image1": [last, 0], "image2": [f"2{i}", 0]}}
        last = f"3{i}"
    api["4"]["inputs"]["image"] = [last, 0]
    return api


def generate(text="a photo of f l", identity="photo", seed=None, steps=2, **sampler) -> dict:
    """The basic workflow at 64x64: photo (or identity file) -> tokens -> F2D Sampler -> image."""
    api = _nodes(**{
        "1": ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        "6": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
        "7": ("F2DSampler", {"model": ["1", 0], "clip": ["1", 1], "id_tokens": ["5", 0], "text": text,
                             "negative": "blurry", "latent_image": ["6", 0],
                             "seed": next(SEEDS) if seed is None else seed,
                             "steps": steps, "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "normal",
                             "denoise": 1.0, "identifier": "f l", "identity_start": 0.0, "identity_end": 1.0}),
        "8": ("VAEDecode", {"samples": ["7", 0], "vae": ["1", 2]}),
        "9": ("SaveImage", {"images": ["8", 0], "filename_prefix": "reliability"}),
    })
    api["7"]["inputs"].update(sampler)
    if identity == "photo":
        api.update(_nodes(**{
            "2": ("F2DLoadMSID", {"msid": "msid.pt", "mapping": "mapping.pt"}),
            "3": ("LoadImage", {"image": "astronaut.png"}),
            "4": ("F2DEncodeIdentity", {"f2d_model": ["2", 0], "image": ["3", 0], "detector": "auto",
                                        "face": "largest", "skip_faceless": False}),
            "5": ("F2DExpressionGuidance", {"f2d_model": ["2", 0], "identity": ["4", 0], "strength": 1.0}),
        }))
    else:
        api["5"] = {"class_type": "F2DLoadIdentity", "inputs": {"identity_file": identity}}
    return api


@dataclass
class Outcome:
    kind: str  # "refused" (HTTP 400 from /prompt), "error", "interrupted" or "success"
    message: str = ""  # every error text the user is shown, joined
    exception_type: str = ""
    node_type: str = ""
    history: dict = field(default_factory=dict)
    body: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind == "success"


def submit(server, api) -> tuple[int, dict]:
    return server.post("/prompt", {"prompt": api})


def outcome_of(server, status, body, timeout=300) -> Outcome:
    if status == 400:
        texts = [body.get("error", {}).get("message", "")]
        for node in (body.get("node_errors") or {}).values():
            texts += [f"{e.get('message', '')}: {e.get('details', '')}" for e in node.get("errors", [])]
        if not body.get("node_errors"):
            texts.append(body.get("error", {}).get("details", ""))
        return Outcome("refused", "\n".join(texts), body=body)
    assert status == 200, body
    h = server.wait_history(body["prompt_id"], timeout=timeout)
    messages = dict((m[0], m[1]) for m in h["status"]["messages"])
    if "execution_error" in messages:
        err = messages["execution_error"]
        return Outcome("error", err["exception_message"], err["exception_type"], err["node_type"], h)
    if "execution_interrupted" in messages:
        return Outcome("interrupted", history=h)
    return Outcome("success" if h["status"]["status_str"] == "success" else h["status"]["status_str"], history=h)


def run(server, api, timeout=300) -> Outcome:
    return outcome_of(server, *submit(server, api), timeout=timeout)


def assert_real_image(server, result: Outcome) -> None:
    images = [img for out in result.history["outputs"].values() for img in out.get("images", [])
              if img["type"] == "output"]
    assert images, "no image saved"
    for img in images:
        pixels = np.asarray(Image.open(server.base / "output" / img["subfolder"] / img["filename"]), dtype=np.float32)
        assert pixels.std() > 1.0, "a constant (e.g. black) image"


def assert_says(result: Outcome, kind: str, *needles: str, once: str | None = None, absent: tuple[str, ...] = ()):
    """The case failed the expected way and its message holds every needle (cause and fix),
    case-insensitively; ``once`` must appear exactly once in everything shown."""
    assert result.kind == kind, f"expected {kind}, got {result.kind}: {result.message}"
    low = result.message.lower()
    for n in needles:
        assert n.lower() in low, f"{n!r} not in the message:\n{result.message}"
    for n in absent:
        assert n.lower() not in low, f"{n!r} in the message:\n{result.message}"
    if once is not None:
        assert low.count(once.lower()) == 1, f"{once!r} shown {low.count(once.lower())} times:\n{result.message}"
    assert "Traceback" not in result.message


# ---------------------------------------------------------------- photos

def test_no_face(server):
    r = run(server, photo_graph("coffee.png"))
    assert_says(r, "error", "image 0: no face found", "skip_faceless", once="no face found")
    assert r.node_type == "F2DEncodeIdentity" and r.exception_type.endswith("NoFaceError")


def test_batch_with_one_faceless_photo_stops_without_skip(server):
    r = run(server, photo_graph(extra_images=["coffee.png"]))
    assert_says(r, "error", "image 1: no face found", "turn on skip_faceless", once="no face found")


def test_batch_with_one_faceless_photo_is_used_without_it_with_skip(server):
    r = run(server, photo_graph(extra_images=["coffee.png"], skip=True))
    assert r.ok, r.message
    shown = r.history["outputs"]["4"]["f2d_faces"]
    assert shown[0].startswith("photo 0: the only face") and shown[2] == "photo 1: no face, skipped"
    assert shown[1].lstrip().startswith("eyes ")  # the photo's intake report under its face line
    assert shown[3:] == [line for line in shown if line.startswith("detector: ")], shown  # which detector ran
    assert len(r.history["outputs"]["5"]["images"]) == 1  # one aligned face: the faceless photo left out


def test_face_index_beyond_the_faces_found(server):
    r = run(server, photo_graph(face="3"))
    assert_says(r, "error", "face 3 was asked for, but 1 face(s) were found", "pick 0..0 or 'largest'")


@pytest.mark.parametrize("face", ["abc", "-1", "10"])
def test_face_that_is_not_a_choice_is_refused_before_the_run(server, face):
    r = run(server, photo_graph(face=face))
    assert_says(r, "refused", f"face: '{face}' is not one of the choices", "pick one from the list",
                once="is not one of the choices", absent=("invalid literal",))


def test_detector_that_is_not_a_choice_is_refused(server):
    r = run(server, photo_graph(detector="opencv"))
    # Checked as the run starts (validate_inputs can name one input only without repeating itself).
    assert_says(r, "error", "detector: 'opencv' is not one of the choices", "mediapipe", "pick one from the list",
                once="is not one of the choices")


def test_16_px_photo(server):
    r = run(server, photo_graph("tiny16.png"))
    assert_says(r, "error", "16x16 px is too small to find a face in", "at least about 100 px")


@pytest.mark.parametrize("image", ["gray.png", "rgba.png", "big_8000x6000.jpg"])
def test_gray_rgba_and_huge_photos_work(server, image):
    r = run(server, photo_graph(image))
    assert r.ok, r.message
    crop = r.history["outputs"]["5"]["images"][0]
    pixels = np.asarray(Image.open(server.base / crop["type"] / crop["subfolder"] / crop["filename"]))
    assert pixels.shape[:2] == (112, 112) and pixels.std() > 10


# ---------------------------------------------------------------- prompts and identifiers

def test_prompt_without_the_identifier(server):
    r = run(server, generate("a photo of a man eating ice cream"))
    assert_says(r, "error", "does not contain the identifier 'f l'", "a photo of a man eating ice cream",
                "write it where the person should appear", once="does not contain")


def test_identifier_twice_gives_an_image(server):
    r = run(server, generate("f l and f l at a table"))
    assert r.ok, r.message
    assert_real_image(server, r)


def test_identifier_in_the_third_chunk_gives_an_image_with_the_identity(server):
    """A 150-token prompt, the identifier in its third 75-token chunk: an image, and the identity
    reaches that chunk (the same seed with the class phrase there instead gives another image)."""
    text = "a photo of " + "red " * 150 + "f l smiling"
    seed = next(SEEDS)
    with_id = run(server, generate(text, seed=seed))
    plain = run(server, generate(text, seed=seed, identity_start=0.999))
    assert with_id.ok and plain.ok, (with_id.message, plain.message)
    assert_real_image(server, with_id)
    a, b = (np.asarray(Image.open(server.base / "output" / r.history["outputs"]["9"]["images"][0]["filename"]),
                       dtype=np.float32) for r in (with_id, plain))
    assert np.abs(a - b).max() > 0


def test_one_word_identifier_is_reported_once(server):
    # F2D Sampler checks its identifier when the run starts (its validate_inputs is the sampler's:
    # ComfyUI 0.3.75 repeats a validation message once per input the method takes).
    r = run(server, generate(identifier="ff"))
    assert_says(r, "error", "identifier", "two words", "'f l'", once="two words")


def test_one_word_identifier_is_refused_once_by_text_encode(server):
    api = light()
    api["2"]["inputs"]["identifier"] = "ff"
    r = run(server, api)
    assert_says(r, "refused", "identifier", "two words", "'f l'", once="two words")


def test_identifier_of_long_words_is_refused_once(server):
    words = "supercalifragilistic expialidocious"
    r = run(server, generate(f"a photo of {words}", identifier=words))
    assert r.kind in ("refused", "error")
    assert_says(r, r.kind, "supercalifragilistic expialidocious", "single-token words", "'f l'", once="tokens for")


@pytest.mark.parametrize("start,end,kind,needles", [
    (0.8, 0.2, "error", ("identity_start (0.8) must be below identity_end (0.2)", "lower identity_start")),
    (1.5, 1.0, "refused", ("1.5 bigger than max of 1.0", "identity_start")),
    (0.0, -0.5, "refused", ("-0.5 smaller than min of 0.0", "identity_end"))])
def test_identity_window_out_of_range_is_reported_once(server, start, end, kind, needles):
    r = run(server, generate(identity_start=start, identity_end=end))
    assert_says(r, kind, *needles, once=needles[0])


@pytest.mark.parametrize("sampler,kind", [({"sampler_name": "euler_fast"}, "refused"), ({"scheduler": "sometimes"}, "error")])
def test_unknown_sampler_or_scheduler_is_refused(server, sampler, kind):
    # sampler_name before the run (HTTP 400), the scheduler as the run starts, before any work:
    # either way once, naming the input, the value and the choices, and nothing is sampled.
    (name, value), = sampler.items()
    r = run(server, generate(**sampler))
    assert_says(r, kind, f"{name}: '{value}' is not one of the choices", "pick one from the list",
                once="is not one of the choices")


# ---------------------------------------------------------------- weights

BAD_WEIGHTS = {
    "bad_zeros_deflated.pt": ("bad_zeros_deflated.pt", ["refused before reading it", "expands to 512.0 mb",
                                                        "compressed", "pick the file for"]),
    "bad_empties.safetensors": ("bad_empties.safetensors", ["refused before reading it", "tensor index alone is",
                                                            "pick the file for"]),
    "wrong": (None, ["this is not", "pick the file for", "readme"]),
    "bad_random.pt": ("bad_random.pt", ["not a weight file", "readme"]),
    "bad_truncated.pt": ("bad_truncated.pt", ["truncated", "download it again"]),
    "bad_pickle.pt": ("bad_pickle.pt", ["refused", "could run code", "official msid.pt / mapping.pt"]),
    "bad_sd_checkpoint.safetensors": ("bad_sd_checkpoint.safetensors",
                                      ["a stable diffusion checkpoint", "models/checkpoints"]),
}


@pytest.mark.parametrize("slot", ["msid", "mapping"])
@pytest.mark.parametrize("case", list(BAD_WEIGHTS))
def test_bad_weight_files(server, slot, case):
    name, needles = BAD_WEIGHTS[case]
    if name is None:  # the other model's file
        name = "mapping.pt" if slot == "msid" else "msid.pt"
    api = photo_graph()
    api["1"]["inputs"][slot] = name
    r = run(server, api)
    absent = ("could run code",) if case != "bad_pickle.pt" else ()
    assert_says(r, "error", name, *needles, absent=absent)
    assert r.node_type == "F2DLoadMSID" and r.exception_type.endswith("WeightsError")


def test_mapping_whose_output_overflows_gives_no_black_image(server):
    api = generate()
    api["2"]["inputs"]["mapping"] = "mapping_overflowing.safetensors"
    r = run(server, api)
    assert_says(r, "error", "identity tokens", "nan or infinite", "black image", "mapping weights")
    assert r.node_type == "F2DExpressionGuidance"


# ---------------------------------------------------------------- expressions

def with_expression(values: str) -> dict:
    api = generate()
    api["10"] = {"class_type": "F2DExpressionVector", "inputs": {"values": values}}
    api["5"]["inputs"]["expression"] = ["10", 0]
    return api


@pytest.mark.parametrize("bad,shown", [("nan", "#5 'nan' is not a finite number"),
                                       ("inf", "#5 'inf' is not a finite number"),
                                       ("1e39", "#5 '1e39' is outside -100..100"),
                                       ("abc", "#5 'abc' is not a number")])
def test_one_bad_number_among_64_is_named(server, bad, shown):
    values = ["0.1"] * 64
    values[4] = bad
    r = run(server, with_expression(", ".join(values)))
    assert_says(r, "refused", shown, "type 64 numbers", "leave the expression input unconnected",
                absent=("got 64",), once="expression values:")


def test_64_huge_numbers(server):
    r = run(server, with_expression(" ".join(["1e30"] * 64)))
    assert_says(r, "refused", "#1 '1e30' is outside -100..100", "(and 59 more)", once="expression values:")


def test_wrong_count(server):
    r = run(server, with_expression("0.1 0.2 0.3"))
    assert_says(r, "refused", "exactly 64 numbers, got 3", once="expression values:")


def test_sensible_expression_gives_an_image(server):
    r = run(server, with_expression(" ".join(f"{x:.3f}" for x in np.random.default_rng(0).normal(0, 1, 64))))
    assert r.ok, r.message
    assert_real_image(server, r)


# ---------------------------------------------------------------- identity files

@pytest.mark.parametrize("name,needles", [
    ("nan.safetensors", ["'first' tensor", "nan or infinite", "black image"]),
    ("corrupt.safetensors", ["damaged"]),
    ("truncated.safetensors", ["damaged"]),
    ("empty.safetensors", ["empty"]),
])
def test_broken_identity_files_say_make_it_again(server, name, needles):
    r = run(server, generate(identity=name))
    assert_says(r, "error", name, *needles, "make it again", "f2d save identity", absent=("download",))
    assert r.node_type == "F2DLoadIdentity" and r.exception_type.endswith("IdentityFileError")


def test_good_identity_file_gives_an_image(server):
    r = run(server, generate(identity="ref.safetensors"))
    assert r.ok, r.message
    assert_real_image(server, r)


def test_unknown_identity_file_is_refused(server):
    r = run(server, generate(identity="nobody.safetensors"))
    assert_says(r, "refused", "nobody.safetensors", "f2d save identity", once="is not in")


# ---------------------------------------------------------------- saving

def save_graph(name: str, identity="ref.safetensors") -> dict:
    return _nodes(**{"1": ("F2DLoadIdentity", {"identity_file": identity}),
                     "2": ("F2DSaveIdentity", {"id_tokens": ["1", 0], "name": name})})


@pytest.mark.parametrize("name,needles", [
    ("../escaped", ["contains /", "plain file name"]),
    ("/tmp/escaped", ["contains /", "plain file name"]),
    ("..\\escaped", ["contains \\", "plain file name"]),
    ("x" * 300, ["300 characters long", "at most 100"]),
    ("al\x00ice", ["control characters", "letters, digits"]),
    ("   ", ["empty", "give the person a name"]),
    ("CON", ["reserved device name on windows"]),
])
def test_bad_save_names_are_refused_before_anything_is_written(server, name, needles):
    r = run(server, save_graph(name))
    assert_says(r, "refused", "name:", *needles, once="name:", absent=("safetensorerror", "os error"))


def _saved_text(result: Outcome) -> str:
    return result.history["outputs"]["2"]["text"][0]


def test_save_writes_a_file_every_time_it_is_asked(server):
    folder = server.base / "models" / "face2diffusion" / "identities"
    r = run(server, save_graph("keeper"))
    assert r.ok and _saved_text(r) == f"saved keeper.safetensors in {folder}"
    (folder / "keeper.safetensors").unlink()
    r = run(server, save_graph("keeper"))  # same graph again: ComfyUI must not serve it from its cache
    assert r.ok and (folder / "keeper.safetensors").is_file(), "saved reported, nothing written"
    assert _saved_text(r) == f"saved keeper.safetensors in {folder}"
    os.utime(folder / "keeper.safetensors")  # the file was touched (e.g. copied back): runs again
    r = run(server, save_graph("keeper"))
    assert r.ok and _saved_text(r) == f"already saved: this identity is keeper.safetensors in {folder}"
    assert not (folder / "keeper_1.safetensors").exists()
    # Another identity under the same name is never written over the first.
    r = run(server, save_graph("keeper", identity="nan.safetensors"))
    assert r.kind == "error"  # and a broken one is never saved
    assert sorted(p.name for p in folder.glob("keeper*")) == ["keeper.safetensors"]


def test_two_save_nodes_with_the_same_name_in_one_graph(server):
    folder = server.base / "models" / "face2diffusion" / "identities"
    api = save_graph("twin")
    api["3"] = {"class_type": "F2DSaveIdentity", "inputs": {"id_tokens": ["1", 0], "name": "twin"}}
    r = run(server, api)
    assert r.ok, r.message
    texts = sorted(r.history["outputs"][k]["text"][0] for k in ("2", "3"))
    assert texts == [f"already saved: this identity is twin.safetensors in {folder}",
                     f"saved twin.safetensors in {folder}"]


# ---------------------------------------------------------------- text encoders

def clip_graph(loader: dict) -> dict:
    api = _nodes(**{
        "1": ("F2DLoadIdentity", {"identity_file": "ref.safetensors"}),
        "3": ("F2DTextEncode", {"clip": ["2", 0], "id_tokens": ["1", 0], "text": "a photo of f l", "identifier": "f l",
                                "identity_start": 0.0, "identity_end": 1.0}),
        "4": ("PreviewAny", {"source": ["3", 0]}),
    })
    api["2"] = loader
    return api


@pytest.mark.parametrize("loader", [
    {"class_type": "CLIPLoader", "inputs": {"clip_name": "clip_h_sd2.safetensors", "type": "stable_diffusion"}},
    {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "clip_l_only.safetensors",
                                                "clip_name2": "clip_g_sdxl.safetensors", "type": "sdxl"}},
], ids=["sd2", "sdxl"])
def test_sd2_and_sdxl_text_encoders_are_refused_with_the_fix(server, loader):  # sdxl depends on issue 15
    r = run(server, clip_graph(loader))
    assert_says(r, "error", "SD1.x", "load an SD1.x checkpoint", once="load an sd1.x checkpoint")


# ---------------------------------------------------------------- load and interrupts

def light(seed=None) -> dict:
    """F2D Text Encode (cached after the first run) + KSampler, 1 step: per prompt only the
    sampling, decoding and saving run, which keeps 90 prompts affordable on two cores."""
    return _nodes(**{
        "1": ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
        "5": ("F2DLoadIdentity", {"identity_file": "ref.safetensors"}),
        "2": ("F2DTextEncode", {"clip": ["1", 1], "id_tokens": ["5", 0], "text": "a photo of f l", "identifier": "f l",
                                "identity_start": 0.0, "identity_end": 1.0}),
        "3": ("CLIPTextEncode", {"clip": ["1", 1], "text": "blurry"}),
        "6": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
        "7": ("KSampler", {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["6", 0],
                           "seed": next(SEEDS) if seed is None else seed, "steps": 1, "cfg": 7.0,
                           "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}),
        "8": ("VAEDecode", {"samples": ["7", 0], "vae": ["1", 2]}),
        "9": ("SaveImage", {"images": ["8", 0], "filename_prefix": "reliability_load"}),
    })


def _all_succeed_with_images(server, results):
    assert all(r.ok for r in results), [r.message for r in results if not r.ok]
    for r in results:
        assert_real_image(server, r)


def test_50_prompts_queued_at_once_all_complete(server):
    queued = [submit(server, light()) for _ in range(50)]
    assert all(status == 200 for status, _ in queued)
    _all_succeed_with_images(server, [outcome_of(server, s, b, timeout=600) for s, b in queued])


def test_4_threads_of_10_prompts_all_complete(server):
    results, errors = [], []

    def client():
        try:
            for _ in range(10):
                results.append(run(server, light(), timeout=600))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    assert len(results) == 40
    _all_succeed_with_images(server, results)


def _wait_running(server, prompt_id, timeout=120):
    deadline = time.monotonic() + timeout
    while prompt_id not in [q[1] for q in server.get("/queue")["queue_running"]]:
        if time.monotonic() > deadline:
            raise TimeoutError("the prompt never started")
        time.sleep(0.05)


def test_interrupt_during_sampling(server):
    status, body = submit(server, generate(steps=5000))
    assert status == 200
    _wait_running(server, body["prompt_id"])
    time.sleep(1.0)
    assert server.post("/interrupt", {})[0] == 200
    r = outcome_of(server, status, body, timeout=120)
    assert r.kind == "interrupted", r.message


def test_interrupt_during_a_240_photo_encode(server):
    api = photo_graph()
    api["3"] = {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": 240}}
    api["4"]["inputs"]["image"] = ["3", 0]
    status, body = submit(server, api)
    assert status == 200
    _wait_running(server, body["prompt_id"])
    time.sleep(2.0)  # inside the encode node by now (the loader and photo are cached)
    assert server.post("/interrupt", {})[0] == 200
    r = outcome_of(server, status, body, timeout=120)
    assert r.kind == "interrupted", r.message
    assert "5" not in r.history.get("outputs", {})  # stopped before the preview of the faces


# ---------------------------------------------------------------- found by a trial as a new user

@pytest.mark.parametrize("sampler,needles", [
    ({"text": "a photo of (f l:1e309)"}, ["nan or infinite", "black image", "prompt weights"]),
    ({"cfg": float("nan")}, ["cfg is nan", "finite value"]),
    ({"denoise": float("nan")}, ["denoise is nan", "finite value", "1 for text-to-image"]),
])
def test_values_that_would_sample_a_black_image_are_refused(server, sampler, needles):
    r = run(server, generate(**sampler))
    assert_says(r, "error", *needles, once=needles[0])
    assert r.node_type == "F2DSampler"


@pytest.mark.parametrize("points", [[[1e9, 1e9], [2e9, 1e9], [1.5e9, 1.2e9], [1e9, 1.5e9], [2e9, 1.5e9]],
                                    [[-500, -500], [-400, -500], [-450, -450], [-480, -420], [-420, -420]]])
def test_given_points_off_the_photo_are_refused(server, points):
    api = photo_graph()
    api["4"]["inputs"]["face_points"] = json.dumps(points)
    r = run(server, api)
    assert_says(r, "error", "outside the 512x512 px photo", "this photo's pixels", once="outside the")


def test_missing_weight_file_is_reported_once(server):
    for slot in ("msid", "mapping"):
        api = photo_graph()
        api["1"]["inputs"][slot] = "nope.pt"
        r = run(server, api)
        assert r.kind in ("refused", "error")
        assert_says(r, r.kind, f"{slot}: 'nope.pt' is not in the face2diffusion model folder", "press R",
                    once="is not in the face2diffusion model folder")


# ---------------------------------------------------------------- found by an adversarial pass (issue 21)

@pytest.mark.parametrize("name,needles", [
    ("msid_integer.safetensors", ["blocks.0.attn.qkv.weight: int32, expected floating point", "official file"]),
    ("msid_224px.safetensors", ["has the layout of the msid identity encoder (msid.pt), but does not fit",
                                "pos_embed: file (1, 785, 384), expected (1, 197, 384)", "official file"]),
])
def test_msid_of_integers_or_another_size_is_named(server, name, needles):
    api = photo_graph()
    api["1"]["inputs"]["msid"] = name
    r = run(server, api)
    assert_says(r, "error", name, *needles, absent=("looks like",))
    assert r.node_type == "F2DLoadMSID" and r.exception_type.endswith("WeightsError")


@pytest.mark.parametrize("slot", ["msid", "mapping"])
def test_null_weight_file_in_an_api_prompt_names_the_input(server, slot):
    api = photo_graph()
    api["1"]["inputs"][slot] = None
    r = run(server, api)
    assert r.kind in ("refused", "error")
    assert_says(r, r.kind, f"{slot}: no file chosen (got null)", "pick", "from the list", absent=("join()",))


def test_null_identity_file_in_an_api_prompt_names_the_input(server):
    r = run(server, generate(identity=None))
    assert_says(r, "refused", "identity_file: no file chosen (got null)", "f2d save identity",
                once="no file chosen", absent=("'none'",))


def test_a_40_mb_expression_is_refused_by_its_length(server):
    r = run(server, with_expression("0.1 " * 10_000_000))
    assert_says(r, "refused", "40,000,000 characters long", "exactly 64 numbers", "type 64 numbers",
                once="expression values:")


def test_strength_nan_names_strength(server):
    api = with_expression(" ".join(["0.1"] * 64))
    api["5"]["inputs"]["strength"] = float("nan")
    r = run(server, api)
    assert_says(r, "error", "strength is nan", "value in 0..1", absent=("mapping weights", "expression values"))
    assert r.node_type == "F2DExpressionGuidance"


@pytest.mark.parametrize("name,needles", [
    ("deep_metadata.safetensors", ["metadata is not readable json (nested too deeply)"]),
    ("list_metadata.safetensors", ["metadata is a json list"]),
    ("integer.safetensors", ["first: int64, not floating point"]),
])
def test_identity_files_with_malformed_metadata_or_integers_are_named(server, name, needles):
    r = run(server, generate(identity=name))
    assert_says(r, "error", name, *needles, "make it again", absent=("recursion", "attribute"))
    assert r.node_type == "F2DLoadIdentity" and r.exception_type.endswith("IdentityFileError")


def test_identity_named_with_a_right_to_left_override_is_not_listed(server):
    options = server.get("/object_info/F2DLoadIdentity")["F2DLoadIdentity"]["input"]["required"]["identity_file"]
    listed = options[1]["options"] if isinstance(options[1], dict) and "options" in options[1] else options[0]
    assert "ref.safetensors" in listed and not any("\u202e" in f for f in listed)


POSE = {"people": [{"face_keypoints_2d": [v for i in range(68) for v in (200 + i, 200 + i % 7, 1.0)]}],
        "canvas_width": 512, "canvas_height": 512}
FIVE = [[200, 250], [300, 250], [250, 300], [210, 350], [290, 350]]


@pytest.mark.parametrize("points,needles", [
    ({**POSE, "canvas_width": 0}, ["canvas_width is '0'", "width/height in pixels"]),
    ([["abc", 1]] * 5, ["is not a list of numbers", "could not convert string to float: 'abc'", "give openpose"]),
    ([[[FIVE, 3]]], ["could not read the structure", "give openpose"]),
    ([[float("nan"), 1]] + FIVE[1:], ["holds nan or infinite coordinates", "finite pixel coordinates"]),
    ([[1e308, 1]] + FIVE[1:], ["the coordinate 1e+308, far outside any photo", "pixel coordinates of the photo"]),
], ids=["canvas0", "letters", "nesting", "nan", "1e308"])
def test_malformed_face_points_are_named(server, points, needles):
    api = photo_graph()
    api["4"]["inputs"]["face_points"] = json.dumps(points)
    r = run(server, api)
    assert_says(r, "error", "face points", *needles, absent=("division", "9223372036854775808", "not iterable"))


@pytest.mark.parametrize("weight", ["1e30", "-1e30"])
def test_huge_finite_prompt_weight_is_refused_not_sampled_black(server, weight):
    r = run(server, generate(f"a photo of (f l:{weight})"))
    assert_says(r, "error", "far beyond what this text encoder produces", f"prompt weight {float(weight):g}",
                "between 0 and about 2", once="far beyond")
    assert r.node_type == "F2DSampler"


def test_strong_but_sane_prompt_weight_still_gives_an_image(server):
    r = run(server, generate("a photo of (f l:3)"))
    assert r.ok, r.message
    assert_real_image(server, r)


@pytest.mark.parametrize("name,needles", [
    ("\u202egnp.exe", ["invisible or control characters", "U+202E RIGHT-TO-LEFT OVERRIDE"]),
    ("al\u200bice", ["invisible or control characters", "U+200B ZERO WIDTH SPACE"]),
    ("al\u2028ice", ["invisible or control characters", "U+2028 LINE SEPARATOR"]),
    ("a\uff0fb", ["U+FF0F FULLWIDTH SOLIDUS", "drawn like a folder separator"]),
    ("a\u2215b", ["U+2215 DIVISION SLASH", "drawn like a folder separator"]),
    ("\uff41lice", ["unicode writes another way", "type it as 'alice'"]),
    (None, ["'none' is what a missing (null) value becomes", "give the person a name"]),
    ("\U0001F600" * 60, ["240 bytes long in utf-8 (60 characters", "at most 200 bytes"]),
], ids=["rlo", "zwsp", "line-separator", "fullwidth-slash", "division-slash", "fullwidth-a", "json-null", "emoji"])
def test_look_alike_and_null_names_are_refused(server, name, needles):
    r = run(server, save_graph(name))
    assert_says(r, "refused", "name:", *needles, once="name:")


def test_a_server_and_another_process_saving_under_one_name_never_swap_identities(server, root):
    """The CLI (or a second ComfyUI) saving into the same identities folder while the server
    saves: each file holds what its writer reported, and the server's 'saved'/'already saved'
    names a file that holds the server's identity."""
    import subprocess
    import sys

    from f2d.identity_file import load_identity

    folder = server.base / "models" / "face2diffusion" / "identities"
    ref, _, _ = load_identity(folder / "ref.safetensors")
    writer = subprocess.Popen([sys.executable, "-c", (
        "import json, sys, torch\n"
        "from f2d.identity import IdentityTokens\n"
        "from f2d.identity_file import save_new_identity\n"
        "out = []\n"
        "for i in range(30):\n"
        "    t = IdentityTokens(torch.full((1, 768), 7000.0 + i), torch.full((1, 768), -7000.0 - i))\n"
        "    out.append([str(save_new_identity(sys.argv[1], 'shared', t, None, {'name': 'shared'})), 7000.0 + i])\n"
        "print(json.dumps(out))\n"), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    texts = []
    for _ in range(10):
        r = run(server, save_graph("shared"))
        assert r.ok, r.message
        if "2" in r.history["outputs"]:  # else served from ComfyUI's cache: no file changed since, nothing written
            texts.append(_saved_text(r))
    assert texts
    out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    for path, value in json.loads(out):
        tokens, _, _ = load_identity(path)
        assert tokens.first[0, 0].item() == value, f"{path} lost its writer's identity"
    for text in texts:
        name = text.split(" in ")[0].split()[-1]
        tokens, _, _ = load_identity(folder / name)
        assert torch.equal(tokens.first, ref.first), f"the server reported {name}, which holds another identity"
    assert not list(folder.glob(".*.part")), "temporary files left behind"

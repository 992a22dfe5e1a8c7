"""`python -m f2d generate / encode`: diffusers outside ComfyUI, checked against the official
reference. Uses the SD1.x tokenizer files ComfyUI ships."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from f2d_testkit import (
    REPO,
    clip_tokenizer,
    formula_transformers_clip,
)

# diffusers/transformers and the SD1.x tokenizer files, no ComfyUI (the identity file in the ComfyUI
# node: tests/host/test_generate_in_comfy.py).
pytestmark = pytest.mark.diffusers
ATOL = 1e-4


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "f2d", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO / "tests", timeout=timeout)


@pytest.fixture(scope="module")
def text_encoder():
    return formula_transformers_clip()


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


@pytest.mark.parametrize("case", ["eiffel", "smile"])
def test_conditioning_matches_official_with_transformers(text_encoder, tokenizer, reference, fixtures, case):
    from f2d.generate import encode_prompt
    from f2d.identity import IdentityTokens

    prompt = json.loads((fixtures / "clip_cases.json").read_text())[case]["prompt"]
    tokens = IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])
    cond = encode_prompt(tokenizer, text_encoder, prompt, tokens)
    assert (cond - reference[f"clip.{case}.cond"]).abs().max().item() <= ATOL
    plain = encode_prompt(tokenizer, text_encoder, prompt)
    assert (plain - reference[f"clip.{case}.cond_without_identity"]).abs().max().item() <= ATOL
    # The hook is gone afterwards: a plain encode right after is plain again.
    assert (encode_prompt(tokenizer, text_encoder, prompt) - plain).abs().max().item() == 0


def test_generate_writes_grid_and_images_with_parameters(tiny_diffusers_dir, weight_files, fixtures, tmp_path):
    out = tmp_path / "out" / "bread.png"
    r = cli("generate", "-i", fixtures / "astronaut.png", "-p", "f l eating bread in front of the Eiffel Tower",
            "--base", tiny_diffusers_dir, "--msid", weight_files["msid", "pt"], "--mapping", weight_files["mapping", "pt"],
            "-n", 3, "-o", out, "--steps", 2, "--height", 64, "--width", 64, "--seed", 7, "-q")
    assert r.returncode == 0, r.stderr
    grid = Image.open(out)
    assert grid.size == (192, 64)
    singles = sorted(out.parent.glob("bread-*.png"))
    assert [p.name for p in singles] == ["bread-00.png", "bread-01.png", "bread-02.png"]
    params = json.loads(Image.open(singles[0]).text["parameters"])
    assert params["prompt"] == "f l eating bread in front of the Eiffel Tower" and params["seed"] == 7
    assert params["steps"] == 2 and params["scheduler"] == "euler_a" and params["identity"]["photos"] == 1


def test_identity_start_runs_the_class_prompt_first(tiny_diffusers_dir, weight_files, fixtures, tmp_path):
    args = ["generate", "-i", fixtures / "astronaut.png", "-p", "a photo of f l", "--base", tiny_diffusers_dir,
            "--msid", weight_files["msid", "pt"], "--mapping", weight_files["mapping", "pt"], "--steps", 4,
            "--height", 64, "--width", 64, "-q"]
    assert cli(*args, "-o", tmp_path / "a.png").returncode == 0
    r = cli(*args, "-o", tmp_path / "b.png", "--identity-start", "0.5")
    assert r.returncode == 0, r.stderr
    # The class prompt alone, for comparison: the delayed run must be neither of the two.
    r = cli(*args, "-o", tmp_path / "c.png", "--identity-start", "0.999")
    assert r.returncode == 0, r.stderr
    a, b, c = (np.asarray(Image.open(tmp_path / n), dtype=np.float32) for n in ("a.png", "b.png", "c.png"))
    assert np.abs(a - b).max() > 0  # the first half saw "a photo of a person"
    assert np.abs(b - c).max() > 0  # and the second half the identity


@pytest.mark.parametrize("problem", ["no_face", "no_identifier", "wrong_weights", "unreadable_photo", "not_a_device",
                                     "absent_device"])
def test_bad_inputs_exit_with_one_clear_line(problem, tiny_diffusers_dir, weight_files, fixtures, tmp_path):
    from skimage import data

    photo, prompt = fixtures / "astronaut.png", "a photo of f l"
    msid = weight_files["msid", "pt"]
    device = {"not_a_device": "gpu", "absent_device": "cuda"}.get(problem, "auto")
    if problem == "absent_device" and torch.cuda.is_available():
        device = f"cuda:{torch.cuda.device_count()}"
    if problem == "no_face":
        photo = tmp_path / "coffee.png"
        Image.fromarray(data.coffee()).save(photo)
    elif problem == "no_identifier":
        prompt = "a photo of a man"
    elif problem == "wrong_weights":
        msid = weight_files["mapping", "pt"]
    elif problem == "unreadable_photo":
        photo = tmp_path / "broken.jpg"
        photo.write_bytes(b"not a jpeg at all")
    r = cli("generate", "-i", photo, "-p", prompt, "--base", tiny_diffusers_dir, "--msid", msid,
            "--mapping", weight_files["mapping", "pt"], "-o", tmp_path / "x.png", "--steps", 1, "-q", "--device", device)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    expect = {"no_face": "image 0: no face found", "no_identifier": "does not contain the identifier 'f l'",
              "wrong_weights": "not the MSID identity encoder", "unreadable_photo": "not a readable image",
              "not_a_device": "--device gpu: not a device name; on this machine: auto, cpu",
              "absent_device": f"--device {device}: this machine"}[problem]
    assert expect in lines[0]
    # The command's own flags, not the nodes' option names.
    assert "skip_faceless" not in lines[0] and "allow_no_face" not in lines[0]
    if problem == "no_face":
        assert "--skip-faceless" in lines[0]

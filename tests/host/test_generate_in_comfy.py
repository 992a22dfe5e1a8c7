"""An identity file written by `python -m f2d encode` loads in the ComfyUI node with the same
tokens, and drives `python -m f2d generate` without photo or weights."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from f2d_testkit import REPO

pytestmark = [pytest.mark.host, pytest.mark.diffusers]


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "f2d", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO / "tests", timeout=timeout)


def test_encode_file_loads_in_the_comfyui_node_with_the_same_tokens(f2d_nodes, host_base, weight_files, fixtures,
                                                                   tiny_diffusers_dir, tmp_path):
    ident = host_base / "models" / "face2diffusion" / "identities" / "from_cli.safetensors"
    r = cli("encode", "-i", fixtures / "astronaut.png", "--msid", weight_files["msid", "pt"],
            "--mapping", weight_files["mapping", "pt"], "-o", ident)
    assert r.returncode == 0, r.stderr
    loaded = f2d_nodes.F2DLoadIdentity.execute("from_cli.safetensors").args[0]
    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    photo = torch.from_numpy(np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))).float()[None] / 255
    identity = f2d_nodes.F2DEncodeIdentity.execute(model, photo, "auto", "largest", False).args[0]
    in_comfy = f2d_nodes.F2DExpressionGuidance.execute(model, identity, 1.0).args[0]
    assert (loaded.first - in_comfy.first).abs().max() <= 1e-5
    assert (loaded.last - in_comfy.last).abs().max() <= 1e-5
    # And the file drives generation without photo or weights.
    out = tmp_path / "from_identity.png"
    r = cli("generate", "--identity", ident, "-p", "f l smiling", "--base", tiny_diffusers_dir, "-o", out, "--steps", 1,
            "--height", 64, "--width", 64, "-q")
    assert r.returncode == 0, r.stderr
    assert json.loads(Image.open(out).text["parameters"])["identity"]["name"] == "from_cli"

"""Weight files as users get them: good ones load strictly, bad ones fail with a message that
names the file, what is wrong and what to do -- and never run code."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from formula import formula_state_dict
from f2d.msid import MSIDEncoder
from f2d.weights import WeightsError, load_mapping, load_msid

from f2d_testkit import REPO


@pytest.fixture(scope="module")
def msid_sd():
    return formula_state_dict(MSIDEncoder())


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_official_key_layout_loads_strictly(weight_files, fmt, fixtures):
    import json

    manifest = json.loads((fixtures / "msid_state_dict.json").read_text())
    model = load_msid(weight_files["msid", fmt])
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: v["shape"] for k, v in manifest.items()}
    manifest = json.loads((fixtures / "mapping_state_dict.json").read_text())
    mapping = load_mapping(weight_files["mapping", fmt])
    assert {k: list(v.shape) for k, v in mapping.state_dict().items()} == {k: v["shape"] for k, v in manifest.items()}
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_missing_key_is_named(tmp_path, msid_sd):
    sd = dict(msid_sd)
    del sd["blocks.3.attn.proj.bias"]
    path = tmp_path / "msid.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert str(path) in msg and "missing keys (1): blocks.3.attn.proj.bias" in msg
    assert "unexpected" not in msg


def test_wrong_shape_is_named(tmp_path, msid_sd):
    sd = dict(msid_sd)
    sd["pos_embed"] = torch.zeros(1, 785, 384)  # a 224-px ViT's position table
    path = tmp_path / "msid.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    assert "pos_embed: file (1, 785, 384), expected (1, 197, 384)" in str(e.value)


def test_unexpected_keys_are_named(tmp_path, msid_sd):
    sd = dict(msid_sd, **{"head.weight": torch.zeros(10, 384)})
    path = tmp_path / "msid.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"unexpected keys \(1\): head.weight"):
        load_msid(path)


def test_stable_diffusion_checkpoint_given_as_msid(tmp_path):
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(8, 768),
    }
    path = tmp_path / "v1-5-pruned-emaonly.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert "not the MSID identity encoder" in msg and "Stable Diffusion checkpoint" in msg
    assert "models/checkpoints" in msg


def test_mapping_and_msid_swapped(weight_files):
    with pytest.raises(WeightsError, match="looks like an F2D mapping network"):
        load_msid(weight_files["mapping", "pt"])
    with pytest.raises(WeightsError, match="looks like an MSID identity encoder"):
        load_mapping(weight_files["msid", "safetensors"])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "msid.pt"
    torch.save({"cls_token": torch.zeros(1), "payload": _Exploit(marker)}, path)
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    assert "refused" in str(e.value) and str(path) in str(e.value)
    assert not marker.exists(), "loading executed code from the pickle"


def test_raw_pickle_that_would_run_code_is_refused_without_running(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "msid.pt"
    path.write_bytes(pickle.dumps(_Exploit(marker), protocol=4))
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    assert "refused" in str(e.value) and "could run code" in str(e.value)
    assert not marker.exists(), "loading executed code from the pickle"


@pytest.mark.parametrize("content", [bytes(range(256)) * 16, b"hello, this is a text file\n" * 10],
                         ids=["random_bytes", "text"])
def test_a_file_that_is_no_checkpoint_is_not_called_dangerous(tmp_path, content):
    path = tmp_path / "msid.pt"
    path.write_bytes(content)
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert str(path) in msg and "not a weight file" in msg and "README" in msg
    assert "run code" not in msg and "refused" not in msg


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_truncated_file(tmp_path, weight_files, fmt):
    data = weight_files["msid", fmt].read_bytes()
    path = tmp_path / f"msid.{fmt}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert str(path) in msg and ("truncated" in msg or "damaged" in msg) and "again" in msg


def test_empty_and_absent_files(tmp_path):
    empty = tmp_path / "msid.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        load_msid(empty)
    with pytest.raises(WeightsError, match="no such file"):
        load_msid(tmp_path / "nothing.pt")


def test_wrapped_checkpoint_is_unwrapped(tmp_path, msid_sd):
    path = tmp_path / "msid.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in msid_sd.items()}}, path)
    model = load_msid(path)
    assert torch.equal(model.cls_token, msid_sd["cls_token"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "f2d", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO / "tests")


def test_convert_command_round_trip(tmp_path, weight_files, reference):
    out = tmp_path / "converted" / "msid.safetensors"
    r = _cli("convert", weight_files["msid", "pt"], out)
    assert r.returncode == 0, r.stderr
    assert "msid" in r.stdout
    original = torch.load(weight_files["msid", "pt"], weights_only=True)
    converted = load_file(str(out))
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    feats = load_msid(out)(reference["msid.input"])
    assert (feats - reference["msid.features"]).abs().max() <= 1e-4
    # Same input, same bytes: users can compare hashes of converted files.
    again = tmp_path / "again.safetensors"
    assert _cli("convert", weight_files["msid", "pt"], again).returncode == 0
    assert again.read_bytes() == out.read_bytes()


def test_convert_command_rejects_a_non_f2d_file_in_one_line(tmp_path):
    src = tmp_path / "lora.pt"
    torch.save({"lora_unet_down.lora_down.weight": torch.zeros(4, 4)}, src)
    r = _cli("convert", src, tmp_path / "out.safetensors")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and "LoRA" in r.stderr and "models/loras" in r.stderr
    assert not (tmp_path / "out.safetensors").exists()

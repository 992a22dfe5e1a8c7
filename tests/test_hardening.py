"""Files and text made to hurt the library (issue 21): refused from their index or length, with a
message naming the file or input and the fix, before they cost memory; identity files saved by
two processes at once never swap or lose an identity."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from crafted_files import deeply_nested_json, deflated_zeros_pt, many_empty_tensors_safetensors, many_records_pt
from f2d.expression import ExpressionError, check_strength, parse_expression
from f2d.identity import IdentityTokens
from f2d.identity_file import IdentityFileError, load_identity, save_identity
from f2d.mapping import TOKEN_DIM
from f2d.points import PointsError, parse_face_points
from f2d.weights import WeightsError, load_mapping, load_msid
from formula import formula_state_dict
from f2d.msid import MSIDEncoder
from f2d_testkit import REPO


def _peak_rss_of(code: str) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter; (its output, the MB its peak resident memory grew by
    while the code ran, measured from just before it)."""
    script = ("import resource, f2d.weights, f2d.identity_file\n"
              "f2d.weights.limits_for('msid')\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              + code +
              "\nprint('GROWTH', (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO / "tests")
    assert r.returncode == 0, r.stderr
    out, growth = r.stdout.rsplit("GROWTH", 1)
    return out, float(growth)


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crafted")
    deflated_zeros_pt(folder / "zeros_1g.pt", 2**30)
    many_empty_tensors_safetensors(folder / "empties.safetensors", 1_300_000)
    many_empty_tensors_safetensors(folder / "empties_20k.safetensors", 20_000)
    many_records_pt(folder / "records.pt", 100_000)
    return folder


@pytest.mark.parametrize("loader", ["load_msid", "load_mapping"])
def test_compressed_pt_that_expands_to_a_gigabyte_is_refused_from_its_directory(crafted, loader):
    path = crafted / "zeros_1g.pt"
    out, growth = _peak_rss_of(textwrap.dedent(f"""
        try:
            f2d.weights.{loader}({str(path)!r})
        except f2d.weights.WeightsError as e:
            print(e)
    """))
    assert str(path) in out and "expands to 1.0 GB" in out and "compressed" in out
    assert "pick the file for" in out.lower() and "readme" in out.lower()
    assert growth < 200, f"memory grew by {growth:.0f} MB before the refusal"


def test_safetensors_with_a_million_empty_tensors_is_refused_from_its_header(crafted):
    path = crafted / "empties.safetensors"
    out, growth = _peak_rss_of(textwrap.dedent(f"""
        try:
            f2d.weights.load_msid({str(path)!r})
        except f2d.weights.WeightsError as e:
            print(e)
    """))
    assert str(path) in out and "tensor index alone is" in out and "msid.pt" in out
    assert growth < 200, f"memory grew by {growth:.0f} MB before the refusal"


def test_20000_tensors_are_named_as_the_wrong_file_without_reading_them(crafted):
    with pytest.raises(WeightsError, match="this is not the MSID identity encoder.*unrecognised model \\(20000 tensors"):
        load_msid(crafted / "empties_20k.safetensors")


def test_archive_listing_100000_records_is_refused(crafted):
    with pytest.raises(WeightsError, match="its archive lists 100,001 records"):
        load_mapping(crafted / "records.pt")


@pytest.fixture(scope="module")
def msid_sd():
    return formula_state_dict(MSIDEncoder())


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool])
@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_integer_or_bool_weights_are_refused(tmp_path, msid_sd, dtype, fmt):
    sd = dict(msid_sd)
    sd["blocks.0.attn.qkv.weight"] = sd["blocks.0.attn.qkv.weight"].to(dtype)
    path = tmp_path / f"msid.{fmt}"
    torch.save(sd, path) if fmt == "pt" else save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert str(path) in msg and f"blocks.0.attn.qkv.weight: {str(dtype).removeprefix('torch.')}, expected floating point" in msg
    assert "official file" in msg


def test_wrong_shape_msid_says_what_it_is_without_contradicting_itself(tmp_path, msid_sd):
    sd = dict(msid_sd)
    sd["pos_embed"] = torch.zeros(1, 785, 384)
    path = tmp_path / "msid.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as e:
        load_msid(path)
    msg = str(e.value)
    assert "has the layout of the MSID identity encoder (msid.pt), but does not fit" in msg
    assert "looks like" not in msg and "pos_embed: file (1, 785, 384), expected (1, 197, 384)" in msg


# ---------------------------------------------------------------- identity files

@pytest.fixture
def tokens(reference):
    return IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])


def _identity(path, meta: str, dtype=torch.float32):
    save_file({"first": torch.zeros(TOKEN_DIM, dtype=dtype), "last": torch.zeros(TOKEN_DIM, dtype=dtype)}, str(path),
              metadata={"f2d": meta})
    return path


@pytest.mark.parametrize("meta,shown", [
    (deeply_nested_json(), "nested too deeply"),
    ("[1, 2]", "metadata is a JSON list"),
    ('{"format": "f2d-identity", "version": [1]}', "version '[1]'"),
    ('{"format": "f2d-identity", "version": 7}', "written by a newer face2diffusion pack"),
    ("{not json", "not readable json"),
])
def test_malformed_identity_metadata_is_named(tmp_path, meta, shown):
    path = _identity(tmp_path / "p.safetensors", meta)
    with pytest.raises(IdentityFileError) as e:
        load_identity(path)
    assert str(path) in str(e.value) and shown.lower() in str(e.value).lower() and "make it again" in str(e.value).lower()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_identity_file_with_non_float_tensors_is_refused(tmp_path, dtype):
    path = _identity(tmp_path / "p.safetensors", json.dumps({"format": "f2d-identity", "version": 1}), dtype)
    with pytest.raises(IdentityFileError, match=f"first: {str(dtype).removeprefix('torch.')}, not floating point"):
        load_identity(path)


def test_identity_file_with_many_tensors_is_refused_from_its_header(tmp_path):
    path = many_empty_tensors_safetensors(tmp_path / "p.safetensors", 20_000)
    with pytest.raises(IdentityFileError, match="damaged, not a readable identity file.*20,000 tensors"):
        load_identity(path)


def test_old_identity_file_without_version_still_loads(tmp_path, tokens):
    path = tmp_path / "old.safetensors"
    save_file({"first": tokens.first.reshape(-1).contiguous(), "last": tokens.last.reshape(-1).contiguous()},
              str(path), metadata={"f2d": json.dumps({"format": "f2d-identity", "name": "old"})})
    loaded, identity, meta = load_identity(path)
    assert torch.equal(loaded.first, tokens.first.float()) and identity is None and meta["name"] == "old"


WRITER = textwrap.dedent("""
    import json, sys, torch
    from f2d.identity import IdentityTokens
    from f2d.identity_file import save_new_identity
    folder, who, count = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    reported = []
    for i in range(count):
        value = who * 1000 + i  # every save a different identity, named by its writer
        tokens = IdentityTokens(torch.full((1, 768), value), torch.full((1, 768), -value))
        path = save_new_identity(folder, "twin", tokens, None, {"name": "twin"})
        reported.append([str(path), value])
    print(json.dumps(reported))
""")


def test_two_processes_saving_80_identities_under_one_name_never_swap_or_lose_one(tmp_path):
    """Two writers at once (two servers on one models folder, or the CLI beside a server): every
    save gets its own file, and each file holds the identity its writer reported saving there."""
    folder = tmp_path / "identities"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(who), "40"], cwd=REPO / "tests",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for who in (1, 2)]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        reports += json.loads(out)
    paths = [p for p, _ in reports]
    assert len(reports) == 80 and len(set(paths)) == 80, "two saves reported the same file"
    assert sorted(f.name for f in folder.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in paths), \
        "files missing, or temporary files left behind"
    for path, value in reports:
        tokens, _, meta = load_identity(path)
        assert tokens.first[0, 0].item() == value and tokens.last[0, 0].item() == -value, f"{path} holds another identity"


def test_save_identity_replaces_through_a_unique_temporary_file(tmp_path, tokens):
    path = save_identity(tmp_path / "a.safetensors", tokens)
    (tmp_path / "a.safetensors.part").write_bytes(b"another writer's temporary file")
    save_identity(path, tokens)
    assert (tmp_path / "a.safetensors.part").read_bytes() == b"another writer's temporary file"
    assert torch.equal(load_identity(path)[0].first, tokens.first.float())


# ---------------------------------------------------------------- typed text

def test_a_40_mb_expression_is_refused_by_its_length():
    with pytest.raises(ExpressionError) as e:
        parse_expression("0.1 " * 10_000_000)
    msg = str(e.value)
    assert "40,000,000 characters long" in msg and "exactly 64 numbers" in msg and "type 64 numbers" in msg.lower()


@pytest.mark.parametrize("value", [float("nan"), "nan", None, -0.5, 2.0])
def test_strength_outside_0_to_1_is_named(value):
    with pytest.raises(ExpressionError, match="strength is .*set strength to a value in 0..1"):
        check_strength(value)


FIVE = [[10, 10], [20, 10], [15, 15], [11, 20], [19, 20]]
POSE = {"people": [{"face_keypoints_2d": [1.0] * 204}], "canvas_width": 64, "canvas_height": 64}


@pytest.mark.parametrize("points,shown", [
    ({**POSE, "canvas_width": 0}, "canvas_width is '0'; it must be the width/height in pixels"),
    ({**POSE, "canvas_height": "abc"}, "canvas_height is 'abc'"),
    ([["abc", 1]] * 5, "face 0 of image 0 is not a list of numbers (could not convert string to float: 'abc')"),
    (5, "could not read the structure"),
    ([[[FIVE, 3]]], "could not read the structure"),
    ({"people": 5}, "'people' must be a list"),
    ([[float("nan"), 1]] + FIVE[1:], "holds nan or infinite coordinates"),
    ([[1e308, 1]] + FIVE[1:], "holds the coordinate 1e+308, far outside any photo"),
    ({"people": [{"face_keypoints_2d": [float("nan")] * 204}]}, "face_keypoints_2d holds nan or infinite"),
])
def test_malformed_face_points_are_named(points, shown):
    with pytest.raises(PointsError) as e:
        parse_face_points(json.dumps(points))
    assert shown.lower() in str(e.value).lower() and "Error:" not in str(e.value).split(";")[0][:20]


def test_deeply_nested_face_points_json_is_named():
    with pytest.raises(PointsError, match="not valid JSON \\(nested too deeply\\)"):
        parse_face_points(deeply_nested_json())


def _facenet_folder(folder):
    """A facenet-pytorch data folder (pnet.pt, rnet.pt, onet.pt: plain state dicts) made from the
    pack's converted MTCNN weights."""
    from safetensors.torch import load_file

    from f2d.mtcnn import NETS, WEIGHTS_FILE

    if not WEIGHTS_FILE.is_file():
        pytest.skip("the MTCNN weights are not installed (python install.py)")
    flat = load_file(str(WEIGHTS_FILE))
    folder.mkdir(parents=True, exist_ok=True)
    for n in NETS:
        torch.save({k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(n + ".")}, folder / f"{n}.pt")
    return flat


def test_mtcnn_weights_from_a_facenet_folder_are_read_through_the_checked_reader(tmp_path):
    from f2d.mtcnn import MTCNNWeightsError, read_facenet_pytorch_weights

    flat = _facenet_folder(tmp_path / "data")
    read = read_facenet_pytorch_weights(tmp_path / "data")
    assert read.keys() == flat.keys() and all(torch.equal(read[k], flat[k]) for k in flat)
    deflated_zeros_pt(tmp_path / "data" / "rnet.pt", 2**28)
    with pytest.raises(MTCNNWeightsError, match="rnet.pt: refused before reading it: its archive expands to 256.0 MB"):
        read_facenet_pytorch_weights(tmp_path / "data")

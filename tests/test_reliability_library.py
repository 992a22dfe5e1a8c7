"""The library side of the reliability rules: numbers typed in, identity files, and chunked
encoding with a progress callback (hosts interrupt from it). The same cases through a real
ComfyUI server are in tests/host/test_reliability.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from f2d.expression import ExpressionError, parse_expression
from f2d.identity import IdentityEncoder, IdentityTokens, NonFiniteError, encode_photos
from f2d.identity_file import IdentityFileError, load_identity, save_identity


def test_sensible_expression_parses():
    values = np.random.default_rng(0).normal(0, 1, 64)
    vec = parse_expression(", ".join(f"{v:.4f}" for v in values))
    assert vec.shape == (1, 64) and vec.dtype == torch.float32
    assert torch.allclose(vec[0], torch.tensor(values, dtype=torch.float32), atol=1e-4)


@pytest.mark.parametrize("bad,shown", [("nan", "#3 'nan' is not a finite number"),
                                       ("-inf", "#3 '-inf' is not a finite number"),
                                       ("1e39", "#3 '1e39' is outside -100..100"),  # finite in Python, inf in float32
                                       ("1e30", "#3 '1e30' is outside -100..100"),
                                       ("x1", "#3 'x1' is not a number")])
def test_one_bad_value_is_named_by_position_not_by_count(bad, shown):
    values = ["0.5"] * 64
    values[2] = bad
    with pytest.raises(ExpressionError) as e:
        parse_expression(" ".join(values))
    msg = str(e.value)
    assert shown in msg and "got 64" not in msg and "leave the expression input unconnected" in msg


def test_many_bad_values_are_summarised():
    with pytest.raises(ExpressionError, match=r"#1 '1e30' is outside .*\(and 59 more\)"):
        parse_expression(" ".join(["1e30"] * 64))
    with pytest.raises(ExpressionError, match="exactly 64 numbers, got 0"):
        parse_expression("  ")


@pytest.fixture()
def tokens(reference):
    return IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])


def test_identity_file_with_nan_is_refused_on_load_and_never_written(tmp_path, tokens):
    bad = IdentityTokens(tokens.first.clone(), tokens.last)
    bad.first[0, 7] = float("nan")
    with pytest.raises(NonFiniteError, match="1 of 1536 values are NaN or infinite"):
        save_identity(tmp_path / "p.safetensors", bad)
    assert not list(tmp_path.iterdir())
    save_file({"first": bad.first.reshape(-1).contiguous(), "last": bad.last.reshape(-1).contiguous()},
              str(tmp_path / "nan.safetensors"), metadata={"f2d": json.dumps({"format": "f2d-identity"})})
    with pytest.raises(IdentityFileError, match="'first' tensor: 1 of 768 values are NaN") as e:
        load_identity(tmp_path / "nan.safetensors")
    assert "Make it again" in str(e.value)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, bytes(range(256)) * 4], ids=["empty", "short", "garbage"])
def test_broken_identity_files_say_make_it_again_not_download(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(IdentityFileError) as e:
        load_identity(path)
    msg = str(e.value)
    assert str(path) in msg and "Make it again" in msg and "download" not in msg.lower()


@pytest.fixture(scope="module")
def encoder(weight_files):
    return IdentityEncoder.from_files(weight_files["msid", "pt"], weight_files["mapping", "pt"])


@pytest.fixture(scope="module")
def photos(fixtures):
    photo = np.asarray(Image.open(fixtures / "astronaut.png").convert("RGB"))
    return [photo, photo[:, ::-1].copy(), photo[::2, ::2].copy()] * 3  # 9 photos


def test_chunked_encoding_equals_one_pass_and_reports_progress(encoder, detector, photos):
    calls = []
    chunked = encode_photos(encoder, detector, photos, chunk=4, progress=lambda d, t: calls.append((d, t)))
    whole = encode_photos(encoder, detector, photos, chunk=len(photos))
    assert torch.allclose(chunked.vectors, whole.vectors, atol=1e-5)
    n = len(photos)
    encoding = [c for c in calls if c[1] == 2 * n and c[0] >= n]
    assert [d for d, _ in calls[:n]] == list(range(n))  # before each photo's detection
    assert [d for d, _ in encoding] == [n, n + 4, n + 8, 2 * n]  # before each chunk of 4, then done


def test_progress_callback_stops_the_encoding_between_chunks(encoder, detector, photos):
    class Stop(Exception):
        pass

    n, seen = len(photos), []

    def progress(done, total):
        seen.append(done)
        if done == n + 4:  # the host's interrupt, after the first chunk
            raise Stop

    with pytest.raises(Stop):
        encode_photos(encoder, detector, photos, chunk=4, progress=progress)
    assert seen[-2:] == [n, n + 4]


def test_photo_too_small_for_a_face_is_named(encoder, detector, photos):
    tiny = np.zeros((16, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="image 1: 20x16 px is too small to find a face in") as e:
        encode_photos(encoder, detector, [photos[0], tiny])
    assert "skip_faceless" in str(e.value)
    kept = encode_photos(encoder, detector, [photos[0], tiny], skip_faceless=True)
    assert kept.vectors.shape[0] == 1 and kept.faces.skipped == [1]


def test_a_pasted_list_of_expression_numbers_reads_like_the_bare_numbers():
    from f2d.expression import parse_expression

    bare = parse_expression(" ".join(["0.25"] * 64))
    assert torch.equal(parse_expression("[" + ", ".join(["0.25"] * 64) + "]"), bare)

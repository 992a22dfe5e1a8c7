"""The photo route (f2d.identity): one path from photos to tokens that training and inference
share, face="all", the intake report, going on without a face, the detector cache, and an
identity file written before the route was rebuilt."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data

from f2d.detect import DetectorCache, NoFaceError, get_detector
from f2d.identity import (
    IdentityEncoder,
    IdentityTokens,
    align_photos,
    encode_photos,
    load_photos,
    map_to_tokens,
)
from f2d.intake import UNLIKE_RATIO, head_pose, sharpness
from f2d_testkit import REPO, write_input_sensitive_msid

ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def mtcnn():
    return get_detector("mtcnn")


@pytest.fixture(scope="module")
def encoder(weight_files):
    return IdentityEncoder.for_device(weight_files["msid", "safetensors"], weight_files["mapping", "safetensors"],
                                      "cpu", "fp32")


def _phone_photo(path: Path, upright: np.ndarray, orientation: int) -> Path:
    """Stored sideways with the EXIF tag that tells viewers how to turn it upright (as phones do)."""
    im = Image.fromarray(upright)
    stored = im.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored.save(path, quality=95, exif=exif)
    return path


@pytest.mark.parametrize("orientation", [6, 8])
def test_training_and_inference_crop_an_exif_rotated_photo_alike(tmp_path, mtcnn, orientation):
    from f2d.train.data import FaceDataset, prepare

    folder = tmp_path / "photos"
    folder.mkdir()
    upright = data.astronaut()
    path = _phone_photo(folder / "phone.jpg", upright, orientation)
    with Image.open(path) as raw:  # the check can fail: the file itself is stored sideways
        assert raw.size == (upright.shape[0], upright.shape[1]) and raw.getexif()[ORIENTATION] == orientation

    manifest = prepare(folder, tmp_path / "prepared", "a photo of f l", mtcnn)
    training = FaceDataset(manifest, 64)
    inference = align_photos(load_photos([path]), mtcnn)
    assert np.array_equal(training.face(0), inference.crops[0])  # the same crop, bit for bit

    # ... and it is the upright face, as from the upright photo (JPEG costs a few grey levels),
    upright_crop = align_photos([upright], mtcnn).crops[0].astype(int)
    assert np.abs(inference.crops[0].astype(int) - upright_crop).mean() < 6
    # which a sideways read would not give: the same file without the EXIF turn.
    sideways = np.array(Image.open(path).convert("RGB"))
    try:
        sideways_crop = align_photos([sideways], mtcnn).crops[0].astype(int)
        assert np.abs(sideways_crop - upright_crop).mean() > 2 * np.abs(inference.crops[0].astype(int) - upright_crop).mean()
    except NoFaceError:
        pass
    # The training image is read upright too (its mask was drawn on the upright photo).
    sample = training[0]
    assert sample.image.shape == (3, 64, 64)
    assert (sample.mask[0, :32].mean() > 0) and sample.mask.mean() < 0.5


def test_face_all_gives_every_face_in_image_order_then_left_to_right(mtcnn):
    astronaut = data.astronaut()
    pair = np.zeros((512, 1024, 3), np.uint8)
    pair[:, :512] = astronaut
    pair[:, 512:] = astronaut
    one = align_photos([astronaut, pair], mtcnn, face="all")
    assert one.image_indices == [0, 1, 1]
    assert len(one.crops) == len(one.chosen) == len(one.matrices) == 3
    assert one.chosen[1].centre_x < one.chosen[2].centre_x
    assert np.abs(one.crops[1].astype(int) - one.crops[2].astype(int)).mean() < 8  # the same face twice (~40 for two people)
    lines = one.describe()
    assert lines[1].startswith("photo 1: face 0 of 2") and lines[2].startswith("photo 1: face 1 of 2")


def test_head_pose_and_sharpness_say_what_they_measure():
    from f2d.align import ARCFACE_TEMPLATE

    yaw, roll, pitch = head_pose(ARCFACE_TEMPLATE)
    assert max(abs(yaw), abs(roll), abs(pitch)) < 2  # the template is a frontal face
    a = np.radians(20)
    turned = ARCFACE_TEMPLATE @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    assert head_pose(turned)[1] == pytest.approx(20, abs=0.5)  # roll follows the eye line
    nose_right = ARCFACE_TEMPLATE.copy()
    nose_right[2, 0] += 10  # nose tip towards the image's right: the head turned that way
    assert head_pose(nose_right)[0] > 20
    nose_down = ARCFACE_TEMPLATE.copy()
    nose_down[2, 1] += 8
    assert head_pose(nose_down)[2] > 10
    smile = ARCFACE_TEMPLATE.copy()
    smile[3:, 1] -= 6  # a wide smile lifts the mouth corners: the head has not moved
    assert abs(head_pose(smile)[2]) < 2

    crop = np.array(Image.fromarray(data.astronaut()).resize((112, 112)))
    blurred = np.array(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(3)))
    assert sharpness(crop) > 10 * sharpness(blurred)


def _photo(name: str) -> np.ndarray:
    return np.array(Image.open(REPO / "workflows" / name).convert("RGB"))


def test_frontal_real_photos_read_as_frontal(mtcnn):
    # Both look into the camera (one smiling widely): the report must not call them bent or turned.
    for name in ("astronaut.png", "grace_hopper.png"):
        yaw, roll, pitch = head_pose(mtcnn.detect(_photo(name))[0].points)
        assert abs(pitch) < 8 and abs(yaw) < 10, (name, yaw, pitch)


@pytest.fixture(scope="module")
def photo_sensitive_encoder(weight_files, tmp_path_factory):
    """Formula vectors barely depend on the photo (see write_input_sensitive_msid)."""
    msid = write_input_sensitive_msid(tmp_path_factory.mktemp("msid") / "msid.safetensors")
    return IdentityEncoder.for_device(msid, weight_files["mapping", "safetensors"], "cpu", "fp32")


def test_intake_reports_every_photo_and_flags_another_person(photo_sensitive_encoder, mtcnn, weight_files):
    encoder = photo_sensitive_encoder
    astronaut = data.astronaut()
    same = [astronaut, _photo("astronaut_closeup.png"), np.array(Image.fromarray(astronaut).resize((300, 300))),
            astronaut[:, ::-1].copy()]
    alone = encode_photos(encoder, mtcnn, same)
    assert not any(r.unlike for r in alone.report) and len(alone.vectors) == 4
    # Asked to leave out and nothing to leave out: it says it looked.
    assert "leave_out_unlike: no photo is unlike the others; all 4 kept" in \
        encode_photos(encoder, mtcnn, same, leave_out_unlike=True).describe()
    assert "leave_out_unlike: needs 3 or more faces to compare; all 2 kept" in \
        encode_photos(encoder, mtcnn, same[:2], leave_out_unlike=True).describe()

    photos = same + [_photo("grace_hopper.png")]  # another person
    flagged = encode_photos(encoder, mtcnn, photos)
    assert [r.unlike for r in flagged.report] == [False, False, False, False, True]
    assert flagged.report[4].distance >= UNLIKE_RATIO * float(np.median([r.distance for r in flagged.report[:4]]))
    assert len(flagged.vectors) == 5  # flagged, still used: the user decides
    lines = flagged.describe()
    report = [line for line in lines if line.startswith("  eyes ")]
    assert len(report) == 5 and all("sharpness" in line and "yaw" in line and "pitch" in line for line in report)
    assert "UNLIKE THE OTHERS" in report[4] and "leave_out_unlike" in "\n".join(lines)
    assert lines[-1].startswith("detector: mtcnn")

    # Nearly one vector for every photo (the test weights): nobody is unlike the others, in any
    # precision, although the ratio between such tiny distances can reach 8x.
    for precision in ("fp32", "bf16"):
        same_ish = IdentityEncoder.for_device(weight_files["msid", "safetensors"], weight_files["mapping", "safetensors"],
                                              "cpu", precision)
        assert not any(r.unlike for r in encode_photos(same_ish, mtcnn, photos).report), precision

    left_out = encode_photos(encoder, mtcnn, photos, leave_out_unlike=True)
    assert len(left_out.vectors) == 4 and left_out.report[4].left_out
    torch.testing.assert_close(left_out.mean, alone.mean)
    assert any("left out 1 photo(s) unlike the others: 4" in line for line in left_out.describe())


def test_no_face_anywhere_goes_on_only_when_asked(encoder, mtcnn):
    faceless = [data.coffee(), data.chelsea()]
    with pytest.raises(NoFaceError, match="image 0: no face found"):
        encode_photos(encoder, mtcnn, faceless)
    nothing = encode_photos(encoder, mtcnn, faceless, allow_no_face=True)
    assert nothing.is_empty and nothing.mean is None
    assert any("NO IDENTITY" in line and "'a person'" in line for line in nothing.describe())
    tokens = map_to_tokens(encoder, nothing)
    assert tokens.is_empty and tokens.identity is None
    # Some photos with a face, some without: that is still skip_faceless's choice.
    with pytest.raises(NoFaceError, match="image 1: no face found.*skip_faceless"):
        encode_photos(encoder, mtcnn, [data.astronaut(), data.coffee()], allow_no_face=True)


def test_tokens_carry_their_provenance(encoder, mtcnn):
    identity = encode_photos(encoder, mtcnn, [data.astronaut()])
    tokens = map_to_tokens(encoder, identity, info={"msid": "msid.pt"})
    assert tokens.first.shape == tokens.last.shape == (1, 768)
    torch.testing.assert_close(tokens.identity, identity.mean)
    assert tokens.info == {"photos": 1, "expression": "unconditional", "msid": "msid.pt"}
    direct = encoder.tokens(identity.mean)
    torch.testing.assert_close(tokens.first, direct.first)


def test_identity_file_written_before_the_route_still_loads(tmp_path):
    from f2d.identity_file import load_identity, save_identity

    old = REPO / "tests" / "data" / "identity_before_i19.safetensors"  # written by the code before issue 19
    tokens, identity, meta = load_identity(old)
    g = torch.Generator().manual_seed(19)
    first, last, vector = torch.randn(1, 768, generator=g), torch.randn(1, 768, generator=g), torch.randn(1, 1536, generator=g)
    assert torch.equal(tokens.first, first) and torch.equal(tokens.last, last) and torch.equal(identity, vector)
    assert isinstance(tokens, IdentityTokens) and torch.equal(tokens.identity, vector)
    assert meta["photos"] == 2 and meta["format"] == "f2d-identity" and meta["version"] == 1
    # Written again by today's code: the same bytes (the format did not change).
    again = save_identity(tmp_path / "again.safetensors", tokens, identity,
                          {k: v for k, v in meta.items() if k not in ("format", "version")})
    assert again.read_bytes() == old.read_bytes()


def test_detector_cache_builds_once_per_configuration_and_closes_what_it_drops():
    built = []

    def make(backend, **config):
        det = get_detector(backend, **config)
        det.closed = 0
        det.close = lambda: setattr(det, "closed", det.closed + 1)
        built.append(det)
        return det

    cache = DetectorCache(make)
    key, a, fresh = cache.acquire("mtcnn")
    cache.release(a)
    key2, b, again = cache.acquire("mtcnn")
    assert fresh and not again and a is b and key == key2 and len(built) == 1
    _, c, _ = cache.acquire("mtcnn", device="cpu")  # another configuration: another detector
    assert c is not a and len(cache) == 2
    # Dropped while in use (the host unloads in the middle of a node): closed once released.
    cache.drop(key)
    assert a.closed == 0
    cache.release(a)
    assert a.closed == 1
    cache.release(c)
    cache.close_all()
    assert c.closed == 1 and len(cache) == 0
    _, d, fresh = cache.acquire("mtcnn")
    assert fresh and d is not a  # built anew after the drop

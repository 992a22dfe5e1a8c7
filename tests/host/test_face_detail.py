"""F2D Face Detail in-process on ComfyUI's own objects: the tiny SD1.x checkpoint, formula MSID
weights and real faces (the astronaut and the Grace Hopper photos, side by side).

What a user checks: each person lands on their own face whatever the order, nothing outside the
masks changes, images without (big enough) faces come back as they were, a batch keeps its
order, progress is reported and Cancel stops the pass at once. The likeness gain itself needs
the official weights and is not measured here."""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from f2d_testkit import REPO, tame_encoder_checkpoint, write_amplified_mapping

pytestmark = pytest.mark.host

SIDE = 320  # each photo's size in the composed pair: eyes ~25 px apart, found by every detector
GUIDE = 64  # the tiny UNet samples a 64 px crop (8x8 latent) in well under a second
STEPS = 2


def _photo(name: str) -> np.ndarray:
    return np.array(Image.open(REPO / "workflows" / name).convert("RGB").resize((SIDE, SIDE), Image.BICUBIC))


def _batch(*arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).float() / 255


@pytest.fixture(scope="module")
def host(f2d_nodes, host_base):
    import comfy.sd

    ckpt = tame_encoder_checkpoint(host_base / "tiny_sd15_tame_encoder.safetensors", host_base / "tiny_sd15.safetensors")
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clipvision=False)[:3]
    astronaut, hopper = _photo("astronaut.png"), _photo("grace_hopper.png")
    ab = np.concatenate([astronaut, hopper], 1)  # A left, B right
    ba = np.concatenate([hopper, astronaut], 1)
    # The people, encoded from those same faces (F2D Encode Identity picks face 0 / 1 from the left).
    formula = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    identities = [f2d_nodes.F2DEncodeIdentity.execute(formula, _batch(ab), "auto", face, False).args[0]
                  for face in ("0", "1")]
    mapping = host_base / "models" / "face2diffusion" / "mapping_by_person.pt"
    write_amplified_mapping(mapping, torch.cat([i.mean for i in identities]).mean(0))
    f2d = f2d_nodes.F2DLoadMSID.execute("msid.pt", mapping.name).args[0]
    people = [f2d_nodes.F2DExpressionGuidance.execute(f2d, i, 1.0).args[0] for i in identities]
    return dict(nodes=f2d_nodes, model=model, clip=clip, vae=vae, f2d=f2d, ab=ab, ba=ba, people=people)


def detail(h, images, people, **kw):
    settings = dict(text="a close-up photo of f l", negative="blurry", seed=3, steps=STEPS, cfg=7.0,
                    sampler_name="euler", scheduler="normal", denoise=0.5, guide_size=GUIDE, context=2.0,
                    feather=0.3, max_faces=4, min_face_size=32, faces="all", extra_faces="keep", detector="auto",
                    identifier="f l")
    settings.update(kw)
    more = {f"id_tokens_{i}": p for i, p in enumerate(people[1:], 2)}
    out = h["nodes"].F2DFaceDetail.execute(images, h["model"], h["clip"], h["vae"], h["f2d"], people[0],
                                           **settings, **more)
    images_out, masks, crops = out.args
    return images_out, masks, crops, out.ui["f2d_faces"]


@contextmanager
def progress_hook(hook):
    import comfy.model_management as mm
    import comfy.utils

    before = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(before)
        mm.interrupt_current_processing(False)


def _left(x):
    return x[:, :SIDE]


def _right(x):
    return x[:, SIDE:]


def test_each_person_gets_their_own_face_in_a_batch_of_three(host):
    """A batch [A|B, a photo without a face, B|A] with both people: each face gets its own person
    whatever the order, the faceless image passes through, nothing outside the masks changes,
    the batch keeps its order, and progress runs over every face's steps."""
    from skimage import data

    a, b = host["people"]
    coffee = np.array(Image.fromarray(data.coffee()).resize((2 * SIDE, SIDE)))
    batch = _batch(host["ab"], coffee, host["ba"])
    seen = []
    with progress_hook(lambda value, total, preview, node_id=None: seen.append((value, total))):
        out, masks, crops, notes = detail(host, batch, [a, b])
    text = "\n".join(notes)
    for line in ("image 0 face 0 -> person 1 ", "image 0 face 1 -> person 2 ", "image 1: no face found, passed "
                 "through unchanged", "image 2 face 0 -> person 2 ", "image 2 face 1 -> person 1 "):
        assert line in text, notes
    assert out.shape == batch.shape and masks.shape == (3, SIDE, 2 * SIDE) and crops.shape == (4, GUIDE, GUIDE, 3)
    # Nothing lost: outside the masks (and the whole faceless image) bit for bit the input.
    outside = masks == 0
    assert torch.equal(out[outside], batch[outside]) and masks[1].max() == 0 and torch.equal(out[1], batch[1])
    inside = masks > 0.9
    assert inside.sum() > 4 * 500 and (out[inside] - batch[inside]).abs().mean() > 0.02  # four faces re-done
    # Each face is exactly what its own person alone gives there (same crops, seeds and batch
    # order; the faces' crops do not overlap), and the two people give different faces.
    alone = {k: detail(host, batch, [p])[0] for k, p in ((1, a), (2, b))}
    assert torch.equal(_left(out[0]), _left(alone[1][0])) and torch.equal(_right(out[0]), _right(alone[2][0]))
    assert torch.equal(_left(out[2]), _left(alone[2][2])) and torch.equal(_right(out[2]), _right(alone[1][2]))
    assert not torch.equal(_left(alone[1][0]), _left(alone[2][0]))
    # Progress: per photo while finding faces, then every sampling step of every face, to the end.
    sampling = [v for v, t in seen if t == 4 * STEPS]
    assert sampling == sorted(sampling) and sampling[-1] == 4 * STEPS and len(set(sampling)) == 4 * STEPS + 1
    finding = [v for v, t in seen if t == 3]
    assert finding == sorted(finding) and set(finding) == {1, 2, 3}


def test_faces_under_the_minimum_size_pass_through(host):
    batch = _batch(host["ab"])
    out, masks, _, notes = detail(host, batch, host["people"], min_face_size=1000)
    assert torch.equal(out, batch) and masks.max() == 0
    assert sum("too small (under min_face_size 1000 px), kept as it was" in n for n in notes) == 2


def test_several_people_need_their_identity_vectors(host):
    from dataclasses import replace

    a, b = host["people"]
    with pytest.raises(ValueError, match="id_tokens_2: no MSID identity vector.*F2D Save Identity"):
        detail(host, _batch(host["ab"]), [a, replace(b, identity=None)])


def test_cancel_stops_the_pass_within_the_step_under_way(host):
    import comfy.model_management as mm

    steps = 6
    seen, state = [], {}

    def hook(value, total, preview, node_id=None):
        seen.append((value, total))
        if total == 2 * steps and value == steps + 2 and "at" not in state:  # the second face, step 2
            state["at"], state["index"] = time.monotonic(), len(seen)
            mm.interrupt_current_processing()

    with progress_hook(hook), pytest.raises(mm.InterruptProcessingException):
        detail(host, _batch(host["ab"]), host["people"], steps=steps, seed=12)
    stopped = time.monotonic() - state["at"]
    after = [v for v, t in seen[state["index"]:] if t == 2 * steps]
    assert all(v <= steps + 3 for v in after), after  # at most the step under way finishes
    print(f"stopped {stopped:.2f} s after Cancel")


@pytest.mark.diffusers
def test_cli_generate_detail_on_the_tiny_diffusers_pipeline(tmp_path_factory, weight_files, fixtures):
    """`generate --detail` runs the same pass (f2d/detail.py) on diffusers. The tiny pipeline
    draws no face, so the detail pass is checked on the photo itself through the library entry
    the CLI uses, and the CLI run must say what it did."""
    import subprocess
    import sys

    from f2d_testkit import build_tiny_diffusers_sd15

    pipeline = build_tiny_diffusers_sd15(tmp_path_factory.mktemp("tiny_sd15_detail") / "pipeline")
    out = tmp_path_factory.mktemp("cli_detail") / "x.png"
    r = subprocess.run([sys.executable, "-m", "f2d", "generate", "-i", str(fixtures / "astronaut.png"), "-p",
                        "a photo of f l", "--base", str(pipeline), "--msid", str(weight_files["msid", "pt"]),
                        "--mapping", str(weight_files["mapping", "pt"]), "-o", str(out), "--steps", "1",
                        "--height", "64", "--width", "64", "-q", "--detail", "--detail-steps", "2",
                        "--detail-denoise", "0.5"], capture_output=True, text=True, cwd=REPO / "tests", timeout=600)
    assert r.returncode == 0, r.stderr
    assert "detail: image 0: no face found, passed through unchanged" in r.stderr


@pytest.mark.diffusers
def test_detail_on_diffusers_redoes_the_face_and_keeps_everything_else(weight_files, fixtures):
    """The CLI's pass on a real photo: the same geometry and notes as the node, diffusers' sampler."""
    from f2d_testkit import formula_transformers_clip, tiny_diffusers_sd15

    from f2d.detail import DetailSettings
    from f2d.detect import get_detector
    from f2d.generate import detail_images
    from f2d.identity import IdentityEncoder

    pipe = tiny_diffusers_sd15(formula_transformers_clip())
    photo = Image.open(fixtures / "astronaut.png").convert("RGB")
    encoder = IdentityEncoder.from_files(weight_files["msid", "pt"], weight_files["mapping", "pt"])
    features = encoder.features(np.asarray(photo.resize((112, 112)))[None])
    tokens = encoder.tokens(features)
    detector = get_detector("mtcnn")
    out, notes = detail_images(pipe, [photo], tokens, features, detector, encoder, "a close-up photo of f l",
                               steps=2, denoise=0.5, settings=DetailSettings(guide_size=GUIDE), progress=False)
    before, after = np.asarray(photo), np.asarray(out[0])
    assert after.shape == before.shape
    assert "image 0 face 0 -> person 1 (similarity " in notes[0]
    changed = np.any(after != before, axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 1000  # the face was redrawn
    # ... and nothing else: every changed pixel lies in the face's neighbourhood (box from the detector).
    box = detector.detect(before)[0].box
    side = max(box[2] - box[0], box[3] - box[1])
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    assert np.abs(xs - cx).max() <= side and np.abs(ys - cy).max() <= side


def test_a_prompt_without_the_identifier_stops_before_any_face_is_found(host):
    with pytest.raises(ValueError, match="'f l'") as e:  # the pack's own f2d.tokens.IdentifierError
        detail(host, _batch(host["ab"]), host["people"], text="a close-up photo of a face")
    assert type(e.value).__name__ == "IdentifierError" and "a close-up photo of a face" in str(e.value)

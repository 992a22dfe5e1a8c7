"""The pack's nodes called in-process on ComfyUI's own objects, with the reference weights."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from f2d_testkit import formula_clip_state_dict

pytestmark = pytest.mark.host
ATOL = 1e-4


@pytest.fixture(scope="module")
def clip_state_dict(f2d_nodes):
    return formula_clip_state_dict()


def load_clip(state_dict, dtype):
    import comfy.sd

    options = {"dtype": dtype} if dtype is not None else {}  # None: ComfyUI's default (fp16 on CPU)
    return comfy.sd.load_text_encoder_state_dicts([dict(state_dict)], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION,
                                                  model_options=options)


@pytest.fixture(scope="module")
def clip32(clip_state_dict):
    return load_clip(clip_state_dict, torch.float32)


@pytest.fixture(scope="module")
def clip16(clip_state_dict):
    return load_clip(clip_state_dict, None)


@pytest.fixture(scope="module")
def reference_tokens(f2d_nodes, reference):
    from f2d.identity import IdentityTokens

    return IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])


@pytest.fixture(scope="module")
def cases(fixtures):
    return json.loads((fixtures / "clip_cases.json").read_text())


def encode(f2d_nodes, clip, id_tokens, text, start=0.0, end=1.0, identifier="f l"):
    out = f2d_nodes.F2DTextEncode.execute(clip, id_tokens, text, identifier, start, end)
    return out.args[0]


def identifier_ids(clip, identifier="f l"):
    toks = clip.tokenize(identifier, return_word_ids=True)["l"][0]
    return tuple(t[0] for t in toks if t[2] > 0), {t[0] for t in toks if t[2] == 0}


def plain(clip, text):
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


@pytest.mark.parametrize("case", ["eiffel", "smile"])
def test_conditioning_matches_official_in_fp32(f2d_nodes, clip32, reference_tokens, reference, cases, case):
    prompt = cases[case]["prompt"]
    ids = [t[0] for t in clip32.tokenize(prompt)["l"][0]]
    assert ids == reference[f"clip.{case}.input_ids"].tolist()
    cond = encode(f2d_nodes, clip32, reference_tokens, prompt)
    assert len(cond) == 1
    err = (cond[0][0] - reference[f"clip.{case}.cond"]).abs().max().item()
    assert err <= ATOL
    # Pooled output: ComfyUI takes SD1.x's at the first end-of-text token (the final-norm row,
    # unprojected), which the identity tokens leave in place: it sees the person through causal
    # attention. SD1.x's UNet does not read it; best-of-N's text term and other packs do.
    eos = ids.index(49407)
    assert 0 < eos < 76 and eos > max(i for i, t in enumerate(ids) if t in identifier_ids(clip32)[0])
    pooled = cond[0][1]["pooled_output"].float()
    assert pooled.shape == (1, 768)
    assert (pooled - cond[0][0][:, eos].float()).abs().max().item() <= ATOL
    assert (pooled - cond[0][0][:, eos + 1].float()).abs().max().item() > 1e-2  # not a later end/pad row
    assert (pooled - reference[f"clip.{case}.cond"][:, eos]).abs().max().item() <= ATOL  # the official row


@pytest.mark.parametrize("case", ["eiffel", "smile"])
def test_conditioning_in_default_fp16_deviates_only_as_fp16_does(f2d_nodes, clip16, reference_tokens, reference,
                                                                  cases, case):
    prompt = cases[case]["prompt"]
    err_plain = (plain(clip16, prompt) - reference[f"clip.{case}.cond_without_identity"]).abs().max().item()
    err_id = (encode(f2d_nodes, clip16, reference_tokens, prompt)[0][0] - reference[f"clip.{case}.cond"]).abs().max().item()
    # Measured: 3.8e-3 vs 3.8e-3 (eiffel), 4.9e-3 vs 5.0e-3 (smile).
    assert 0 < err_plain < 1e-2
    assert err_id <= 1.5 * err_plain


def test_tokens_inserted_as_plain_word_embeddings_would_be_wrong(f2d_nodes, clip32, reference_tokens, reference, cases):
    """Why the position embedding is compensated: without it, the result is far off."""
    from f2d.tokens import find_identifier, inject

    prompt = cases["eiffel"]["prompt"]
    tokens = clip32.tokenize(prompt, return_word_ids=True)
    pos = find_identifier(tokens["l"], *identifier_ids(clip32))
    assert len(pos) == 1
    t = reference_tokens
    naive = inject(tokens["l"], [(pos[0].first, t.first[0]), (pos[0].last, t.last[0])])
    cond = clip32.encode_from_tokens_scheduled({"l": naive})[0][0]
    assert (cond - reference["clip.eiffel.cond"]).abs().max().item() > 100 * ATOL


def test_identifier_in_the_second_chunk_of_a_long_prompt(f2d_nodes, clip32, reference_tokens):
    filler = " ".join(["photo"] * 75)  # exactly fills the first 77-token chunk
    long = encode(f2d_nodes, clip32, reference_tokens, f"{filler} f l smiling")[0][0]
    short = encode(f2d_nodes, clip32, reference_tokens, "f l smiling")[0][0]
    assert long.shape == (1, 154, 768)
    assert (long[:, :77] - plain(clip32, filler)).abs().max().item() <= ATOL  # first chunk untouched
    assert (long[:, 77:] - short).abs().max().item() <= ATOL  # positions are counted within the chunk


def test_prompt_weighting_and_punctuation(f2d_nodes, clip32, reference_tokens):
    base = encode(f2d_nodes, clip32, reference_tokens, "a photo of f l, on a beach")[0][0]
    weighted = encode(f2d_nodes, clip32, reference_tokens, "a photo of f l, on a (beach:1.3)")[0][0]
    on_id = encode(f2d_nodes, clip32, reference_tokens, "a photo of (f l:1.2), on a beach")[0][0]
    no_id = plain(clip32, "a photo of f l, on a beach")
    assert (base - no_id).abs().max().item() > 1e-2  # the identity is in
    assert (weighted - base).abs().max().item() > 1e-3  # the weight on another word still acts
    assert (on_id - base).abs().max().item() > 1e-3  # and a weight on the identifier too


def test_identifier_twice_puts_the_person_at_both_places(f2d_nodes, clip32, reference_tokens):
    from f2d.tokens import find_identifier

    text = "f l talking to f l in a mirror"
    tokens = clip32.tokenize(text, return_word_ids=True)
    assert len(find_identifier(tokens["l"], *identifier_ids(clip32))) == 2
    once = encode(f2d_nodes, clip32, reference_tokens, "f l talking to a person in a mirror")[0][0]
    twice = encode(f2d_nodes, clip32, reference_tokens, text)[0][0]
    # Causal attention: rows before the second occurrence are the same as with one occurrence.
    assert (twice[:, :5] - once[:, :5]).abs().max().item() <= ATOL
    assert (twice[:, 5:8] - once[:, 5:8]).abs().max().item() > 1e-2


def test_missing_identifier_fails_loudly(f2d_nodes, clip32, reference_tokens):
    # The pack's own copy of f2d raises (ComfyUI imports the pack as a package): match by name.
    with pytest.raises(ValueError) as e:
        encode(f2d_nodes, clip32, reference_tokens, "a photo of a man on a beach")
    assert type(e.value).__name__ == "IdentifierError"
    msg = str(e.value)
    assert "'f l'" in msg and '"a photo of a man on a beach"' in msg
    with pytest.raises(ValueError, match="'flower'"):  # a word containing f and l is not the identifier
        encode(f2d_nodes, clip32, reference_tokens, "a flower", identifier="flower")


def test_prompt_weight_bound_is_read_once_per_text_encoder_weight(f2d_nodes, clip_state_dict, reference_tokens):
    # Read from the weights once (on a GPU every read waits for queued work), again when they change.
    import importlib

    cond = importlib.import_module(f2d_nodes.__name__ + ".conditioning")
    clip = load_clip(clip_state_dict, torch.float32)  # its own copy: this test changes a weight
    norm = next(m for n, m in cond._stream_encoder(clip, "l").named_modules() if n.endswith("final_layer_norm"))
    encode(f2d_nodes, clip, reference_tokens, "f l at the beach")
    hit = cond._BOUNDS[id(norm)]
    encode(f2d_nodes, clip, reference_tokens, "(f l:1.3) in the rain")
    assert cond._BOUNDS[id(norm)] is hit
    with torch.no_grad():
        norm.weight.mul_(2)
    encode(f2d_nodes, clip, reference_tokens, "f l at the beach")
    assert cond._BOUNDS[id(norm)] is not hit
    assert cond._BOUNDS[id(norm)][2] == pytest.approx(2 * hit[2] - norm.bias.abs().max().item(), rel=1e-6)
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        cond._checked_conditioning(clip, [[torch.tensor([[1.0, float("nan")]]), {}]], "f l")


def test_identity_window_uses_the_class_prompt_outside_it(f2d_nodes, clip32, reference_tokens):
    cond = encode(f2d_nodes, clip32, reference_tokens, "a photo of f l smiling", 0.2, 0.9)
    windows = sorted((c[1]["start_percent"], c[1]["end_percent"]) for c in cond)
    assert windows == [(0.0, 0.2), (0.2, 0.9), (0.9, 1.0)]
    by_window = {(c[1]["start_percent"], c[1]["end_percent"]): c[0] for c in cond}
    person = plain(clip32, "a photo of a person smiling")
    assert (by_window[(0.0, 0.2)] - person).abs().max().item() <= ATOL
    assert (by_window[(0.2, 0.9)] - encode(f2d_nodes, clip32, reference_tokens, "a photo of f l smiling")[0][0]).abs().max() <= ATOL
    with pytest.raises(ValueError, match=r"identity_start \(0.5\) must be below identity_end \(0.5\)"):
        encode(f2d_nodes, clip32, reference_tokens, "a photo of f l smiling", 0.5, 0.5)


def test_validation_reports_each_problem_once_naming_input_and_value(f2d_nodes):
    """ComfyUI repeats a validate_inputs message once per input the method takes: each node's
    method takes only the inputs its messages are about."""
    import inspect

    text_encode, sampler = f2d_nodes.F2DTextEncode, f2d_nodes.F2DSampler
    assert list(inspect.signature(text_encode.validate_inputs).parameters) == ["identifier"]
    assert "two words" in text_encode.validate_inputs("sks")
    assert text_encode.validate_inputs("f l") is True and text_encode.validate_inputs(None) is True
    assert list(inspect.signature(sampler.validate_inputs).parameters) == ["sampler_name"]
    assert sampler.validate_inputs("euler_ancestral") is True
    msg = sampler.validate_inputs("euler_fancy")
    assert msg.startswith("sampler_name: 'euler_fancy' is not one of the choices") and "pick one" in msg
    assert sampler.validate_inputs(None) is True  # fed by a link: checked when it arrives
    # The scheduler is checked as the run starts, before anything is encoded or sampled.
    with pytest.raises(ValueError, match="scheduler: 'sometimes' is not one of the choices"):
        sampler.execute(None, None, None, "a photo of f l", "", {}, 0, 1, 7.0, "euler", "sometimes", 1.0,
                        "f l", 0.0, 1.0)


def test_sampler_refuses_a_bad_identifier_once_at_run_time(f2d_nodes, clip32, reference_tokens):
    with pytest.raises(ValueError) as e:
        f2d_nodes.F2DSampler.execute(None, clip32, reference_tokens, "a photo of sks", "", {}, 0, 1, 7.0, "euler",
                                     "normal", 1.0, "sks", 0.0, 1.0)
    assert type(e.value).__name__ == "IdentifierError" and str(e.value).count("two words") == 1


@pytest.mark.parametrize("kind", ["sdxl", "sd2"])
def test_sd2_and_sdxl_clips_are_refused_with_the_fix(f2d_nodes, reference_tokens, kind):
    """The host's own SDXL (CLIP-G + CLIP-L) and SD2 (OpenCLIP-H) text encoder classes; no weights
    are needed: the refusal comes from their token streams, before anything is encoded."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.text_encoders.sd2_clip as sd2_clip
    from comfy.supported_models_base import ClipTarget

    target = {"sdxl": ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel),
              "sd2": ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)}[kind]
    clip = comfy.sd.CLIP(target=target, model_options={"dtype": torch.float16})
    with pytest.raises(ValueError) as e:
        encode(f2d_nodes, clip, reference_tokens, "a photo of f l")
    assert type(e.value).__name__ == "IdentifierError"
    msg = str(e.value)
    assert "SD1.x" in msg and "load an sd1.x checkpoint" in msg.lower()
    assert {"sdxl": "'g', 'l'", "sd2": "'h'"}[kind] in msg


def test_load_encode_and_expression_nodes(f2d_nodes, host_base, reference, fixtures):
    from PIL import Image

    from f2d.identity import IdentityEncoder, IdentityVectors

    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    photo = torch.from_numpy(np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))).float()[None] / 255
    identity, crops = f2d_nodes.F2DEncodeIdentity.execute(model, photo.repeat(2, 1, 1, 1), "mediapipe", "largest", False).args
    assert crops.shape == (2, 112, 112, 3) and 0 <= crops.min() and crops.max() <= 1
    assert identity.vectors.shape == (2, 1536)
    weights = host_base / "models/face2diffusion/msid.pt", host_base / "models/face2diffusion/mapping.pt"
    crop = (crops[:1] * 255).round().to(torch.uint8).numpy()
    # The node runs the library's policy for this device (bf16 attention/MLPs on CPUs with AVX512-BF16).
    assert (identity.mean - IdentityEncoder.for_device(*weights, "cpu").features(crop)).abs().max() <= ATOL
    assert (identity.mean - IdentityEncoder.from_files(*weights).features(crop)).abs().max() <= 0.05

    # Unconditional expression (the paper's inference) and an explicit one, on the fixture's identity.
    fixture_identity = IdentityVectors(reference["msid.features"], identity.faces)
    null = f2d_nodes.F2DExpressionGuidance.execute(model, fixture_identity, 1.0).args[0]
    assert (null.first - reference["mapping.first.null_exp"]).abs().max() <= ATOL
    values = ", ".join(f"{v:.9g}" for v in reference["mapping.exp"][0].tolist())
    exp = f2d_nodes.F2DExpressionVector.execute(values).args[0]
    full = f2d_nodes.F2DExpressionGuidance.execute(model, fixture_identity, 1.0, exp).args[0]
    assert (full.first - reference["mapping.first.with_exp"]).abs().max() <= ATOL
    assert (full.last - reference["mapping.last.with_exp"]).abs().max() <= ATOL
    off = f2d_nodes.F2DExpressionGuidance.execute(model, fixture_identity, 0.0, exp).args[0]
    assert (off.first - reference["mapping.first.null_exp"]).abs().max() <= ATOL
    assert "exactly 64 numbers, got 3" in f2d_nodes.F2DExpressionVector.validate_inputs("1, 2, 3")


def test_encode_identity_without_a_face_names_the_photo(f2d_nodes):
    from skimage import data

    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    coffee = torch.from_numpy(data.coffee()).float()[None] / 255
    with pytest.raises(ValueError, match="image 0: no face found") as e:
        f2d_nodes.F2DEncodeIdentity.execute(model, coffee, "mediapipe", "largest", False)
    assert type(e.value).__name__ == "NoFaceError"


def test_save_and_load_identity(f2d_nodes, reference_tokens, reference):
    folder = f2d_nodes.paths.identities_folder()
    saved = f2d_nodes.F2DSaveIdentity.execute(reference_tokens, "alice")
    assert saved.ui["text"] == [f"saved alice.safetensors in {folder}"]
    again = f2d_nodes.F2DSaveIdentity.execute(reference_tokens, "alice")
    assert again.ui["text"] == [f"already saved: this identity is alice.safetensors in {folder}"]
    other = type(reference_tokens)(reference_tokens.first + 1, reference_tokens.last)
    assert f2d_nodes.F2DSaveIdentity.execute(other, "alice").ui["text"] == [
        f"saved alice_1.safetensors in {folder}"]  # never overwrites
    assert "alice.safetensors" in f2d_nodes.paths.identity_files()
    assert "alice.safetensors" not in f2d_nodes.paths.model_files()  # not offered as weights
    loaded = f2d_nodes.F2DLoadIdentity.execute("alice.safetensors").args[0]
    assert torch.equal(loaded.first, reference["mapping.first.null_exp"])
    assert torch.equal(loaded.last, reference["mapping.last.null_exp"])
    assert "plain file name" in f2d_nodes.F2DSaveIdentity.validate_inputs("../evil")
    assert "F2D Save Identity" in f2d_nodes.F2DLoadIdentity.validate_inputs("bob.safetensors")


def test_every_node_schema_builds_with_tooltips_and_descriptions(f2d_nodes):
    """Catches API drift in the host's V3 schema (it validates ids, types and options)."""
    ids = []
    for node in f2d_nodes.NODES:
        schema = node.GET_SCHEMA()
        info = node.GET_NODE_INFO_V1()
        ids.append(schema.node_id)
        assert schema.node_id.startswith("F2D") and schema.category == "Face2Diffusion"
        assert schema.description, schema.node_id
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{schema.node_id}.{name} has no tooltip"
    assert len(ids) == len(set(ids))


def test_similarity_and_best_of_n_nodes(f2d_nodes, fixtures):
    from PIL import Image
    from skimage import data

    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    astronaut = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    identity = f2d_nodes.F2DEncodeIdentity.execute(model, torch.from_numpy(astronaut).float()[None] / 255,
                                                   "mediapipe", "largest", False).args[0]
    coffee = np.array(Image.fromarray(data.coffee()).resize((512, 512)))
    batch = torch.from_numpy(np.stack([coffee, astronaut[:, ::-1], astronaut])).float() / 255
    sims, report = f2d_nodes.F2DIdentitySimilarity.execute(model, batch, "mediapipe", identity).args
    assert sims[0] == 0.0 and sims[2] == pytest.approx(1.0, abs=1e-5) and sims[1] < sims[2]
    assert "#0: no face (0)" in report
    assert report.splitlines()[0].startswith("likeness of each image's largest face")  # which face was scored
    images, kept, best_report = f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 2, identity).args
    assert best_report.splitlines()[0] == report.splitlines()[0]
    assert torch.equal(images[0], batch[2]) and torch.equal(images[1], batch[1])
    assert kept == [sims[2], sims[1]]
    # A saved identity carries its vector, so it serves as the reference too.
    saved = f2d_nodes.F2DExpressionGuidance.execute(model, identity, 1.0).args[0]
    same = f2d_nodes.F2DIdentitySimilarity.execute(model, batch, "mediapipe", None, saved).args[0]
    assert same == pytest.approx(sims, abs=1e-6)
    with pytest.raises(ValueError, match="connect a reference"):
        f2d_nodes.F2DIdentitySimilarity.execute(model, batch, "mediapipe")


def test_best_of_n_text_fidelity_term(f2d_nodes, fixtures, clip32):
    """The text term with the real CLIP-L (reference formula weights, through ComfyUI's CLIP API).
    No formula CLIP vision tower exists, so the image side is made from the real text embedding:
    the mirror's embedding is the text's, the photo's its opposite."""
    from PIL import Image

    _, text_embed = clip32.encode_from_tokens(clip32.tokenize("a photo"), return_pooled=True)
    assert text_embed.shape == (1, 768)

    class ClipVisionOfKnownEmbeds:  # ComfyUI's CLIP vision API: encode_image(images)["image_embeds"]
        def __init__(self, embeds):
            self.embeds = embeds

        def encode_image(self, images):
            assert images.shape[0] == self.embeds.shape[0]
            return {"image_embeds": self.embeds}

    vision = ClipVisionOfKnownEmbeds(torch.cat([-text_embed, text_embed]))
    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    astronaut = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    identity = f2d_nodes.F2DEncodeIdentity.execute(model, torch.from_numpy(astronaut).float()[None] / 255,
                                                   "mediapipe", "largest", False).args[0]
    batch = torch.from_numpy(np.stack([astronaut, astronaut[:, ::-1]])).float() / 255
    plain = f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 1, identity).args
    assert torch.equal(plain[0][0], batch[0])  # by likeness: the photo itself
    # The mirror matches the text and the photo does not: with the text term the mirror wins.
    images, scores, report = f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 1, identity, None,
                                                          vision, clip32, "a photo").args
    assert torch.equal(images[0], batch[1]) and "text 1.0000" in report
    # Another text gives another embedding: the mirror no longer matches it perfectly.
    _, other = f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 2, identity, None, vision, clip32,
                                            "a red car at night").args[1:]
    assert "text 1.0000" not in other
    with pytest.raises(ValueError, match="needs all three"):
        f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 1, identity, None, vision, None, "")
    with pytest.raises(ValueError, match="same CLIP model"):
        f2d_nodes.F2DBestOfN.execute(model, batch, "mediapipe", 1, identity, None,
                                     ClipVisionOfKnownEmbeds(torch.eye(3)[:2]), clip32, "a photo")


def test_loader_applies_the_library_precision_policy(f2d_nodes):
    from f2d.precision import precision_for

    encoder = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0].encoder
    assert encoder.precision == precision_for("cpu")  # ComfyUI runs --cpu here
    assert {p.dtype for p in encoder.mapping.parameters()} == {torch.float32}
    assert {p.dtype for p in encoder.msid.norms.parameters()} == {torch.float32}


def test_sampler_gives_what_the_host_ksampler_gives(f2d_nodes, host_base, reference_tokens):
    """F2D Sampler = F2D Text Encode + ComfyUI's own KSampler, latent for latent."""
    import comfy.sd
    import nodes as host_nodes

    from f2d_testkit import build_tiny_sd15_checkpoint

    ckpt = build_tiny_sd15_checkpoint(host_base / "tiny_sd15.safetensors")
    model, clip, _ = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clipvision=False)[:3]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    text = "a photo of f l smiling"
    ours = f2d_nodes.F2DSampler.execute(model, clip, reference_tokens, text, "blurry", latent, 5, 2, 7.0,
                                        "euler_ancestral", "normal", 1.0, "f l", 0.0, 1.0).args[0]
    positive = encode(f2d_nodes, clip, reference_tokens, text)
    negative = host_nodes.CLIPTextEncode().encode(clip, "blurry")[0]
    host = host_nodes.KSampler().sample(model, 5, 2, 7.0, "euler_ancestral", "normal", positive, negative, latent)[0]
    assert ours["samples"].shape == (1, 4, 8, 8)
    assert torch.equal(ours["samples"], host["samples"])
    other = f2d_nodes.F2DSampler.execute(model, clip, reference_tokens, text, "blurry", latent, 6, 2, 7.0,
                                         "euler_ancestral", "normal", 1.0, "f l", 0.0, 1.0).args[0]
    assert not torch.equal(ours["samples"], other["samples"])  # the seed reaches the host's noise

"""F2D Sampler encodes a prompt once: a new seed or sampler setting reuses the conditioning,
anything the encoding depends on (text, identity, identifier, window, a LoRA on the CLIP,
CLIP skip, another CLIP) encodes again, and the latent stays the host KSampler's, bit for bit."""
from __future__ import annotations

import pytest
import torch

from f2d_testkit import build_tiny_lora, build_tiny_sd15_checkpoint

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def sd15(f2d_nodes, host_base):
    import comfy.sd

    ckpt = build_tiny_sd15_checkpoint(host_base / "tiny_sd15.safetensors")
    model, clip = comfy.sd.load_checkpoint_guess_config(str(ckpt), output_vae=True, output_clipvision=False)[:2]
    return model, clip


@pytest.fixture(scope="module")
def id_tokens(f2d_nodes, reference):
    from f2d.identity import IdentityTokens

    return IdentityTokens(reference["mapping.first.null_exp"], reference["mapping.last.null_exp"])


class EncoderCalls:
    """Counts the runs of the CLIP's text transformer (a forward hook on the real module)."""

    def __init__(self, clip):
        self.n = 0
        self.handle = clip.cond_stage_model.clip_l.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


LATENT = {"samples": torch.zeros(1, 4, 8, 8)}
TEXT = "a photo of f l smiling"


def f2d_sampler(f2d_nodes, model, clip, tokens, seed, negative="blurry", text=TEXT, sampler="euler_ancestral",
                steps=2, start=0.0):
    return f2d_nodes.F2DSampler.execute(model, clip, tokens, text, negative, LATENT, seed, steps, 7.0, sampler,
                                        "normal", 1.0, "f l", start, 1.0).args[0]["samples"]


def host_ksampler(f2d_nodes, model, clip, tokens, seed, negative="blurry", sampler="euler_ancestral", steps=2):
    import nodes as host_nodes

    positive = f2d_nodes.F2DTextEncode.execute(clip, tokens, TEXT, "f l", 0.0, 1.0).args[0]
    negative = host_nodes.CLIPTextEncode().encode(clip, negative)[0]
    return host_nodes.KSampler().sample(model, seed, steps, 7.0, sampler, "normal", positive, negative, LATENT)[0]["samples"]


def test_new_seed_and_sampler_settings_do_not_encode_again_and_match_ksampler(f2d_nodes, sd15, id_tokens):
    model, clip = sd15
    f2d_nodes.conditioning.SAMPLER_CONDITIONING.clear()
    with EncoderCalls(clip) as calls:
        first = f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=1)
        assert calls.n == 2  # prompt with the identity, negative
        second = f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=2)
        third = f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=2, sampler="euler", steps=3)
        assert calls.n == 2  # nothing encoded again
    assert not torch.equal(first, second)  # the new seed did reach the noise
    assert torch.equal(second, host_ksampler(f2d_nodes, model, clip, id_tokens, seed=2))
    assert torch.equal(third, host_ksampler(f2d_nodes, model, clip, id_tokens, seed=2, sampler="euler", steps=3))


def test_what_the_encoding_depends_on_encodes_again(f2d_nodes, sd15, id_tokens):
    from f2d.identity import IdentityTokens

    model, clip = sd15
    f2d_nodes.conditioning.SAMPLER_CONDITIONING.clear()
    f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=1)
    other_person = IdentityTokens(id_tokens.first.flip(-1), id_tokens.last)
    # (what changes, calls expected: positive and/or negative)
    with EncoderCalls(clip) as calls:
        f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=1, negative="ugly")
        assert calls.n == 1
        f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=1, text=TEXT + " outdoors")
        assert calls.n == 2
        f2d_sampler(f2d_nodes, model, clip, other_person, seed=1)
        assert calls.n == 3
        f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=1, start=0.3)  # window: identity + class prompt
        assert calls.n == 5


def test_lora_on_the_clip_and_clip_skip_encode_again(f2d_nodes, sd15, id_tokens, host_base):
    import comfy.sd
    import comfy.utils
    import nodes as host_nodes

    model, clip = sd15
    f2d_nodes.conditioning.SAMPLER_CONDITIONING.clear()
    plain = f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=4)
    lora = comfy.utils.load_torch_file(str(build_tiny_lora(host_base / "tiny_lora.safetensors")), safe_load=True)
    # CLIP only (model strength 0), so any change in the latent comes from the text encoding.
    lora_model, lora_clip = comfy.sd.load_lora_for_models(model, clip, lora, 0.0, 1.0)
    skipped = host_nodes.CLIPSetLastLayer().set_last_layer(clip, -2)[0]
    for variant in (lora_clip, skipped):
        with EncoderCalls(variant) as calls:
            out = f2d_sampler(f2d_nodes, model, variant, id_tokens, seed=4)
            assert calls.n == 2
        assert not torch.equal(out, plain)
        assert torch.equal(out, host_ksampler(f2d_nodes, model, variant, id_tokens, seed=4))
    # The plain CLIP's entry is still there and still right.
    with EncoderCalls(clip) as calls:
        assert torch.equal(f2d_sampler(f2d_nodes, model, clip, id_tokens, seed=4), plain)
        assert calls.n == 0


def test_cache_is_bounded_and_skips_clips_with_hooks(f2d_nodes, sd15, id_tokens):
    model, clip = sd15
    cache = f2d_nodes.conditioning.SAMPLER_CONDITIONING
    cache.clear()
    for i in range(cache.size + 3):
        cache.get(clip, ("plain", f"prompt {i}"), lambda: [[torch.zeros(1), {}]])
    assert len(cache._entries) == cache.size
    hooked = clip.clone()
    hooked.apply_hooks_to_conds = object()  # what the host's hook nodes set: encoding depends on hook state
    assert cache.clip_key(hooked) is None
    runs = []
    cache.get(hooked, ("plain", "x"), lambda: runs.append(1))
    cache.get(hooked, ("plain", "x"), lambda: runs.append(1))
    assert len(runs) == 2

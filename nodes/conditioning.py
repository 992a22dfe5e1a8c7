"""Prompt conditioning with the identity, and a sampler that uses it."""
from __future__ import annotations

import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch
from comfy_api.latest import io

from ..f2d.tokens import (
    DEFAULT_IDENTIFIER,
    IdentifierError,
    check_identifier,
    class_prompt,
    find_identifier,
    identifier_ids,
    inject,
    missing_identifier_message,
    stream_vectors,
)
from .types import CATEGORY, F2DIdTokens, F2DIdTokensIO

SD1_KEY = "l"  # SD1.x's only text encoder, CLIP-L


def _position_embedding(clip) -> torch.Tensor:
    """CLIP-L's position table, read (never changed) to put identity tokens in the stream
    exactly where the official code puts them: after the position embedding."""
    try:
        return clip.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight
    except AttributeError:
        raise IdentifierError(
            "Face2Diffusion works with SD1.x checkpoints (SD1.4/1.5 and their fine-tunes), whose text encoder "
            "is CLIP-L; this CLIP is a different model. Load an SD1.x checkpoint."
        ) from None


def identity_tokens_for(clip, text: str, id_tokens: F2DIdTokens, identifier: str) -> dict:
    """ComfyUI's tokens for ``text`` with the identifier words replaced by the identity tokens."""
    identifier = check_identifier(identifier)
    tokens = clip.tokenize(text, return_word_ids=True)
    if set(tokens) != {SD1_KEY}:
        _position_embedding(clip)  # raises the SD1.x message
        raise IdentifierError(f"expected an SD1.x CLIP (one CLIP-L token stream), got streams {sorted(tokens)}")
    ident = clip.tokenize(identifier, return_word_ids=True)[SD1_KEY][0]
    ids = identifier_ids([t[0] for t in ident if t[2] > 0], identifier)
    special = {t[0] for t in ident if t[2] == 0}  # start, end and pad tokens
    positions = find_identifier(tokens[SD1_KEY], ids, special)
    if not positions:
        raise IdentifierError(missing_identifier_message(text, identifier))
    t = id_tokens.tokens
    vectors = stream_vectors(t.first[0], t.last[0], _position_embedding(clip), positions)
    return {SD1_KEY: inject(tokens[SD1_KEY], vectors)}


def encode_identity_prompt(clip, text: str, id_tokens: F2DIdTokens, identifier: str) -> list:
    return clip.encode_from_tokens_scheduled(identity_tokens_for(clip, text, id_tokens, identifier))


def identity_schedule(clip, text: str, id_tokens: F2DIdTokens, identifier: str, start: float, end: float) -> list:
    """Identity prompt between ``start`` and ``end`` (fractions of sampling), the class prompt
    ("a person" for the identifier) elsewhere: delayed subject conditioning."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"identity_start ({start}) must be below identity_end ({end}), both within 0..1")
    with_id = encode_identity_prompt(clip, text, id_tokens, identifier)
    if start == 0.0 and end == 1.0:
        return with_id
    plain = clip.encode_from_tokens_scheduled(clip.tokenize(class_prompt(text, identifier)))
    out = node_helpers.conditioning_set_values(with_id, {"start_percent": start, "end_percent": end})
    if start > 0.0:
        out += node_helpers.conditioning_set_values(plain, {"start_percent": 0.0, "end_percent": start})
    if end < 1.0:
        out += node_helpers.conditioning_set_values(plain, {"start_percent": end, "end_percent": 1.0})
    return out


def _identity_inputs() -> list:
    return [
        io.String.Input("identifier", default=DEFAULT_IDENTIFIER,
                        tooltip="The two words that stand for the person in the prompt (official: 'f l')."),
        io.Float.Input("identity_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of sampling before which the prompt says 'a person' instead of the "
                               "identity: raise it (0.1-0.3) to let the layout follow the text more."),
        io.Float.Input("identity_end", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of sampling after which the identity is dropped again."),
    ]


def _prompt_input(default: str) -> io.String.Input:
    return io.String.Input("text", multiline=True, dynamic_prompts=True, default=default,
                           tooltip="The prompt. Write the identifier (default 'f l') where the person goes, e.g. "
                                   "'a photo of f l smiling on a beach'. Prompt weighting works as usual.")


def _validate_identity_window(identity_start, identity_end, identifier) -> bool | str:
    """Checked before the run; inputs fed by links arrive as None here and are checked at run time."""
    for name, v in (("identity_start", identity_start), ("identity_end", identity_end)):
        if v is not None and not 0.0 <= v <= 1.0:
            return f"{name} must be within 0..1, got {v}"
    if identity_start is not None and identity_end is not None and identity_start >= identity_end:
        return f"identity_start ({identity_start}) must be below identity_end ({identity_end})"
    if identifier is not None:
        try:
            check_identifier(identifier)
        except IdentifierError as e:
            return str(e)
    return True


class F2DTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DTextEncode",
            display_name="F2D Text Encode",
            category=CATEGORY,
            description=("Encodes a prompt with the person in it: the identifier words (default 'f l') are "
                         "replaced by the identity tokens, as the official Face2Diffusion does. The output is "
                         "ordinary CONDITIONING for any sampler, ControlNet or conditioning node."),
            inputs=[io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint."),
                    F2DIdTokensIO.Input("id_tokens", tooltip="From F2D Expression Guidance or F2D Load Identity."),
                    _prompt_input("a photo of f l")] + _identity_inputs(),
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def validate_inputs(cls, identity_start, identity_end, identifier) -> bool | str:
        return _validate_identity_window(identity_start, identity_end, identifier)

    @classmethod
    def execute(cls, clip, id_tokens, text, identifier, identity_start, identity_end) -> io.NodeOutput:
        return io.NodeOutput(identity_schedule(clip, text, id_tokens, identifier, identity_start, identity_end))


class F2DSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DSampler",
            display_name="F2D Sampler",
            category=CATEGORY,
            description=("KSampler with the person built in: encodes the prompt with the identity (and the "
                         "negative prompt plainly) and runs ComfyUI's own sampler, so LoRA-patched models and "
                         "every sampler and scheduler work."),
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x model (after any LoRA loaders)."),
                io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint."),
                F2DIdTokensIO.Input("id_tokens", tooltip="From F2D Expression Guidance or F2D Load Identity."),
                _prompt_input("a photo of f l"),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt (no identity)."),
                io.Latent.Input("latent_image", tooltip="Empty Latent Image (512x512 for SD1.x) or an image to vary."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Noise seed; the same seed and settings give the same image."),
                io.Int.Input("steps", default=30, min=1, max=10000, tooltip="Official default: 30."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Official default: 7."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler_ancestral",
                               tooltip="Official default: Euler ancestral."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule, as in KSampler."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="1 for text-to-image; lower keeps more of the input latent."),
            ] + _identity_inputs(),
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def validate_inputs(cls, identity_start, identity_end, identifier) -> bool | str:
        return _validate_identity_window(identity_start, identity_end, identifier)

    @classmethod
    def execute(cls, model, clip, id_tokens, text, negative, latent_image, seed, steps, cfg, sampler_name,
                scheduler, denoise, identifier, identity_start, identity_end) -> io.NodeOutput:
        positive = identity_schedule(clip, text, id_tokens, identifier, identity_start, identity_end)
        negative_cond = clip.encode_from_tokens_scheduled(clip.tokenize(negative))
        latent = latent_image["samples"]
        latent = comfy.sample.fix_empty_latent_channels(model, latent)
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        callback = latent_preview.prepare_callback(model, steps)  # progress bar, previews, interrupt
        samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative_cond,
                                      latent, denoise=denoise, noise_mask=latent_image.get("noise_mask"),
                                      callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        out = latent_image.copy()
        out["samples"] = samples
        return io.NodeOutput(out)

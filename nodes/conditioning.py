"""Prompt conditioning with the identity, and a sampler that uses it."""
from __future__ import annotations

import hashlib
import importlib
import logging
import math
import threading
import weakref
from collections import OrderedDict

import comfy.samplers
import node_helpers
import torch
from comfy_api.latest import io

from ..f2d.tokens import (
    DEFAULT_IDENTIFIER,
    STREAM_WIDTHS,
    IdentifierError,
    check_identifier,
    class_prompt,
    identity_replacements,
    inject,
    other_identifiers,
    position_table,
    second_identifier_message,
    unsupported_streams_message,
    words_of,
)
from ..f2d.identity import IdentityTokens
from .types import CATEGORY, F2DIdTokensIO, check_run_values, unknown_choice


def _stream_encoder(clip, key: str):
    """The host's text encoder behind token stream ``key``: ComfyUI names them ``clip_<key>``
    on the CLIP's model (``clip_l``, ``clip_g``, ...). Read only, for its position table."""
    encoder = getattr(clip.cond_stage_model, f"clip_{key}", None)
    if encoder is None:
        raise IdentifierError(unsupported_streams_message([key]))
    return encoder


def identity_tokens_for(clip, text: str, id_tokens: IdentityTokens, identifier: str) -> dict:
    """ComfyUI's tokens for ``text`` with the identifier words replaced by the identity tokens:
    the ComfyUI adapter of f2d.tokens' rule, applied to each of the host's token streams."""
    identifier = check_identifier(identifier)
    tokens = clip.tokenize(text, return_word_ids=True)
    if not tokens or set(tokens) - set(STREAM_WIDTHS):
        raise IdentifierError(unsupported_streams_message(tokens))
    ident = clip.tokenize(identifier, return_word_ids=True)
    t = id_tokens
    out = {}
    for key, chunks in tokens.items():  # every stream the host tokenized, as its PhotoMaker node does
        words = ident[key][0]
        table = position_table(_stream_encoder(clip, key))
        if table.shape[-1] != STREAM_WIDTHS[key]:
            raise IdentifierError(unsupported_streams_message(tokens))
        vectors = identity_replacements(
            chunks, text, identifier,
            identifier_token_ids=[w[0] for w in words if w[2] > 0],
            special_ids={w[0] for w in words if w[2] == 0},  # start, end and pad tokens
            first=t.first[0], last=t.last[0],
            # ComfyUI adds the position embedding to vectors in the token list: compensate.
            position_embedding=table)
        out[key] = inject(chunks, vectors)
        vocab = getattr(getattr(clip.tokenizer, f"clip_{key}", None), "inv_vocab", None)
        if vocab:  # a second person's identifier stays plain text: say so (the page's note does too)
            pairs = other_identifiers(words_of(chunks, vocab, {w[0] for w in words if w[2] == 0}), identifier)
            if pairs:
                logging.warning("[Face2Diffusion] %s", second_identifier_message(pairs, identifier))
    return out


def encode_identity_prompt(clip, text: str, id_tokens: IdentityTokens, identifier: str) -> list:
    return clip.encode_from_tokens_scheduled(identity_tokens_for(clip, text, id_tokens, identifier))


def _shown(text: str) -> str:
    return text if len(text) <= 200 else text[:200] + "..."


def _nan_message(text: str) -> str:
    return (f"the prompt's conditioning holds NaN or infinite values, which would give a black image: "
            f"\"{_shown(text)}\". Use prompt weights such as (f l:1.2), between 0 and about 2, and check that "
            "the identity tokens come from F2D Expression Guidance or a saved identity.")


# Prompt weights beyond this are no longer emphasis: ComfyUI scales each token's distance from the
# empty prompt's encoding by its weight, (z - z_empty) * w + z_empty, so with |w| <= this every
# value stays within (2 * MAX_PROMPT_WEIGHT + 1) times what the text encoder itself can output.
MAX_PROMPT_WEIGHT = 10.0

_BOUNDS: dict[int, tuple] = {}


def _encoder_output_bound(clip) -> float | None:
    """The largest |value| the text encoder can output: its final LayerNorm's output is at most
    max|gamma| * sqrt(width) + max|beta| (a normalised vector has no entry beyond sqrt(width)).
    Read once per norm weight: on a GPU each read waits for queued work."""
    try:
        encoder = _stream_encoder(clip, "l")
    except IdentifierError:
        return None
    norms = [m for name, m in encoder.named_modules() if name.endswith("final_layer_norm")
             and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not norms or norms[0].weight.is_meta:
        return None
    gamma, beta = norms[0].weight, getattr(norms[0], "bias", None)
    beta = beta if isinstance(beta, torch.Tensor) else None
    # Inference tensors have no version counter; a change in place there (not how ComfyUI patches
    # weights: it swaps them) would leave this safety bound stale, not the conditioning.
    key = tuple((t.data_ptr(), t.device, t.dtype, None if t.is_inference() else t._version)
                for t in (gamma, beta) if t is not None)
    hit = _BOUNDS.get(id(norms[0]))
    if hit is None or hit[0]() is not norms[0] or hit[1] != key:
        g = gamma.detach().float()
        bound = g.abs().max().item() * math.sqrt(g.numel())
        bound += beta.detach().float().abs().max().item() if beta is not None else 0.0
        if len(_BOUNDS) > 16:
            _BOUNDS.clear()
        hit = (weakref.ref(norms[0]), key, bound)
        _BOUNDS[id(norms[0])] = hit
    return hit[2]


def _largest_value(cond: list) -> float:
    """max |value| over the conditioning, NaN if any is NaN: one read back from the device."""
    peaks = [c[0].detach().abs().amax().float() for c in cond]
    if len({p.device for p in peaks}) > 1:
        peaks = [p.cpu() for p in peaks]
    return torch.stack(peaks).amax().item()


def _checked_conditioning(clip, cond: list, text: str) -> list:
    """The conditioning, unless it holds NaN/inf or values far beyond what the text encoder can
    produce even with strong prompt weights: both sample to a black image (e.g. '(f l:1e30)',
    finite but 1e30 times the encoding), which must not be reported as a success."""
    largest = _largest_value(cond)
    if not math.isfinite(largest):
        raise ValueError(_nan_message(text))
    bound = _encoder_output_bound(clip)
    if bound is None:
        return cond
    limit = (2 * MAX_PROMPT_WEIGHT + 1) * bound
    if largest <= limit:
        return cond
    weights = [t[1] for chunks in clip.tokenize(text).values() for chunk in chunks for t in chunk
               if isinstance(t, tuple) and len(t) > 1 and isinstance(t[1], (int, float))]
    heaviest = max(weights, key=abs, default=1.0)
    raise ValueError(f"the prompt's conditioning reaches {largest:.3g}, far beyond what this text encoder produces "
                     f"(at most about {bound:.3g} per value, x{2 * MAX_PROMPT_WEIGHT + 1:g} with prompt weights up to "
                     f"{MAX_PROMPT_WEIGHT:g}), which would sample to a black image: the prompt weight {heaviest:g} in "
                     f"\"{_shown(text)}\". Use prompt weights such as (f l:1.2), between 0 and about 2.")


def identity_schedule(clip, text: str, id_tokens: IdentityTokens, identifier: str, start: float, end: float) -> list:
    """Identity prompt between ``start`` and ``end`` (fractions of sampling), the class prompt
    ("a person" for the identifier) elsewhere: delayed subject conditioning."""
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(f"identity_start ({start}) must be below identity_end ({end}), both within 0..1: "
                         "lower identity_start or raise identity_end (0 and 1: the identity throughout)")
    if id_tokens.is_empty:  # no face in the reference photos, and the user chose to go on
        logging.warning("F2D: no identity (%s): the prompt says 'a person' where '%s' stands",
                        id_tokens.info.get("empty", "no face"), identifier)
        return _checked_conditioning(clip, clip.encode_from_tokens_scheduled(clip.tokenize(class_prompt(text, identifier))), text)
    with_id = _checked_conditioning(clip, encode_identity_prompt(clip, text, id_tokens, identifier), text)
    if start == 0.0 and end == 1.0:
        return with_id
    plain = clip.encode_from_tokens_scheduled(clip.tokenize(class_prompt(text, identifier)))
    out = node_helpers.conditioning_set_values(with_id, {"start_percent": start, "end_percent": end})
    if start > 0.0:
        out += node_helpers.conditioning_set_values(plain, {"start_percent": 0.0, "end_percent": start})
    if end < 1.0:
        out += node_helpers.conditioning_set_values(plain, {"start_percent": end, "end_percent": 1.0})
    return out


class ConditioningCache:
    """The last few encoded prompts of F2D Sampler, so that a new seed, sampler or step count
    does not encode prompt and negative again (the host caches CLIPTextEncode's output by its
    inputs; a sampler that encodes inside must do the same to cost no more).

    The key holds everything the encoding depends on: the text encoder module (by identity,
    checked through a weak reference so that a freed one's reused id cannot hit), its weight
    patches (a LoRA on the CLIP gives the patcher a new ``patches_uuid``), the CLIP-skip layer,
    the tokenizer options, the text, and for the identity prompt the identifier, the window and
    a hash of the identity tokens' bytes. A CLIP with hooks (scheduled CLIP weights) is never
    cached: its encoding depends on state outside these inputs."""

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def clip_key(clip) -> tuple | None:
        patcher = getattr(clip, "patcher", None)
        model = getattr(clip, "cond_stage_model", None)
        if patcher is None or model is None or getattr(patcher, "forced_hooks", None) is not None \
                or getattr(clip, "apply_hooks_to_conds", None) or getattr(clip, "use_clip_schedule", False):
            return None
        object_patches = tuple(sorted((k, id(v)) for k, v in getattr(patcher, "object_patches", {}).items()))
        return (id(model), str(getattr(patcher, "patches_uuid", None)), object_patches, getattr(clip, "layer_idx", None),
                repr(sorted(getattr(clip, "tokenizer_options", {}).items())), id(getattr(clip, "tokenizer", None)))

    @staticmethod
    def tokens_digest(id_tokens: IdentityTokens) -> str:
        h = hashlib.blake2b(digest_size=16)
        if id_tokens.is_empty:  # no identity: the prompt is encoded with 'a person'
            return "empty"
        for t in (id_tokens.first, id_tokens.last):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def get(self, clip, parts: tuple, encode):
        """``encode()``'s result for this CLIP and ``parts``, encoded at most once while cached."""
        ck = self.clip_key(clip)
        if ck is None:
            return encode()
        key = ck + parts
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0]() is clip.cond_stage_model:
                self._entries.move_to_end(key)
                return hit[1]
        value = encode()
        with self._lock:
            self._entries[key] = (weakref.ref(clip.cond_stage_model), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


SAMPLER_CONDITIONING = ConditioningCache()


def _identity_inputs() -> list:
    return [
        io.String.Input("identifier", default=DEFAULT_IDENTIFIER,
                        tooltip=f"The two words that stand for the person in the prompt (official: '{DEFAULT_IDENTIFIER}')."),
        io.Float.Input("identity_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of sampling before which the prompt says 'a person' instead of the "
                               "identity: raise it (0.1-0.3) to let the layout follow the text more."),
        io.Float.Input("identity_end", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of sampling after which the identity is dropped again."),
    ]


def ksampler_inputs(*, steps: int, denoise: float, tips: dict[str, str]) -> list[io.Input]:
    """KSampler's widgets (seed, steps, cfg, sampler_name, scheduler, denoise) in its order, with
    the official defaults where a node has no reason to differ; ``tips``: each node's own words."""
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip=tips["seed"]),
        io.Int.Input("steps", default=steps, min=1, max=10000, tooltip=tips["steps"]),
        io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=tips["cfg"]),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler_ancestral",
                       tooltip=tips["sampler_name"]),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                       tooltip="Noise schedule, as in KSampler."),
        io.Float.Input("denoise", default=denoise, min=0.0, max=1.0, step=0.01, tooltip=tips["denoise"]),
    ]


def check_sampler_values(scheduler, cfg, denoise, denoise_hint: str, *more_choices, more_numbers=()) -> None:
    """What the host does not check before the run: the scheduler combo and finite cfg/denoise
    (the sampler_name combo is checked at validation, see F2DSampler.validate_inputs)."""
    check_run_values([("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS), *more_choices],
                     [("cfg", cfg, "7 is the official default"), ("denoise", denoise, denoise_hint), *more_numbers])


def _prompt_input(default: str) -> io.String.Input:
    return io.String.Input("text", multiline=True, dynamic_prompts=True, default=default,
                           tooltip=f"The prompt. Write the identifier (default '{DEFAULT_IDENTIFIER}') where the person goes, "
                                   f"e.g. 'a photo of {DEFAULT_IDENTIFIER} smiling on a beach'. Prompt weighting "
                                   "works as usual.")


def _validate_identifier(identifier) -> bool | str:
    """Checked before the run (None: fed by a link, checked when it arrives). ComfyUI repeats a
    validate_inputs message once per input the method takes, so each method takes only the
    inputs its message is about; the window order and a missing identifier are checked once at
    run time (identity_schedule), where the prompt text is known."""
    if identifier is None:
        return True
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
            description=(f"Encodes a prompt with the person in it: the identifier words (default '{DEFAULT_IDENTIFIER}') are "
                         "replaced by the identity tokens, as the official Face2Diffusion does. The output is "
                         "ordinary CONDITIONING for any sampler, ControlNet or conditioning node."),
            inputs=[io.Clip.Input("clip", tooltip="The CLIP of an SD1.x checkpoint."),
                    F2DIdTokensIO.Input("id_tokens", tooltip="From F2D Expression Guidance or F2D Load Identity."),
                    _prompt_input(f"a photo of {DEFAULT_IDENTIFIER}")] + _identity_inputs(),
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def validate_inputs(cls, identifier) -> bool | str:
        return _validate_identifier(identifier)

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
                _prompt_input(f"a photo of {DEFAULT_IDENTIFIER}"),
                io.String.Input("negative", multiline=True, default="", tooltip="Negative prompt (no identity)."),
                io.Latent.Input("latent_image", tooltip="Empty Latent Image (512x512 for SD1.x) or an image to vary."),
                *ksampler_inputs(steps=30, denoise=1.0, tips={
                    "seed": "Noise seed; the same seed and settings give the same image.",
                    "steps": "Official default: 30.", "cfg": "Official default: 7.",
                    "sampler_name": "Official default: Euler ancestral.",
                    "denoise": "1 for text-to-image; lower keeps more of the input latent."}),
            ] + _identity_inputs(),
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def validate_inputs(cls, sampler_name) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo values (an API prompt's unknown sampler would run
        # with a silent substitute), and repeats a validate_inputs message once per input the
        # method takes: one input here, the scheduler and the identifier when the run starts.
        return unknown_choice("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS) or True

    @classmethod
    def execute(cls, model, clip, id_tokens, text, negative, latent_image, seed, steps, cfg, sampler_name,
                scheduler, denoise, identifier, identity_start, identity_end) -> io.NodeOutput:
        check_sampler_values(scheduler, cfg, denoise, "1 for text-to-image")
        # Encoded once per prompt, identity and CLIP (see ConditioningCache): a new seed reuses them.
        cache = SAMPLER_CONDITIONING
        positive = cache.get(clip, ("identity", text, identifier, float(identity_start), float(identity_end),
                                    cache.tokens_digest(id_tokens)),
                             lambda: identity_schedule(clip, text, id_tokens, identifier, identity_start, identity_end))
        negative_cond = cache.get(clip, ("plain", negative), lambda: _checked_conditioning(
            clip, clip.encode_from_tokens_scheduled(clip.tokenize(negative)), negative))
        # The host's own KSampler path (noise, latent channels, masks, previews, progress and
        # interrupt), so the node follows the host wherever it changes.
        common_ksampler = importlib.import_module("nodes").common_ksampler
        (out,) = common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative_cond,
                                 latent_image, denoise=denoise)
        return io.NodeOutput(out)

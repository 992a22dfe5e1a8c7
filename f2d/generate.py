"""Face2Diffusion outside ComfyUI, with diffusers: prompt conditioning and image generation.

This is the diffusers/transformers adapter of the identifier rule (f2d/tokens.py): the identity
tokens go into the prompt through a forward hook on the text encoder's embeddings
module (token + position embedding): the hook replaces that module's output rows at the
identifier, which is exactly where the official code replaces them. A hook is PyTorch's public
API, so no transformers class is patched, and the embeddings module is found by what it holds
(``token_embedding`` and ``position_embedding``), which has survived transformers' re-layouts
(4.x nests it under ``text_model``, 5.x does not).

diffusers and transformers are imported only here, so the rest of the library runs without them.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .identity import IdentityTokens
from .tokens import DEFAULT_IDENTIFIER, class_prompt, embeddings_module, identity_replacements, position_table

log = logging.getLogger(__name__)

SCHEDULERS = {
    "euler_a": "EulerAncestralDiscreteScheduler",  # the official default
    "euler": "EulerDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
}


@contextmanager
def replaced_rows(text_encoder: torch.nn.Module, rows: dict[tuple[int, int], torch.Tensor]):
    """Within the block, the embeddings module's output at (batch index, position) is replaced by
    the given vectors. Differentiable: gradients reach the vectors (training)."""

    def hook(module, args, output):
        if not rows:
            return output
        index = torch.tensor(list(rows), device=output.device)
        values = torch.stack([v.reshape(-1) for v in rows.values()]).to(device=output.device, dtype=output.dtype)
        return output.index_put((index[:, 0], index[:, 1]), values)

    handle = embeddings_module(text_encoder).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _input_ids(tokenizer, text_encoder, text: str) -> torch.Tensor:
    # The text encoder's position table, not tokenizer.model_max_length, bounds the prompt:
    # some tokenizer configs (ComfyUI's) set a large maximum and chunk prompts themselves.
    length = position_table(text_encoder).shape[0]
    full = tokenizer(text, truncation=False).input_ids
    if len(full) > length:
        log.warning("prompt is %d tokens, longer than %d: the rest is cut off, as in diffusers: %r",
                    len(full), length, text)
    return tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids


def encode_prompts(tokenizer, text_encoder, prompts: list[str], first: torch.Tensor | None = None,
                   last: torch.Tensor | None = None, identifier: str = DEFAULT_IDENTIFIER) -> torch.Tensor:
    """(B, 77, 768) conditioning for B prompts; with ``first``/``last`` (B, 768), sample b's
    identifier rows carry identity b. Keeps the autograd graph (training calls it with grad)."""
    ids = torch.cat([_input_ids(tokenizer, text_encoder, t) for t in prompts])
    device = next(text_encoder.parameters()).device
    if first is None:
        return text_encoder(ids.to(device))[0]
    identifier_tokens = tokenizer(identifier, add_special_tokens=False).input_ids
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    rows = {}
    for b, text in enumerate(prompts):
        # One chunk per prompt; rows replaced after the embeddings layer: no position compensation.
        for (_, i), vector in identity_replacements([ids[b].tolist()], text, identifier, identifier_tokens,
                                                    special, first[b], last[b]):
            rows[(b, i)] = vector
    with replaced_rows(text_encoder, rows):
        return text_encoder(ids.to(device))[0]


@torch.no_grad()
def encode_prompt(tokenizer, text_encoder, text: str, tokens: IdentityTokens | None = None,
                  identifier: str = DEFAULT_IDENTIFIER) -> torch.Tensor:
    """(1, 77, 768) conditioning; with ``tokens``, the identifier rows carry the identity."""
    if tokens is None:
        return encode_prompts(tokenizer, text_encoder, [text])
    return encode_prompts(tokenizer, text_encoder, [text], tokens.first.reshape(1, -1), tokens.last.reshape(1, -1),
                          identifier)


def pick_device(name: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device named (auto: CUDA, else MPS, else CPU) and the diffusion dtype for it; a device
    this machine does not have is refused here, with the choices it does have."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    here = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + \
        (["mps"] if torch.backends.mps.is_available() else [])
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name}: not a device name; on this machine: {', '.join(here)}") from None
    present = {"cpu": True, "mps": torch.backends.mps.is_available(),
               "cuda": torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()}
    if not present.get(device.type, False):
        raise ValueError(f"--device {name}: this machine (torch {torch.__version__}) has no such device; "
                         f"on this machine: {', '.join(here)}")
    return device, torch.float16 if device.type in ("cuda", "mps") else torch.float32


def load_pipeline(base: str | Path, device: torch.device, dtype: torch.dtype, scheduler: str = "euler_a",
                  config: str | None = None):
    """An SD1.x diffusers pipeline from a diffusers folder or a single-file checkpoint."""
    import diffusers

    base = Path(base)
    common = dict(torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if base.is_dir():
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(base), **common)
    elif base.is_file():
        kw = {"config": config} if config else {}
        pipe = diffusers.StableDiffusionPipeline.from_single_file(str(base), **common, **kw)
    else:
        raise FileNotFoundError(f"{base}: no such checkpoint file or diffusers folder")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler '{scheduler}'; choose one of {', '.join(SCHEDULERS)}")
    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    return pipe.to(device)


@dataclass
class GenerationSettings:
    prompt: str
    negative: str = ""
    n: int = 1
    steps: int = 30
    cfg: float = 7.0
    seed: int = 0
    height: int = 512
    width: int = 512
    identity_start: float = 0.0  # fraction of steps that use the class prompt first
    identifier: str = DEFAULT_IDENTIFIER


@torch.no_grad()
def generate(pipe, tokens: IdentityTokens, s: GenerationSettings, progress: bool = True):
    """PIL images of the person in the prompt."""
    if not 0.0 <= s.identity_start < 1.0:
        raise ValueError(f"--identity-start must be within 0..1 (below 1), got {s.identity_start}")
    enc = lambda text, t=None: encode_prompt(pipe.tokenizer, pipe.text_encoder, text, t, s.identifier)  # noqa: E731
    with_id = enc(s.prompt, tokens)
    negative = enc(s.negative)
    start_step = math.ceil(s.identity_start * s.steps)
    first = enc(class_prompt(s.prompt, s.identifier)) if start_step > 0 else with_id
    kwargs = {}
    if start_step > 0:
        # Delayed subject conditioning: the class prompt ("a person") first, the identity after.
        def switch(pipeline, step, timestep, callback_kwargs):
            if step + 1 == start_step:
                pe = callback_kwargs["prompt_embeds"]
                n = pe.shape[0] // 2 if pipeline.do_classifier_free_guidance else pe.shape[0]
                new = with_id.to(pe.dtype).repeat(n, 1, 1)
                if pipeline.do_classifier_free_guidance:
                    new = torch.cat([negative.to(pe.dtype).repeat(n, 1, 1), new])
                return {"prompt_embeds": new}
            return {}

        kwargs = dict(callback_on_step_end=switch, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    pipe.set_progress_bar_config(disable=not progress)
    device = pipe.unet.device
    generator = torch.Generator("cpu" if device.type == "mps" else device).manual_seed(s.seed)
    return pipe(prompt_embeds=first, negative_prompt_embeds=negative, num_images_per_prompt=s.n,
                num_inference_steps=s.steps, guidance_scale=s.cfg, height=s.height, width=s.width,
                generator=generator, **kwargs).images


def grid(images, columns: int = 4):
    from PIL import Image

    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    out = Image.new("RGB", (columns * w, rows * h))
    for i, im in enumerate(images):
        out.paste(im, ((i % columns) * w, (i // columns) * h))
    return out


def detail_images(pipe, images, tokens: IdentityTokens, identity: torch.Tensor | None, detector, encoder,
                  prompt: str, negative: str = "", steps: int = 20, denoise: float = 0.45, cfg: float = 7.0,
                  seed: int = 0, identifier: str = DEFAULT_IDENTIFIER, settings=None, progress: bool = True):
    """The face-detail pass (f2d/detail.py) on diffusers: PIL images -> (PIL images, notes).

    Each face crop is resampled by diffusers' inpainting pipeline built from ``pipe``'s own
    components (no download; with an ordinary 4-channel UNet it runs img2img and keeps the
    latents outside the mask), then pasted back through the feathered mask by f2d/detail.py.
    ``encoder`` None: the faces are not encoded (one person, every face)."""
    import diffusers
    import numpy as np
    from PIL import Image

    from .detail import DetailSettings, find_faces, run_detail

    if not 0.0 < denoise <= 1.0 or math.ceil(steps * denoise) < 1:
        raise ValueError(f"--detail-denoise must be within 0..1 and above 0 (got {denoise}), and "
                         f"--detail-steps x --detail-denoise at least 1 step")
    settings = settings or DetailSettings()
    arrays = [np.asarray(im.convert("RGB")) for im in images]
    found = find_faces(arrays, detector, encoder)
    components = {k: v for k, v in pipe.components.items() if k in ("vae", "text_encoder", "tokenizer", "unet",
                                                                      "scheduler", "feature_extractor")}
    inpainter = diffusers.StableDiffusionInpaintPipeline(**components, safety_checker=None,
                                                         requires_safety_checker=False)
    inpainter.set_progress_bar_config(disable=not progress)
    with_id = encode_prompt(pipe.tokenizer, pipe.text_encoder, prompt, tokens, identifier)
    negative_cond = encode_prompt(pipe.tokenizer, pipe.text_encoder, negative)
    device = pipe.unet.device

    def inpaint(crop: torch.Tensor, mask: torch.Tensor, job) -> torch.Tensor:
        generator = torch.Generator("cpu" if device.type == "mps" else device).manual_seed(seed + job.seed_offset)
        out = inpainter(prompt_embeds=with_id, negative_prompt_embeds=negative_cond,
                        image=crop.permute(2, 0, 1)[None].to(device), mask_image=mask[None, None].to(device),
                        height=crop.shape[0], width=crop.shape[1], strength=denoise, num_inference_steps=steps,
                        guidance_scale=cfg, generator=generator, output_type="pt").images
        return out[0].permute(1, 2, 0).float().cpu().clamp(0, 1)

    batch = torch.from_numpy(np.stack(arrays)).float() / 255
    vectors = None if identity is None or encoder is None else identity.reshape(1, -1).float().cpu()
    with torch.no_grad():
        result = run_detail(batch, found, vectors, 1, inpaint, settings)
    pixels = (result.images * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels], result.notes

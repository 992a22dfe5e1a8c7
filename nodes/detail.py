"""F2D Face Detail: every generated face re-done at a higher resolution with its own person's identity.

The geometry, the assignment of people to faces and the pass itself are f2d/detail.py's; this
node supplies ComfyUI's pieces: the detector, the VAE and the host's own sampler path (noise mask,
progress, previews, interrupt)."""
from __future__ import annotations

from contextlib import contextmanager

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..f2d.detail import EXTRA_FACES, FACE_MODES, MAX_PEOPLE, DetailSettings, find_faces, preview_crops, run_detail
from ..f2d.detect import BACKENDS
from ..f2d.identity import IdentityTokens
from ..f2d.tokens import DEFAULT_IDENTIFIER, class_prompt
from .conditioning import (
    _checked_conditioning,
    _validate_identifier,
    check_sampler_values,
    identity_schedule,
    ksampler_inputs,
)
from .detectors import face_detector
from .identity import comfy_images
from .types import CATEGORY, F2DIdTokensIO, F2DModelIO

DEFAULT_PROMPT = f"a close-up photo of {DEFAULT_IDENTIFIER}, detailed face"


@contextmanager
def detail_detector(backend: str, f2d_model):
    """The face detector for the pass: the server's cached one (nodes/detectors.py), loaded with
    the MSID model so that making room for one cannot unload the other mid-node."""
    with face_detector(backend, with_models=[f2d_model.patcher]) as det:
        yield det


def identity_vector(id_tokens: IdentityTokens) -> torch.Tensor | None:
    """The (1, 1536) averaged MSID vector the tokens were made from (None: a file saved without it)."""
    vector = getattr(id_tokens, "identity", None)
    return None if vector is None else vector.detach().float().cpu().reshape(1, -1)


def _person_input(i: int) -> io.Input:
    return F2DIdTokensIO.Input(
        f"id_tokens_{i}", optional=True,
        tooltip=f"Optional: person {i}, for pictures of several people (F2D Expression Guidance or F2D Load "
                "Identity). Each face gets the person whose identity is closest to it, one person per face.")


class F2DFaceDetail(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DFaceDetail",
            display_name="F2D Face Detail",
            category=CATEGORY,
            description=(
                "Re-does every face of the images at a higher resolution with that person's identity: crops each "
                "face with context, upscales it to guide_size, resamples only inside a feathered face mask with "
                "the F2D prompt, and pastes it back (pixels outside the masks stay exactly as they were). With "
                "several people (id_tokens_2..4) each face gets the person whose MSID identity is closest, one "
                "person per face; the note on the node says which face got whom."),
            inputs=[
                io.Image.Input("image", tooltip="The generated images (a batch keeps its order)."),
                io.Model.Input("model", tooltip="The SD1.x model that made them (after any LoRA loaders)."),
                io.Clip.Input("clip", tooltip="The CLIP of the same checkpoint."),
                io.Vae.Input("vae", tooltip="The VAE of the same checkpoint."),
                F2DModelIO.Input("f2d_model", tooltip="From F2D Load MSID: encodes the generated faces to tell "
                                                      "who is who."),
                F2DIdTokensIO.Input("id_tokens", tooltip="Person 1 (F2D Expression Guidance or F2D Load Identity)."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, default=DEFAULT_PROMPT,
                                tooltip=f"The prompt for the face crops, with the identifier ('{DEFAULT_IDENTIFIER}') "
                                        "where the person goes; each face gets its own person there. Describe the "
                                        "face (expression, light) as in the main prompt."),
                io.String.Input("negative", multiline=True, default="blurry, deformed face",
                                tooltip="Negative prompt for the face crops (no identity)."),
                *ksampler_inputs(steps=20, denoise=0.45, tips={
                    "seed": "Noise seed; face n of the batch uses seed + n.",
                    "steps": "Sampling steps of the full schedule; denoise runs the last part of it.",
                    "cfg": "Classifier-free guidance, as in the main sampler.",
                    "sampler_name": "Sampler for the face crops, as in KSampler.",
                    "denoise": "How much of each face is redrawn: 0.3-0.5 keeps pose and expression and sharpens "
                               "the likeness; higher redraws more."}),
                io.Int.Input("guide_size", default=512, min=64, max=2048, step=8,
                             tooltip="The face crop is worked on at this size (512 for SD1.x); larger faces are "
                                     "worked on at their own size, up to 1024."),
                io.Float.Input("context", default=2.0, min=1.0, max=4.0, step=0.1,
                               tooltip="Crop side as a multiple of the face box: more context, better blending "
                                       "with hair and neck, but fewer pixels for the face."),
                io.Float.Input("feather", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Width of the mask's soft edge, as a fraction of the face's size."),
                io.Int.Input("max_faces", default=4, min=1, max=16,
                             tooltip="Per image, the largest first; the others keep their pixels."),
                io.Int.Input("min_face_size", default=32, min=0, max=4096,
                             tooltip="Faces whose box is smaller than this (px) keep their pixels."),
                io.Combo.Input("faces", options=list(FACE_MODES), default="all",
                               tooltip="With one person: re-do every face, only the face most like the person, or "
                                       "only the largest. With several people each face gets its closest person."),
                io.Combo.Input("extra_faces", options=list(EXTRA_FACES), default="keep",
                               tooltip="With several people: faces beyond the number of people keep their pixels, "
                                       "or get their nearest person too."),
                io.Combo.Input("detector", options=list(BACKENDS), default="auto",
                               tooltip="The face detector, as in F2D Encode Identity."),
                io.String.Input("identifier", default=DEFAULT_IDENTIFIER,
                                tooltip="The two words that stand for the person in the prompt."),
            ] + [_person_input(i) for i in range(2, MAX_PEOPLE + 1)],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="The images with their faces re-done."),
                io.Mask.Output("masks", display_name="masks", tooltip="Where each image was changed (the feathered face masks)."),
                io.Image.Output("crops", display_name="crops", tooltip="The re-done face crops, for a preview (one black square when no face was "
                                                      "re-done: the note on the node says why)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, identifier) -> bool | str:
        return _validate_identifier(identifier)

    @classmethod
    def execute(cls, image, model, clip, vae, f2d_model, id_tokens, text, negative, seed, steps, cfg, sampler_name,
                scheduler, denoise, guide_size, context, feather, max_faces, min_face_size, faces, extra_faces,
                detector, identifier, **more) -> io.NodeOutput:
        check_sampler_values(scheduler, cfg, denoise, "0.3-0.5 re-does a face keeping its pose",
                             ("sampler_name", sampler_name, comfy.samplers.KSampler.SAMPLERS),
                             ("faces", faces, FACE_MODES), ("extra_faces", extra_faces, EXTRA_FACES),
                             ("detector", detector, BACKENDS), more_numbers=(("context", context), ("feather", feather)))
        class_prompt(text, identifier)  # the prompt names the person: checked before any face is found
        people = [id_tokens] + [more[f"id_tokens_{i}"] for i in range(2, MAX_PEOPLE + 1)
                                if more.get(f"id_tokens_{i}") is not None]
        vectors = [identity_vector(p) for p in people]
        if len(people) > 1 and any(v is None for v in vectors):
            missing = ", ".join(("id_tokens" if k == 0 else f"id_tokens_{k + 1}") for k, v in enumerate(vectors)
                                if v is None)
            raise ValueError(f"{missing}: no MSID identity vector to tell the people apart (an identity file saved "
                             "without it); re-save that person from F2D Encode Identity with F2D Save Identity")
        people_vectors = None if any(v is None for v in vectors) else torch.cat(vectors)
        settings = DetailSettings(context=context, guide_size=guide_size, feather=feather, max_faces=max_faces,
                                  min_face_size=min_face_size, faces=faces, extra_faces=extra_faces)

        pbar = comfy.utils.ProgressBar(len(image))
        found_steps = [0]

        def detecting():
            # Between photos and encoder chunks: where a big batch stops on Cancel.
            mm.throw_exception_if_processing_interrupted()
            found_steps[0] += 1
            pbar.update_absolute(min(found_steps[0], len(image)), len(image))

        with detail_detector(detector, f2d_model) as det:
            found = find_faces(comfy_images(image), det, f2d_model.encoder, progress=detecting)

        conds: dict[int, list] = {}
        negative_cond = _checked_conditioning(clip, clip.encode_from_tokens_scheduled(clip.tokenize(negative)), negative)
        previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        state = {"total": 0}

        def inpaint(crop: torch.Tensor, mask: torch.Tensor, job) -> torch.Tensor:
            if job.person not in conds:
                conds[job.person] = identity_schedule(clip, text, people[job.person], identifier, 0.0, 1.0)
            pixels = crop[None, :, :, :3]
            latent = comfy.sample.fix_empty_latent_channels(model, vae.encode(pixels))
            noise = comfy.sample.prepare_noise(latent, seed + job.seed_offset)
            done_before = job.seed_offset * steps

            def callback(step, x0, x, total_steps):
                preview = previewer.decode_latent_to_preview_image("JPEG", x0) if previewer else None
                pbar.update_absolute(done_before + step + 1, state["total"], preview)

            samples = comfy.sample.sample(
                model, noise, steps, cfg, sampler_name, scheduler, conds[job.person], negative_cond, latent,
                denoise=denoise, noise_mask=mask.reshape(1, 1, *mask.shape), callback=callback,
                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed + job.seed_offset)
            out = vae.decode(samples)[0].to(crop)
            if not torch.isfinite(out).all():  # a broken pass keeps the face as it was (the note says why)
                raise ValueError("the face pass decoded to NaN/inf values (check the checkpoint's VAE and cfg)")
            return out

        def on_face(done: int, total: int):
            mm.throw_exception_if_processing_interrupted()
            state["total"] = max(1, total * steps)
            pbar.update_absolute(done * steps, state["total"])

        with torch.no_grad():
            result = run_detail(image.cpu().float(), found, people_vectors, len(people), inpaint, settings,
                                fatal=(mm.InterruptProcessingException,), on_face=on_face)
        crops = preview_crops(result.crops, guide_size, image.shape[-1])
        return io.NodeOutput(result.images.to(image.dtype), result.masks, crops, ui={"f2d_faces": result.notes})

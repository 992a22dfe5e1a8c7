"""Likeness nodes: score images against the identity, keep the best of N."""
from __future__ import annotations

import comfy.utils
import torch
from comfy_api.latest import io

from ..f2d.detect import BACKENDS
from ..f2d.likeness import best_of, rank, score_images, with_text_scores
from .detectors import face_detector
from .identity import comfy_images
from .types import CATEGORY, F2DIdentityIO, F2DIdTokensIO, F2DModelIO, unknown_choice


def _reference(identity, id_tokens) -> torch.Tensor | None:
    """The reference vector; None for 'no identity' (no face in the reference photos)."""
    if identity is not None:
        return identity.mean
    if id_tokens is not None and id_tokens.is_empty:
        return None
    if id_tokens is not None and id_tokens.identity is not None:
        return id_tokens.identity
    if id_tokens is not None:
        raise ValueError("these identity tokens carry no identity vector (an identity file saved without one); "
                         "connect the identity from F2D Encode Identity instead")
    raise ValueError("connect a reference: the identity from F2D Encode Identity, or id_tokens from "
                     "F2D Load Identity / F2D Expression Guidance")


def _score(f2d_model, images, detector, identity, id_tokens):
    reference = _reference(identity, id_tokens)
    with face_detector(detector, with_models=[f2d_model.patcher]) as det:
        pbar = comfy.utils.ProgressBar(len(images))
        return score_images(f2d_model.encoder, det, comfy_images(images), reference,
                            progress=lambda i, n: pbar.update_absolute(i, n))


NO_REFERENCE = ("no reference identity (no face in the reference photos): every image scores 0 and keeps its "
                "batch order")


SCORED = "likeness of each image's largest face to the reference (#: image in the batch, from 0):"


def _describe(scores) -> str:
    def line(s):
        text = "" if s.text is None else f", text {s.text:.4f} -> {s.score:.4f}"
        return f"#{s.index}: {s.similarity:.4f}{text}" if s.has_face else f"#{s.index}: no face (0){text}"

    return "\n".join(line(s) for s in scores)


def _add_text_scores(scores, images, clip_vision, clip, text):
    given = [x is not None and x != "" for x in (clip_vision, clip, text)]
    if not any(given):
        return scores
    if not all(given):
        raise ValueError("the text-fidelity term needs all three: clip_vision (CLIP Vision Loader), clip (a CLIP "
                         "with its text projection, e.g. clip_l.safetensors through Load CLIP) and text; "
                         "connect all three or none")
    image_embeds = clip_vision.encode_image(images)["image_embeds"]
    _, text_embed = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    if text_embed is None or text_embed.shape[-1] != image_embeds.shape[-1]:
        raise ValueError(f"clip_vision embeds {image_embeds.shape[-1]} numbers but the CLIP's text embedding has "
                         f"{None if text_embed is None else text_embed.shape[-1]}: use the text and vision towers "
                         "of the same CLIP model (e.g. ViT-L/14: clip_l.safetensors with clip_vision_vit_l)")
    return with_text_scores(scores, image_embeds.float().cpu(), text_embed.float().cpu())


def _reference_inputs() -> list:
    return [
        F2DIdentityIO.Input("identity", optional=True, tooltip="The reference, from F2D Encode Identity."),
        F2DIdTokensIO.Input("id_tokens", optional=True,
                            tooltip="Or the reference from F2D Load Identity / F2D Expression Guidance."),
    ]


def _common_inputs() -> list:
    return [
        F2DModelIO.Input("f2d_model", tooltip="From F2D Load MSID."),
        io.Image.Input("images", tooltip="The images to score (e.g. a batch from the sampler)."),
        io.Combo.Input("detector", options=list(BACKENDS), default="auto",
                       tooltip="Face detector for the images (see F2D Encode Identity)."),
    ]


class F2DIdentitySimilarity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DIdentitySimilarity",
            display_name="F2D Identity Similarity",
            category=CATEGORY,
            description=("How much the largest face in each image looks like the reference: cosine similarity of "
                         "MSID identity vectors (1 = the same vector). Images without a face score 0 and are "
                         "reported as such."),
            inputs=_common_inputs() + _reference_inputs(),
            outputs=[io.Float.Output("similarity", display_name="similarity", is_output_list=True, tooltip="One score per image, in batch order."),
                     io.String.Output("report", display_name="report", tooltip="The scores as text.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, detector) -> bool | str:
        return unknown_choice("detector", detector, BACKENDS) or True

    @classmethod
    def execute(cls, f2d_model, images, detector, identity=None, id_tokens=None) -> io.NodeOutput:
        scores = _score(f2d_model, images, detector, identity, id_tokens)
        text = SCORED + "\n" + _describe(scores)
        if _reference(identity, id_tokens) is None:
            text = NO_REFERENCE + "\n" + text
        return io.NodeOutput([s.similarity for s in scores], text, ui={"text": [text]})


class F2DBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DBestOfN",
            display_name="F2D Best of N",
            category=CATEGORY,
            description=("Keeps the images whose face looks most like the reference (F2D Identity Similarity's "
                         "score), best first. Generate a batch, keep the best: likeness rises with N. Images "
                         "without a face come last; ties keep batch order."),
            inputs=_common_inputs() + [
                io.Int.Input("keep", default=2, min=1, max=4096, tooltip="How many images to keep."),
            ] + _reference_inputs() + [
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="Optional text-fidelity term: a CLIP vision model (e.g. ViT-L/14)..."),
                io.Clip.Input("clip", optional=True,
                              tooltip="...the text side of the same CLIP with its projection (e.g. clip_l.safetensors "
                                      "via Load CLIP; SD1.x checkpoints lack the projection)..."),
                io.String.Input("text", optional=True, multiline=True, default="",
                                tooltip="...and the text the images should show (the prompt without 'f l'). "
                                        "Then the score is the harmonic mean of likeness and image-text similarity."),
            ],
            outputs=[io.Image.Output("best_images", display_name="best_images", tooltip="The kept images, best first."),
                     io.Float.Output("similarity", display_name="similarity", is_output_list=True,
                                     tooltip="Their scores, best first (with the text term: the harmonic mean)."),
                     io.String.Output("report", display_name="report", tooltip="The ranking as text.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, detector) -> bool | str:
        return unknown_choice("detector", detector, BACKENDS) or True

    @classmethod
    def execute(cls, f2d_model, images, detector, keep, identity=None, id_tokens=None, clip_vision=None, clip=None,
                text=None) -> io.NodeOutput:
        scores = _score(f2d_model, images, detector, identity, id_tokens)
        scores = _add_text_scores(scores, images, clip_vision, clip, text)
        kept = best_of(scores, keep)
        chosen = images[torch.tensor([s.index for s in kept], dtype=torch.long)]
        report = (SCORED + "\nkept (best first):\n" + _describe(kept) + "\nall, ranked:\n"
                  + _describe(rank(scores)))
        if _reference(identity, id_tokens) is None:
            report = NO_REFERENCE + "\n" + report
        return io.NodeOutput(chosen, [s.score for s in kept], report, ui={"text": [report]})

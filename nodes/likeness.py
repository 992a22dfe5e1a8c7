"""Likeness nodes: score images against the identity, keep the best of N."""
from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..f2d.detect import BACKENDS, get_detector
from ..f2d.likeness import best_of, rank, score_images
from .identity import _insightface_roots, _providers, comfy_image_to_uint8
from .types import CATEGORY, F2DIdentityIO, F2DIdTokensIO, F2DModelIO


def _reference(identity, id_tokens) -> torch.Tensor:
    if identity is not None:
        return identity.mean
    if id_tokens is not None and id_tokens.identity is not None:
        return id_tokens.identity
    if id_tokens is not None:
        raise ValueError("these identity tokens carry no identity vector (an identity file saved without one); "
                         "connect the identity from F2D Encode Identity instead")
    raise ValueError("connect a reference: the identity from F2D Encode Identity, or id_tokens from "
                     "F2D Load Identity / F2D Expression Guidance")


def _score(f2d_model, images, detector, identity, id_tokens):
    reference = _reference(identity, id_tokens)
    det = get_detector(detector, insightface_roots=_insightface_roots(), insightface_providers=_providers())
    mm.load_model_gpu(f2d_model.patcher)
    pbar = comfy.utils.ProgressBar(len(images))
    try:
        return score_images(f2d_model.encoder, det, list(comfy_image_to_uint8(images)), reference,
                            progress=lambda i, n: pbar.update_absolute(i, n))
    finally:
        if hasattr(det, "close"):
            det.close()


def _describe(scores) -> str:
    return "\n".join(f"#{s.index}: {s.similarity:.4f}" if s.has_face else f"#{s.index}: no face (0)" for s in scores)


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
            outputs=[io.Float.Output("similarity", is_output_list=True, tooltip="One score per image, in batch order."),
                     io.String.Output("report", tooltip="The scores as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, f2d_model, images, detector, identity=None, id_tokens=None) -> io.NodeOutput:
        scores = _score(f2d_model, images, detector, identity, id_tokens)
        text = _describe(scores)
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
            ] + _reference_inputs(),
            outputs=[io.Image.Output("best_images", tooltip="The kept images, best first."),
                     io.Float.Output("similarity", is_output_list=True, tooltip="Their scores, best first."),
                     io.String.Output("report", tooltip="The ranking as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, f2d_model, images, detector, keep, identity=None, id_tokens=None) -> io.NodeOutput:
        scores = _score(f2d_model, images, detector, identity, id_tokens)
        kept = best_of(scores, keep)
        chosen = images[torch.tensor([s.index for s in kept], dtype=torch.long)]
        text = "kept (best first):\n" + _describe(kept) + "\nall, ranked:\n" + _describe(rank(scores))
        return io.NodeOutput(chosen, [s.similarity for s in kept], text, ui={"text": [text]})

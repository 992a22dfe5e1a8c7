"""Identity nodes: photos -> identity -> identity tokens, and identity files."""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext

import comfy.model_management as mm
import comfy.utils
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..f2d.detect import BACKENDS, LandmarksDetector, get_detector
from ..f2d.identity import Identity, encode_photos
from ..f2d.identity_file import load_identity, save_identity
from ..f2d.mapping import EXPRESSION_DIM
from . import paths
from .types import (
    CATEGORY,
    F2DExpressionIO,
    F2DIdentityIO,
    F2DIdTokens,
    F2DIdTokensIO,
    F2DModelIO,
)

FACE_CHOICES = ["largest"] + [str(i) for i in range(10)]


def _insightface_roots() -> list[str]:
    """models/insightface (where IPAdapter FaceID, InstantID and PuLID users keep the packs), plus
    any 'insightface' folder another pack or extra_model_paths.yaml registered."""
    roots = [os.path.join(folder_paths.models_dir, "insightface")]
    if "insightface" in folder_paths.folder_names_and_paths:
        roots += [p for p in folder_paths.get_folder_paths("insightface") if p not in roots]
    return roots


@contextmanager
def face_detector(backend: str):
    """The chosen detector with the pack's model folders, closed afterwards (mediapipe holds graphs)."""
    det = get_detector(backend, insightface_roots=_insightface_roots(), insightface_providers=_providers())
    try:
        yield det
    finally:
        if hasattr(det, "close"):
            det.close()


def comfy_images(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE (B, H, W, C) floats in 0..1 -> one array per photo; f2d turns each into
    8-bit RGB (f2d.align.to_uint8_rgb), as the photos were stored."""
    return list(image.cpu().numpy())


def _providers() -> list[str]:
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else ["CPUExecutionProvider"]


class F2DEncodeIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DEncodeIdentity",
            display_name="F2D Encode Identity",
            category=CATEGORY,
            description=(
                "Finds the face in each reference photo, aligns it to the 112x112 ArcFace template and "
                "encodes it with MSID. Several photos (a batch) become one identity: their identity "
                "vectors are averaged."
            ),
            inputs=[
                F2DModelIO.Input("f2d_model", tooltip="From F2D Load MSID."),
                io.Image.Input("image", tooltip="One or more photos of the same person (a batch)."),
                io.Combo.Input("detector", options=list(BACKENDS), default="auto",
                               tooltip="auto: insightface if its models are in models/insightface, else MTCNN (no "
                                       "download, every platform), else mediapipe. See the README, 'Face detection'."),
                io.Combo.Input("face", options=FACE_CHOICES, default="largest",
                               tooltip="Which face when a photo has several: the largest, or the n-th counted "
                                       "from the left (0 = leftmost)."),
                io.Boolean.Input("skip_faceless", default=False,
                                 tooltip="Leave photos without a face out of the batch (with a warning) instead "
                                         "of stopping; at least one face must remain."),
                io.Custom("POSE_KEYPOINT").Input(
                    "pose_keypoint", optional=True,
                    tooltip="Optional: face points from a DWPose/OpenPose preprocessor (comfyui_controlnet_aux) "
                            "run on the same photos; used instead of the detector."),
                io.String.Input(
                    "face_points", optional=True, force_input=True,
                    tooltip="Optional: face points as JSON, used instead of the detector: [[x, y], ...] with 5 "
                            "points (eyes, nose tip, mouth corners, image left first) or 68 landmarks per face; "
                            "one face, one face per photo, or a list of faces per photo; or OpenPose JSON."),
            ],
            outputs=[
                F2DIdentityIO.Output("identity", tooltip="The person, for F2D Expression Guidance."),
                io.Image.Output("aligned_faces", tooltip="The aligned 112x112 crop used from each photo."),
            ],
        )

    @classmethod
    def execute(cls, f2d_model, image, detector, face, skip_faceless, pose_keypoint=None,
                face_points=None) -> io.NodeOutput:
        given = pose_keypoint if pose_keypoint is not None else face_points or None
        with face_detector(detector) if given is None else nullcontext(LandmarksDetector(given)) as det:
            mm.load_model_gpu(f2d_model.patcher)
            pbar = comfy.utils.ProgressBar(len(image))
            identity = encode_photos(f2d_model.encoder, det, comfy_images(image), face=face,
                                     skip_faceless=skip_faceless, progress=lambda i, n: pbar.update_absolute(i, n))
            pbar.update_absolute(len(image), len(image))
        crops = torch.from_numpy(np.ascontiguousarray(identity.faces.crops)).float() / 255.0
        # Shown on the node: the crops used, and which face of each photo (web/js reads f2d_faces).
        shown = ui.PreviewImage(crops, cls=cls).as_dict()
        return io.NodeOutput(identity, crops, ui={"images": shown["images"], "f2d_faces": identity.faces.describe()})


class F2DExpressionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DExpressionGuidance",
            display_name="F2D Expression Guidance",
            category=CATEGORY,
            description=(
                "Maps the identity to the two identity tokens. Without an expression input it uses the "
                "learned 'unconditional expression', as the paper does at inference: the prompt then "
                "decides the expression ('smiling', 'angry', ...)."
            ),
            inputs=[
                F2DModelIO.Input("f2d_model", tooltip="From F2D Load MSID."),
                F2DIdentityIO.Input("identity", tooltip="From F2D Encode Identity."),
                F2DExpressionIO.Input("expression", optional=True,
                                      tooltip="A 64-d expression vector (F2D Expression Vector). Leave empty for the "
                                              "unconditional expression."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="With an expression: 1 uses it fully, 0 ignores it (unconditional); "
                                       "between blends the two."),
            ],
            outputs=[F2DIdTokensIO.Output("id_tokens", tooltip="For F2D Text Encode, F2D Sampler, F2D Save Identity.")],
        )

    @classmethod
    def execute(cls, f2d_model, identity: Identity, strength, expression=None) -> io.NodeOutput:
        mm.load_model_gpu(f2d_model.patcher)
        enc = f2d_model.encoder
        mean = identity.mean
        use_null = None
        if expression is not None:
            use_null = torch.full((mean.shape[0],), 1.0 - strength)
        tokens = enc.tokens(mean, exp=expression, use_null=use_null)
        info = {"msid": f2d_model.msid_name, "mapping": f2d_model.mapping_name, "photos": int(identity.features.shape[0]),
                "expression": "unconditional" if expression is None else f"explicit, strength {strength:g}"}
        return io.NodeOutput(F2DIdTokens(tokens, mean.cpu(), info))


class F2DExpressionVector(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DExpressionVector",
            display_name="F2D Expression Vector",
            category=CATEGORY,
            description=("A 64-d expression vector typed in as numbers (e.g. the expression coefficients of a "
                         "3D face model, as F2D was trained on)."),
            inputs=[io.String.Input("values", multiline=True, default="",
                                    tooltip=f"{EXPRESSION_DIM} numbers separated by commas or spaces.")],
            outputs=[F2DExpressionIO.Output("expression")],
        )

    @classmethod
    def validate_inputs(cls, values) -> bool | str:
        try:
            _parse_expression(values)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, values) -> io.NodeOutput:
        return io.NodeOutput(_parse_expression(values))


def _parse_expression(text: str) -> torch.Tensor:
    parts = text.replace(",", " ").split()
    try:
        numbers = [float(p) for p in parts]
    except ValueError as e:
        raise ValueError(f"expression values must be numbers ({e})") from None
    if len(numbers) != EXPRESSION_DIM or not all(np.isfinite(numbers)):
        raise ValueError(f"the expression needs exactly {EXPRESSION_DIM} finite numbers; got {len(numbers)}")
    return torch.tensor(numbers, dtype=torch.float32)[None]


class F2DSaveIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DSaveIdentity",
            display_name="F2D Save Identity",
            category=CATEGORY,
            description=(f"Saves the identity tokens (and the averaged identity) as a small .safetensors in "
                         f"models/{paths.FOLDER}/{paths.IDENTITIES}, to reuse with F2D Load Identity."),
            inputs=[
                F2DIdTokensIO.Input("id_tokens", tooltip="From F2D Expression Guidance."),
                io.String.Input("name", default="person", tooltip="File name; an existing file is never overwritten "
                                                                  "(a number is appended)."),
            ],
            outputs=[F2DIdTokensIO.Output("saved_tokens", tooltip="The same tokens, passed through.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, name) -> bool | str:
        clean = os.path.basename(name.strip())
        if not clean or clean != name.strip() or clean.startswith("."):
            return f"name '{name}' must be a plain file name (no folders), e.g. 'alice'"
        return True

    @classmethod
    def execute(cls, id_tokens: F2DIdTokens, name) -> io.NodeOutput:
        path = paths.new_identity_path(name.strip())
        save_identity(path, id_tokens.tokens, id_tokens.identity, {**id_tokens.info, "name": name.strip()})
        return io.NodeOutput(id_tokens, ui={"text": [f"saved {os.path.basename(path)}"]})


class F2DLoadIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = paths.identity_files()
        return io.Schema(
            node_id="F2DLoadIdentity",
            display_name="F2D Load Identity",
            category=CATEGORY,
            description="Loads an identity saved by F2D Save Identity.",
            inputs=[io.Combo.Input("identity_file", options=files, default=files[0] if files else None,
                                   tooltip=f"Files in models/{paths.FOLDER}/{paths.IDENTITIES}.")],
            outputs=[F2DIdTokensIO.Output("id_tokens"),
                     F2DIdentityIO.Output("identity", tooltip="The saved averaged MSID identity, for F2D Mix "
                                                              "Identities or F2D Expression Guidance (empty in "
                                                              "files saved without it).")],
        )

    @classmethod
    def validate_inputs(cls, identity_file) -> bool | str:
        if identity_file not in paths.identity_files():
            return (f"identity_file: '{identity_file}' is not in {paths.identities_folder()}; save one with "
                    "F2D Save Identity first, then press R to refresh")
        return True

    @classmethod
    def execute(cls, identity_file) -> io.NodeOutput:
        tokens, identity, meta = load_identity(os.path.join(paths.identities_folder(), identity_file))
        return io.NodeOutput(F2DIdTokens(tokens, identity, meta), None if identity is None else Identity(identity, None))

"""Identity nodes: photos -> identity -> identity tokens, and identity files."""
from __future__ import annotations

import os
import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui

from ..f2d.detect import BACKENDS
from ..f2d.expression import check_strength, parse_expression
from ..f2d.identity import IdentityTokens, IdentityVectors, encode_photos, map_to_tokens
from ..f2d.identity_file import IdentityFileError, load_identity, save_new_identity
from ..f2d.mapping import EXPRESSION_DIM
from . import paths
from .detectors import face_detector
from .types import (
    CATEGORY,
    F2DExpressionIO,
    F2DIdentityIO,
    F2DIdTokensIO,
    F2DModelIO,
    unknown_choice,
)

FACE_CHOICES = ["largest"] + [str(i) for i in range(10)]


def comfy_images(image: torch.Tensor) -> list[np.ndarray]:
    """ComfyUI IMAGE (B, H, W, C) floats in 0..1 -> one array per photo; f2d turns each into
    8-bit RGB (f2d.align.to_uint8_rgb), as the photos were stored."""
    return list(image.cpu().numpy())


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
                "vectors are averaged. The note reports each photo: face size, sharpness, head pose, and "
                "whether it looks unlike the others."
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
                io.Boolean.Input("leave_out_unlike", default=False, optional=True,
                                 tooltip="With 3 or more photos: leave out photos whose identity is unlike the "
                                         "others' (probably another person, or a bad crop). The note flags them "
                                         "either way."),
                io.Boolean.Input("allow_no_face", default=False, optional=True,
                                 tooltip="If no photo has a face: go on without an identity instead of stopping the "
                                         "graph. Prompts then say 'a person' where the identifier stands, nothing "
                                         "is saved, and the notes say so."),
            ],
            outputs=[
                F2DIdentityIO.Output("identity", display_name="identity", tooltip="The person, for F2D Expression Guidance."),
                io.Image.Output("aligned_faces", display_name="aligned_faces", tooltip="The aligned 112x112 crop used from each photo (photos left "
                                                                "out by leave_out_unlike are not shown)."),
            ],
        )

    # One input only: ComfyUI 0.3.75 repeats a validate_inputs message once per input it names.
    # An unknown detector is refused with the same message as the run starts (below).
    @classmethod
    def validate_inputs(cls, face) -> bool | str:
        return unknown_choice("face", face, FACE_CHOICES) or True

    @classmethod
    def execute(cls, f2d_model, image, detector, face, skip_faceless, pose_keypoint=None,
                face_points=None, leave_out_unlike=False, allow_no_face=False) -> io.NodeOutput:
        problem = unknown_choice("detector", detector, BACKENDS) or unknown_choice("face", face, FACE_CHOICES)
        if problem:
            raise ValueError(problem)
        pbar = comfy.utils.ProgressBar(2 * len(image))

        def progress(done, total):
            # Between photos and between encoder chunks: where a big batch stops on Cancel.
            mm.throw_exception_if_processing_interrupted()
            pbar.update_absolute(done, total)

        given = pose_keypoint if pose_keypoint is not None else face_points or None
        with face_detector(detector, given, with_models=[f2d_model.patcher]) as det:
            identity = encode_photos(f2d_model.encoder, det, comfy_images(image), face=face,
                                     skip_faceless=skip_faceless, progress=progress,
                                     leave_out_unlike=bool(leave_out_unlike), allow_no_face=bool(allow_no_face))
        crops = torch.from_numpy(np.ascontiguousarray(identity.used_crops)).float() / 255.0
        if not len(crops):  # no face at all (allow_no_face): a black crop, so IMAGE consumers get an image
            crops = torch.zeros(1, 112, 112, 3)
        # Shown on the node: the crops used, and each photo's face and report (web/js reads f2d_faces).
        shown = ui.PreviewImage(crops, cls=cls).as_dict()
        return io.NodeOutput(identity, crops, ui={"images": shown["images"], "f2d_faces": identity.describe()})


class F2DExpressionGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DExpressionGuidance",
            display_name="F2D Expression Guidance (mapping)",
            category=CATEGORY,
            description=(
                "Runs the mapping network: the identity (and an expression) -> the two identity tokens. "
                "Without an expression input it uses the learned 'unconditional expression', as the paper "
                "does at inference: the prompt then decides the expression ('smiling', 'angry', ...)."
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
    def execute(cls, f2d_model, identity: IdentityVectors, strength, expression=None) -> io.NodeOutput:
        strength = check_strength(strength)  # before the run's work, naming strength (not the weights)
        if identity.is_empty:
            tokens = IdentityTokens.empty("no face in the reference photos")
            return io.NodeOutput(tokens, ui={"f2d_note": ["no identity (no face in the reference photos): prompts "
                                                          "will say 'a person' where the identifier stands"]})
        mm.load_model_gpu(f2d_model.patcher)
        tokens = map_to_tokens(f2d_model.encoder, identity, expression, strength,
                               info={"msid": f2d_model.msid_name, "mapping": f2d_model.mapping_name})
        return io.NodeOutput(tokens)


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
        if values is None:  # fed by a link: checked when it arrives
            return True
        try:
            parse_expression(values)
        except ValueError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, values) -> io.NodeOutput:
        return io.NodeOutput(parse_expression(values))


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
                io.String.Input("name", default="person",
                                tooltip="File name; an existing file is never overwritten (a number is appended). "
                                        "Saving the same identity again under its name writes nothing new."),
            ],
            outputs=[F2DIdTokensIO.Output("saved_tokens", tooltip="The same tokens, passed through.")],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def validate_inputs(cls, name) -> bool | str:
        if name is None:  # fed by a link: checked when it arrives
            return True
        problem = paths.identity_name_problem(name)
        return f"name: {problem}" if problem else True

    @classmethod
    def fingerprint_inputs(cls, name=None, **_) -> object:
        """ComfyUI reuses its cached result only while this value stays the same. Nothing saved
        under the name: always run (NaN equals nothing), so a deleted file is written again.
        Files there: their names, sizes and times, so the cached message stays true while they do."""
        if name is None or paths.identity_name_problem(name):
            return float("nan")
        state = paths.identity_name_state(name.strip())
        return state if state[1] else float("nan")

    @classmethod
    def execute(cls, id_tokens: IdentityTokens, name) -> io.NodeOutput:
        problem = paths.identity_name_problem(name)
        if problem:
            raise ValueError(f"F2D Save Identity: name: {problem}")
        if id_tokens.is_empty:
            return io.NodeOutput(id_tokens, ui={"text": ["nothing saved: no identity (no face in the reference photos)"]})
        name = paths.identity_stem(name.strip())  # "anna.safetensors" saves anna.safetensors, not .safetensors twice
        folder = paths.identities_folder()
        same = next((f for f in paths.identity_name_files(name) if _holds(os.path.join(folder, f), id_tokens)), None)
        if same is not None:
            text = f"already saved: this identity is {same} in {folder}"
        else:
            # The name is taken exclusively as the complete file appears: another server or the CLI
            # saving into the same folder at the same moment gets the next free name, never this file.
            path = save_new_identity(folder, name, id_tokens, id_tokens.identity,
                                     {**id_tokens.info, "name": name})
            text = f"saved {path.name} in {folder}"
        return io.NodeOutput(id_tokens, ui={"text": [text]})


def _holds(path: str, id_tokens: IdentityTokens) -> bool:
    """Whether the identity file at ``path`` holds exactly these tokens (and identity vector)."""
    try:
        tokens, identity, _ = load_identity(path)
    except (IdentityFileError, OSError):
        return False

    def same(a, b):
        return (a is None) == (b is None) and (a is None or torch.equal(a.float().cpu().reshape(-1),
                                                                         b.float().cpu().reshape(-1)))

    return same(tokens.first, id_tokens.first) and same(tokens.last, id_tokens.last) and same(identity, id_tokens.identity)


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
        if identity_file is None or not isinstance(identity_file, str):  # null in an API prompt
            return _no_identity_file(identity_file)
        if identity_file not in paths.identity_files():
            return (f"identity_file: '{identity_file}' is not in {paths.identities_folder()}; save one with "
                    "F2D Save Identity first, then press R to refresh")
        return True

    @classmethod
    def execute(cls, identity_file) -> io.NodeOutput:
        if not isinstance(identity_file, str):
            raise ValueError(_no_identity_file(identity_file))
        tokens, identity, meta = load_identity(os.path.join(paths.identities_folder(), identity_file))
        return io.NodeOutput(tokens, None if identity is None else IdentityVectors(identity, source="identity file"))


def _no_identity_file(value) -> str:
    return (f"identity_file: no file chosen (got {'null' if value is None else type(value).__name__}); pick a saved "
            f"identity from the list (files in {paths.identities_folder()}), or save one with F2D Save Identity first")

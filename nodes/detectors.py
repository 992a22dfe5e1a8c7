"""The face detector of every node that detects (F2D Encode Identity, F2D Identity Similarity,
F2D Best of N, F2D Face Detail): built once per server and configuration, reused, and closed when
ComfyUI unloads models.

A cache keyed on the configuration, not a loader node. A loader node (as IPAdapter's insightface
loader) would add a required socket to three existing nodes: every saved workflow would open with
an unconnected input and stop until the user rewires it, and API prompts would be refused. The
``detector`` widget stays where it is, and the cache makes its choice cost once per server.

The host owns each cached detector: it is wrapped in a ModelPatcher (of a module without
weights, so the host never moves or casts the detector itself) and loaded with the host's model
management while a node uses it (loaded with the node's other models in one call, so making room
for them cannot unload it mid-node). Whatever makes ComfyUI unload models -- "Unload Models" in the
menu (/free), recovery from an out-of-memory error, memory pressure -- detaches the patcher, and
its ON_DETACH callback (the host's public patcher callbacks; nothing of the host is patched)
drops the detector from the cache and closes it (at once, or when the node using it is done).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
from comfy.patcher_extension import CallbacksMP

from ..f2d.detect import DetectorCache, LandmarksDetector

CACHE = DetectorCache()
_patchers: dict[tuple, comfy.model_patcher.ModelPatcher] = {}


class DetectorHandle(torch.nn.Module):
    """What the host's model management sees of a detector: no weights (the detector is not a
    submodule, so loading never moves or casts it), its name for the host's logs."""

    def __init__(self, detector):
        super().__init__()
        self.__dict__["detector"] = detector  # not registered as a submodule

    def extra_repr(self) -> str:
        return getattr(self.detector, "why", getattr(self.detector, "name", "face detector"))


def insightface_roots() -> list[str]:
    """models/insightface (where IPAdapter FaceID, InstantID and PuLID users keep the packs), plus
    any 'insightface' folder another pack or extra_model_paths.yaml registered."""
    roots = [os.path.join(folder_paths.models_dir, "insightface")]
    if "insightface" in folder_paths.folder_names_and_paths:
        roots += [p for p in folder_paths.get_folder_paths("insightface") if p not in roots]
    return roots


def providers() -> list[str]:
    """onnxruntime providers for insightface: CUDA first where torch sees a GPU (onnxruntime falls
    back to the CPU when its CUDA provider cannot load; the note says which one ran)."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available() else ["CPUExecutionProvider"]


def _forget(key: tuple):
    # ComfyUI 0.3.75 also detaches a model it is about to load again (load_models_gpu re-loads an
    # already loaded model as a "clone" of itself, detach(unpatch_all=False)); only an unload
    # (LoadedModel.model_unload, from free_memory / unload_all_models) detaches with unpatch_all=True.
    # The patcher itself stays referenced here until a new detector replaces it: letting it die
    # inside the callback would fire the host's finalizer (cleanup_models) in the middle of its
    # free_memory loop, which then indexes a list that shrank under it.
    def on_detach(patcher, unpatch_all):
        if unpatch_all and _patchers.get(key) is patcher:
            CACHE.drop(key)
    return on_detach


@contextmanager
def face_detector(backend: str, given=None, with_models=()):
    """The detector for ``backend`` (from the cache), or the given points (pose_keypoint /
    face_points) when there are any. Held by the host's model management while in use; pass the
    node's other models (``with_models``: ModelPatchers) to load them in the same call, so that
    making room for them cannot unload the detector in the middle of the node."""
    if given is not None:
        if with_models:
            mm.load_models_gpu(list(with_models))
        yield LandmarksDetector(given)
        return
    key, det, built = CACHE.acquire(backend, insightface_roots(), None, providers(), str(mm.get_torch_device()))
    try:
        patcher = _patchers.get(key)
        if patcher is None or built:
            patcher = comfy.model_patcher.ModelPatcher(DetectorHandle(det), load_device=mm.get_torch_device(),
                                                       offload_device=mm.unet_offload_device())
            patcher.add_callback(CallbacksMP.ON_DETACH, _forget(key))
            _patchers[key] = patcher
        mm.load_models_gpu([*with_models, patcher])
        yield det
    finally:
        CACHE.release(det)


def cached_detectors() -> int:
    return len(CACHE)

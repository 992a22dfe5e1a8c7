"""Loading F2D weight files safely, with errors that say what the file is instead.

Weight files come from strangers: ``.pt`` files are read with ``torch.load(weights_only=True)``
only (a pickle that would run code is refused, not executed) and ``.safetensors`` is preferred.
Every file is checked key by key and shape by shape against the model before loading.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .files import save_safetensors_atomic
from .mapping import MappingNetwork
from .msid import MSIDEncoder

# Official checkpoints were saved from the bare modules; some re-uploads wrap them.
_WRAPPER_KEYS = ("state_dict", "model", "module", "params")


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file and the fix."""

    # Hosts that import the pack under a path-derived package name would show that path as
    # the error's type; users should read the library's name.
    __module__ = "f2d.weights"


# What a file looks like, judged from its keys: (predicate on the key set, description).
_SIGNATURES: list[tuple[Callable[[set[str]], bool], str]] = [
    (lambda k: any(x.startswith("blocks.") and ".attn.qkv." in x for x in k) and any(x.startswith("norms.layer_") for x in k),
     "an MSID identity encoder (msid.pt)"),
    (lambda k: any(x.startswith("i2t_first.") for x in k) or "null_exp" in k,
     "an F2D mapping network (mapping.pt)"),
    (lambda k: any(x.startswith("model.diffusion_model.") for x in k),
     "a Stable Diffusion checkpoint (UNet + VAE + text encoder); it belongs in models/checkpoints"),
    (lambda k: any(x.startswith(("input_blocks.", "down_blocks.")) for x in k),
     "a diffusion UNet on its own; it belongs in models/unet or models/diffusion_models"),
    (lambda k: any("lora_" in x or ".lora." in x for x in k),
     "a LoRA; it belongs in models/loras"),
    (lambda k: any(x.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for x in k),
     "a VAE; it belongs in models/vae"),
    (lambda k: any(x.startswith(("text_model.", "cond_stage_model.", "transformer.text_model.")) for x in k),
     "a CLIP text encoder; it belongs in models/clip or models/text_encoders"),
    (lambda k: any(x.startswith(("vision_model.", "visual.")) for x in k),
     "a CLIP vision encoder; it belongs in models/clip_vision"),
    (lambda k: any(x.startswith(("image_proj.", "ip_adapter.")) for x in k),
     "an IPAdapter model; it belongs in models/ipadapter"),
    (lambda k: any(x.startswith("blocks.") for x in k),
     "a ViT-style model, but not the MSID encoder (its read-out norms are missing)"),
]

MODEL_KINDS: dict[str, tuple[type[nn.Module], str]] = {
    "msid": (MSIDEncoder, "the MSID identity encoder (msid.pt)"),
    "mapping": (MappingNetwork, "the F2D mapping network (mapping.pt)"),
}


def describe_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    for matches, what in _SIGNATURES:
        if matches(keys):
            return what
    return f"an unrecognised model ({len(keys)} tensors, e.g. {', '.join(sorted(keys)[:3])})"


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{path}: holds {type(obj).__name__}, not a dictionary of tensors (a state dict). "
            "Save the weights with torch.save(model.state_dict(), ...) or convert them to .safetensors."
        )
    prefix = "module."  # left by DataParallel/DistributedDataParallel
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weight file as (tensors, metadata) without running any code it contains."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download?). Download it again.")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise WeightsError(
                f"{path}: not a readable .safetensors file ({e}). The file is damaged or truncated "
                "(an interrupted download?); download it again."
            ) from None
        if not tensors:
            raise WeightsError(f"{path}: the file holds no tensors")
        return tensors, metadata
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except RuntimeError as e:
        # Zip-format checkpoints that end early fail here; old-format ones as EOFError.
        if zipfile.is_zipfile(path) or "zip" in str(e).lower() or "central directory" in str(e).lower():
            raise WeightsError(
                f"{path}: the checkpoint archive is damaged or truncated ({e}). "
                "Download it again."
            ) from None
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint ({e}).") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(
            f"{path}: the file ends early ({type(e).__name__}); it is truncated. Download it again."
        ) from None
    except Exception as e:  # pickle.UnpicklingError and friends from the weights-only unpickler
        # torch's own text advises weights_only=False, exactly what must not be done with a
        # stranger's file; keep only the line that names the offending object.
        detail = next((ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()), None)
        if detail is None and not _starts_like_a_pickle(path):
            raise WeightsError(
                f"{path}: not a weight file -- its bytes are neither a PyTorch checkpoint (zip or pickle) nor "
                ".safetensors (damaged, or another kind of file saved under this name). Put the official "
                "msid.pt / mapping.pt there (see the README, 'Weights'), downloading them again if needed."
            ) from None
        raise WeightsError(
            f"{path}: refused. The file is a Python pickle holding objects other than tensors, which could run "
            f"code when loaded, so it was not loaded ({(detail or type(e).__name__)[:200]}). "
            "Use the official msid.pt / mapping.pt (plain state dicts) or a .safetensors file."
        ) from None
    return _unwrap(obj, path), {}


def _starts_like_a_pickle(path: Path) -> bool:
    """Pickle protocol 2+ opens with PROTO (0x80) and the protocol number; torch's legacy
    (non-zip) format is such a pickle too."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def check_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, kind: str, path: str | os.PathLike
) -> None:
    """Raise WeightsError naming missing, unexpected and mis-shaped keys, and what the file is."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    want = MODEL_KINDS[kind][1]
    what = describe_state_dict(state_dict)
    lines = [f"{path}: this is not {want}; it looks like {what}."]

    def listing(title: str, items: list[str]) -> None:
        if items:
            more = f" (and {len(items) - 8} more)" if len(items) > 8 else ""
            lines.append(f"{title} ({len(items)}): {', '.join(items[:8])}{more}")

    listing("missing keys", missing)
    listing("unexpected keys", unexpected)
    listing("wrong shapes", shapes)
    lines.append(f"Pick the file for {want} (see the README, 'Weights').")
    raise WeightsError("\n".join(lines))


def load_model(kind: str, path: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the model of ``kind`` ("msid" or "mapping") and load ``path`` into it strictly."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    state_dict, _ = load_tensors(path)
    model = MODEL_KINDS[kind][0]()
    check_state_dict(state_dict, model, kind, path)
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{path}: tensors hold NaN or infinite values ({', '.join(bad[:5])}); the file is damaged.")
    model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_msid(path: str | os.PathLike, **kw) -> MSIDEncoder:
    return load_model("msid", path, **kw)


def load_mapping(path: str | os.PathLike, **kw) -> MappingNetwork:
    return load_model("mapping", path, **kw)


def kind_of(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"msid" or "mapping" when the tensors load strictly into that model, else None."""
    for kind, (cls, _) in MODEL_KINDS.items():
        try:
            check_state_dict(state_dict, cls(), kind, "")
            return kind
        except WeightsError:
            continue
    return None


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert an F2D ``.pt`` checkpoint to ``.safetensors``; returns the model kind."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise WeightsError(f"{dst}: the output must end in .safetensors")
    state_dict, _ = load_tensors(src)
    kind = kind_of(state_dict)
    if kind is None:
        raise WeightsError(
            f"{src}: not an F2D checkpoint; it looks like {describe_state_dict(state_dict)}. "
            "Only msid.pt and mapping.pt are converted."
        )
    # No metadata: the loaders tell the kind from the keys (kind_of), and the output stays
    # byte-identical for equal input.
    save_safetensors_atomic(dst, state_dict)
    return kind

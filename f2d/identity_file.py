"""The identity file: a person encoded once, as a small ``.safetensors``.

Holds the two identity tokens (``first``, ``last``: 768 each) and, when known, the averaged
1536-d MSID identity (``identity``), so a person can be re-mapped with another expression.
One metadata key, ``f2d``, holds JSON (one key keeps the file byte-identical for equal input).
The ComfyUI nodes write and read it; the library's other front doors share it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .files import save_safetensors_atomic
from .identity import IdentityTokens, NonFiniteError, check_finite
from .mapping import TOKEN_DIM
from .msid import FEATURE_DIM

FORMAT = "f2d-identity"
VERSION = 1


class IdentityFileError(ValueError):
    __module__ = "f2d.identity_file"


# Identity files are made on this machine (F2D Save Identity, `python -m f2d encode`), so the
# fix for a broken one is to make it again, not to download it.
RESAVE = ("Make it again: encode the photos and save with F2D Save Identity (or `python -m f2d encode`), "
          "then press R to refresh.")


def save_identity(path: str | os.PathLike, tokens: IdentityTokens, identity: torch.Tensor | None = None,
                  info: dict | None = None) -> Path:
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    for what, t in (("identity tokens", torch.cat([tokens.first.reshape(-1), tokens.last.reshape(-1)])),
                    ("identity vector", identity)):
        if t is not None:
            check_finite(t.detach().float(), f"{path.name}: the {what} to save",
                         "Nothing was written; check the expression values and the weights.")
    tensors = {
        "first": tokens.first.detach().float().cpu().reshape(TOKEN_DIM).contiguous(),
        "last": tokens.last.detach().float().cpu().reshape(TOKEN_DIM).contiguous(),
    }
    if identity is not None:
        tensors["identity"] = identity.detach().float().cpu().reshape(FEATURE_DIM).contiguous()
    meta = {"format": FORMAT, "version": VERSION, **(info or {})}
    return save_safetensors_atomic(path, tensors, {"f2d": json.dumps(meta, sort_keys=True)})


def load_identity(path: str | os.PathLike) -> tuple[IdentityTokens, torch.Tensor | None, dict]:
    """(tokens (1, 768) each, identity (1, 1536) or None, metadata)."""
    from .weights import WeightsError, load_tensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise IdentityFileError(f"{path}: identity files are .safetensors files written by F2D Save Identity")
    if path.is_file() and path.stat().st_size == 0:
        raise IdentityFileError(f"{path}: the file is empty (a save that did not finish?). {RESAVE}")
    try:
        tensors, metadata = load_tensors(path)
    except WeightsError as e:
        detail = str(e).split(": ", 1)[-1].split(". ")[0]
        raise IdentityFileError(f"{path}: damaged, not a readable identity file ({detail}). {RESAVE}") from None
    try:
        meta = json.loads(metadata.get("f2d", "{}"))
    except json.JSONDecodeError:
        meta = {}
    shapes = {"first": (TOKEN_DIM,), "last": (TOKEN_DIM,), "identity": (FEATURE_DIM,)}
    problems = [f"{k}: missing" for k in ("first", "last") if k not in tensors]
    problems += [f"{k}: shape {tuple(v.shape)}, expected {shapes[k]}" for k, v in tensors.items()
                 if k in shapes and tuple(v.shape) != shapes[k]]
    if meta.get("format") != FORMAT:
        problems.append("no f2d-identity metadata")
    if problems:
        raise IdentityFileError(f"{path}: not a Face2Diffusion identity file ({'; '.join(problems)}). {RESAVE}")
    for k in ("first", "last", "identity"):
        if k in tensors:
            try:
                check_finite(tensors[k].float(), f"{path}: the '{k}' tensor", RESAVE)
            except NonFiniteError as e:
                raise IdentityFileError(str(e)) from None
    identity = tensors["identity"].float()[None] if "identity" in tensors else None
    tokens = IdentityTokens(tensors["first"].float()[None], tensors["last"].float()[None], identity, meta)
    return tokens, identity, meta

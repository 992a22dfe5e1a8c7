"""The identity file: a person encoded once, as a small ``.safetensors``.

Holds the two identity tokens (``first``, ``last``: 768 each) and, when known, the averaged
1536-d MSID identity (``identity``), so a person can be re-mapped with another expression.
One metadata key, ``f2d``, holds JSON (one key keeps the file byte-identical for equal input).
The ComfyUI nodes write and read it; the library's other front doors share it.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch

from .files import save_safetensors_atomic, save_safetensors_new
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


def _identity_contents(path: Path, tokens: IdentityTokens, identity: torch.Tensor | None,
                       info: dict | None) -> tuple[dict, dict]:
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
    return tensors, {"f2d": json.dumps(meta, sort_keys=True)}


def save_identity(path: str | os.PathLike, tokens: IdentityTokens, identity: torch.Tensor | None = None,
                  info: dict | None = None) -> Path:
    """Write the identity file at ``path``, replacing a file there (the CLI's --output)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return save_safetensors_atomic(path, *_identity_contents(path, tokens, identity, info))


def new_identity_names(folder: str | os.PathLike, stem: str):
    """``stem``, ``stem_1``, ``stem_2``, ... as identity file paths in ``folder``."""
    folder = Path(folder)
    yield folder / f"{stem}.safetensors"
    for n in range(1, 100_000):
        yield folder / f"{stem}_{n}.safetensors"


def save_new_identity(folder: str | os.PathLike, stem: str, tokens: IdentityTokens,
                      identity: torch.Tensor | None = None, info: dict | None = None) -> Path:
    """Write the identity under the first free name of :func:`new_identity_names`, taken
    exclusively: concurrent writers (two servers on one models folder, the CLI beside a server)
    each get their own file, never overwrite each other, and never report another's file."""
    first = Path(folder) / f"{stem}.safetensors"
    return save_safetensors_new(new_identity_names(folder, stem), *_identity_contents(first, tokens, identity, info))


@functools.lru_cache(maxsize=1)
def _identity_limits():
    """What an identity file may hold, checked from its header before any data is read."""
    from .weights import Limits

    return Limits(max_tensors=16, max_bytes=2**20, what="an F2D identity file (3 small tensors)")


def _metadata(raw: str | None, path: Path) -> dict:
    """The f2d metadata as a flat dict of plain values; a malformed one is named, not a Python error."""
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nesting thousands of levels deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:80]
        raise IdentityFileError(f"{path}: damaged, its f2d metadata is not readable JSON ({why}). {RESAVE}") from None
    if not isinstance(meta, dict):
        raise IdentityFileError(f"{path}: damaged, its f2d metadata is a JSON {type(meta).__name__}, not an object "
                                f"with format and version. {RESAVE}")
    version = meta.get("version", VERSION)
    if meta.get("format") == FORMAT and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise IdentityFileError(f"{path}: damaged, its f2d metadata has version {str(version)[:40]!r}, expected "
                                f"{VERSION}. {RESAVE}")
    if meta.get("format") == FORMAT and version > VERSION:
        raise IdentityFileError(f"{path}: written by a newer Face2Diffusion pack (identity file version {version}; "
                                f"this one reads version {VERSION}). Update the pack, or {RESAVE[0].lower() + RESAVE[1:]}")
    # Only plain values travel on (they are saved again by F2D Save Identity and shown to users).
    return {str(k)[:100]: (v[:1000] if isinstance(v, str) else v) for k, v in meta.items()
            if isinstance(v, (str, int, float, bool)) or v is None}


def load_identity(path: str | os.PathLike) -> tuple[IdentityTokens, torch.Tensor | None, dict]:
    """(tokens (1, 768) each, identity (1, 1536) or None, metadata)."""
    from .weights import WeightsError, load_tensors

    path = Path(path)
    if path.suffix != ".safetensors":
        raise IdentityFileError(f"{path}: identity files are .safetensors files written by F2D Save Identity")
    if path.is_file() and path.stat().st_size == 0:
        raise IdentityFileError(f"{path}: the file is empty (a save that did not finish?). {RESAVE}")
    try:
        tensors, metadata = load_tensors(path, limits=_identity_limits())
    except WeightsError as e:
        detail = str(e).split(": ", 1)[-1].split(". ")[0]
        raise IdentityFileError(f"{path}: damaged, not a readable identity file ({detail}). {RESAVE}") from None
    meta = _metadata(metadata.get("f2d"), path)
    shapes = {"first": (TOKEN_DIM,), "last": (TOKEN_DIM,), "identity": (FEATURE_DIM,)}
    problems = [f"{k}: missing" for k in ("first", "last") if k not in tensors]
    problems += [f"{k}: shape {tuple(v.shape)}, expected {shapes[k]}" for k, v in tensors.items()
                 if k in shapes and tuple(v.shape) != shapes[k]]
    problems += [f"{k}: {str(v.dtype).removeprefix('torch.')}, not floating point" for k, v in tensors.items()
                 if k in shapes and not v.is_floating_point()]
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

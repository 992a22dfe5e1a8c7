"""File I/O shared by every front door: reading photos and writing ``.safetensors`` atomically.

The lowest layer of the library (imports nothing from f2d), so that the CLI, training, weights
and identity files all use it without importing each other.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np


class PhotoError(ValueError):
    """A photo that cannot be read; the message names the file."""

    __module__ = "f2d.files"


def load_photo(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB, turned upright by its EXIF orientation (as phones store photos)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except FileNotFoundError:
        raise PhotoError(f"{path}: no such photo") from None
    except (UnidentifiedImageError, OSError) as e:
        raise PhotoError(f"{path}: not a readable image ({e})") from None


def _write_temporary(folder: Path, name: str, tensors: dict, metadata: dict[str, str] | None) -> Path:
    """A complete file under a unique hidden name in ``folder`` (the same file system as the
    final name, so that renaming or linking it is atomic); two writers never share one."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from another user's server
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` (replacing it) through a unique temporary file renamed into
    place, so that an interrupted write never leaves a truncated file under the final name and
    two writers never write through the same temporary file. Keep ``metadata`` to one key (or
    none): safetensors may order several keys differently between runs."""
    path = Path(path)
    tmp = _write_temporary(path.parent, path.name, tensors, metadata)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_safetensors_new(candidates: Iterable[str | os.PathLike], tensors: dict,
                         metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` under the first of ``candidates`` (paths in one folder) that does not
    exist yet, and return it. The name is taken exclusively when the complete file appears
    (a hard link of the temporary file fails if the name exists), so writers in other processes
    -- a second ComfyUI on the same models folder, the CLI beside a server -- never overwrite each
    other or report another's file as theirs. Where the file system has no hard links, the name is
    reserved with O_CREAT|O_EXCL and the complete file renamed over the reservation."""
    candidates = iter(candidates)
    first = Path(next(candidates))
    tmp = _write_temporary(first.parent, first.name, tensors, metadata)
    try:
        for path in itertools.chain([first], (Path(c) for c in candidates)):
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue
            except OSError:  # no hard links here (FAT, some network shares)
                pass
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                continue
            os.replace(tmp, path)
            return path
        raise FileExistsError(f"{first.parent}: every candidate name for {first.name} is taken")
    finally:
        tmp.unlink(missing_ok=True)

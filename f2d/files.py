"""File I/O shared by every front door: reading photos and writing ``.safetensors`` atomically.

The lowest layer of the library (imports nothing from f2d), so that the CLI, training, weights
and identity files all use it without importing each other.
"""
from __future__ import annotations

import os
from pathlib import Path

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


def save_safetensors_atomic(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` to ``path`` through a ``.part`` file renamed into place, so that an
    interrupted write never leaves a truncated file under the final name. Keep ``metadata`` to
    one key (or none): safetensors may order several keys differently between runs."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

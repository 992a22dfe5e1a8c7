"""Training data: a manifest of face images with masks, expressions and prompts.

``manifest.jsonl``, one JSON object per line, paths relative to the manifest's folder:

    {"image": "img/0001.jpg",        # the training image (any size; resized + centre-cropped)
     "mask": "mask/0001.png",        # face region M: white = face, black = the rest (same framing)
     "face": "face/0001.png",        # the face aligned to the 112x112 ArcFace template (MSID input)
     "expression": [0.1, ...],       # 64 numbers from a 3D face reconstruction; null if unknown
     "prompt": "a photo of f l"}     # must contain the identifier

``expression`` may also name a ``.npy`` file. Samples without an expression always train the
unconditional expression (``null_exp``). ``python -m f2d prepare-data`` writes such a manifest
from a folder of photos, with masks and aligned faces from the pack's detector.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..files import load_photo
from ..mapping import EXPRESSION_DIM


class DataError(ValueError):
    __module__ = "f2d.train.data"


@dataclass
class Sample:
    image: torch.Tensor  # (3, R, R) in [-1, 1]
    mask: torch.Tensor  # (1, R, R) in [0, 1]
    face: np.ndarray  # (112, 112, 3) uint8
    expression: torch.Tensor  # (64,)
    has_expression: bool
    prompt: str


def _square(im: Image.Image, size: int, resample) -> Image.Image:
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((size, size), resample)


class FaceDataset:
    def __init__(self, manifest: str | Path, resolution: int):
        self.manifest = Path(manifest)
        if not self.manifest.is_file():
            raise DataError(f"{self.manifest}: no such manifest (see f2d/train/data.py for the format)")
        root = self.manifest.parent
        self.resolution = resolution
        self.entries = []
        for n, line in enumerate(self.manifest.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{self.manifest}:{n}: not JSON ({err})") from None
            missing = [k for k in ("image", "mask", "face", "prompt") if k not in e]
            if missing:
                raise DataError(f"{self.manifest}:{n}: missing {', '.join(missing)}")
            for k in ("image", "mask", "face"):
                e[k] = root / e[k]
                if not e[k].is_file():
                    raise DataError(f"{self.manifest}:{n}: {k} file {e[k]} does not exist")
            if isinstance(e.get("expression"), str):
                e["expression"] = np.load(root / e["expression"]).tolist()
            if e.get("expression") is not None and len(e["expression"]) != EXPRESSION_DIM:
                raise DataError(f"{self.manifest}:{n}: expression has {len(e['expression'])} numbers, "
                                f"expected {EXPRESSION_DIM}")
            self.entries.append(e)
        if not self.entries:
            raise DataError(f"{self.manifest}: no samples")

    def __len__(self) -> int:
        return len(self.entries)

    def face(self, i: int) -> np.ndarray:
        """The aligned face alone (the frozen MSID's input), without reading the image and mask."""
        return np.array(Image.open(self.entries[i]["face"]).convert("RGB").resize((112, 112), Image.BILINEAR))

    def __getitem__(self, i: int) -> Sample:
        e = self.entries[i]
        # Upright by its EXIF orientation, as prepare() and the inference route read it.
        image = _square(Image.fromarray(load_photo(e["image"])), self.resolution, Image.BICUBIC)
        mask = _square(Image.open(e["mask"]).convert("L"), self.resolution, Image.BILINEAR)
        face = self.face(i)
        exp = e.get("expression")
        return Sample(
            image=torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 127.5 - 1,
            mask=torch.from_numpy(np.array(mask)).float()[None] / 255,
            face=face,
            expression=torch.tensor(exp if exp is not None else [0.0] * EXPRESSION_DIM, dtype=torch.float32),
            has_expression=exp is not None,
            prompt=e["prompt"],
        )


def prepare(images: Path, out: Path, prompt: str, detector) -> Path:
    """A manifest from a folder of photos: aligned faces and elliptical face masks from the
    detector's face box and points (a fallback for users without face-parsing masks).

    Photos go through the inference route (:func:`f2d.identity.load_photos` +
    :func:`f2d.identity.align_photos`: EXIF orientation, 8-bit RGB, the largest face, the same
    alignment), so a face trains as F2D Encode Identity and the CLI will see it."""
    from PIL import ImageDraw

    from ..identity import align_photos, load_photos

    out.mkdir(parents=True, exist_ok=True)
    (out / "face").mkdir(exist_ok=True)
    (out / "mask").mkdir(exist_ok=True)
    lines = []
    for path in sorted(p for p in Path(images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")):
        photo = load_photos([path])[0]
        aligned = align_photos([photo], detector, face="largest", allow_no_face=True)
        if not len(aligned.crops):
            print(f"{path.name}: no face, skipped")
            continue
        f = aligned.chosen[0]
        Image.fromarray(aligned.crops[0]).save(out / "face" / f"{path.stem}.png")
        mask = Image.new("L", (photo.shape[1], photo.shape[0]), 0)
        x0, y0, x1, y1 = f.box
        grow_x, grow_y = 0.1 * (x1 - x0), 0.2 * (y1 - y0)  # forehead and chin reach past the box
        ImageDraw.Draw(mask).ellipse([x0 - grow_x, y0 - grow_y, x1 + grow_x, y1 + 0.5 * grow_y], fill=255)
        mask.save(out / "mask" / f"{path.stem}.png")
        lines.append(json.dumps({"image": str(path.resolve()), "mask": f"mask/{path.stem}.png",
                                 "face": f"face/{path.stem}.png", "expression": None, "prompt": prompt}))
    manifest = out / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest

"""Detection + alignment cost per 512 px photo, per available backend, beside the identity
encoder's cost measured in the same run (goal: detection + alignment <= half the encoder).

    .venv/bin/python bench/detect.py [--repeats 30]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference formula (test scaffolding)

from encode import inputs, median_ms  # noqa: E402
from f2d.align import align_to_arcface_template  # noqa: E402
from f2d.detect import DetectorUnavailable, get_detector  # noqa: E402
from formula import formula_state_dict  # noqa: E402
from f2d.identity import IdentityEncoder  # noqa: E402
from f2d.mapping import MappingNetwork  # noqa: E402
from f2d.msid import MSIDEncoder  # noqa: E402


def photo() -> np.ndarray:
    try:
        from skimage import data

        return data.astronaut()  # 512 x 512
    except ImportError:
        from PIL import Image

        return np.array(Image.open(Path(__file__).resolve().parents[2] / "shared/fixtures/f2d-reference/astronaut.png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--insightface-root", action="append", default=[], help="folder holding models/<pack>/")
    args = ap.parse_args()

    msid, mapping = MSIDEncoder(), MappingNetwork()
    msid.load_state_dict(formula_state_dict(msid))
    mapping.load_state_dict(formula_state_dict(mapping))
    enc = IdentityEncoder(msid, mapping).eval().requires_grad_(False)
    fast = copy.deepcopy(enc).set_precision("bf16")
    x = inputs(1)
    encoder_ms = {
        "fp32": median_ms(lambda t: enc.tokens(enc.features(t)), x, args.repeats),
        "fast": median_ms(lambda t: fast.tokens(fast.features(t)), x, args.repeats),
    }

    image = photo()
    rows = []
    for backend in ("mediapipe", "insightface"):
        try:
            det = get_detector(backend, insightface_roots=args.insightface_root)
        except DetectorUnavailable as e:
            print(f"{backend}: not available ({str(e).splitlines()[0][:120]}...)")
            continue

        def detect_only(img, det=det):
            return det.detect(img)

        def detect_and_align(img, det=det):
            faces = det.detect(img)
            return align_to_arcface_template(img, max(faces, key=lambda f: f.area).points)

        rows.append((backend, median_ms(detect_only, image, args.repeats), median_ms(detect_and_align, image, args.repeats)))

    print(f"photo {image.shape[1]}x{image.shape[0]}, {torch.get_num_threads()} threads")
    print(f"identity encoder, batch 1: fp32 {encoder_ms['fp32']:.1f} ms, fast {encoder_ms['fast']:.1f} ms")
    print(f"{'backend':12s} {'detect ms':>9s} {'+align ms':>9s} {'/ encoder fp32':>14s} {'/ encoder fast':>14s}")
    for backend, det_ms, total_ms in rows:
        print(f"{backend:12s} {det_ms:9.1f} {total_ms:9.1f} {total_ms / encoder_ms['fp32']:14.2f} "
              f"{total_ms / encoder_ms['fast']:14.2f}")
    print("goal: detection + alignment <= 0.5 x the encoder time")


if __name__ == "__main__":
    main()

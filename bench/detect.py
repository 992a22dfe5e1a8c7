"""Face detection per backend on photos composed from skimage's astronaut (tests/face_photos.py):
group photos (24-80 px eye distances, rolls up to 35 degrees, turned and mirrored heads),
single faces (turned 35 degrees, a tight 112 px crop, grey, RGBA) and face-free photos.

Prints, per backend: recall (faces found / faces there), false faces, mean and worst point
error (% of each face's eye distance, mean over its five points, against the official points
moved with the face), and ms per photo (median of --repeats timed runs over the set; compare
backends within one run, not across machines).

    .venv/bin/python bench/detect.py [--repeats 1] [--insightface-root DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from face_photos import face_free_photos, group_photos, match, single_face_photos  # noqa: E402
from f2d.detect import DetectorUnavailable, get_detector  # noqa: E402


def evaluate(det, photos) -> dict:
    found = total = false = 0
    errors, per_photo = [], []
    for photo in photos:
        faces = det.detect(photo.image)
        errs, f = match([x.points for x in faces], photo.points)
        total += len(errs)
        found += sum(e is not None for e in errs)
        false += f
        errors += [e for e in errs if e is not None]
        per_photo.append((photo.name, len(faces), len(photo.points), f))
    return {"found": found, "total": total, "false": false, "errors": errors, "per_photo": per_photo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="timed runs over the whole set")
    ap.add_argument("--insightface-root", action="append", default=[], help="folder holding models/<pack>/")
    ap.add_argument("--verbose", action="store_true", help="faces found per photo")
    args = ap.parse_args()

    sets = {"group": group_photos(), "single": single_face_photos(), "face-free": face_free_photos()}
    photos = [p for s in sets.values() for p in s]
    print(f"{len(photos)} photos: {len(sets['group'])} group ({sum(len(p.points) for p in sets['group'])} faces), "
          f"{len(sets['single'])} single-face, {len(sets['face-free'])} face-free; {torch.get_num_threads()} threads")
    print(f"{'backend':12s} {'set':9s} {'recall':>11s} {'false':>5s} {'err mean %':>10s} {'err max %':>9s}")
    timings = {}
    for backend in ("mtcnn", "mediapipe", "insightface"):
        try:
            det = get_detector(backend, insightface_roots=args.insightface_root)
        except DetectorUnavailable as e:
            print(f"{backend:12s} not available: {str(e)[:100]}...")
            continue
        det.detect(photos[0].image)  # warm-up
        runs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            results = {name: evaluate(det, s) for name, s in sets.items()}
            runs.append((time.perf_counter() - t) * 1000 / len(photos))
        timings[backend] = float(np.median(runs))
        for name, r in results.items():
            recall = f"{r['found']}/{r['total']}" + (f" {100 * r['found'] / r['total']:3.0f}%" if r["total"] else "")
            errs = r["errors"]
            print(f"{backend:12s} {name:9s} {recall:>11s} {r['false']:5d} "
                  f"{np.mean(errs) if errs else float('nan'):10.1f} {max(errs) if errs else float('nan'):9.1f}")
            if args.verbose:
                for photo, n, truth, f in r["per_photo"]:
                    print(f"    {photo:24s} found {n} of {truth}, {f} false")
        if hasattr(det, "close"):
            det.close()
    print(f"{'backend':12s} {'ms/photo':>9s} {'x mtcnn':>8s}")
    for backend, ms in timings.items():
        print(f"{backend:12s} {ms:9.0f} {ms / timings.get('mtcnn', ms):8.2f}")


if __name__ == "__main__":
    main()

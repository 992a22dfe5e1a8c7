"""Face detection: our MTCNN against the reference implementation (facenet-pytorch's MTCNN,
same weights), and the other backends, on composed and real photos, in one run.

Sets:
- composed (tests/face_photos.py): group photos (24-80 px eye distances, rolls up to 35
  degrees, turned and mirrored heads), single faces (turned 35 degrees, a tight 112 px crop,
  grey, RGBA) and face-free photos; true five points for every face;
- real: the astronaut (official points), skimage's LFW subset (real faces, 25 px, shown 4x on a
  grid, 10 per photo; a face counts when a detection's eyes lie in its tile) and its non-face
  patches (the same grid: every detection is a false face), and the pack's example photos
  (workflows/*.png, faces counted only).

Prints recall (faces found / faces there), false faces and ms per photo for each detector
(calls interleaved photo by photo, one torch thread unless --threads), and our time as a
multiple of the reference's. facenet-pytorch is imported from --facenet-dir; when it is not
there it is installed into that folder with `pip install --no-deps --target` (its metadata pins
old torch/numpy; it is never installed into the environment).

    .venv/bin/python bench/detect.py [--repeats 3] [--facenet-dir /tmp/f2d-bench-facenet]
        [--device cpu] [--insightface-root DIR] [--verbose]
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from face_photos import Photo, face_free_photos, group_photos, match, single_face_photos  # noqa: E402
from f2d.detect import DetectorUnavailable, get_detector  # noqa: E402

LFW_SCALE = 4
LFW_GRID = (5, 2)  # tiles per photo across, down
LFW_GAP = 48


def rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3])


def lfw_photos(faces: bool) -> list[Photo]:
    """skimage's LFW subset (100 faces, then 100 non-face patches, 25x25 grey) on grids; each
    Photo's ``points`` holds one (2, 2) [top-left, bottom-right] tile per face."""
    from PIL import Image
    from skimage import data

    patches = data.lfw_subset()[:100] if faces else data.lfw_subset()[100:]
    side = 25 * LFW_SCALE
    per = LFW_GRID[0] * LFW_GRID[1]
    out = []
    for start in range(0, len(patches), per):
        canvas = np.full((LFW_GAP + LFW_GRID[1] * (side + LFW_GAP), LFW_GAP + LFW_GRID[0] * (side + LFW_GAP), 3), 128,
                         np.uint8)
        tiles = []
        for k, patch in enumerate(patches[start:start + per]):
            x, y = LFW_GAP + (k % LFW_GRID[0]) * (side + LFW_GAP), LFW_GAP + (k // LFW_GRID[0]) * (side + LFW_GAP)
            big = np.asarray(Image.fromarray((patch * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC))
            canvas[y:y + side, x:x + side] = big[..., None]
            tiles.append(np.array([[x, y], [x + side, y + side]], float))
        out.append(Photo(f"lfw {'faces' if faces else 'non-faces'} {start // per}", canvas,
                         tiles if faces else []))
    return out


def match_tiles(found_points: list[np.ndarray], tiles: list[np.ndarray]) -> tuple[list[bool], int]:
    hit, used = [], set()
    for t in tiles:
        j = next((j for j, p in enumerate(found_points) if j not in used
                  and np.all(p[:2].mean(0) >= t[0]) and np.all(p[:2].mean(0) <= t[1])), None)
        hit.append(j is not None)
        if j is not None:
            used.add(j)
    return hit, len(found_points) - len(used)


class FacenetReference:
    """facenet-pytorch's MTCNN with its defaults (min face 20 px, thresholds 0.6/0.7/0.7)."""

    name = "facenet-pytorch"

    def __init__(self, folder: Path, device: str):
        if not (folder / "facenet_pytorch").is_dir():
            print(f"installing facenet-pytorch (--no-deps) into {folder} ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder),
                            "facenet-pytorch"], check=True)
        sys.path.insert(0, str(folder))
        self.mtcnn = importlib.import_module("facenet_pytorch").MTCNN(keep_all=True, device=device)

    def points(self, image: np.ndarray) -> list[np.ndarray]:
        _, _, points = self.mtcnn.detect(rgb(image), landmarks=True)
        return [] if points is None else [np.asarray(p, float) for p in points]


class Ours:
    def __init__(self, backend: str, device: str | None, roots):
        self.det = get_detector(backend, insightface_roots=roots, **({"device": device} if device else {}))
        self.name = "ours, mtcnn" if backend == "mtcnn" else backend

    def points(self, image: np.ndarray) -> list[np.ndarray]:
        return [f.points for f in self.det.detect(image)]


def score(photo_set: str, photo: Photo, found: list[np.ndarray]) -> tuple[int, int, int]:
    """(found, there, false) for one photo."""
    if photo_set.startswith("lfw") or photo_set == "lfw faces":
        hit, false = match_tiles(found, photo.points)
        return sum(hit), len(hit), false
    if photo_set == "example photos":
        return min(len(found), 1), 1, max(0, len(found) - 1)  # one person per example photo
    errs, false = match(found, photo.points)
    return sum(e is not None for e in errs), len(errs), false


def example_photos() -> list[Photo]:
    from PIL import Image

    return [Photo(p.name, np.asarray(Image.open(p).convert("RGB"))) for p in sorted((ROOT / "workflows").glob("*.png"))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per photo (median)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None, help="where our MTCNN runs (default: cpu)")
    ap.add_argument("--facenet-dir", type=Path, default=Path("/tmp/f2d-bench-facenet"))
    ap.add_argument("--no-facenet", action="store_true")
    ap.add_argument("--others", action="store_true", help="also mediapipe and insightface (when available)")
    ap.add_argument("--insightface-root", action="append", default=[], help="folder holding models/<pack>/")
    ap.add_argument("--verbose", action="store_true", help="faces found per photo")
    ap.add_argument("--clock", choices=("thread", "wall"), default=None,
                    help="thread: this thread's CPU time (default with one thread on the CPU: robust on a busy "
                         "machine, where wall time mostly measures other processes); wall: elapsed time")
    args = ap.parse_args()
    clock_name = args.clock or ("thread" if args.threads == 1 and (args.device or "cpu") == "cpu" else "wall")
    clock = time.thread_time if clock_name == "thread" else time.perf_counter
    torch.set_num_threads(args.threads)

    sets = {
        "composed groups": group_photos(), "composed singles": single_face_photos(),
        "composed face-free": face_free_photos(),
        "astronaut (real)": [p for p in single_face_photos() if p.name == "astronaut"],
        "lfw faces": lfw_photos(True), "lfw non-faces": lfw_photos(False), "example photos": example_photos(),
    }
    detectors = [Ours("mtcnn", args.device, args.insightface_root)]
    if not args.no_facenet:
        detectors.append(FacenetReference(args.facenet_dir, args.device or "cpu"))
    if args.others:
        for backend in ("mediapipe", "insightface"):
            try:
                detectors.append(Ours(backend, None, args.insightface_root))
            except DetectorUnavailable as e:
                print(f"{backend}: not available ({str(e)[:80]}...)")
    print(f"{sum(map(len, sets.values()))} photos, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"our MTCNN on {args.device or 'cpu'}; times: {clock_name} clock")
    for d in detectors:
        d.points(sets["composed singles"][0].image)  # warm-up

    results = {}  # (detector, set) -> [found, there, false, [ms per photo]]
    for set_name, photos in sets.items():
        for photo in photos:
            times = {d.name: [] for d in detectors}
            found = {}
            for _ in range(args.repeats):
                for d in detectors:
                    t = clock()
                    found[d.name] = d.points(photo.image)
                    times[d.name].append((clock() - t) * 1000)
            for d in detectors:
                f, n, false = score(set_name, photo, found[d.name])
                r = results.setdefault((d.name, set_name), [0, 0, 0, []])
                r[0] += f
                r[1] += n
                r[2] += false
                r[3].append(statistics.median(times[d.name]))
                if args.verbose:
                    print(f"    {d.name:18s} {photo.name:24s} found {f}/{n}, {false} false, "
                          f"{statistics.median(times[d.name]):.0f} ms")

    print(f"\n{'detector':18s} {'set':20s} {'recall':>12s} {'false':>5s} {'ms/photo':>9s}")
    totals = {}
    for (name, set_name), (f, n, false, ms) in results.items():
        recall = f"{f}/{n}" + (f" {100 * f / n:3.0f}%" if n else "")
        print(f"{name:18s} {set_name:20s} {recall:>12s} {false:5d} {statistics.mean(ms):9.0f}")
        t = totals.setdefault(name, {"composed": [0, 0, 0, []], "real": [0, 0, 0, []]})
        part = t["composed" if set_name.startswith("composed") else "real"]
        part[0] += f
        part[1] += n
        part[2] += false
        part[3] += ms
    ref = FacenetReference.name if FacenetReference.name in totals else None
    print(f"\n{'detector':18s} {'part':9s} {'recall':>12s} {'false':>5s} {'ms/photo':>9s} {'time vs reference':>18s}")
    for name, parts in totals.items():
        for part, (f, n, false, ms) in parts.items():
            ratio = (f"{sum(ms) / sum(totals[ref][part][3]):17.2f}x" if ref else "")
            print(f"{name:18s} {part:9s} {f'{f}/{n}':>12s} {false:5d} {statistics.mean(ms):9.0f} {ratio}")
    if ref:
        print("time vs reference: our total time over the set / facenet-pytorch's, same photos, calls interleaved")


if __name__ == "__main__":
    main()

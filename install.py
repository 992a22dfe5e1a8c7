"""Installs the mediapipe face detector for Face2Diffusion without touching numpy or torch.

Run it with ComfyUI's Python (ComfyUI-Manager runs it after installing the pack):

    python install.py            # install mediapipe 0.10.21 if it is missing
    python install.py --check    # only report what is there

mediapipe 0.10.21 is the last release with the face-mesh API this pack uses, and it ships its
face models in the wheel (nothing is downloaded at run time). Its metadata pins numpy<2 and pulls
jax, sounddevice and opencv-contrib; none is needed for face detection and the numpy pin is
wrong in practice (it runs on numpy 2). So mediapipe itself goes in with --no-deps, and only its
real runtime needs are added, under a constraint that holds numpy and torch where they are.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from importlib import metadata

MEDIAPIPE = "mediapipe==0.10.21"
# What mediapipe's face solutions import at run time (cv2 and matplotlib via drawing_utils).
RUNTIME_NEEDS = {
    "absl": "absl-py",
    "attr": "attrs>=19.1.0",
    "flatbuffers": "flatbuffers>=2.0",
    "google.protobuf": "protobuf>=4.25.3,<5",
    "matplotlib": "matplotlib",
    "cv2": "opencv-python-headless>=4.10",  # any OpenCV the user already has will do
}
SMOKE_TEST = (
    "import numpy as np\n"
    "from mediapipe.python.solutions import face_detection\n"
    "with face_detection.FaceDetection(model_selection=1) as d:\n"
    "    d.process(np.zeros((64, 64, 3), np.uint8))\n"
)


def version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def mediapipe_works() -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", SMOKE_TEST], capture_output=True, text=True)
    tail = (r.stderr.strip().splitlines() or [""])[-1]
    return r.returncode == 0, tail


def pip(args: list[str], pins: dict[str, str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
        c.write("".join(f"{k}=={v}\n" for k, v in pins.items()))
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-c", c.name, *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Install the mediapipe face detector for Face2Diffusion.")
    ap.add_argument("--check", action="store_true", help="report only; install nothing")
    args = ap.parse_args(argv)

    installed = version("mediapipe")
    if installed:
        ok, why = mediapipe_works()
        if ok:
            print(f"mediapipe {installed} works (numpy {version('numpy')}); nothing to do")
            return 0
        if args.check:
            print(f"mediapipe {installed} is installed but fails: {why}")
            return 1
    elif args.check:
        print("mediapipe is not installed; run `python install.py`")
        return 1

    if not (3, 9) <= sys.version_info[:2] <= (3, 12):
        print(f"mediapipe 0.10.21 has no wheel for Python {sys.version_info.major}.{sys.version_info.minor}; "
              "use the insightface detector instead (see the README, 'Face detection').")
        return 0

    pins = {d: v for d in ("numpy", "torch", "torchvision") if (v := version(d))}
    missing = [spec for module, spec in RUNTIME_NEEDS.items() if not has_module(module)]
    pip(["--no-deps", MEDIAPIPE], pins)
    if missing:
        pip(missing, pins)
    ok, why = mediapipe_works()
    if not ok:
        pb = version("protobuf")
        hint = (f" mediapipe 0.10.21 needs protobuf 4.x and this environment has {pb}; another package "
                "may need the newer one, so it was left alone. If nothing else needs it: "
                "pip install \"protobuf>=4.25.3,<5\"") if pb and int(pb.split(".")[0]) >= 5 else ""
        print(f"mediapipe was installed but does not run: {why}.{hint}")
        return 1
    after = {d: version(d) for d in pins}
    assert after == pins, f"pinned packages moved: {pins} -> {after}"
    print(f"mediapipe {version('mediapipe')} works; numpy {version('numpy')} untouched")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sets up Face2Diffusion's face detection without moving torch, numpy or Pillow.

Run it with ComfyUI's Python (ComfyUI-Manager runs it after installing the pack):

    python install.py              # MTCNN weights (every Python, every platform)
    python install.py --mediapipe  # also mediapipe 0.10.21, where it has a wheel and none is installed
    python install.py --check      # install nothing; say which detector `auto` uses and whether it runs

MTCNN (the default detector when no insightface models are present) is the pack's own torch
code; its weights (2 MB, MIT licence) ship inside the facenet-pytorch wheel. That wheel's
metadata pins torch<2.3, numpy<2 and Pillow<10.3, so it is never installed: pip only downloads
it (--no-deps), the three weight files are read out of it with torch.load(weights_only=True),
checked, and written to f2d/data/mtcnn.safetensors. No installed package changes; nothing is
downloaded when ComfyUI runs.

mediapipe 0.10.21 is the last release with face models in the wheel (none for Python 3.13).
An installed mediapipe of any version is left alone: other packs may need a newer one.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

PACK = Path(__file__).resolve().parent
FACENET_WHEEL = "facenet-pytorch==2.6.0"
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
MEDIAPIPE_SMOKE_TEST = (
    "import numpy as np\n"
    "from mediapipe.python.solutions import face_detection\n"
    "with face_detection.FaceDetection(model_selection=1) as d:\n"
    "    d.process(np.zeros((64, 64, 3), np.uint8))\n"
)
# Which detector `auto` picks here and that it runs (on a blank image: no face, no error).
AUTO_SMOKE_TEST = (
    "import sys, numpy as np\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from f2d.detect import get_detector\n"
    "d = get_detector('auto', insightface_roots=sys.argv[2:])\n"
    "d.detect(np.zeros((96, 96, 3), np.uint8))\n"
    "print(d.why)\n"
)
PINNED = ("numpy", "torch", "torchvision", "pillow", "mediapipe")


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


def run_python(code: str, *args: str) -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    lines = (r.stdout if r.returncode == 0 else r.stderr).strip().splitlines()
    return r.returncode == 0, (lines or [""])[-1]


def pip(args: list[str], pins: dict[str, str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as c:
        c.write("".join(f"{k}=={v}\n" for k, v in pins.items()))
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args[:1], "-c", c.name, *args[1:]]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def insightface_roots() -> list[str]:
    """models/insightface of the ComfyUI this pack sits in (custom_nodes/<pack>), if any."""
    comfy = PACK.parent.parent
    root = comfy / "models" / "insightface"
    return [str(root)] if (comfy / "custom_nodes").is_dir() and root.is_dir() else []


def mtcnn_weights_present() -> bool:
    sys.path.insert(0, str(PACK))
    try:
        from f2d.mtcnn import weight_sources

        return bool(weight_sources())
    finally:
        sys.path.remove(str(PACK))


def install_mtcnn_weights() -> None:
    """facenet-pytorch's wheel, downloaded only, -> f2d/data/mtcnn.safetensors."""
    from safetensors.torch import save_file

    sys.path.insert(0, str(PACK))
    from f2d.mtcnn import MTCNN, NETS, WEIGHTS_FILE, read_facenet_pytorch_weights

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "--no-deps",
               "--only-binary", ":all:", "-d", tmp, FACENET_WHEEL]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("facenet_pytorch-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for n in NETS:
                # Through the library's checked reader: the sizes the archives declare are held to
                # what an MTCNN net needs before anything is expanded.
                member = z.getinfo(f"facenet_pytorch/data/{n}.pt")
                if member.file_size > 8 * 2**20:
                    raise SystemExit(f"{wheel.name}: {member.filename} expands to {member.file_size} bytes; "
                                     "an MTCNN net is under 1 MB. The download is not facenet-pytorch's wheel.")
                (Path(tmp) / f"{n}.pt").write_bytes(z.read(member))
            flat = read_facenet_pytorch_weights(Path(tmp))
    MTCNN(flat, wheel.name)  # checks keys, shapes and finite values
    WEIGHTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_file(flat, str(WEIGHTS_FILE), metadata={"source": f"{wheel.name} facenet_pytorch/data (MIT licence)"})
    WEIGHTS_FILE.chmod(0o644)  # readable by whichever user runs ComfyUI
    print(f"MTCNN weights written to {WEIGHTS_FILE}")


def install_mediapipe(pins: dict[str, str]) -> bool:
    installed = version("mediapipe")
    if installed:
        ok, why = run_python(MEDIAPIPE_SMOKE_TEST)
        print(f"mediapipe {installed} is installed and " + ("works; left as it is" if ok else
              f"has no usable face detector ({why}); left as it is (another package may need it)"))
        return ok
    if not (3, 9) <= sys.version_info[:2] <= (3, 12):
        print(f"mediapipe 0.10.21 has no wheel for Python {sys.version_info.major}.{sys.version_info.minor}; "
              "not installed (MTCNN needs no mediapipe)")
        return False
    missing = [spec for module, spec in RUNTIME_NEEDS.items() if not has_module(module)]
    pip(["install", "--no-deps", MEDIAPIPE], pins)
    if missing:
        pip(["install", *missing], pins)
    ok, why = run_python(MEDIAPIPE_SMOKE_TEST)
    if not ok:
        pb = version("protobuf")
        hint = (f" mediapipe 0.10.21 needs protobuf 4.x and this environment has {pb}; another package "
                "may need the newer one, so it was left alone. If nothing else needs it: "
                "pip install \"protobuf>=4.25.3,<5\"") if pb and int(pb.split(".")[0]) >= 5 else ""
        print(f"mediapipe was installed but does not run: {why}.{hint}")
        return False
    print(f"mediapipe {version('mediapipe')} works")
    return True


def report() -> int:
    ok, why = run_python(AUTO_SMOKE_TEST, str(PACK), *insightface_roots())
    if ok:
        print(f"face detector: {why}")
        return 0
    print(f"no working face detector: {why}")
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Set up the face detectors of Face2Diffusion.")
    ap.add_argument("--check", action="store_true", help="install nothing; name the detector auto uses")
    ap.add_argument("--mediapipe", action="store_true",
                    help="also install mediapipe 0.10.21 (Python 3.9-3.12) if no mediapipe is installed")
    args = ap.parse_args(argv)
    if args.check:
        return report()

    before = {d: v for d in PINNED if (v := version(d))}
    pins = {d: v for d, v in before.items() if d != "mediapipe"}
    if mtcnn_weights_present():
        print("MTCNN weights present; nothing to download")
    else:
        install_mtcnn_weights()
    if args.mediapipe:
        install_mediapipe(pins)
    after = {d: version(d) for d in before}
    if after != before:
        print(f"installed packages moved: {before} -> {after}")
        return 1
    print("unchanged: " + ", ".join(f"{d} {v}" for d, v in before.items()))
    return report()


if __name__ == "__main__":
    sys.exit(main())

"""The install route users take, in throwaway environments: install.py (what
scripts/setup-host.sh runs) in a venv sharing this one's packages, and a fresh Python 3.13
environment as the README describes. Needs no ComfyUI host, but pip/venv work makes these the
slowest library tests: marked ``install`` (left out of ``make test-fast``)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f2d_testkit import REPO

pytestmark = pytest.mark.install


# -- the install route users take, in throwaway environments ------------------------------------

# What mediapipe 0.10.21 and its run-time needs bring: left out of the environment a throwaway
# venv shares with this one, so that install.py has them to install.
NOT_SHARED = ("mediapipe", "absl", "attr", "attrs", "flatbuffers", "google", "protobuf", "matplotlib",
              "mpl_toolkits", "cv2", "opencv")


def copy_pack(dest: Path) -> Path:
    """The pack as a user's checkout: library, installer, requirements; no MTCNN weights yet."""
    shutil.copytree(REPO / "f2d", dest / "f2d", ignore=shutil.ignore_patterns("data", "__pycache__"))
    for name in ("install.py", "requirements.txt"):
        shutil.copy(REPO / name, dest / name)
    return dest


def run(cmd, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def versions(python: Path, *dists: str) -> dict[str, str | None]:
    code = ("import sys, json\nfrom importlib import metadata as m\nout = {}\nfor d in sys.argv[1:]:\n"
            "    try: out[d] = m.version(d)\n    except m.PackageNotFoundError: out[d] = None\nprint(json.dumps(out))")
    return json.loads(run([python, "-c", code, *dists]).stdout)


DETECT_WITH_AUTO = (
    "import sys, numpy as np\n"
    "from PIL import Image\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "from f2d.detect import get_detector\n"
    "d = get_detector('auto')\n"
    "faces = d.detect(np.array(Image.open(sys.argv[2]).convert('RGB')))\n"
    "print(d.why, len(faces), *faces[0].points.round(1).ravel())\n"
)


def assert_auto_finds_the_astronaut(python: Path, pack: Path, fixtures: Path, reference) -> None:
    out = run([python, "-c", DETECT_WITH_AUTO, pack, fixtures / "astronaut.png"]).stdout.split()
    assert out[:5] == ["mtcnn", "(auto:", "no", "insightface", "model"] and out[6] == "1", out
    points = np.array(out[7:], float).reshape(5, 2)
    official = reference["align.landmarks5"].numpy()
    assert np.linalg.norm(points - official, axis=1).max() <= 6.0


def test_install_route_keeps_numpy_2(tmp_path, fixtures, reference):
    """`python install.py --mediapipe` (what scripts/setup-host.sh runs) in a throwaway venv that
    shares this one's torch, numpy and Pillow but has no mediapipe: the MTCNN weights come out of
    the facenet-pytorch wheel, mediapipe 0.10.21 goes in and runs, and numpy 2, torch and Pillow
    are where they were. A second run (an installed mediapipe) changes nothing."""
    shared = tmp_path / "shared-site"
    shared.mkdir()
    for folder in [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]:
        for entry in folder.iterdir():
            name = entry.name.lower().replace("-", "_")
            if not (name.startswith(NOT_SHARED + ("__editable__", "comfyui_face2diffusion")) or name.endswith(".pth")
                    or (shared / entry.name).exists()):
                (shared / entry.name).symlink_to(entry)
    venv = tmp_path / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    (Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
     / "shared.pth").write_text(str(shared) + "\n")
    before = versions(py, "numpy", "torch", "pillow", "mediapipe")
    assert before["mediapipe"] is None and int(before["numpy"].split(".")[0]) >= 2
    pack = copy_pack(tmp_path / "pack")

    out = run([py, pack / "install.py", "--mediapipe"]).stdout
    assert "MTCNN weights written" in out and "mediapipe 0.10.21 works" in out, out
    assert out.strip().splitlines()[-1] == "face detector: mtcnn (auto: no insightface model pack)"
    after = versions(py, "numpy", "torch", "pillow", "mediapipe")
    assert after == {**before, "mediapipe": "0.10.21"}
    assert_auto_finds_the_astronaut(py, pack, fixtures, reference)
    again = run([py, pack / "install.py", "--mediapipe"]).stdout
    assert "MTCNN weights present" in again and "mediapipe 0.10.21 is installed and works; left as it is" in again
    check = run([py, pack / "install.py", "--check"]).stdout
    assert check.strip() == "face detector: mtcnn (auto: no insightface model pack)"


def python313() -> str | None:
    """A working Python 3.13: pyenv's 3.13.0 (a pyenv shim alone does not run) or python3.13."""
    candidates = []
    if shutil.which("pyenv"):
        r = subprocess.run(["pyenv", "which", "python3.13"], capture_output=True, text=True,
                           env={**os.environ, "PYENV_VERSION": "3.13.0"})
        candidates += [r.stdout.strip()] if r.returncode == 0 else []
    candidates += [shutil.which("python3.13")] if shutil.which("python3.13") else []
    for c in candidates:
        r = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] == (3, 13))"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip() == "True":
            return c
    return None


def test_python_3_13_fresh_install_detects_with_no_download_at_run_time(tmp_path, fixtures, reference):
    """Python 3.13 (ComfyUI's Windows portable today), as the README tells users: a ComfyUI
    environment (torch, here the CI's 2.14.1) -> pip install -r requirements.txt -> python
    install.py -> auto finds the face; a newer mediapipe another pack installed is never
    replaced. The venv is kept in .venv-py313: torch is the slow part (~2 min the first time)."""
    base = python313()
    if base is None:
        pytest.skip("no Python 3.13 interpreter (python3.13 on PATH or pyenv 3.13.0)")
    venv = REPO / ".venv-py313"
    py = venv / "bin" / "python"
    if not py.exists():
        run([base, "-m", "venv", venv])
    if versions(py, "torch")["torch"] is None:
        run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", REPO / "scripts" / "constraints.txt",
             "torch==2.14.1"])
    pack = copy_pack(tmp_path / "pack")
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", pack / "requirements.txt"])
    before = versions(py, "numpy", "torch", "pillow", "mediapipe")
    out = run([py, pack / "install.py"]).stdout
    assert "MTCNN weights written" in out, out
    assert out.strip().splitlines()[-1] == "face detector: mtcnn (auto: no insightface model pack)"
    assert versions(py, "numpy", "torch", "pillow", "mediapipe") == before
    assert_auto_finds_the_astronaut(py, pack, fixtures, reference)
    # Another pack brought mediapipe 1.x (3.13 wheels, no face models): install.py leaves it.
    run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "mediapipe==1.2.3"])
    out = run([py, pack / "install.py", "--mediapipe"]).stdout
    assert "mediapipe 1.2.3 is installed and has no usable face detector" in out and "left as it is" in out, out
    assert versions(py, "mediapipe")["mediapipe"] == "1.2.3"
    assert run([py, pack / "install.py", "--check"]).stdout.strip() == "face detector: mtcnn (auto: no insightface model pack)"

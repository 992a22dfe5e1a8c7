"""f2d/ is the method library: importing it must not pull in ComfyUI."""
import subprocess
import sys

from f2d_testkit import REPO


def test_f2d_imports_no_comfyui_module():
    code = (
        "import sys, f2d, f2d.msid, f2d.mapping, f2d.align, f2d.weights, f2d.identity, f2d.cli, f2d.detect, "
        "f2d.tokens, f2d.likeness, f2d.identity_file, f2d.generate, f2d.train.loss, f2d.train.data, "
        "f2d.train.trainer\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'comfy', 'comfy_api', 'comfy_extras', 'folder_paths', 'server', 'nodes', 'execution'})\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO / "tests", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr

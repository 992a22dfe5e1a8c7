"""Fixtures every test may use, and the rule that keeps the folders and markers in step.

Layout: tests/*.py need no ComfyUI host (library, CLI, diffusers, install route); tests/host/*.py
use ComfyUI, in this process (``f2d_nodes``) or as a real server (``comfy_server``), and carry the
``host`` marker. Their fixtures live in tests/host/conftest.py, so a test outside tests/host cannot
ask for them."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from f2d_testkit import require_fixtures, write_formula_weights

HOST_DIR = Path(__file__).resolve().parent / "host"
# What only the ComfyUI host provides: its modules, and the testkit helpers that import or start it.
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server",
                "nodes", "node_helpers", "latent_preview")
HOST_HELPERS = {"import_host", "ComfyServer", "build_tiny_sd15_checkpoint", "build_tiny_controlnet"}


def _host_imports(path: Path) -> list[str]:
    """The host modules and host helpers a test file imports (anywhere in it, functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in HOST_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in HOST_MODULES:
                found.append(node.module)
            elif node.module == "f2d_testkit":
                found += [a.name for a in node.names if a.name in HOST_HELPERS]
    return found


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the rule holds for every run, make test-fast too
def pytest_collection_modifyitems(config, items):
    """Folders match markers: a test under tests/host carries ``host``; a test elsewhere neither
    carries it nor imports the host. Broken, the run stops before any test runs."""
    wrong, checked = [], {}
    for item in items:
        path = Path(item.path).resolve()
        inside = HOST_DIR in path.parents
        marked = item.get_closest_marker("host") is not None
        if inside and not marked:
            wrong.append(f"{item.nodeid}: in tests/host without the 'host' marker (pytestmark = pytest.mark.host, "
                         "or move it to tests/ if it needs no ComfyUI)")
        elif not inside and marked:
            wrong.append(f"{item.nodeid}: marked 'host' outside tests/host (move it to tests/host)")
        elif not inside and path not in checked:
            checked[path] = _host_imports(path)
            if checked[path]:
                wrong.append(f"{path.relative_to(HOST_DIR.parent.parent)}: imports {', '.join(checked[path])} "
                             "outside tests/host (move the test to tests/host and mark it 'host')")
    if wrong:
        raise pytest.UsageError("tests and markers out of step:\n  " + "\n  ".join(wrong))


@pytest.fixture(scope="session")
def fixtures():
    return require_fixtures()


@pytest.fixture(scope="session")
def reference(fixtures) -> dict[str, torch.Tensor]:
    return load_file(str(fixtures / "reference.safetensors"))


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    """Formula weights written the way users receive them: official .pt and .safetensors."""
    folder = tmp_path_factory.mktemp("weights")
    return {
        (kind, fmt): write_formula_weights(folder, kind, fmt)
        for kind in ("msid", "mapping")
        for fmt in ("pt", "safetensors")
    }


@pytest.fixture(scope="session", params=["mtcnn", "mediapipe"])
def detector(request):
    """Each real detector that needs no download: MTCNN (weights copied by install.py) and
    mediapipe 0.10.21 (where it has a wheel; scripts/setup-host.sh installs both)."""
    from f2d.detect import DetectorUnavailable, get_detector

    try:
        d = get_detector(request.param)
    except DetectorUnavailable as e:
        if request.param == "mediapipe" and sys.version_info >= (3, 13):
            pytest.skip(f"mediapipe 0.10.21 has no wheel for this Python: {e}")
        raise
    yield d
    if hasattr(d, "close"):
        d.close()


@pytest.fixture(scope="session")
def tiny_diffusers_dir(tmp_path_factory) -> Path:
    """A diffusers SD1.x pipeline folder (tiny UNet and VAE, the full CLIP-L with the reference
    formula weights), for ``python -m f2d generate --base``. Built once per run."""
    from f2d_testkit import build_tiny_diffusers_sd15

    return build_tiny_diffusers_sd15(tmp_path_factory.mktemp("tiny_sd15") / "pipeline")

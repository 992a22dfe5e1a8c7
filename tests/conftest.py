"""Fixtures every test may use, and the rule that keeps the folders and markers in step.

Layout: tests/*.py need no ComfyUI host (library, CLI, diffusers, install route); tests/host/*.py
use ComfyUI, in this process (``f2d_nodes``) or as a real server (``comfy_server``), and carry the
``host`` marker. Their fixtures live in tests/host/conftest.py, so a test outside tests/host cannot
ask for them."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from f2d_testkit import require_fixtures, write_formula_weights


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the rule holds for every run, make test-fast too
def pytest_collection_modifyitems(config, items):
    """Folders match markers (f2d_testkit.layout_problems); broken, the run stops before any test."""
    from f2d_testkit import layout_problems

    wrong = layout_problems(items)
    if wrong:
        raise pytest.UsageError("tests and markers out of step:\n  " + "\n  ".join(wrong))


def pytest_terminal_summary(terminalreporter):
    """How many ComfyUI servers the run started and which test models it built or reused: the
    figures that make the host tests slow when they grow."""
    from f2d_testkit import COUNTS

    if COUNTS:
        terminalreporter.write_sep("-", "f2d test resources")
        for what, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{what}: {n}")


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

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from f2d_testkit import require_fixtures, write_formula_weights


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

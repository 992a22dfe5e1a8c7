from __future__ import annotations

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


@pytest.fixture(scope="session")
def detector():
    """The real mediapipe detector (no download)."""
    from f2d.detect import MediaPipeDetector

    d = MediaPipeDetector()
    yield d
    d.close()

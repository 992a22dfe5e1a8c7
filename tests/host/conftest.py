import pytest

from f2d_testkit import import_host, write_formula_weights


@pytest.fixture(scope="session")
def host_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_inprocess")
    write_formula_weights(base / "models" / "face2diffusion", "msid", "pt")
    write_formula_weights(base / "models" / "face2diffusion", "mapping", "pt")
    return base


@pytest.fixture(scope="session")
def f2d_nodes(host_base):
    """The pack's nodes module, with ComfyUI imported in this process (CPU)."""
    return import_host(host_base)

"""Fixtures of the tests that use the ComfyUI host (every file here is marked ``host``).

- ``f2d_nodes``: the pack's nodes module with ComfyUI imported in this process (CPU); its models
  folder is ``host_base``.
- ``tiny_checkpoint``: the tiny SD1.5 checkpoint (built once, cached between runs), for in-process
  tests and for servers of their own.
- ``comfy_server``: ONE real ComfyUI server (bundled front end) shared by every module of the run;
  ``comfy_servers.get(front_end)`` gives the one per front end ("bundled" or NEW_FRONTEND).
  Its folders hold every file the example workflows name (see ``shared_base``). A module that
  needs other start-up arguments starts its own ``ComfyServer`` (test_reliability.py: an LRU cache).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from f2d_testkit import (
    REPO,
    ComfyServer,
    build_tiny_controlnet,
    build_tiny_lora,
    build_tiny_sd15_checkpoint,
    copy_into,
    front_end_args,
    import_host,
    make_workflows_module,
    write_formula_weights,
    write_identity_sensitive_mapping,
)


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


@pytest.fixture(scope="session")
def tiny_checkpoint(f2d_nodes, tmp_path_factory) -> Path:
    """The tiny SD1.5 checkpoint under the name the example workflows use (a link into the cache)."""
    return build_tiny_sd15_checkpoint(tmp_path_factory.getbasetemp() / "tiny_checkpoint"
                                      / make_workflows_module().CHECKPOINT)


def shared_base(base: Path, tiny_checkpoint: Path, mapping: Path) -> Path:
    """A base directory with every file the example workflows name, and what the modules that
    share the server need:
    - models/checkpoints, loras, controlnet: the tiny checkpoint, LoRA and ControlNet;
    - models/face2diffusion: msid.pt (formula), mapping.pt (``mapping``: identity-sensitive, see
      write_identity_sensitive_mapping), mapping.safetensors (formula), identities/;
    - elsewhere/f2d/mapping_shared.pt, served through extra_model_paths.yaml;
    - input: the example photos and coffee.png (no face)."""
    mw = make_workflows_module()
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / mw.CHECKPOINT).symlink_to(tiny_checkpoint)
    build_tiny_lora(models / "loras" / mw.LORA)
    build_tiny_controlnet(models / "controlnet" / mw.CONTROLNET)
    f2d = models / "face2diffusion"
    write_formula_weights(f2d, "msid", "pt")
    shutil.copy(mapping, f2d / "mapping.pt")
    write_formula_weights(f2d, "mapping", "safetensors")
    (f2d / "identities").mkdir()
    extra = base / "elsewhere"
    write_formula_weights(extra / "f2d", "mapping", "pt").rename(extra / "f2d" / "mapping_shared.pt")
    (base / "extra_model_paths.yaml").write_text(
        yaml.safe_dump({"shared": {"base_path": str(extra), "face2diffusion": "f2d"}}))
    for photo in mw.PHOTOS:
        copy_into(REPO / "workflows" / photo, base / "input")
    from skimage import data

    Image.fromarray(data.coffee()).save(base / "input" / "coffee.png")
    return base


class SharedServers:
    """One ComfyServer per front end, started when first asked for, stopped at the end of the run."""

    def __init__(self, tmp_path_factory, tiny_checkpoint: Path):
        self.tmp, self.tiny_checkpoint = tmp_path_factory, tiny_checkpoint
        self.running: dict[str, ComfyServer] = {}
        self._mapping: Path | None = None

    def get(self, front_end: str = "bundled") -> ComfyServer:
        if front_end in self.running:
            return self.running[front_end]
        args = front_end_args(front_end)
        if self._mapping is None:
            mw = make_workflows_module()
            self._mapping = write_identity_sensitive_mapping(self.tmp.mktemp("mapping") / "mapping.pt",
                                                             [REPO / "workflows" / p for p in mw.PHOTOS])
        base = shared_base(self.tmp.mktemp(f"comfy_{front_end}"), self.tiny_checkpoint, self._mapping)
        server = ComfyServer(base, ["--extra-model-paths-config", str(base / "extra_model_paths.yaml")] + args)
        server.__enter__()
        server.front_end = front_end
        server.f2d_folders = [base / "models" / "face2diffusion", base / "elsewhere" / "f2d"]
        self.running[front_end] = server
        assert server.post("/settings/Comfy.TutorialCompleted", True)[0] == 200  # no Templates dialog
        return server

    def close(self):
        for server in self.running.values():
            server.__exit__(None, None, None)
        self.running.clear()


@pytest.fixture(scope="session")
def comfy_servers(tmp_path_factory, tiny_checkpoint):
    servers = SharedServers(tmp_path_factory, tiny_checkpoint)
    yield servers
    servers.close()


@pytest.fixture(scope="session")
def comfy_server(comfy_servers) -> ComfyServer:
    """The run's real ComfyUI server with the bundled front end (see shared_base for its files).
    Tests may add files; a test that needs the weights gone uses ``empty_model_folders``, which
    puts them back."""
    return comfy_servers.get("bundled")


@pytest.fixture
def empty_model_folders():
    """``empty(server)``: the server's face2diffusion folders emptied (saved identities aside) for
    this test; after it, they hold again what they held before, and what the test wrote there goes."""
    emptied: list[tuple[ComfyServer, list[tuple[Path, Path]]]] = []

    def empty(server: ComfyServer) -> None:
        stash = Path(f"{server.base}-stash-{len(emptied)}")
        kept = []
        for i, folder in enumerate(server.f2d_folders):
            for f in folder.iterdir():
                if f.name != "identities":
                    (stash / str(i)).mkdir(parents=True, exist_ok=True)
                    kept.append((f, stash / str(i) / f.name))
                    f.rename(kept[-1][1])
        emptied.append((server, kept))

    yield empty
    for server, kept in reversed(emptied):
        for folder in server.f2d_folders:
            for f in folder.iterdir():
                if f.name == "identities":
                    continue
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
        for original, moved in kept:
            moved.rename(original)

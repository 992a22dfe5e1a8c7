"""The pack's metadata, as pip, the registry and ComfyUI-Manager read it; `comfy node validate`
(comfy-cli, installed in its own venv by scripts/setup-browser.sh) passes."""
from __future__ import annotations

import json
import os
import subprocess
import tomllib

import pytest

from f2d_testkit import REPO

COMFY_CLI = REPO / ".venv" / "comfy-cli" / "bin"
OLDEST_TESTED_CORE = "0.3.75"  # scripts/setup-host.sh installs this ComfyUI


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_dependencies_are_requirements_txt_without_torch():
    deps = pyproject()["project"]["dependencies"]
    assert deps == requirements(), "pyproject dependencies and requirements.txt differ: change both"
    names = [d.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for d in deps]
    assert not {"torch", "torchvision", "torchaudio"} & set(names), "the pack must never install torch"


def test_registry_metadata():
    project, comfy = pyproject()["project"], pyproject()["tool"]["comfy"]
    assert comfy["requires-comfyui"] == f">={OLDEST_TESTED_CORE}"
    assert "Operating System :: OS Independent" in project["classifiers"]
    assert any(c.startswith("Environment :: GPU ::") for c in project["classifiers"])
    assert {"Homepage", "Issues", "Documentation"} <= set(project["urls"])


def _comfy_cli(*args, cwd=REPO, tmp_path):
    if not (COMFY_CLI / "comfy").exists():
        if os.environ.get("CI"):
            pytest.fail(f"comfy-cli missing at {COMFY_CLI}: scripts/setup-browser.sh installs it")
        pytest.skip(f"comfy-cli not installed at {COMFY_CLI} (bash scripts/setup-browser.sh)")
    env = dict(os.environ, HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "config"),
               PATH=f"{COMFY_CLI}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_passes(tmp_path):
    r = _comfy_cli("comfy", "--skip-prompt", "--no-enable-telemetry", "node", "validate", tmp_path=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "All validation checks passed" in out, out
    assert "Warning" not in out, out  # e.g. an invalid classifier is dropped with a warning


def test_registry_parser_reads_our_fields(tmp_path):
    """comfy-cli's own parser (what `comfy node publish` sends) sees the fields we set."""
    code = """import json, dataclasses
from comfy_cli.registry.config_parser import extract_node_configuration
c = extract_node_configuration()
print(json.dumps({"deps": c.project.dependencies, "os": c.project.supported_os,
                  "acc": c.project.supported_accelerators, "comfyui": c.project.supported_comfyui_version,
                  "urls": dataclasses.asdict(c.project.urls)}))"""
    r = _comfy_cli(str(COMFY_CLI / "python"), "-c", code, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    parsed = json.loads(r.stdout.strip().splitlines()[-1])
    assert parsed["deps"] == requirements()
    assert parsed["os"] == ["OS Independent"] and parsed["acc"] and parsed["comfyui"] == f">={OLDEST_TESTED_CORE}"
    assert parsed["urls"]["homepage"] and parsed["urls"]["issues"] and parsed["urls"]["documentation"], parsed["urls"]

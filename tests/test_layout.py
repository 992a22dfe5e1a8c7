"""The folder rule the collection hook enforces (tests/conftest.py): host tests in tests/host with
the ``host`` marker, nothing outside it that imports ComfyUI."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from f2d_testkit import HOST_DIR, layout_problems


@dataclass
class Item:  # what the rule reads of a collected test
    path: Path
    marks: set = field(default_factory=set)

    @property
    def nodeid(self):
        return f"{self.path.name}::test_x"

    def get_closest_marker(self, name):
        return pytest.mark.host.mark if name in self.marks else None


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def test_each_way_of_breaking_the_rule_is_named(tmp_path):
    outside = tmp_path / "tests"
    plain = write(outside, "test_plain.py", "import numpy\nfrom f2d_testkit import REPO\n")
    imports_comfy = write(outside, "test_a.py", "def test_x():\n    import comfy.sd\n")
    starts_server = write(outside, "test_b.py", "from f2d_testkit import ComfyServer, REPO\n")
    inside = HOST_DIR / "test_never_written.py"  # only its path is read
    problems = layout_problems([Item(plain), Item(imports_comfy), Item(starts_server), Item(plain, {"host"}),
                                Item(inside), Item(inside, {"host"})])
    assert problems == [
        "test_a.py: imports comfy.sd outside tests/host (move the test to tests/host and mark it 'host')",
        "test_b.py: imports ComfyServer outside tests/host (move the test to tests/host and mark it 'host')",
        "test_plain.py::test_x: marked 'host' outside tests/host (move it to tests/host)",
        "test_never_written.py::test_x: in tests/host without the 'host' marker (pytestmark = pytest.mark.host, "
        "or move it to tests/ if it needs no ComfyUI)",
    ]

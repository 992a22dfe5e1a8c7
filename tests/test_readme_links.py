"""The README's links lead somewhere: relative links name files or folders of this repository,
#anchors name one of its headings, and addresses are https (never a bare or local one)."""
from __future__ import annotations

import re

from f2d_testkit import REPO

README = (REPO / "README.md").read_text()
LINKS = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", README)


def _anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


ANCHORS = {_anchor(h) for h in re.findall(r"^#+ (.+)$", README, flags=re.M)}


def test_there_are_links():
    assert len(LINKS) > 20


def test_relative_links_exist():
    relative = [u for u in LINKS if not u.startswith(("https://", "http://", "#", "mailto:"))]
    assert relative, "the README links its workflows and picture"
    missing = [u for u in relative if not (REPO / u.split("#")[0]).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_anchors_name_headings():
    bad = [u for u in LINKS if u.startswith("#") and u[1:] not in ANCHORS]
    assert not bad, f"README links to headings that do not exist: {bad}"


def test_addresses_are_https():
    assert not [u for u in LINKS if u.startswith("http://")]


def test_images_are_images():
    for u in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README):
        assert u.endswith((".png", ".jpg", ".jpeg", ".webp", ".gif")) and (REPO / u).is_file(), u


def test_users_read_install_weights_and_quick_start_before_the_developer_section():
    order = [README.index(h) for h in ("## Install", "## Weights", "## Quick start", "## For developers of this pack")]
    assert order == sorted(order), order
    dev = README[order[-1]:]
    assert "make run" in dev and "make test" in dev and "make run-test-models" in dev
    # The section opens with exactly the two developer commands: run, test.
    block = dev.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make run", "make test"]


def test_the_template_menu_path_is_one_both_front_ends_have():
    # "View -> Browse Templates" and the left toolbar's Templates button exist in 1.32.9 and 1.58.1
    # (their core menu commands); "Workflow -> Browse Templates" in neither.
    import re

    assert not re.search(r"Workflow →\s+Browse", README)
    assert re.search(r"View →\s+Browse\s+Templates", README) and "**Templates** in the left toolbar" in README

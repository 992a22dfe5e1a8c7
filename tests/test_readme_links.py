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


def test_developer_commands_stay_near_the_top():
    head = README[: README.index("## Install")]
    assert "make run" in head and "make test" in head

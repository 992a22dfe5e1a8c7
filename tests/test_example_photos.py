"""The photos the example workflows ship pass the pack's own checks, through each real detector:
one face found in each, eyes well over the TINY FACE limit, no warning on the node's note. A
shipped example that draws the pack's own warning teaches users to ignore it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from f2d_testkit import REPO, make_workflows_module

MW = make_workflows_module()
USED = sorted({n.inputs["image"] for w in MW.workflows().values() for n in w.nodes.values() if n.cls == "LoadImage"})


def test_every_photo_a_workflow_loads_is_a_shipped_example():
    assert set(USED) <= set(MW.PHOTOS) and set(MW.PHOTOS) == set(MW.PHOTO_SOURCES)
    shipped = {p.name for p in (REPO / "workflows").glob("*.png")}
    assert shipped == set(MW.PHOTOS), "a photo that no workflow uses, or one that is missing"


@pytest.mark.parametrize("photo", MW.PHOTOS)
def test_example_photo_passes_the_packs_checks(detector, photo):
    from f2d.detect import TINY_EYE_DISTANCE, detect_and_align

    image = np.asarray(Image.open(REPO / "workflows" / photo).convert("RGB"))
    found = detect_and_align(image[None], detector)
    assert len(found.faces[0]) == 1, f"{photo}: {len(found.faces[0])} faces ({detector.name})"
    eyes = found.chosen[0].eye_distance
    assert eyes >= 1.5 * TINY_EYE_DISTANCE, f"{photo}: eyes {eyes:.0f} px apart ({detector.name})"
    assert found.tiny() == [] and not any("TINY" in line for line in found.describe()), found.describe()

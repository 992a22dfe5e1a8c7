"""F2D Encode Identity in the real host: the detector it used and a tiny-face warning in its
on-node note (ui f2d_faces), and face points given by another pack instead of detection."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.host


def photo_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).float()[None] / 255


def test_auto_says_which_detector_and_warns_about_a_tiny_face(f2d_nodes, fixtures):
    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    astronaut = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    small = np.array(Image.fromarray(astronaut).resize((160, 160), Image.BILINEAR))
    out = f2d_nodes.F2DEncodeIdentity.execute(model, photo_tensor(small), "auto", "largest", False)
    note = out.ui["f2d_faces"]
    assert note[0].startswith("photo 0: the only face") and "TINY FACE" in note[0] and "identity will be poor" in note[0]
    assert note[-1] == "detector: mtcnn (auto: no insightface model pack), running on CPU"
    assert out.args[0].vectors.shape == (1, 1536)  # still encodes


def test_pose_keypoints_from_another_pack_replace_the_detector(f2d_nodes, fixtures, reference):
    model = f2d_nodes.F2DLoadMSID.execute("msid.pt", "mapping.pt").args[0]
    astronaut = np.array(Image.open(fixtures / "astronaut.png").convert("RGB"))
    landmarks = reference["align.landmarks68"].numpy().astype(float)
    pose = [{"people": [{"face_keypoints_2d": np.column_stack([landmarks, np.ones(68)]).ravel().tolist()}],
             "canvas_width": 512, "canvas_height": 512}]
    out = f2d_nodes.F2DEncodeIdentity.execute(model, photo_tensor(astronaut), "auto", "largest", False, pose_keypoint=pose)
    crops = out.args[1]
    official = reference["align.crop_uint8"].numpy().astype(int)
    assert np.abs((crops[0] * 255).round().numpy().astype(int) - official).max() <= 1
    assert out.ui["f2d_faces"][-1] == "detector: given points (no detection)"
    five = reference["align.landmarks5"].numpy().tolist()
    import json

    out = f2d_nodes.F2DEncodeIdentity.execute(model, photo_tensor(astronaut), "auto", "largest", False,
                                              face_points=json.dumps(five))
    assert np.abs((out.args[1][0] * 255).round().numpy().astype(int) - official).max() <= 1

"""MTCNN face detector (Zhang et al., 2016) in plain torch.

Three cascaded networks: P-Net proposes windows over an image pyramid, R-Net rejects most of
them, O-Net scores the rest and places five points (eyes, nose tip, mouth corners). The weights
are the MIT-licensed ones shipped inside the ``facenet-pytorch`` wheel
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``, plain state dicts). install.py copies them out of
the wheel into ``f2d/data/mtcnn.safetensors`` without installing facenet-pytorch (whose metadata
would pull old torch, numpy and Pillow); an installed facenet-pytorch is used as-is.

Only torch is needed: no torchvision (its version follows the user's ComfyUI), no OpenCV.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = Path(__file__).resolve().parent / "data" / "mtcnn.safetensors"
NETS = ("pnet", "rnet", "onet")


class MTCNNWeightsError(RuntimeError):
    """The MTCNN weight files are missing or not what they should be."""

    __module__ = "f2d.mtcnn"


class PNet(nn.Module):
    """Fully convolutional 12x12 proposal net: face probability and box offsets per 2 px step."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


def _flatten(x):
    # The ported weights expect the channel-last, width-before-height order of the original
    # (column-major) implementation.
    return x.permute(0, 3, 2, 1).reshape(len(x), -1)


class RNet(nn.Module):
    """24x24 refinement net."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """48x48 output net: probability, box offsets and five points."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def facenet_pytorch_data() -> Path | None:
    """The data folder of an installed facenet-pytorch, found without importing it (its
    ``__init__`` imports torchvision and requests)."""
    try:
        spec = importlib.util.find_spec("facenet_pytorch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if all((folder / f"{n}.pt").is_file() for n in NETS) else None


def read_facenet_pytorch_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The three state dicts of a facenet-pytorch data folder, as one flat ``net.key`` dict."""
    from .weights import Limits, WeightsError, load_tensors

    # Each net is well under 1 MB: checked from the archive's directory before torch reads it.
    limits = Limits(max_tensors=64, max_bytes=8 * 2**20, what="an MTCNN net of facenet-pytorch (under 1 MB)")
    flat = {}
    for n in NETS:
        try:
            sd, _ = load_tensors(folder / f"{n}.pt", limits=limits)
        except WeightsError as e:
            raise MTCNNWeightsError(str(e)) from None
        flat.update({f"{n}.{k}": v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in sd.items()})
    return flat


def weight_sources(extra: Path | None = None) -> list[Path]:
    """Where MTCNN weights are looked for, in order."""
    found = [p for p in (extra, WEIGHTS_FILE) if p is not None and p.is_file()]
    data = facenet_pytorch_data()
    return found + ([data] if data else [])


def load_state(source: Path) -> dict[str, torch.Tensor]:
    if source.is_dir():
        return read_facenet_pytorch_weights(source)
    from safetensors.torch import load_file

    return load_file(str(source))


def missing_weights_help() -> str:
    return (f"The MTCNN face detector's weights were not found ({WEIGHTS_FILE} or an installed facenet-pytorch). "
            "Run `python install.py` in the Face2Diffusion pack folder with ComfyUI's Python: it copies the three "
            "small weight files (2 MB, MIT licence) out of the facenet-pytorch wheel and changes no installed package.")


class MTCNN(nn.Module):
    def __init__(self, state: dict[str, torch.Tensor] | None = None, source: str = ""):
        super().__init__()
        self.pnet, self.rnet, self.onet = PNet(), RNet(), ONet()
        if state is not None:
            self.load_flat(state, source)
        self.eval().requires_grad_(False)

    def load_flat(self, state: dict[str, torch.Tensor], source: str = "") -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise MTCNNWeightsError(f"MTCNN weights {source}: missing {missing[:4]}, unexpected {unexpected[:4]}")
        for k, v in expected.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise MTCNNWeightsError(f"MTCNN weights {source}: {k} has shape {tuple(state[k].shape)}, "
                                        f"expected {tuple(v.shape)}")
            if not torch.isfinite(state[k]).all():
                raise MTCNNWeightsError(f"MTCNN weights {source}: {k} holds NaN or infinite values")
        self.load_state_dict({k: v.float() for k, v in state.items()})

    @classmethod
    def from_available_weights(cls, extra: Path | None = None) -> "MTCNN":
        sources = weight_sources(extra)
        if not sources:
            raise MTCNNWeightsError(missing_weights_help())
        return _cached(str(sources[0]), sources[0].stat().st_mtime_ns)

    # -- detection ----------------------------------------------------------------------------

    @torch.inference_mode()
    def detect(self, image: np.ndarray, min_size: float = 20.0, thresholds=(0.6, 0.7, 0.7),
               factor: float = 0.709) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an (H, W, 3) uint8 RGB image: boxes (N, 4) x0 y0 x1 y1, scores (N,),
        points (N, 5, 2), all in image pixels."""
        img = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)[None].float()
        img = (img - 127.5) / 128.0
        h, w = image.shape[:2]
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))

        # P-Net over the pyramid: scale s maps a face of min_size px onto the 12 px window.
        boxes = []
        scale = 12.0 / min_size
        while min(h, w) * scale >= 12:
            sh, sw = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            level = F.interpolate(img, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
            prob, reg = self.pnet(level)
            boxes.append(_proposals(prob[0], reg[0], scale, thresholds[0]))
            scale *= factor
        boxes = torch.cat(boxes) if boxes else torch.zeros(0, 9)
        if not len(boxes):
            return empty
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes = _square(_regress(boxes[:, :4], boxes[:, 5:9])).round()

        # R-Net on 24 px crops.
        prob, reg = self.rnet(_crops(img, boxes, 24))
        keep = prob >= thresholds[1]
        boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
        if not len(boxes):
            return empty
        k = nms(boxes, prob, 0.7)
        boxes = _square(_regress(boxes[k], reg[k])).round()

        # O-Net on 48 px crops: final score, box and points.
        prob, reg, marks = self.onet(_crops(img, boxes, 48))
        keep = prob >= thresholds[2]
        boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
        if not len(boxes):
            return empty
        bw, bh = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
        points = torch.stack([boxes[:, :1] + bw * marks[:, :5], boxes[:, 1:2] + bh * marks[:, 5:]], dim=2)
        boxes = _regress(boxes, reg)
        k = nms(boxes, prob, 0.7, by_smaller_area=True)
        return boxes[k].double().numpy(), prob[k].double().numpy(), points[k].double().numpy()


    @torch.inference_mode()
    def points_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """O-Net's five points for the face in ``box`` (x0 y0 x1 y1) of an RGB uint8 image."""
        img = (torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)[None].float() - 127.5) / 128.0
        b = _square(torch.tensor(np.asarray(box, np.float32)[None, :4])).round()
        _, _, marks = self.onet(_crops(img, b, 48))
        side = b[:, 2:4] - b[:, :2]
        return torch.stack([b[:, 0:1] + side[:, 0:1] * marks[:, :5], b[:, 1:2] + side[:, 1:2] * marks[:, 5:]],
                           2)[0].double().numpy()

@functools.lru_cache(maxsize=2)
def _cached(source: str, mtime_ns: int) -> MTCNN:
    """One loaded network per weight file (the nodes ask for a detector on every run)."""
    return MTCNN(load_state(Path(source)), source)


def _proposals(prob, reg, scale, threshold):
    """P-Net map cells above threshold -> (N, 9) boxes x0 y0 x1 y1, score, 4 offsets."""
    ys, xs = torch.nonzero(prob >= threshold, as_tuple=True)
    if not len(ys):
        return torch.zeros(0, 9)
    cells = torch.stack([xs, ys], 1).float()
    top_left = torch.floor((2 * cells + 1) / scale)
    bottom_right = torch.floor((2 * cells + 12) / scale)
    out = torch.cat([top_left, bottom_right, prob[ys, xs][:, None], reg[:, ys, xs].T], 1)
    return out[nms(out[:, :4], out[:, 4], 0.5)]


def _regress(boxes, reg):
    wh = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return boxes[:, :4] + reg * wh


def _square(boxes):
    centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
    side = (boxes[:, 2:4] - boxes[:, :2]).max(1, keepdim=True).values
    return torch.cat([centre - side / 2, centre + side / 2], 1)


def _crops(img, boxes, size):
    """Each box cut from ``img`` (black outside the image) and resized to size x size."""
    _, _, h, w = img.shape
    out = torch.zeros(len(boxes), 3, size, size)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        bw, bh = max(1, x1 - x0), max(1, y1 - y0)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
        if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + bw, y0 + bh):
            patch = img[:, :, y0:y0 + bh, x0:x0 + bw]
        else:
            patch = torch.full((1, 3, bh, bw), -127.5 / 128.0)
            if sx1 > sx0 and sy1 > sy0:
                patch[:, :, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[:, :, sy0:sy1, sx0:sx1]
        out[i] = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, by_smaller_area: bool = False) -> torch.Tensor:
    """Greedy non-maximum suppression; indices kept, best first. ``by_smaller_area`` measures
    overlap against the smaller box, which also removes a box nested in a better one."""
    if not len(boxes):
        return torch.zeros(0, dtype=torch.long)
    order = torch.argsort(scores, descending=True)
    b = boxes[order].float()
    area = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    alive = torch.ones(len(b), dtype=torch.bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        lt = torch.maximum(b[i, :2], b[:, :2])
        rb = torch.minimum(b[i, 2:4], b[:, 2:4])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = torch.minimum(area[i], area) if by_smaller_area else area[i] + area - inter
        alive &= inter / union.clamp(min=1e-9) <= threshold
    return order[torch.tensor(keep, dtype=torch.long)]

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
        self.to(memory_format=torch.channels_last)  # see _input
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
    def from_available_weights(cls, extra: Path | None = None, device: str | torch.device = "cpu") -> "MTCNN":
        sources = weight_sources(extra)
        if not sources:
            raise MTCNNWeightsError(missing_weights_help())
        return _cached(str(sources[0]), sources[0].stat().st_mtime_ns, str(torch.device(device)))

    @property
    def device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    # -- detection ----------------------------------------------------------------------------

    def _input(self, image: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(np.array(image, np.uint8)).permute(2, 0, 1)[None].to(self.device).float()
        # Channels-last: the cascade's 3-64 channel convolutions and poolings run ~1.6x faster so.
        return ((img - 127.5) / 128.0).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def detect(self, image: np.ndarray, min_size: float = 20.0, thresholds=(0.6, 0.7, 0.7),
               factor: float = 0.709, near: tuple[float, float, float] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in an (H, W, 3) uint8 RGB image: boxes (N, 4) x0 y0 x1 y1, scores (N,),
        points (N, 5, 2), all in image pixels. ``near`` = (x, y, r): only faces whose proposal
        box is centred within r px of (x, y) (a look at one known place; R-Net and O-Net then
        score a handful of crops instead of every proposal of the photo)."""
        return self.cascade(image, min_size, thresholds, factor, near)[:3]

    @torch.inference_mode()
    def cascade(self, image: np.ndarray, min_size: float = 20.0, thresholds=(0.6, 0.7, 0.7),
                factor: float = 0.709, near: tuple[float, float, float] | None = None,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`detect`'s boxes, scores and points, and the candidates: square boxes and R-Net
        scores (M, 5) that R-Net accepted, whether or not O-Net then confirmed them (where a face
        may be that this pass did not see well, e.g. a strongly rolled one)."""
        return self.cascade_many([image], min_size, thresholds, factor, near)[0]

    @torch.inference_mode()
    def cascade_many(self, images: list[np.ndarray], min_size: float = 20.0, thresholds=(0.6, 0.7, 0.7),
                     factor: float = 0.709, near: tuple[float, float, float] | None = None) -> list[tuple]:
        """:meth:`cascade` for several images of one size, each network run once per pyramid
        level / stage for all of them (the second looks of a group photo: one batch, not one
        cascade per face). Each image's result is what :meth:`cascade` gives for it alone."""
        img = torch.cat([self._input(im) for im in images]).contiguous(memory_format=torch.channels_last)
        n, (h, w) = len(images), images[0].shape[:2]
        none = np.zeros((0, 5))
        empty = (np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))
        results: list = [empty + (none,)] * n

        # P-Net over the pyramid: scale s maps a face of min_size px onto the 12 px window.
        per = [[] for _ in range(n)]
        scale = 12.0 / min_size
        while min(h, w) * scale >= 12:
            sh, sw = int(np.ceil(h * scale)), int(np.ceil(w * scale))
            level = F.interpolate(img, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
            prob, reg = (t.cpu() for t in self.pnet(level))
            for i in range(n):
                per[i].append(_proposals(prob[i], reg[i], scale, thresholds[0]))
            scale *= factor
        stage = {}  # image -> its boxes going into the next stage
        for i in range(n):
            boxes = torch.cat(per[i]) if per[i] else torch.zeros(0, 9)
            if not len(boxes):
                continue
            boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
            boxes = _square(_regress(boxes[:, :4], boxes[:, 5:9])).round()
            if near is not None:
                centre = (boxes[:, :2] + boxes[:, 2:4]) / 2
                boxes = boxes[(centre - torch.tensor(near[:2], dtype=boxes.dtype)).norm(dim=1) <= near[2]]
            if len(boxes):
                stage[i] = boxes

        # R-Net on 24 px crops.
        outs = self._batched(self.rnet, img, stage, 24)
        candidates = {}
        for i, (prob, reg) in outs.items():
            boxes = stage.pop(i)
            keep = prob >= thresholds[1]
            boxes, prob, reg = boxes[keep], prob[keep], reg[keep]
            if not len(boxes):
                continue
            k = nms(boxes, prob, 0.7)
            stage[i] = _square(_regress(boxes[k], reg[k])).round()
            candidates[i] = torch.cat([stage[i], prob[k][:, None]], 1).double().numpy()
            results[i] = empty + (candidates[i],)

        # O-Net on 48 px crops: final score, box and points.
        for i, (prob, reg, marks) in self._batched(self.onet, img, stage, 48).items():
            boxes = stage[i]
            keep = prob >= thresholds[2]
            boxes, prob, reg, marks = boxes[keep], prob[keep], reg[keep], marks[keep]
            if not len(boxes):
                continue
            bw, bh = (boxes[:, 2] - boxes[:, 0])[:, None], (boxes[:, 3] - boxes[:, 1])[:, None]
            points = torch.stack([boxes[:, :1] + bw * marks[:, :5], boxes[:, 1:2] + bh * marks[:, 5:]], dim=2)
            boxes = _regress(boxes, reg)
            k = nms(boxes, prob, 0.7, by_smaller_area=True)
            results[i] = (boxes[k].double().numpy(), prob[k].double().numpy(), points[k].double().numpy(),
                          candidates[i])
        return results

    @staticmethod
    def _batched(net, img: torch.Tensor, boxes: dict[int, torch.Tensor], size: int) -> dict[int, tuple]:
        """``net`` on the crops of every image's boxes in one call; its outputs split per image."""
        if not boxes:
            return {}
        order = list(boxes)
        crops = torch.cat([_crops(img[i:i + 1], boxes[i], size) for i in order])
        outs = [t.cpu() for t in net(crops)]
        split, start = {}, 0
        for i in order:
            end = start + len(boxes[i])
            split[i] = tuple(t[start:end] for t in outs)
            start = end
        return split

    @torch.inference_mode()
    def points_in_box(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        """O-Net's five points for the face in ``box`` (x0 y0 x1 y1) of an RGB uint8 image."""
        return self.points_in_boxes([image], [box])[0]

    @torch.inference_mode()
    def points_in_boxes(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """:meth:`points_in_box` for one box in each image, O-Net run once for all."""
        if not images:
            return []
        crops = []
        squares = []
        for image, box in zip(images, boxes):
            b = _square(torch.tensor(np.asarray(box, np.float32)[None, :4])).round()
            crops.append(_crops(self._input(image), b, 48))
            squares.append(b)
        _, _, marks = self.onet(torch.cat(crops))
        return list(_points(torch.cat(squares), marks.cpu()).double().numpy())

    @torch.inference_mode()
    def look(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """O-Net on one box (x0 y0 x1 y1, made square) in each image, one call for all: its
        scores (N,), regressed boxes (N, 4) and five points (N, 5, 2)."""
        if not images:
            return np.zeros(0), np.zeros((0, 4)), np.zeros((0, 5, 2))
        squares = _square(torch.tensor(np.asarray(boxes, np.float32)[:, :4])).round()
        crops = torch.cat([_crops(self._input(im), squares[k:k + 1], 48) for k, im in enumerate(images)])
        prob, reg, marks = (t.cpu() for t in self.onet(crops))
        return prob.double().numpy(), _regress(squares, reg).double().numpy(), _points(squares, marks).double().numpy()


@functools.lru_cache(maxsize=4)
def _cached(source: str, mtime_ns: int, device: str = "cpu") -> MTCNN:
    """One loaded network per weight file and device (the nodes ask for a detector on every run)."""
    return MTCNN(load_state(Path(source)), source).to(device)


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


def _points(squares, marks):
    """O-Net's point outputs (N, 10: x then y, in box sides) in image pixels (N, 5, 2)."""
    side = squares[:, 2:4] - squares[:, :2]
    return torch.stack([squares[:, 0:1] + side[:, 0:1] * marks[:, :5],
                        squares[:, 1:2] + side[:, 1:2] * marks[:, 5:]], 2)


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
    out = torch.zeros(len(boxes), 3, size, size, device=img.device)
    for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        bw, bh = max(1, x1 - x0), max(1, y1 - y0)
        sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + bw), min(h, y0 + bh)
        if (sx0, sy0, sx1, sy1) == (x0, y0, x0 + bw, y0 + bh):
            patch = img[:, :, y0:y0 + bh, x0:x0 + bw]
        else:
            patch = torch.full((1, 3, bh, bw), -127.5 / 128.0, device=img.device)
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
    b = boxes[order].float().numpy()
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    alive = np.ones(len(b), dtype=bool)
    keep = []
    # One numpy row per kept box (not per box): P-Net gives thousands of proposals per photo.
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        if not len(rest):
            break
        lt = np.maximum(b[i, :2], b[rest, :2])
        rb = np.minimum(b[i, 2:4], b[rest, 2:4])
        inter = np.clip(rb - lt, 0, None).prod(1)
        union = np.minimum(area[i], area[rest]) if by_smaller_area else area[i] + area[rest] - inter
        alive[rest[inter / np.maximum(union, 1e-9) > threshold]] = False
    return order[torch.as_tensor(keep, dtype=torch.long)]

"""Files made to hurt a loader, for the reliability tests and bench/reliability.py: each is what
an attacker (or a broken tool) could put in models/face2diffusion, built without holding its
expanded size in memory."""
from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch


class _Storage:
    """Stands for tensor record "0" of the archive in the pickle."""


class _Tensor:
    def __init__(self, numel: int):
        self.numel = numel

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_Storage(), 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, f, numel: int):
        super().__init__(f, protocol=2)
        self.numel = numel

    def persistent_id(self, obj):
        return ("storage", torch.FloatStorage, "0", "cpu", self.numel) if isinstance(obj, _Storage) else None


def deflated_zeros_pt(path: Path, nbytes: int, key: str = "blocks.0.attn.qkv.weight") -> Path:
    """A valid zip-format PyTorch checkpoint of one float32 tensor of ``nbytes`` zeros, deflated:
    ~1000:1, so 4 GB of tensor is a 4 MB file. torch.load(weights_only=True) reads it fully."""
    numel = nbytes // 4
    buf = io.BytesIO()
    _Pickler(buf, numel).dump({key: _Tensor(numel)})
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        chunk = bytes(2**24)
        with z.open("archive/data/0", "w", force_zip64=True) as f:
            for _ in range(numel * 4 // len(chunk)):
                f.write(chunk)
            f.write(bytes(numel * 4 % len(chunk)))
    return path


def many_records_pt(path: Path, count: int) -> Path:
    """A zip-format checkpoint whose archive lists ``count`` empty tensor records."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        for i in range(count):
            z.writestr(f"archive/data/{i}", b"")
    return path


def many_empty_tensors_safetensors(path: Path, count: int) -> Path:
    """A .safetensors whose header lists ``count`` empty float32 tensors (1.3 million: 87 MB)."""
    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
                         for i in range(count)}).encode()
    header += b" " * (-len(header) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
    return path


def deeply_nested_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth

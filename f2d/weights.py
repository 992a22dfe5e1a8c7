"""Loading F2D weight files safely, with errors that say what the file is instead.

Weight files come from strangers: ``.pt`` files are read with ``torch.load(weights_only=True)``
only (a pickle that would run code is refused, not executed) and ``.safetensors`` is preferred.
Every file is checked key by key and shape by shape against the model before loading.
"""
from __future__ import annotations

import functools
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .files import save_safetensors_atomic
from .mapping import MappingNetwork
from .msid import MSIDEncoder

# Official checkpoints were saved from the bare modules; some re-uploads wrap them.
_WRAPPER_KEYS = ("state_dict", "model", "module", "params")


class WeightsError(ValueError):
    """A weight file that cannot be used; the message names the file and the fix."""

    # Hosts that import the pack under a path-derived package name would show that path as
    # the error's type; users should read the library's name.
    __module__ = "f2d.weights"


# What a file looks like, judged from its keys: (predicate on the key set, description).
_SIGNATURES: list[tuple[Callable[[set[str]], bool], str]] = [
    (lambda k: any(x.startswith("blocks.") and ".attn.qkv." in x for x in k) and any(x.startswith("norms.layer_") for x in k),
     "an MSID identity encoder (msid.pt)"),
    (lambda k: any(x.startswith("i2t_first.") for x in k) or "null_exp" in k,
     "an F2D mapping network (mapping.pt)"),
    (lambda k: any(x.startswith("model.diffusion_model.") for x in k),
     "a Stable Diffusion checkpoint (UNet + VAE + text encoder); it belongs in models/checkpoints"),
    (lambda k: any(x.startswith(("input_blocks.", "down_blocks.")) for x in k),
     "a diffusion UNet on its own; it belongs in models/unet or models/diffusion_models"),
    (lambda k: any("lora_" in x or ".lora." in x for x in k),
     "a LoRA; it belongs in models/loras"),
    (lambda k: any(x.startswith(("encoder.down.", "decoder.up.", "first_stage_model.")) for x in k),
     "a VAE; it belongs in models/vae"),
    (lambda k: any(x.startswith(("text_model.", "cond_stage_model.", "transformer.text_model.")) for x in k),
     "a CLIP text encoder; it belongs in models/clip or models/text_encoders"),
    (lambda k: any(x.startswith(("vision_model.", "visual.")) for x in k),
     "a CLIP vision encoder; it belongs in models/clip_vision"),
    (lambda k: any(x.startswith(("image_proj.", "ip_adapter.")) for x in k),
     "an IPAdapter model; it belongs in models/ipadapter"),
    (lambda k: any(x.startswith("blocks.") for x in k),
     "a ViT-style model, but not the MSID encoder (its read-out norms are missing)"),
]

MODEL_KINDS: dict[str, tuple[type[nn.Module], str]] = {
    "msid": (MSIDEncoder, "the MSID identity encoder (msid.pt)"),
    "mapping": (MappingNetwork, "the F2D mapping network (mapping.pt)"),
}


def describe_state_dict(state_dict: dict[str, torch.Tensor]) -> str:
    keys = set(state_dict)
    for matches, what in _SIGNATURES:
        if matches(keys):
            return what
    return f"an unrecognised model ({len(keys)} tensors, e.g. {', '.join(sorted(keys)[:3])})"


def _looks_like(keys: set[str]) -> str | None:
    """The model kind whose layout the keys have (the first two signatures), or None."""
    for (matches, _), kind in zip(_SIGNATURES, MODEL_KINDS):
        if matches(keys):
            return kind
    return None


# ---------------------------------------------------------------- limits, checked before reading data

@dataclass(frozen=True)
class Limits:
    """What a file may hold before any tensor data is read: a file beyond these is refused from
    its index alone (a .safetensors header, a .pt archive's directory), so a crafted file that
    expands (a deflated zip of zeros) or lists millions of tensors costs neither memory nor time."""

    max_tensors: int
    max_bytes: int  # tensor data, uncompressed
    what: str  # what the file should be, for messages


# safetensors' JSON header: ~150 bytes per tensor; 4 MB indexes ~25 000 tensors, more than any
# model a user would pick here (an SD1.x checkpoint has ~1 100), and parses in tens of ms.
MAX_HEADER = 4 * 2**20


def _skeleton(kind: str) -> nn.Module:
    """The model of ``kind`` on the meta device: its keys, shapes and dtypes without any memory."""
    with torch.device("meta"):
        return MODEL_KINDS[kind][0]()


@functools.lru_cache(maxsize=None)
def limits_for(kind: str | None) -> Limits:
    """Room for the largest F2D model stored in float64 with an optimizer's state beside it (a few
    hundred MB), and for the index of a mis-picked file (an SD checkpoint's ~1 100 keys), so that
    the message can say what the file is; the keys and shapes are checked against ``kind`` next."""
    sizes = [(len(sd), sum(v.numel() * 4 for v in sd.values()))
             for sd in (_skeleton(kind).state_dict() for kind in MODEL_KINDS)]
    what = MODEL_KINDS[kind][1] if kind is not None else "an F2D weight file (msid.pt or mapping.pt)"
    return Limits(max(MAX_HEADER // 150, max(n for n, _ in sizes) * 4),
                  max(b for _, b in sizes) * 4 + 16 * 2**20, what)


def _mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def _too_big(path: Path, limits: Limits, detail: str, count: bool = False) -> WeightsError:
    bound = f"at most {limits.max_tensors:,} tensors" if count else f"at most {_mb(limits.max_bytes)}"
    return WeightsError(
        f"{path}: refused before reading it: {detail}, far more than {limits.what} needs ({bound}). "
        "It is another kind of file, or one made to exhaust memory. "
        f"Pick the file for {limits.what} (see the README, 'Weights')."
    )


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors_index(path: str | os.PathLike, limits: Limits) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(meta tensors with the file's keys, shapes and dtypes, metadata) from the header alone."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8:
            raise WeightsError(f"{path}: not a readable .safetensors file (its header length {n} does not fit the "
                               f"file's {size} bytes). The file is damaged or truncated (an interrupted download?); "
                               "download it again.")
        if n > MAX_HEADER:
            raise _too_big(path, limits, f"its tensor index alone is {_mb(n)} (an F2D model's is a few tens of KB)", count=True)
        raw = f.read(n)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (ValueError, RecursionError) as e:
        raise WeightsError(f"{path}: not a readable .safetensors file (damaged header: {str(e)[:100]}). "
                           "The file is damaged or truncated (an interrupted download?); download it again.") from None
    metadata = header.pop("__metadata__", None) or {}
    if len(header) > limits.max_tensors:
        raise _too_big(path, limits, f"it lists {len(header):,} tensors ({describe_state_dict(dict.fromkeys(header))})",
                       count=True)
    index, total = {}, 0
    for k, info in header.items():
        try:
            shape = [int(d) for d in info["shape"]]
            dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ValueError(f"tensor '{k[:60]}' has the data type {str(info['dtype'])[:20]}, "
                                 "which no F2D model uses")
            if any(d < 0 for d in shape):
                raise ValueError(f"tensor '{k[:60]}' has a negative size")
        except (KeyError, TypeError, ValueError) as e:
            msg = str(e) if isinstance(e, ValueError) else f"tensor '{str(k)[:60]}' has no valid shape and dtype"
            raise WeightsError(f"{path}: not a usable .safetensors file ({msg}). Use the official msid.pt / "
                               "mapping.pt or a .safetensors converted from them (see the README, 'Weights').") from None
        index[k] = torch.empty(shape, dtype=dtype, device="meta")
        total += index[k].numel() * index[k].element_size()
    if total > limits.max_bytes:
        raise _too_big(path, limits, f"it holds {_mb(total)} of tensors ({describe_state_dict(index)})")
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        metadata = {}
    return index, metadata


def _zip_directory(path: Path) -> tuple[int, int]:
    """(records, central directory bytes) from the zip's end record, read before zipfile parses
    a directory that may list millions of entries; (0, 0) when not found (zipfile then decides)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        end = f.tell()
        f.seek(max(0, end - 65557))
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return 0, 0
        entries = int.from_bytes(tail[at + 10:at + 12], "little")
        size = int.from_bytes(tail[at + 12:at + 16], "little")
        loc = tail.rfind(b"PK\x06\x07", 0, at)
        if loc >= 0 and (entries == 0xFFFF or size == 0xFFFFFFFF):  # zip64: the real figures are elsewhere
            f.seek(int.from_bytes(tail[loc + 8:loc + 16], "little"))
            rec = f.read(56)
            if rec[:4] == b"PK\x06\x06":
                entries = int.from_bytes(rec[32:40], "little")
                size = int.from_bytes(rec[40:48], "little")
    return entries, size


def _check_archive(path: Path, limits: Limits) -> bool:
    """Check a zip-format .pt from its directory, before torch reads a byte of it: the declared
    uncompressed sizes (a deflated entry of zeros expands ~1000:1) and the number of records.
    Returns whether every record is stored uncompressed (then the tensors can be mapped lazily)."""
    entries, directory = _zip_directory(path)
    if entries > limits.max_tensors + 16 or directory > MAX_HEADER:
        raise _too_big(path, limits, f"its archive lists {entries:,} records ({_mb(directory)} of directory)",
                       count=True)
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: the checkpoint archive is damaged or truncated ({e}). Download it again.") from None
    records = [i for i in infos if "/data/" in i.filename]
    if len(records) > limits.max_tensors:
        raise _too_big(path, limits, f"its archive holds {len(records):,} tensor records", count=True)
    total = sum(i.file_size for i in infos)
    if total > limits.max_bytes:
        packed = sum(i.compress_size for i in infos)
        raise _too_big(path, limits, f"its archive expands to {_mb(total)} ({_mb(packed)} on disk"
                       + (", compressed" if total > 2 * packed else "") + ")")
    return all(i.compress_type == zipfile.ZIP_STORED for i in infos)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if (not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values())
            or not all(isinstance(k, str) for k in obj)):
        raise WeightsError(
            f"{path}: holds {type(obj).__name__}, not a dictionary of tensors (a state dict). "
            "Save the weights with torch.save(model.state_dict(), ...) or convert them to .safetensors."
        )
    prefix = "module."  # left by DataParallel/DistributedDataParallel
    if all(isinstance(k, str) and k.startswith(prefix) for k in obj):
        obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_tensors(path: str | os.PathLike, kind: str | None = None, limits: Limits | None = None,
                 check: Callable[[dict[str, torch.Tensor]], None] | None = None,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weight file as (tensors, metadata) without running any code it contains.

    Before any tensor data is read, the file's index is held to ``limits`` (by default those of
    ``kind``, or of the largest F2D model) and passed to ``check`` (keys, shapes, dtypes): a
    mis-picked or crafted file is refused for the cost of its header."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise WeightsError(f"{path}: the file is empty (an interrupted download?). Download it again.")
    limits = limits or limits_for(kind)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        index, metadata = read_safetensors_index(path, limits)
        if check is not None:
            check(index)
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise WeightsError(
                f"{path}: not a readable .safetensors file ({e}). The file is damaged or truncated "
                "(an interrupted download?); download it again."
            ) from None
        if not tensors:
            raise WeightsError(f"{path}: the file holds no tensors")
        return tensors, metadata
    mmap = False
    if zipfile.is_zipfile(path):
        mmap = _check_archive(path, limits)
    elif size > limits.max_bytes:
        raise _too_big(path, limits, f"it is {_mb(size)}")
    try:
        # Stored (uncompressed) archives, as torch.save writes them, are mapped, not read: the keys
        # and shapes are checked before a mis-picked multi-GB checkpoint costs any memory.
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        # Zip-format checkpoints that end early fail here; old-format ones as EOFError.
        if zipfile.is_zipfile(path) or "zip" in str(e).lower() or "central directory" in str(e).lower():
            raise WeightsError(
                f"{path}: the checkpoint archive is damaged or truncated ({e}). "
                "Download it again."
            ) from None
        raise WeightsError(f"{path}: cannot be read as a PyTorch checkpoint ({e}).") from None
    except (EOFError, zipfile.BadZipFile) as e:
        raise WeightsError(
            f"{path}: the file ends early ({type(e).__name__}); it is truncated. Download it again."
        ) from None
    except Exception as e:  # pickle.UnpicklingError and friends from the weights-only unpickler
        # torch's own text advises weights_only=False, exactly what must not be done with a
        # stranger's file; keep only the line that names the offending object.
        detail = next((ln.strip() for ln in str(e).splitlines() if "global" in ln.lower()), None)
        if detail is None and not _starts_like_a_pickle(path):
            raise WeightsError(
                f"{path}: not a weight file -- its bytes are neither a PyTorch checkpoint (zip or pickle) nor "
                ".safetensors (damaged, or another kind of file saved under this name). Put the official "
                "msid.pt / mapping.pt there (see the README, 'Weights'), downloading them again if needed."
            ) from None
        raise WeightsError(
            f"{path}: refused. The file is a Python pickle holding objects other than tensors, which could run "
            f"code when loaded, so it was not loaded ({(detail or type(e).__name__)[:200]}). "
            "Use the official msid.pt / mapping.pt (plain state dicts) or a .safetensors file."
        ) from None
    return _unwrap(obj, path), {}


def _starts_like_a_pickle(path: Path) -> bool:
    """Pickle protocol 2+ opens with PROTO (0x80) and the protocol number; torch's legacy
    (non-zip) format is such a pickle too."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _dtype_problem(file: torch.Tensor, expected: torch.Tensor) -> bool:
    """Weights are floating point (an integer or bool tensor would be converted silently and run
    as a meaningless model); counters such as BatchNorm's num_batches_tracked are integers."""
    if expected.is_floating_point():
        return not file.is_floating_point()
    return file.is_floating_point() or file.dtype == torch.bool


def check_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, kind: str, path: str | os.PathLike
) -> None:
    """Raise WeightsError naming missing, unexpected, mis-shaped and mis-typed keys, and what the
    file is. Needs only keys, shapes and dtypes: meta tensors (a file's index) will do."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    dtypes = [
        f"{k}: {str(state_dict[k].dtype).removeprefix('torch.')}, expected "
        f"{'floating point' if v.is_floating_point() else 'an integer'}"
        for k, v in expected.items() if k in state_dict and _dtype_problem(state_dict[k], v)
    ]
    if not (missing or unexpected or shapes or dtypes):
        return
    want = MODEL_KINDS[kind][1]
    if _looks_like(set(state_dict)) == kind:
        # The layout is right, the contents are not: another size or version, or a damaged/edited file.
        lines = [f"{path}: has the layout of {want}, but does not fit the model this pack runs."]
        fix = (f"Use the official file for {want} (see the README, 'Weights'), downloading it again if needed; "
               "other sizes or versions of the model are not supported.")
    else:
        lines = [f"{path}: this is not {want}; it looks like {describe_state_dict(state_dict)}."]
        fix = f"Pick the file for {want} (see the README, 'Weights')."

    def listing(title: str, items: list[str]) -> None:
        if items:
            more = f" (and {len(items) - 8} more)" if len(items) > 8 else ""
            lines.append(f"{title} ({len(items)}): {', '.join(items[:8])}{more}")

    listing("missing keys", missing)
    listing("unexpected keys", unexpected)
    listing("wrong shapes", shapes)
    listing("wrong data types (weights are floating point)", dtypes)
    lines.append(fix)
    raise WeightsError("\n".join(lines))


def load_model(kind: str, path: str | os.PathLike, device: torch.device | str = "cpu",
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """Build the model of ``kind`` ("msid" or "mapping") and load ``path`` into it strictly."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")
    skeleton = _skeleton(kind)  # checked against before the model's own memory is spent
    state_dict, _ = load_tensors(path, kind, check=lambda index: check_state_dict(index, skeleton, kind, path))
    check_state_dict(state_dict, skeleton, kind, path)
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"{path}: tensors hold NaN or infinite values ({', '.join(bad[:5])}); the file is damaged.")
    model = MODEL_KINDS[kind][0]()
    model.load_state_dict(state_dict, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_msid(path: str | os.PathLike, **kw) -> MSIDEncoder:
    return load_model("msid", path, **kw)


def load_mapping(path: str | os.PathLike, **kw) -> MappingNetwork:
    return load_model("mapping", path, **kw)


def kind_of(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"msid" or "mapping" when the tensors load strictly into that model, else None."""
    for kind in MODEL_KINDS:
        try:
            check_state_dict(state_dict, _skeleton(kind), kind, "")
            return kind
        except WeightsError:
            continue
    return None


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Convert an F2D ``.pt`` checkpoint to ``.safetensors``; returns the model kind."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise WeightsError(f"{dst}: the output must end in .safetensors")
    state_dict, _ = load_tensors(src)
    kind = kind_of(state_dict)
    if kind is None and _looks_like(set(state_dict)) is not None:
        near = _looks_like(set(state_dict))
        check_state_dict(state_dict, _skeleton(near), near, src)  # says what does not fit
    if kind is None:
        raise WeightsError(
            f"{src}: not an F2D checkpoint; it looks like {describe_state_dict(state_dict)}. "
            "Only msid.pt and mapping.pt are converted."
        )
    # No metadata: the loaders tell the kind from the keys (kind_of), and the output stays
    # byte-identical for equal input.
    save_safetensors_atomic(dst, state_dict)
    return kind

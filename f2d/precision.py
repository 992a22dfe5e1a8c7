"""The precision policy: which dtype the MSID's attention and MLPs run in, per device.

One rule for every front door (nodes, CLI, training, benchmarks):

- the residual stream, every norm (LayerNorm, BatchNorm), the patch embedding and the mapping
  network always run in float32. The mapping's 1600-wide dot products move the identity tokens
  by ~8e-3 in bfloat16 (against ~2e-4 for everything else together), and it is 0.3 % of the work;
- the attention and MLP matrices -- 99 % of the arithmetic -- run in
  * bfloat16 on CPUs with bfloat16 dot-product instructions (AVX512-BF16 or AMX): ~2.5x faster
    than float32 at batch 1, within 2e-4 of the official tokens (tests/test_parity.py);
  * float32 on other CPUs, where bfloat16 is emulated and slower than float32;
  * float16 on GPUs (CUDA, MPS): 10 mantissa bits against bfloat16's 7, and tensor cores everywhere.
"""
from __future__ import annotations

from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX)."""
    caps: dict = {}
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.6, every platform
    except Exception:  # older torch: Linux flags
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    caps = dict.fromkeys(line.split(":", 1)[1].split(), True)
                    break
        except OSError:
            pass
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def precision_for(device: torch.device | str, requested: str = "auto", fast_bf16: bool | None = None) -> str:
    """The precision name ("fp32", "bf16", "fp16") for the MSID's attention and MLPs on ``device``.

    ``requested`` other than "auto" is honoured as given (e.g. "fp32" for exact parity).
    ``fast_bf16`` overrides the CPU check (tests)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision '{requested}'; choose one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested
    kind = torch.device(device).type
    if kind == "cpu":
        return "bf16" if (cpu_has_fast_bf16() if fast_bf16 is None else fast_bf16) else "fp32"
    return "fp16"


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]

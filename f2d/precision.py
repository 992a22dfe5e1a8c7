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

from dataclasses import dataclass, field
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


# -- choosing by measurement ---------------------------------------------------------------------
# Which mode is fastest depends on the device, its driver and torch (at batch 1 a GPU encoder is
# launch-bound: a cast per block can cost more than the arithmetic saved), so on accelerators the
# mode is picked by a one-time micro-benchmark among those within ``tolerance`` of float32.

MODES = ("fp32", "tf32", "fp16", "bf16", "fp32+graph", "tf32+graph", "fp16+graph", "bf16+graph")


@dataclass
class ModeResult:
    mode: str
    ms_per_face: dict[int, float]  # batch size -> median milliseconds per face
    error: float  # max |tokens - float32 tokens| on the sample
    ok: bool  # within the tolerance


@dataclass
class MeasuredChoice:
    device: str
    mode: str  # the fastest mode within tolerance (batch 1 first, then the largest batch)
    tolerance: float
    results: list[ModeResult] = field(default_factory=list)

    def table(self) -> str:
        batches = sorted({b for r in self.results for b in r.ms_per_face})
        lines = [f"{'mode':12s} " + " ".join(f"{'ms/face b' + str(b):>12s}" for b in batches)
                 + f" {'vs fp32':>9s}  within {self.tolerance:g}"]
        for r in self.results:
            lines.append(f"{r.mode:12s} " + " ".join(f"{r.ms_per_face[b]:12.3f}" for b in batches)
                         + f" {r.error:9.1e}  {'yes' if r.ok else 'no'}" + ("  <- chosen" if r.mode == self.mode else ""))
        return "\n".join(lines)


_MEASURED: dict[str, MeasuredChoice] = {}


def modes_for(device: torch.device | str) -> tuple[str, ...]:
    """The modes worth measuring on ``device``: TF32 and CUDA graphs exist on CUDA only; on the
    CPU float16 matrices are emulated on most processors (slow), bfloat16 only pays with AVX512-BF16/AMX."""
    kind = torch.device(device).type
    if kind == "cuda":
        return MODES
    if kind == "cpu":
        return ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",)
    return ("fp32", "fp16", "bf16")


class ModeRunner:
    """An encoder copy running one mode: ``runner(faces) -> (first, last)`` tokens, float32.

    ``tf32`` lets float32 matrix products use TF32 tensor cores (for this encoder's calls only:
    the global switch is restored after each call). ``+graph`` records the whole encoder as one
    CUDA graph per batch size (one launch instead of ~200: batch 1 is launch-bound)."""

    def __init__(self, encoder, mode: str, device: torch.device | str):
        import copy

        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        base, _, graph = mode.partition("+")
        self.mode, self.device = mode, torch.device(device)
        self.tf32 = base == "tf32"
        self.graph = graph == "graph"
        if (self.tf32 or self.graph) and self.device.type != "cuda":
            raise ValueError(f"mode '{mode}' needs a CUDA device (got {self.device})")
        self.encoder = copy.deepcopy(encoder).set_precision("fp32" if self.tf32 else base).to(self.device).eval()
        self._graphs: dict[tuple, tuple] = {}

    def _eager(self, faces: torch.Tensor):
        if not self.tf32:
            t = self.encoder.tokens(self.encoder.features(faces))
            return t.first, t.last
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            t = self.encoder.tokens(self.encoder.features(faces))
            return t.first, t.last
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before

    @torch.no_grad()
    def __call__(self, faces: torch.Tensor):
        faces = faces.to(self.device, torch.float32)
        if not self.graph:
            return self._eager(faces)
        key = tuple(faces.shape)
        if key not in self._graphs:
            static = faces.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up on a side stream, as CUDA graph capture requires
                    self._eager(static)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._eager(static)
            self._graphs[key] = (graph, static, out)
        graph, static, out = self._graphs[key]
        static.copy_(faces)
        graph.replay()
        return out[0].clone(), out[1].clone()


def measure_modes(encoder, device: torch.device | str, modes: tuple[str, ...] | None = None,
                  batches: tuple[int, ...] = (1, 8), repeats: int = 20, tolerance: float = 1e-4,
                  sample: torch.Tensor | None = None) -> MeasuredChoice:
    """Time each mode of ``encoder`` (an f2d.identity.IdentityEncoder, left unchanged) on
    ``device`` at each batch size (calls interleaved, medians) and pick the fastest mode whose
    tokens stay within ``tolerance`` of float32 on ``sample`` (aligned faces in [-1, 1]; default:
    a fixed pseudo-random batch). Remembered per device (see :func:`measured_mode`)."""
    import statistics
    import time

    device = torch.device(device)
    modes = tuple(modes or modes_for(device))
    if sample is None:
        g = torch.Generator().manual_seed(0)
        sample = torch.rand(max(batches), 3, 112, 112, generator=g) * 2 - 1
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    runners = {}
    for mode in modes:
        try:
            runners[mode] = ModeRunner(encoder, mode, device)
        except (RuntimeError, ValueError):  # e.g. a dtype the device lacks
            continue
    reference = ModeRunner(encoder, "fp32", device)(sample)
    errors = {}
    for mode, run in list(runners.items()):
        try:
            first, last = run(sample)
        except RuntimeError:  # capture or kernel not supported here
            del runners[mode]
            continue
        errors[mode] = max((first - reference[0]).abs().max().item(), (last - reference[1]).abs().max().item())
    times: dict[str, dict[int, float]] = {m: {} for m in runners}
    for b in batches:
        x = sample[:b].to(device)
        for run in runners.values():
            run(x)
        per = {m: [] for m in runners}
        for _ in range(repeats):
            for mode, run in runners.items():  # interleaved: background load hits every mode alike
                sync()
                t = time.perf_counter()
                run(x)
                sync()
                per[mode].append(time.perf_counter() - t)
        for mode in runners:
            times[mode][b] = statistics.median(per[mode]) * 1000 / b
    results = [ModeResult(m, times[m], errors[m], errors[m] <= tolerance) for m in runners]
    ok = [r for r in results if r.ok] or [r for r in results if r.mode == "fp32"]
    best = min(ok, key=lambda r: (r.ms_per_face[min(batches)], r.ms_per_face[max(batches)]))
    choice = MeasuredChoice(str(device), best.mode, tolerance, results)
    _MEASURED[str(device)] = choice
    return choice


def measured_mode(device: torch.device | str) -> MeasuredChoice | None:
    """The last :func:`measure_modes` choice for ``device`` in this process, or None."""
    return _MEASURED.get(str(torch.device(device)))

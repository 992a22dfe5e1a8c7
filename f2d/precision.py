"""The precision policy: which arithmetic the MSID's attention and MLPs run in, per device.

One rule for every front door (nodes, CLI, training, benchmarks):

- the residual stream, every norm (LayerNorm, BatchNorm), the patch embedding and the mapping
  network always run in float32. The mapping's 1600-wide dot products move the identity tokens
  by ~8e-3 in bfloat16 (against ~2e-4 for everything else together), and it is 0.3 % of the work;
- "auto" is the fastest mode whose identity tokens stay within ``TOKEN_TOLERANCE`` (1e-4) of
  float32 -- the pack's parity promise holds for the default on every device:
  * CPU: float32. bfloat16 matrices are 1.8x faster on CPUs with AVX512-BF16 but move the tokens
    by 2-4e-4 (the rounding of 8-bit mantissas, the same on every processor: 2.7e-4 on the
    fixtures, 4e-4 on a randomly initialised ViT), so they stay an explicit choice ("bf16");
    float16 is emulated on most CPUs;
  * GPUs (CUDA, MPS): measured once per device and process among fp32, TF32, fp16 and bf16
    (:func:`choose_mode`): at batch 1 a GPU encoder is launch-bound, so which is fastest depends
    on the device, its driver and torch, not on the arithmetic alone.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TOKEN_TOLERANCE = 1e-4  # max |tokens - float32 tokens| a mode may add to be chosen by "auto"
FALLBACK = {"cpu": "fp32"}  # where nothing was measured (or measuring failed): "fp16" elsewhere


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX): there an explicit
    "bf16" pays (~1.8x float32 at batch 1 with AVX512-BF16)."""
    caps: dict = {}
    try:
        caps = torch.cpu.get_capabilities()  # torch >= 2.6, every platform
    except Exception:  # older torch: Linux flags
        try:
            from pathlib import Path

            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    caps = dict.fromkeys(line.split(":", 1)[1].split(), True)
                    break
        except OSError:
            pass
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def precision_for(device: torch.device | str, requested: str = "auto") -> str:
    """The precision name ("fp32", "tf32", "bf16", "fp16") for the MSID's attention and MLPs on ``device``.

    ``requested`` other than "auto" is honoured as given (e.g. "bf16" for speed on a CPU). "auto"
    is float32 on the CPU and, elsewhere, what :func:`choose_mode` measured for the device in this
    process (float16 until something was measured)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision '{requested}'; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if requested == "tf32" and device.type != "cuda":
        raise ValueError(f"precision 'tf32' needs a CUDA device (got {device}); use fp32")
    if requested != "auto":
        return requested
    measured = measured_mode(device)
    if measured is not None:
        return measured.mode.partition("+")[0]
    return FALLBACK.get(device.type, "fp16")


def compute_dtype(precision: str) -> torch.dtype:
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]


# -- choosing by measurement ---------------------------------------------------------------------
# Which mode is fastest depends on the device, its driver and torch (at batch 1 a GPU encoder is
# launch-bound: a cast per block can cost more than the arithmetic saved), so on accelerators the
# mode is picked by a one-time micro-benchmark among those within ``tolerance`` of float32.
# "+graph" modes (one CUDA graph per batch size) are measured by bench/gpu.py only: a host that
# moves the encoder between devices (ComfyUI's model management) would leave a graph pointing at
# freed memory, so "auto" chooses among the eager modes.

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
            lines.append(f"{r.mode:12s} " + " ".join(f"{r.ms_per_face[b]:12.3f}" if b in r.ms_per_face
                                                     else f"{'not timed':>12s}" for b in batches)
                         + f" {r.error:9.1e}  {'yes' if r.ok else 'no'}" + ("  <- chosen" if r.mode == self.mode else ""))
        return "\n".join(lines)


_MEASURED: dict[str, MeasuredChoice] = {}


def modes_for(device: torch.device | str, graphs: bool = True) -> tuple[str, ...]:
    """The modes worth measuring on ``device``: TF32 and CUDA graphs exist on CUDA only; on the
    CPU float16 matrices are emulated on most processors (slow), bfloat16 only pays with AVX512-BF16/AMX."""
    kind = torch.device(device).type
    if kind == "cuda":
        return MODES if graphs else tuple(m for m in MODES if "+" not in m)
    if kind == "cpu":
        return ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",)
    return ("fp32", "fp16", "bf16")


@contextmanager
def tf32_matmuls(enabled: bool):
    """Let float32 matrix products use TF32 tensor cores inside the block only (the host's global
    switches are restored: its own models keep the arithmetic it chose)."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class ModeRunner:
    """An encoder copy running one mode: ``runner(faces) -> (first, last)`` tokens, float32.

    ``tf32``: the MSID's float32 matrix products on TF32 tensor cores (the encoder's own
    precision, see IdentityEncoder.features). ``+graph`` records the whole encoder as one CUDA
    graph per batch size (one launch instead of ~200: batch 1 is launch-bound)."""

    def __init__(self, encoder, mode: str, device: torch.device | str):
        import copy

        if mode not in MODES:
            raise ValueError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        base, _, graph = mode.partition("+")
        self.mode, self.device = mode, torch.device(device)
        self.graph = graph == "graph"
        if (base == "tf32" or self.graph) and self.device.type != "cuda":
            raise ValueError(f"mode '{mode}' needs a CUDA device (got {self.device})")
        self.encoder = copy.deepcopy(encoder).set_precision(base).to(self.device).eval()
        self._graphs: dict[tuple, tuple] = {}

    def _eager(self, faces: torch.Tensor):
        t = self.encoder.tokens(self.encoder.features(faces))
        return t.first, t.last

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
                  batches: tuple[int, ...] = (1, 8), repeats: int = 20, tolerance: float = TOKEN_TOLERANCE,
                  sample: torch.Tensor | None = None, time_all: bool = True) -> MeasuredChoice:
    """Time each mode of ``encoder`` (an f2d.identity.IdentityEncoder, left unchanged) on
    ``device`` at each batch size (calls interleaved, medians) and pick the fastest mode whose
    tokens stay within ``tolerance`` of float32 on ``sample`` (aligned faces in [-1, 1]; default:
    a fixed pseudo-random batch). ``time_all`` False: modes outside the tolerance are not timed
    (loading does not wait for them). Only :func:`choose_mode` remembers a choice."""
    import statistics
    import time

    device = torch.device(device)
    modes = tuple(modes or modes_for(device))
    if sample is None:
        g = torch.Generator().manual_seed(0)
        sample = torch.rand(max(batches), 3, 112, 112, generator=g) * 2 - 1
    sync = {"cuda": lambda: torch.cuda.synchronize(device),
            "mps": lambda: torch.mps.synchronize()}.get(device.type, lambda: None)  # timed work has finished
    runners = {}
    for mode in modes:
        try:
            runners[mode] = ModeRunner(encoder, mode, device)
        except (RuntimeError, ValueError):  # e.g. a dtype the device lacks
            continue
    reference = (runners.get("fp32") or ModeRunner(encoder, "fp32", device))(sample)  # the one fp32 copy
    errors = {}
    for mode, run in list(runners.items()):
        try:
            first, last = run(sample)
        except RuntimeError:  # capture or kernel not supported here
            del runners[mode]
            continue
        errors[mode] = max((first - reference[0]).abs().max().item(), (last - reference[1]).abs().max().item())
    timed = {m: run for m, run in runners.items() if time_all or errors[m] <= tolerance or m == "fp32"}
    times: dict[str, dict[int, float]] = {m: {} for m in runners}
    for b in batches if len(timed) > 1 or time_all else ():
        x = sample[:b].to(device)
        for run in timed.values():
            run(x)
        per = {m: [] for m in timed}
        for _ in range(repeats):
            for mode, run in timed.items():  # interleaved: background load hits every mode alike
                sync()
                t = time.perf_counter()
                run(x)
                sync()
                per[mode].append(time.perf_counter() - t)
        for mode in timed:
            times[mode][b] = statistics.median(per[mode]) * 1000 / b
    results = [ModeResult(m, times[m], errors[m], errors[m] <= tolerance) for m in runners]
    ok = [r for r in results if r.ok] or [r for r in results if r.mode == "fp32"]
    never = float("inf")
    best = min(ok, key=lambda r: (r.ms_per_face.get(min(batches), never), r.ms_per_face.get(max(batches), never)))
    return MeasuredChoice(str(device), best.mode, tolerance, results)


def measured_mode(device: torch.device | str) -> MeasuredChoice | None:
    """What :func:`choose_mode` measured for ``device`` in this process, or None."""
    return _MEASURED.get(str(torch.device(device)))


def choose_mode(encoder, device: torch.device | str, measure: bool | None = None) -> str:
    """The precision "auto" means for ``encoder`` on ``device``: measured once per device and
    process (``measure`` None: on accelerators only; the CPU's answer is float32 by the rule in
    this module's docstring), among the eager modes within TOKEN_TOLERANCE of float32. A
    measurement that fails (a kernel or dtype the device lacks, no memory left) falls back to the
    rule, with a warning: loading never fails for it."""
    device = torch.device(device)
    if measure is None:
        measure = device.type != "cpu"
    if not measure or getattr(encoder, "mapping", None) is None:  # no tokens to compare (training's frozen MSID)
        return precision_for(device)
    choice = measured_mode(device)
    if choice is None:
        try:
            choice = measure_modes(encoder, device, modes=modes_for(device, graphs=False), batches=(1, 8),
                                   repeats=10, tolerance=TOKEN_TOLERANCE, time_all=False)
        except Exception as e:  # e.g. out of device memory while the host holds other models
            logging.warning("[Face2Diffusion] could not measure the identity encoder's precision modes on %s "
                            "(%s: %s); using %s", device, type(e).__name__, e, FALLBACK.get(device.type, "fp16"))
            return FALLBACK.get(device.type, "fp16")
        _MEASURED[str(device)] = choice
        logging.info("[Face2Diffusion] identity encoder on %s: %s chosen by measurement\n%s",
                     device, choice.mode, choice.table())
    return choice.mode.partition("+")[0]

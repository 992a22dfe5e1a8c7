"""Identity-encoding cost: MSID + mapping network, per face, in one run.

Prints median milliseconds per call at batch 1 and 8, achieved GFLOP/s (nominal 8.42 GFLOP per
face), speed-ups against a baseline built the way the official code is (timm 0.9.16's
VisionTransformer running every block, float32), and each mode's largest deviation of the
identity tokens from the official reference fixtures. The modes are the precisions of
f2d.precision; "node default" is what F2D Load MSID picks on this machine. Calls of all modes
are interleaved (round robin), so load from other processes hits every mode alike.
Weights come from the reference formula; timing does not depend on their values.

    .venv/bin/python bench/encode.py [--repeats 20] [--fp16] [--compile]
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the f2d library, run from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference formula (test scaffolding)

from formula import formula_state_dict  # noqa: E402
from f2d.identity import IdentityEncoder  # noqa: E402
from f2d.mapping import MappingNetwork  # noqa: E402
from f2d.msid import EXTRACT_DEPTHS, MSIDEncoder  # noqa: E402
from f2d.precision import cpu_has_fast_bf16, precision_for  # noqa: E402

GFLOP_PER_FACE = 8.42
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "f2d-reference"


class TimmBaseline(nn.Module):
    """The official recipe: timm ViT, every block run, CLS read-outs through BN+LN, then mapping."""

    def __init__(self, msid_sd: dict, mapping: MappingNetwork):
        super().__init__()
        import timm.models.vision_transformer as vt

        self.vit = vt.VisionTransformer(img_size=112, patch_size=8, embed_dim=384, depth=12, num_heads=12,
                                        qkv_bias=True, num_classes=0)
        self.norms = nn.ModuleDict({f"layer_{d}": nn.Sequential(nn.BatchNorm1d(384), nn.LayerNorm(384))
                                    for d in EXTRACT_DEPTHS})
        sd = dict(msid_sd)
        self.vit.load_state_dict({k: v for k, v in sd.items() if not k.startswith("norms.")}, strict=True)
        self.norms.load_state_dict({k[len("norms."):]: v for k, v in sd.items() if k.startswith("norms.")})
        self.mapping = mapping

    def forward(self, x):
        x = self.vit.norm_pre(self.vit._pos_embed(self.vit.patch_embed(x)))
        feats = []
        for i, blk in enumerate(self.vit.blocks):
            x = blk(x)
            if i in EXTRACT_DEPTHS:
                feats.append(self.norms[f"layer_{i}"](x[:, 0]))
        f = torch.cat(feats, -1)
        a, b = self.mapping(f)
        return f, a, b


CLOCK = time.perf_counter  # time.thread_time with --threads 1: this thread's CPU time, robust on a busy machine


def round_robin_ms(fns: dict, x, repeats: int) -> dict[str, float]:
    """Median ms per call of each function, calls interleaved so that background load is shared."""
    for fn in fns.values():
        for _ in range(2):
            fn(x)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = CLOCK()
            fn(x)
            times[name].append(CLOCK() - t)
    return {name: statistics.median(ts) * 1000 for name, ts in times.items()}


def fixture_error(fn) -> float | None:
    """Max |tokens - official tokens| on the fixtures' batch (None without the fixtures)."""
    path = FIXTURES / "reference.safetensors"
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    ref = load_file(str(path))
    with torch.no_grad():
        _, first, last = fn(ref["batch.input"])
    return max((first - ref["batch.first.null_exp"]).abs().max().item(),
               (last - ref["batch.last.null_exp"]).abs().max().item())


def inputs(batch: int) -> torch.Tensor:
    """Real aligned faces where the fixtures are at hand (the official astronaut crop and its
    mirror), padded with the fixtures' synthetic input; random otherwise."""
    faces = []
    crop = FIXTURES / "astronaut_aligned_112.png"
    if crop.is_file():
        from PIL import Image

        a = torch.from_numpy(np.array(Image.open(crop).convert("RGB"))).permute(2, 0, 1).float() / 127.5 - 1
        faces += [a, a.flip(-1)]
    g = torch.Generator().manual_seed(0)
    while len(faces) < batch:
        faces.append(torch.rand(3, 112, 112, generator=g) * 2 - 1)
    return torch.stack(faces[:batch])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--fp16", action="store_true", help="also time fp16 (the GPU mode; slow on most CPUs)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: torch's choice); 1 keeps figures sane on a busy machine")
    args = ap.parse_args()
    global CLOCK
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1:
            CLOCK = time.thread_time
    torch.manual_seed(0)

    msid = MSIDEncoder()
    msid_sd = formula_state_dict(msid)
    msid.load_state_dict(msid_sd)
    mapping = MappingNetwork()
    mapping.load_state_dict(formula_state_dict(mapping))
    base = IdentityEncoder(msid, mapping).eval().requires_grad_(False)
    default = precision_for("cpu")
    precisions = ["fp32", "bf16"] + (["fp16"] if args.fp16 else [])
    encoders = {p: copy.deepcopy(base).set_precision(p) for p in precisions}

    def ours(enc):
        def run(x):
            f = enc.features(x)
            t = enc.tokens(f)
            return f, t.first, t.last
        return run

    modes = {}
    try:
        baseline = TimmBaseline(msid_sd, copy.deepcopy(mapping)).eval().requires_grad_(False)
        modes["official recipe (timm ViT), fp32"] = torch.no_grad()(baseline)
    except ImportError:
        print("timm not installed: no official-recipe baseline (pip install timm==0.9.16)")
    for p, enc in encoders.items():
        modes[f"ours, {p}" + (" (node default)" if p == default else "")] = ours(enc)
    compile_s = {}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        for p in ("fp32", "bf16"):
            c = copy.deepcopy(encoders[p])
            c.msid = torch.compile(c.msid)
            t = time.perf_counter()
            for b in (1, 8):
                ours(c)(inputs(b))
            compile_s[f"ours, {p} + compile"] = time.perf_counter() - t
            modes[f"ours, {p} + compile"] = ours(c)

    print(f"identity encoding = MSID + mapping, {GFLOP_PER_FACE} GFLOP per face (nominal)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"bf16 hardware (AVX512-BF16/AMX): {'yes' if cpu_has_fast_bf16() else 'no (bf16 is emulated: slow)'}; "
          f"node default on this CPU: {default}")
    x8 = inputs(8)
    with torch.no_grad():
        ref = ours(encoders["fp32"])(x8)
    errors = {}
    for name, fn in modes.items():
        with torch.no_grad():
            out = fn(x8)
        errors[name] = (fixture_error(fn), max((out[1] - ref[1]).abs().max().item(), (out[2] - ref[2]).abs().max().item()),
                        (out[0] - ref[0]).abs().max().item())
    ms = {}
    with torch.no_grad():
        for batch in (1, 8):
            ms[batch] = round_robin_ms(modes, inputs(batch), args.repeats if batch == 1 else max(5, args.repeats // 4))

    first = next(iter(modes))
    print()
    print(f"{'mode':38s} {'batch':>5s} {'ms/call':>8s} {'ms/face':>8s} {'GFLOP/s':>8s} {'speed-up':>8s} "
          f"{'tokens vs official':>18s} {'tokens vs fp32':>14s} {'features':>9s}")
    for batch in (1, 8):
        for name in modes:
            per_face = ms[batch][name] / batch
            fix, tok, feat = errors[name]
            fix_s = "n/a" if fix is None else f"{fix:.1e}"
            print(f"{name:38s} {batch:5d} {ms[batch][name]:8.1f} {per_face:8.1f} "
                  f"{GFLOP_PER_FACE / per_face * 1000:8.1f} {ms[batch][first] / ms[batch][name]:7.2f}x "
                  f"{fix_s:>18s} {tok:14.1e} {feat:9.1e}")
    if first.startswith("official"):
        for batch in (1, 8):
            exact = [n for n in modes if n != first and errors[n][0] is not None and errors[n][0] <= 1e-4]
            if exact:
                best = min(exact, key=lambda n: ms[batch][n])
                print(f"batch {batch}: fastest mode within 1e-4 of the official tokens: {best}, "
                      f"{ms[batch][first] / ms[batch][best]:.2f}x the official recipe")
    for name, s in compile_s.items():
        eager = ms[1][next(n for n in modes if n.startswith(name.replace(" + compile", "")))]
        gain = eager - ms[1][name]
        faces = f"{s * 1000 / gain:.0f} faces at batch 1" if gain > 0 else "never"
        print(f"{name}: {s:.1f} s to compile (batch 1 and 8); pays off after {faces}")
    print(f"times: {'this thread CPU time' if CLOCK is time.thread_time else 'wall time'}")
    print("\nspeed-up: against the first row at the same batch, measured in this run (calls interleaved). "
          "tokens vs official: max |tokens - reference fixtures| on the fixtures' batch; "
          "vs fp32: max |x - ours fp32| on these inputs.")


if __name__ == "__main__":
    main()

"""Identity-encoding cost: MSID + mapping network, per face, in one run.

Prints median milliseconds per call at batch 1 and 8, achieved GFLOP/s (nominal 8.42 GFLOP per
face), the largest deviation from our float32 result, and speed-ups against a baseline built the
way the official code is (timm 0.9.16's VisionTransformer running every block, float32).
Weights come from the reference formula; timing does not depend on their values.

    .venv/bin/python bench/encode.py [--repeats 20] [--compile]
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

from f2d.formula import formula_state_dict  # noqa: E402
from f2d.identity import IdentityEncoder  # noqa: E402
from f2d.mapping import MappingNetwork  # noqa: E402
from f2d.msid import EXTRACT_DEPTHS, MSIDEncoder  # noqa: E402

GFLOP_PER_FACE = 8.42
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "f2d-reference"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


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


def median_ms(fn, x, repeats: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


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
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (slow to start)")
    args = ap.parse_args()
    torch.manual_seed(0)

    msid = MSIDEncoder()
    msid_sd = formula_state_dict(msid)
    msid.load_state_dict(msid_sd)
    mapping = MappingNetwork()
    mapping.load_state_dict(formula_state_dict(mapping))
    fp32 = IdentityEncoder(msid, mapping).eval().requires_grad_(False)
    fast = copy.deepcopy(fp32).reduce_precision(torch.bfloat16)

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
    modes["ours, fp32"] = ours(fp32)
    modes["ours, fast (bf16 attention+MLP)"] = ours(fast)
    compile_s = {}
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        for name, enc in (("ours, fp32 + compile", fp32), ("ours, fast + compile", fast)):
            c = copy.deepcopy(enc)
            c.msid = torch.compile(c.msid)
            t = time.perf_counter()
            for b in (1, 8):
                ours(c)(inputs(b))
            compile_s[name] = time.perf_counter() - t
            modes[name] = ours(c)

    flags = cpu_flags()
    print(f"identity encoding = MSID + mapping, {GFLOP_PER_FACE} GFLOP per face (nominal)")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"bf16 hardware: {'amx_bf16' if 'amx_bf16' in flags else 'avx512_bf16' if 'avx512_bf16' in flags else 'none (bf16 will be slow)'}")
    x8 = inputs(8)
    with torch.no_grad():
        ref = ours(fp32)(x8)
    rows = []
    for name, fn in modes.items():
        with torch.no_grad():
            out = fn(x8)
        err_feat = (out[0] - ref[0]).abs().max().item()
        err_tok = max((out[1] - ref[1]).abs().max().item(), (out[2] - ref[2]).abs().max().item())
        for batch in (1, 8):
            ms = median_ms(fn, inputs(batch), args.repeats if batch == 1 else max(5, args.repeats // 4))
            rows.append((name, batch, ms, err_tok, err_feat))

    base = {b: ms for n, b, ms, *_ in rows if n == next(iter(modes))}
    print()
    print(f"{'mode':38s} {'batch':>5s} {'ms/call':>8s} {'ms/face':>8s} {'GFLOP/s':>8s} "
          f"{'speed-up':>8s} {'max|err| tokens':>16s} {'features':>9s}")
    for name, batch, ms, err_tok, err_feat in rows:
        per_face = ms / batch
        print(f"{name:38s} {batch:5d} {ms:8.1f} {per_face:8.1f} {GFLOP_PER_FACE / per_face * 1000:8.1f} "
              f"{base[batch] / ms:7.2f}x {err_tok:16.1e} {err_feat:9.1e}")
    for name, s in compile_s.items():
        eager_name = next(n for n in modes if n.startswith(name.replace(" + compile", "")))
        eager = next(ms for n, b, ms, *_ in rows if b == 1 and n == eager_name)
        comp = next(ms for n, b, ms, *_ in rows if b == 1 and n == name)
        gain = eager - comp
        faces = f"{s * 1000 / gain:.0f} faces at batch 1" if gain > 0 else "never"
        print(f"{name}: {s:.1f} s to compile (batch 1 and 8); pays off after {faces}")
    print("\nspeed-up: against the first row at the same batch, measured in this run. err: max |x - ours fp32|.")


if __name__ == "__main__":
    main()

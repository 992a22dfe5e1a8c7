#!/usr/bin/env bash
# The GPU precision modes on CUDA: parity with the official reference fixtures and ms/face at
# batch 1 and 8, for fp32, fp16 (the node default on GPUs) and bf16 (attention/MLPs; norms and
# mapping float32, as f2d.precision sets them). Run from a checkout on a CUDA machine:
#     bash bench/gpu.sh            (uses .venv/bin/python when present, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" - "$@" <<'PYEOF'
import copy, os, statistics, sys, time
from pathlib import Path

import torch

root = Path.cwd()
sys.path[:0] = [str(root), str(root / "tests")]
from formula import formula_state_dict  # noqa: E402
from f2d.identity import IdentityEncoder  # noqa: E402
from f2d.mapping import MappingNetwork  # noqa: E402
from f2d.msid import MSIDEncoder  # noqa: E402
from f2d.precision import precision_for  # noqa: E402

# F2D_BENCH_DEVICE=cpu dry-runs the script's logic on a machine without a GPU.
device = torch.device(os.environ.get("F2D_BENCH_DEVICE", "cuda"))
if device.type == "cuda" and not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: no CUDA device visible to torch; run it on a GPU machine")
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU dry run"
fixtures = root.parent / "shared" / "fixtures" / "f2d-reference" / "reference.safetensors"
ref = None
if fixtures.is_file():
    from safetensors.torch import load_file
    ref = load_file(str(fixtures))

msid, mapping = MSIDEncoder(), MappingNetwork()
msid.load_state_dict(formula_state_dict(msid))
mapping.load_state_dict(formula_state_dict(mapping))
base = IdentityEncoder(msid, mapping).eval().requires_grad_(False)
print(f"{name}, torch {torch.__version__}; node default on this GPU: {precision_for(device)}")
print(f"{'mode':6s} {'tokens vs official':>18s} {'features vs official':>20s} {'ms/face b1':>10s} {'ms/face b8':>10s}")

def run(enc, x):
    t = enc.tokens(enc.features(x))
    return t.first, t.last

for prec in ("fp32", "fp16", "bf16"):
    enc = copy.deepcopy(base).set_precision(prec).to(device)
    tok = feat = float("nan")
    if ref is not None:
        with torch.no_grad():
            f = enc.features(ref["batch.input"])
            t = enc.tokens(f)
        feat = (f.cpu() - ref["batch.features"]).abs().max().item()
        tok = max((t.first.cpu() - ref["batch.first.null_exp"]).abs().max().item(),
                  (t.last.cpu() - ref["batch.last.null_exp"]).abs().max().item())
    ms = {}
    for batch in (1, 8):
        x = torch.rand(batch, 3, 112, 112, device=device) * 2 - 1
        with torch.no_grad():
            for _ in range(5):
                run(enc, x)
            sync()
            times = []
            for _ in range(int(os.environ.get("F2D_BENCH_REPEATS", 50))):
                s = time.perf_counter()
                run(enc, x)
                sync()
                times.append(time.perf_counter() - s)
        ms[batch] = statistics.median(times) * 1000 / batch
    print(f"{prec:6s} {tok:18.1e} {feat:20.1e} {ms[1]:10.2f} {ms[8]:10.2f}")
PYEOF

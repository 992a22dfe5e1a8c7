# Two commands on a fresh machine: `make run` and `make test` (see README).
PY := .venv/bin/python
PORT ?= 8188

.PHONY: setup run run-test-models test test-fast bench clean

setup:
	bash scripts/setup-host.sh

# Extra ComfyUI arguments: make run ARGS="--front-end-root .venv/frontends/comfyui-frontend-package-1.58.1/comfyui_frontend_package/static"
run: setup
	bash scripts/run-comfyui.sh --port $(PORT) $(ARGS)

# The same with the test suite's stand-in models (tiny checkpoint, formula weights) in .comfy-test/:
# every example workflow runs, the pictures are noise. For trying the UI without the real weights.
run-test-models: setup
	$(PY) scripts/put-test-models.py .comfy-test
	F2D_COMFY_BASE="$(CURDIR)/.comfy-test" bash scripts/run-comfyui.sh --port $(PORT) $(ARGS)

test: setup
	bash scripts/setup-browser.sh
	.venv/bin/pytest

# Library tests only (no host start-up, no browser, no throwaway installs, no diffusers
# training/generation runs): what to run between edits; `make test` runs all of it.
test-fast: setup
	.venv/bin/pytest -m "not host and not install and not diffusers"

bench: setup
	$(PY) bench/encode.py
	$(PY) bench/detect.py
	$(PY) bench/sampling.py
	$(PY) bench/reliability.py
	$(PY) bench/detail.py

clean:
	rm -rf .venv .comfy .comfy-test .comfy-tree

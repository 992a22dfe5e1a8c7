# Two commands on a fresh machine: `make run` and `make test` (see README).
PY := .venv/bin/python
PORT ?= 8188

.PHONY: setup run test test-fast bench clean

setup:
	bash scripts/setup-host.sh

run: setup
	bash scripts/run-comfyui.sh --port $(PORT)

test: setup
	bash scripts/setup-browser.sh
	.venv/bin/pytest

# Library tests only (no host start-up, no browser, no throwaway installs).
test-fast: setup
	.venv/bin/pytest -m "not host and not install"

bench: setup
	$(PY) bench/encode.py
	$(PY) bench/detect.py
	$(PY) bench/sampling.py
	$(PY) bench/reliability.py

clean:
	rm -rf .venv .comfy .comfy-tree

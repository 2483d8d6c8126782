# Local mode and developer tasks. `make up` / `make down` run the whole stack as local processes;
# `make test` runs every test (CI calls it through .ci/run).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export JAN_ROOT ?= $(HOME)/jan

.PHONY: up down test browser lint typecheck proto venv bench clean images compose-up compose-down compose-e2e k8s-render

# llama-cpp-python compiles llama.cpp with its multimodal library (image input; ~13 minutes on 2 cores the
# first time): scripts/llama-wheel.sh builds it portably (its CMAKE_ARGS default) and keeps the wheel per
# version and flags, which pip's own cache does not tell apart.
$(VENV)/.installed: pyproject.toml scripts/llama-wheel.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q --force-reinstall --no-deps "$$(scripts/llama-wheel.sh $(VENV)/bin/pip)"
	$(VENV)/bin/pip install -q -e '.[dev]'
	$(PY) -c "import llama_cpp.mtmd_cpp"  # the multimodal library is there
	touch $@

venv: $(VENV)/.installed

up: venv
	$(PY) -m cli.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m cli.stack down; fi

test: venv browser
	scripts/install-buf.sh
	scripts/check-protos.sh
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services gateway cli
	$(PY) -m pytest

# The headless Chromium of tests/browser (apt; nothing to do when it is there).
browser:
	scripts/install-browser.sh

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

# Container homes (docs/deploy.md). `images` builds the CPU images with BuildKit, installing the
# llama-cpp-python wheel of scripts/llama-wheel.sh (build/wheels) instead of compiling llama.cpp in the image.
DOCKER ?= docker
IMAGE_TAG ?= dev
images: venv
	mkdir -p build/wheels && rm -f build/wheels/llama_cpp_python-*.whl
	cp "$$(scripts/llama-wheel.sh $(VENV)/bin/pip)" build/wheels/
	for t in catalog downloader gateway runner; do \
		DOCKER_BUILDKIT=1 $(DOCKER) build -f docker/Dockerfile --target $$t -t jan-models/$$t:$(IMAGE_TAG) . || exit 1; \
	done

compose-up: images
	JAN_TAG=$(IMAGE_TAG) docker compose up -d

compose-down:
	docker compose down -t 2

# The whole compose scenario as CI runs it (installs and starts Docker when needed).
compose-e2e: venv
	scripts/ci/compose-e2e.sh

# Renders each Kubernetes overlay (the tests validate them: tests/deploy).
k8s-render:
	for o in deploy/k8s/overlays/*/; do echo "# $$o"; kubectl kustomize $$o || exit 1; done

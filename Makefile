# codemill: `make run` sets up and runs the whole chain on the CPU profile; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed

# Stages are run by DVC as `python -m components.<stage>`: the venv must come first on PATH.
export PATH := $(BIN):$(PATH)
# Telemetry off (see docs/operations.md); nothing here needs the network at run time.
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Prefect's temporary API: its first start in a fresh venv migrates a database (over 20 s on 2 busy cores).
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup browser run test lint format bench clean-state

# torch first: pinned to the CPU wheel resolvable here; then the project with the full pin set. uv
# installs the same pins in seconds (pip takes minutes); pip does it where uv cannot be had. uv reads
# neither pip's config nor PIP_FIND_LINKS, so a local wheel directory is passed on; and it compiles
# bytecode only when asked (as pip does by default): without .pyc files, where PYTHONDONTWRITEBYTECODE
# is set, every process would compile torch, mlflow and dvc from source at each start.
PIP_INSTALL = $(BIN)/python -m pip install --quiet
UV_INSTALL = $(BIN)/python -m uv pip install --quiet --compile-bytecode --python $(BIN)/python \
	$(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

ASSETS := infra/data-docs-assets
ASSETS_STAMP := $(ASSETS)/node_modules/.package-lock.json

setup: $(STAMP) $(ASSETS_STAMP) browser

# The CSS/JS GX's Data Docs load from CDNs, pinned by the lock (components/validate/offline.py ships them).
$(ASSETS_STAMP): $(ASSETS)/package.json $(ASSETS)/package-lock.json
	npm ci --prefix $(ASSETS) --no-audit --no-fund --ignore-scripts --loglevel=error

# Headless Chromium for the offline Data Docs test (Debian's package, through apt, where it can be had).
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
	  echo "note: no Chromium (apt as root installs Debian's chromium); the browser test will be skipped"

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) uv || echo "uv not available: installing with pip"
	if $(BIN)/python -m uv --version >/dev/null 2>&1; then install="$(UV_INSTALL)"; else install="$(PIP_INSTALL)"; fi; \
	  $$install torch==2.13.0 && $$install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: setup
	$(BIN)/codemill run

test: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python bench/data_throughput.py

# Forget pipeline outputs and tracking state (not the DVC cache): the next `make run` starts over.
clean-state:
	rm -rf data reports/*.json reports/data_docs mlflow.db mlartifacts .codemill

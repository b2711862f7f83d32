# ctflows — the two commands are `make demo` and `make test`; each sets up .venv from the lock.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYTHONPATH := $(CURDIR)

.PHONY: help demo test test-unit test-integration bench lint format docs ui serve lock clean registry-tools container-tools serving-base flow-image

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

demo: $(STAMP)  ## run the continuous-training loop over successive batches, from a clean .ctflows/
	rm -rf .ctflows
	$(PY) -m scripts.demo

registry-tools:  ## Debian's docker-registry and skopeo, installed when missing (the image tests need them)
	@command -v docker-registry >/dev/null && command -v skopeo >/dev/null || { \
	  echo "installing docker-registry and skopeo from Debian (apt-get; needs root or sudo)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends docker-registry skopeo \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends docker-registry skopeo; }; }
	@docker-registry --version >/dev/null && skopeo --version

CONTAINER_TOOLS := podman buildah runc mmdebstrap containernetworking-plugins
container-tools:  ## Debian's podman, buildah, runc and mmdebstrap, installed when missing (the container tests need them)
	@for t in $(CONTAINER_TOOLS); do dpkg -s $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing from Debian (apt-get; needs root or sudo)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends $$missing \
	  || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends $$missing; }; fi
	@podman --version && runc --version | head -1 && mmdebstrap --version

REGISTRY ?=
serving-base: $(STAMP) container-tools  ## build deployments/serving/Dockerfile with podman and push it: REGISTRY=ghcr.io/team [FROM=image | BOOTSTRAP=bookworm] [TAG=release]
	@test -n "$(REGISTRY)" || { echo "usage: make serving-base REGISTRY=ghcr.io/<team> [FROM=...|BOOTSTRAP=bookworm] [TAG=...]"; exit 2; }
	$(PY) -m tasks.serving_base --registry $(REGISTRY) $(if $(FROM),--from $(FROM)) $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP)) $(if $(TAG),--tag $(TAG))

flow-image: $(STAMP) container-tools  ## build deployments/flow/Dockerfile with podman and push it: REGISTRY=ghcr.io/team [FROM=image | BOOTSTRAP=bookworm] [TAG=release]
	@test -n "$(REGISTRY)" || { echo "usage: make flow-image REGISTRY=ghcr.io/<team> [FROM=...|BOOTSTRAP=bookworm] [TAG=...]"; exit 2; }
	$(PY) -m tasks.serving_base --registry $(REGISTRY) --name ctflows-flow --dockerfile deployments/flow/Dockerfile $(if $(FROM),--from $(FROM)) $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP)) $(if $(TAG),--tag $(TAG))

test: $(STAMP) registry-tools container-tools  ## unit and integration tests against the real components
	$(PY) -m pytest

test-unit: $(STAMP)  ## unit tests only (seconds, no servers)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) registry-tools container-tools  ## integration tests only
	$(PY) -m pytest tests/integration

bench: $(STAMP) registry-tools  ## served-run speed and memory targets -> bench/results.json, README, docs, scaling.png
	$(PY) -m bench.run
	$(PY) -m scripts.gen_docs

lint: $(STAMP)  ## ruff and mypy, as before every commit
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)  ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

docs: $(STAMP)  ## the docs site -> build/site: references regenerated from the code, mkdocs build --strict
	$(PY) -m scripts.gen_docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

ui: $(STAMP)  ## MLflow UI on :5000 and Prefect UI on :4200, over what the demo produced
	@echo "MLflow  http://127.0.0.1:5000   Prefect  http://127.0.0.1:4200   (Ctrl-C stops both)"
	@trap 'kill 0' EXIT; \
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(CURDIR)/.ctflows/mlflow.db & \
	PREFECT_HOME=$(CURDIR)/.ctflows/prefect $(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200 & \
	wait

HOST ?= 127.0.0.1
WEBHOOK_PORT ?= 8787
serve: $(STAMP)  ## Prefect server + served deployments (schedule, data-landed trigger, manual, drift, repair) + webhook (HOST=127.0.0.1 WEBHOOK_PORT=8787)
	$(PY) -m deployments.serve --server --webhook-port $(WEBHOOK_PORT) --host $(HOST)

lock:  ## re-pin requirements.lock from pyproject.toml's ranges
	$(PY) -m pip install --quiet uv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-header -o requirements.lock
	sed -i '1i # Generated by `make lock` (uv pip compile pyproject.toml --extra dev); do not edit by hand.' requirements.lock

clean:  ## remove runtime state (.ctflows/) and the venv
	rm -rf .ctflows $(VENV)

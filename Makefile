# pocketcnn: train a CNN, export it for phones and servers, serve per-class percentages.
# Every target sets up what it needs first; `make` alone lists them.

.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUNS ?= runs
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_TIMEOUT ?= 2400
# make run's quick training stops after the epoch that would overrun this many minutes
FIRST_RUN_MINUTES ?= 8
STAMP := $(VENV)/.installed
MEDIAPIPE_VENV ?= .venv-mediapipe
MEDIAPIPE_STAMP := $(MEDIAPIPE_VENV)/.installed
CLIENTS_VENV ?= .venv-clients
CLIENTS_STAMP := $(CLIENTS_VENV)/.installed
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
WEB_STAMP := web/node_modules/.installed
PACKAGES := scripts/install-system-packages.sh
# TensorFlow's oneDNN kernels: on by itself only on CPUs with AVX512-VNNI/BF16/AMX, a third faster on AVX2 too.
export TF_ENABLE_ONEDNN_OPTS ?= 1

.PHONY: help setup mediapipe clients peers web train export serve run lint test test-fast bench clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## Create .venv with every extra (pinned by constraints.txt); no root needed

$(STAMP): pyproject.toml setup.py constraints.txt contract/_product_photo.c
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,export,serve,dev]'
	touch $@

mediapipe: $(MEDIAPIPE_STAMP) ## Create .venv-mediapipe: MediaPipe Tasks (pinned), to check the .tflite files as apps load them

$(MEDIAPIPE_STAMP): mediapipe-requirements.txt
	python3 -m venv $(MEDIAPIPE_VENV)
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MEDIAPIPE_VENV)/bin/python -m pip install --quiet -r mediapipe-requirements.txt
	touch $@

clients: $(CLIENTS_STAMP) ## Create .venv-clients: Triton's and KServe's clients (pinned), to test the V2 routes as they call them

$(CLIENTS_STAMP): clients-requirements.txt
	python3 -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CLIENTS_VENV)/bin/python -m pip install --quiet -r clients-requirements.txt
	touch $@

peers: $(PEERS_STAMP) ## Create .venv-peers: Triton (nvidia-pytriton) and LitServe (pinned), for the serving benchmark

$(PEERS_STAMP): peers-requirements.txt pyproject.toml
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install --quiet -r peers-requirements.txt
	$(PEERS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	touch $@

web: $(WEB_STAMP) ## Install the page's in-browser runtime (onnxruntime-web, locked by web/package-lock.json; needs npm)

$(WEB_STAMP): web/package.json web/package-lock.json
	npm ci --prefix web --no-audit --no-fund --ignore-scripts --loglevel=error
	touch $@

train: setup ## Train the full recipe on Fashion-MNIST into runs/<run-id>/ (ARGS="..." for options)
	@$(PACKAGES) data
	$(PY) -m train --runs-dir $(RUNS) $(ARGS)

export: setup ## Export the newest run to models/ with every release gate; exit 3 if a gate fails
	$(PY) -m export $(RUNS)/latest --models-dir $(MODELS) $(ARGS)

serve: setup ## Serve the best published model with gunicorn on HOST:PORT (default 127.0.0.1:8000)
	POCKETCNN_MODEL_REPOSITORY=$(MODELS) $(VENV)/bin/gunicorn -c python:serve.gunicorn_conf --bind $(HOST):$(PORT) 'serve:create_app()'

run: setup ## First run: train the quick recipe (a few minutes) if there is no model, export it, serve the page
	@$(PACKAGES) data
	@if [ ! -e $(RUNS)/latest ]; then \
		echo "No trained model yet: training the quick first-run recipe (5 epochs, about 92 %; 4 to 8 minutes on 2 cores)."; \
		echo "The full recipe (about 93 %) is 'make train' then 'make export', whenever you like: the service picks it up."; \
		$(PY) -m train --runs-dir $(RUNS) --recipe quick --max-minutes $(FIRST_RUN_MINUTES) $(FIRST_RUN_ARGS) || exit $$?; fi
	@if ! $(PY) -m export.published $(RUNS)/latest --models-dir $(MODELS); then \
		$(PY) -m export $(RUNS)/latest --models-dir $(MODELS) $(EXPORT_ARGS) || exit $$?; fi
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory web; else \
		echo "npm not found: the page will classify on the service only (install Node.js for 'on this device')"; fi
	@echo "Open http://$(HOST):$(PORT)/ in a browser (Ctrl-C stops the service)"
	@$(MAKE) --no-print-directory serve

lint: setup ## ruff: style, bugbear and security rules (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

test: setup mediapipe clients web lint ## Lint, then the whole test suite (trains, exports and serves small models on real data)
	@$(PACKAGES) data browser test
	timeout --kill-after=30 $(TEST_TIMEOUT) $(PY) -m pytest -q --durations=30 -o faulthandler_timeout=900 $(ARGS)

test-fast: setup ## The tests that need no trained model and no browser (the HTTP contract on a tiny model)
	@$(PACKAGES) data
	$(PY) -m pytest -q -m "not slow and not browser" $(ARGS)

bench: setup mediapipe peers web ## Benchmarks on the full data set (about 75 minutes); results in bench/results and BENCHMARKS.md
	@$(PACKAGES) data browser bench
	$(PY) -m bench.run_all $(ARGS)

clean: ## Remove the virtual environment and caches (keeps runs/ and models/)
	rm -rf $(VENV) $(MEDIAPIPE_VENV) $(CLIENTS_VENV) $(PEERS_VENV) web/node_modules .pytest_cache .hypothesis .ruff_cache build *.egg-info contract/*.so

# pocketcnn: train a CNN, export it for phones and servers, serve per-class percentages.
# Every target sets itself up first; `make` alone lists them.

.DEFAULT_GOAL := help
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
RUNS ?= runs
MODELS ?= models
HOST ?= 127.0.0.1
PORT ?= 8000
TEST_TIMEOUT ?= 2400
STAMP := $(VENV)/.installed

.PHONY: help setup system-packages train export serve run test test-fast bench clean

help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-16s %s\n", $$1, $$2}'

setup: $(STAMP) system-packages ## Create .venv with every extra (pinned by constraints.txt) and install the Debian packages

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[train,export,serve,dev]'
	touch $@

system-packages: ## Install Fashion-MNIST, Chromium, ChromeDriver and wrk from Debian (root or sudo)
	@scripts/install-system-packages.sh

train: setup ## Train the default recipe on Fashion-MNIST into runs/<run-id>/ (ARGS="..." for options)
	$(PY) -m train --runs-dir $(RUNS) $(ARGS)

export: setup ## Export the newest run to models/ with every release gate; non-zero exit if any gate fails
	$(PY) -m export $(RUNS)/latest --models-dir $(MODELS) $(ARGS)

serve: setup ## Serve the best published model with gunicorn on HOST:PORT (default 127.0.0.1:8000)
	POCKETCNN_MODEL_REPOSITORY=$(MODELS) $(VENV)/bin/gunicorn -c python:serve.gunicorn_conf --bind $(HOST):$(PORT) 'serve:create_app()'

run: setup ## Train (if no run yet), export (if no model yet), then serve with the web page
	@if [ ! -e $(RUNS)/latest ]; then echo "No trained model yet: training the default recipe (13 to 22 minutes on 2 cores)"; \
		$(PY) -m train --runs-dir $(RUNS) || exit $$?; fi
	@if ! $(PY) -m export.published $(RUNS)/latest --models-dir $(MODELS); then \
		$(PY) -m export $(RUNS)/latest --models-dir $(MODELS) || exit $$?; fi
	@echo "Open http://$(HOST):$(PORT)/ in a browser (Ctrl-C stops the service)"
	@$(MAKE) --no-print-directory serve

test: setup ## Run the whole test suite (trains, exports and serves small models on real data)
	timeout --kill-after=30 $(TEST_TIMEOUT) $(PY) -m pytest -q -o faulthandler_timeout=900 $(ARGS)

test-fast: setup ## Only the tests that need no training, export or server
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: setup ## Benchmarks on the full data set (about 45 minutes); results in bench/results and BENCHMARKS.md
	$(PY) -m bench.run_all $(ARGS)

clean: ## Remove the virtual environment and caches (keeps runs/ and models/)
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

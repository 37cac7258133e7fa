# The two set-up commands (see README):
#   make demo   create .venv if needed, write the report of every method on the embedded model
#               (runs/report/index.html; a rerun reuses the finished stages)
#   make test   create .venv if needed, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-peers lint bench

install:
	@bash scripts/install.sh

demo: install
	$(VENV)/bin/steerlab report --out runs/report

test: install
	$(PY) -m pytest -m "not slow and not peer" $(PYTEST_ARGS)

test-all: install test-peers
	$(PY) -m pytest -m "not peer" $(PYTEST_ARGS)

test-peers: install
	@bash scripts/peers.sh
	.venv-peers/bin/python -m pytest -m peer $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check steerlab tests benchmarks

bench: install
	$(PY) benchmarks/capture.py

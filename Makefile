# The two set-up commands (see README):
#   make demo   create .venv if needed, write the report of every method on the embedded model
#               (runs/report/index.html; a rerun reuses the finished stages)
#   make test   create .venv if needed, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install demo test test-all test-peers lint typecheck bench notebooks notebooks-install lab

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
	$(VENV)/bin/ruff check steerlab tests benchmarks probes saes steering notebooks/*.py

# pyright in basic mode on steerlab/ (pyrightconfig.json)
typecheck: install
	$(VENV)/bin/pyright --pythonpath $(PY)

bench: install
	$(PY) benchmarks/capture.py

# Notebooks: notebooks/NN_name.py (jupytext percent format) is each notebook's only source; the
# .ipynb beside it is built from it and committed executed, with its outputs.
#   make notebooks                                        rebuild and execute all of them
#   make notebooks NOTEBOOKS=notebooks/03_probes_pls.py   only these
#   make notebooks VENV=/path/to/venv NB_DEPS=            use a ready venv, install nothing
#   make lab                                              JupyterLab on notebooks/
#   make lab LAB_ARGS="--no-browser --port 8890"          options for `jupyter lab`
# The figures' static PNG copies need a local Chrome or Chromium (e.g. apt-get install chromium).
NOTEBOOKS ?= $(sort $(wildcard notebooks/[0-9]*.py))
NB_DEPS ?= notebooks-install
LAB_ARGS ?=
# This checkout's steerlab even when VENV's editable install points elsewhere; no progress bars
# (the first load of the embedded model draws one while it caches the weights).
NB_ENV = PYTHONPATH=$(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH)) TQDM_DISABLE=1 \
	HF_HUB_DISABLE_PROGRESS_BARS=1

notebooks-install: install
	$(PY) -m pip install --quiet -e ".[dev,notebooks]"

notebooks: $(NB_DEPS)
	$(NB_ENV) $(PY) -c "from steerlab import load_model; load_model()"
	@set -e; for nb in $(NOTEBOOKS); do \
		echo "== $$nb"; \
		$(PY) -m jupytext --quiet --to ipynb "$$nb"; \
		$(NB_ENV) $(PY) -m nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.record_timing=False \
			"$${nb%.py}.ipynb"; \
	done

lab: $(NB_DEPS)
	$(NB_ENV) $(PY) -m jupyterlab --ServerApp.root_dir=notebooks $(LAB_ARGS)

# The commands the README names. Every target sets up .venv on first use, so a fresh clone
# needs only Python 3.11: `make run`, `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PYTHONHASHSEED := 0
# pytest processes (pytest-xdist; a test file runs whole in one of them, the shared run is made once for all)
TEST_WORKERS ?= 2

.PHONY: help setup run test test-nbdev test-sync test-py serve bento manifests monitor retrain lab ui docs readme lock clean

help:
	@echo "make run      set up if needed, then run the whole pipeline on the default data"
	@echo "make test     set up if needed, then every check that CI runs"
	@echo "make serve    serve the newest promoted model with 'bentoml serve'"
	@echo "make bento    build a bento of the newest promoted model (service, model, pinned packages; prints its tag)"
	@echo "make manifests  write Kubernetes manifests for it under build/k8s/ (ARGS='--image ... --replicas N')"
	@echo "make monitor  run the monitoring stage on the newest run"
	@echo "make retrain  retrain on the service's labelled predictions; promote only a better challenger"
	@echo "make lab      JupyterLab on this project, at http://127.0.0.1:$${PORT:-8888}"
	@echo "make ui       MLflow's UI on the runs tracked in this project's store (mlruns/), at http://127.0.0.1:$${PORT:-5000}"
	@echo "make readme   regenerate README.md from nbs/index.ipynb"
	@echo "make clean    remove generated data, reports and the virtual environment"

setup: $(STAMP)

# Editable install with the dev extras, pinned by requirements.lock (the exact set tested).
$(STAMP): pyproject.toml requirements.lock
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11 ...'"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "error: Python 3.11 is required, $(PYTHON) is " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mlflow-template run $(ARGS)

test: $(STAMP)
	$(BIN)/mlflow-template check-sync
	$(BIN)/nbdev-test --n-workers 2
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

serve: $(STAMP)
	$(BIN)/bentoml serve mlflow_template.service:ModelService --port $${PORT:-3000}

# The bento packs the promoted model of the store BENTOML_HOME names (default ~/bentoml), as `make run` left it.
bento: $(STAMP)
	$(BIN)/mlflow-template bento $(ARGS)

manifests: $(STAMP)
	$(BIN)/mlflow-template manifests $(ARGS)

monitor: $(STAMP)
	$(BIN)/mlflow-template monitor $(ARGS)

retrain: $(STAMP)
	$(BIN)/mlflow-template retrain $(ARGS)

# Local only (127.0.0.1), no browser (containers and remote shells have none), on $PORT (default 8888);
# jupyter refuses to run as root (containers, CI) unless told --allow-root.
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=. --no-browser --ip 127.0.0.1 --port $${PORT:-8888} $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# MLflow's UI on the project's embedded tracking store (mlruns/mlflow.db, artifacts under mlruns/artifacts/), local only,
# on $PORT (default 5000). With MLFLOW_TRACKING_URI set, runs go to that server instead: open its UI.
ui: $(STAMP)
	@mkdir -p mlruns/artifacts
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --artifacts-destination mlruns/artifacts --host 127.0.0.1 --port $${PORT:-5000}

docs readme: $(STAMP)
	$(BIN)/mlflow-template readme

# Refresh the pins after changing dependencies in pyproject.toml (then run make test).
lock:
	rm -rf /tmp/mlflow_template-lock && $(PYTHON) -m venv /tmp/mlflow_template-lock
	/tmp/mlflow_template-lock/bin/python -m pip install --quiet --upgrade "pip>=24"
	/tmp/mlflow_template-lock/bin/python -m pip install --quiet -e '.[dev]'
	/tmp/mlflow_template-lock/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' > requirements.lock

clean:
	rm -rf $(VENV) reports/*/ reports/latest data/interim/* data/processed/* data/logs/* .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

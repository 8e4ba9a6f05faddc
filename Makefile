# QTOS: two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DBT_SEND_ANONYMOUS_USAGE_STATS := false

.PHONY: install demo test bench dagster-ui mlflow-ui clean

# the installer (from the package index); the project's versions are requirements.lock's
UV_VERSION ?= 0.13.10

# uv installs the locked versions in parallel (seconds instead of minutes); when uv cannot be had, pip installs the
# very same versions from the same lock (tests/test_environment.py compares the environment with the lock).
# --compile-bytecode as pip does: this machine sets PYTHONDONTWRITEBYTECODE, so without .pyc files every process
# of the test suite compiled every module again (14 min 20 s of pytest instead of 9 min 29 s)
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	if $(BIN)/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"; then \
	  $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -c requirements.lock -e '.[dev]' \
	  || $(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'; \
	else \
	  echo "make install: uv not available, installing with pip"; \
	  $(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev]'; \
	fi
	$(BIN)/python -m qt_assets.backtests  # compile vectorbt's numba kernels, build matplotlib's font cache
	$(BIN)/python -m qt_assets.features   # prepare the dbt manifest (dbt parse), as dagster-dbt recommends
	touch $@

install: $(BIN)/.installed

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## (a) set up and materialise the whole graph offline
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m qt_jobs.demo

## (b) run the tests
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadgroup  # both cores; tests sharing the short_run fixture stay on one worker

bench: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python bench/bench_demo.py

dagster-ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf warehouse reports .dagster_home mlflow/mlflow.db mlflow/artifacts dbt_features/target

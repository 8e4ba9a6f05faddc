# QTOS: two commands for a newcomer (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DBT_SEND_ANONYMOUS_USAGE_STATS := false
# Python's own bytecode cache for everything make runs: a machine that sets PYTHONDONTWRITEBYTECODE (this one does)
# would otherwise compile every imported module again in every process (the test suite took 14 min 20 s instead of
# 9 min 29 s without .pyc files; the demo 108 s instead of 72 s)
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install install-test lock demo test bench docs dbt-docs-ui dagster-ui mlflow-ui clean

# the installer (from the package index); the project's versions are requirements.lock's
UV_VERSION ?= 0.13.10
TOOLS      ?= .tools
UV         := $(TOOLS)/bin/uv
# extras beyond the default install (the demo and the UIs), e.g. `make install EXTRAS=live,production`;
# `make test` installs the `test` extra (docs/install.md, pyproject.toml)
EXTRAS     ?=
comma      := ,
STAMP       = $(BIN)/.installed$(if $(EXTRAS),-$(subst $(comma),-,$(EXTRAS)))
COMPILE     = $(if $(filter test,$(subst $(comma), ,$(EXTRAS))),--compile-bytecode)

# uv installs the locked versions in parallel (seconds instead of minutes); when uv cannot be had, pip installs the
# very same versions from the same lock (tests/test_environment.py compares the environment with the lock).
# uv itself goes to $(TOOLS)/, outside the venv (the bootstrap step). The default install compiles no bytecode ahead
# (uv's default): Python writes a module's .pyc when it first imports it (see PYTHONDONTWRITEBYTECODE above), so the
# venv holds the .pyc files of the modules in use (122 MB after the demo), not of all of them (333 MB). The test
# install compiles them all at once, in parallel: the suite's ~50 processes would otherwise each compile what they
# import until a first one has written it.
$(UV):
	PIP_ROOT_USER_ACTION=ignore $(PYTHON) -m pip install --quiet --disable-pip-version-check --target $(TOOLS) \
	  "uv==$(UV_VERSION)" || echo "make install: uv not available, pip installs instead"

# a venv made from an older pyproject.toml or lock starts afresh (uv takes the packages from its cache): installing
# over it would keep packages the new lock no longer has
$(STAMP): pyproject.toml requirements.lock | $(UV)
	if [ -n "$$(find $(BIN) -maxdepth 1 -name '.installed*' \( ! -newer pyproject.toml -o ! -newer requirements.lock \) \
	      2>/dev/null)" ]; then echo "make install: pyproject.toml or requirements.lock changed, new $(VENV)"; \
	  rm -rf $(VENV); fi
	if [ -x $(UV) ] && { [ -x $(BIN)/python ] || $(UV) venv --quiet --python $(PYTHON) $(VENV); } \
	  && $(UV) pip install --quiet $(COMPILE) --python $(BIN)/python -c requirements.lock \
	       -e '.$(if $(EXTRAS),[$(EXTRAS)])'; then :; \
	else \
	  echo "make install: installing with pip"; \
	  $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock \
	    -e '.$(if $(EXTRAS),[$(EXTRAS)])'; \
	fi
	touch $@

install: $(STAMP)

# requirements.lock: every version of every extra, resolved by uv for CPython 3.11 on x86-64 Linux; the versions
# already locked are kept unless a range in pyproject.toml excludes them (add --upgrade to take newer ones)
lock: | $(UV)
	$(UV) pip compile pyproject.toml --all-extras --python-version 3.11.7 --python-platform x86_64-manylinux_2_28 \
	  -o requirements.lock

# the test suite's warm-up: compile our numba kernels into numba's on-disk cache (__pycache__ beside them) once,
# before pytest's two workers (and the dbt runs, for the feature kernels) would each compile the same kernels; redone
# only when a kernel's source changes
WARM := qt_assets/backtests/__pycache__/.kernels-warm
$(WARM): $(addprefix qt_assets/backtests/,engine.py kernels.py metrics.py strategies.py sweep.py runs.py) \
         qt_assets/features/kernels.py | install-test
	$(BIN)/python -m qt_assets.backtests.runs
	$(BIN)/python -m qt_assets.features.kernels
	touch $@

install-test:
	$(MAKE) --no-print-directory install EXTRAS=test

$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	ln -sf $(CURDIR)/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

## (a) set up and materialise the whole graph offline
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m qt_jobs.demo

## (b) run the tests
test: install-test $(WARM)
	$(BIN)/python -m pytest -q -n auto --dist loadgroup  # both cores; tests sharing the short_run fixture stay on one worker

# the generated parts of docs/: the config reference and the metric formulas (a test fails when they are stale)
docs: install
	$(BIN)/python -m qt_jobs.docs

# dbt's docs of the feature library (lineage, columns, tests), as `make docs` generated them
dbt-docs-ui: docs
	cd dbt_features/target && ../../$(BIN)/python -m http.server 8080 --bind 127.0.0.1

bench: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python bench/bench_demo.py

dagster-ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf warehouse reports .dagster_home mlflow/mlflow.db mlflow/optuna.db mlflow/artifacts dbt_features/target

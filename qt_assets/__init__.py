"""Assets and asset checks, one package per pipeline stage, in data order:

- ``market_data/``  prices and the benchmark per XNYS session, behind the blocking price-quality gates
- ``alt_data/``     company news (scored) and SEC Form 4 insider filings, per session
- ``features/``     the dbt project ``dbt_features/`` (DuckDB) as assets: features_daily, labels
- ``research/``     dataset, tuning, training, evaluation, promotion of the MLflow model
- ``backtests/``    the engine, metrics, strategies and rules, sweeps, walk-forward
- ``agents/``       regime, agents' decisions, the guardian's rules, allocation and discipline, LLM agents
- ``execution/``    orders through the broker resource, reconciliation, the trade journal

In each stage, ``assets.py`` holds the Dagster assets and checks (a ``build_*`` factory taking the validated
project config); the other modules are libraries that import no Dagster and no asset module.
``partition_events`` is the Dagster plumbing the partitioned stages share.
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that moved, whose classes are pickled by reference in stored models (MLflow's cloudpickle of the
# pipeline names qt_assets.training.MedianImputer): a model registered before the move still loads.
_MOVED = {"qt_assets.training": "qt_assets.research.training"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in _MOVED else None

    def create_module(self, spec):
        return importlib.import_module(_MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())

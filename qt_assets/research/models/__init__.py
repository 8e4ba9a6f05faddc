"""Model families, one module per family, each registered with ``@model_family`` (qt_resources.plugins): a
family builds the estimator at the end of the research pipeline (winsorise -> impute -> estimator), states its
hyper-parameters and, optionally, its Optuna search space and feature importance. Every module here is loaded on
the first lookup. To add a family, add one file here (or anywhere listed in qtos.yaml's ``plugins:``): see
docs/extending.md."""

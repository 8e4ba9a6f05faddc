"""Research: the training set (dataset), Optuna tuning on purged walk-forward folds (tuning.py), the xgboost
pipeline (training.py), evaluation and its plots (evaluation.py); assets.py registers the model in MLflow and
promotes it through the metric gates."""

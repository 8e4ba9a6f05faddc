"""Research, in named parts: the training set with purge and embargo (dataset.py), the pipeline and the folds
(training.py), the model families (models/: xgboost built in), Optuna tuning (tuning.py), evaluation and its
plots (evaluation.py), one training run logged and registered in MLflow (model_run.py), the promotion gates
(promotion.py); assets.py makes each a Dagster asset."""

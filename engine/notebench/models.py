"""A sensible first model for any tabular task: gradient-boosted trees over the numeric and categorical features.

A use case's model factory is its own business (`UseCase.make_model`); `default_model` is the one a new project
starts from (`notebench new` writes it into the generated use case) and a baseline to beat. Histogram gradient
boosting takes numeric columns as they are (missing values included, no scaling) and categorical ones as ordinal
codes it splits on as categories: an unseen category at prediction time, or a missing one, is a missing value, and
categories beyond the trees' 255 bins are pooled as infrequent, so columns of any cardinality fit.

    make_model = functools.partial(default_model, "regression", NUMERIC, CATEGORICAL)  # params -> estimator
    search_space = default_search_space
"""

from __future__ import annotations

from notebench.usecase import TASKS

__all__ = ["default_model", "default_search_space"]

MAX_CATEGORIES = 254  # per categorical column; one more code is the missing value, within the trees' 255 bins


def default_model(task: str,  # binary | multiclass | regression
                  numeric,  # numeric feature columns
                  categorical,  # categorical feature columns (strings)
                  params: dict | None = None,  # booster hyperparameters (as `default_search_space` proposes)
                  ):
    """An unfitted scikit-learn pipeline: categories ordinal-encoded, then a histogram gradient-boosted classifier
    (binary, multiclass) or regressor, over `numeric` and `categorical` columns of a DataFrame."""
    import numpy as np
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OrdinalEncoder

    if task not in TASKS:
        raise ValueError(f"task {task!r}: expected one of {', '.join(TASKS)}")
    numeric, categorical = list(numeric), list(categorical)
    encode = ColumnTransformer(
        [("categorical", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan,
                                        max_categories=MAX_CATEGORIES), categorical),
         ("numeric", "passthrough", numeric)], verbose_feature_names_out=False).set_output(transform="pandas")
    booster = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
    settings = {"max_iter": 200, "learning_rate": 0.1, "early_stopping": False, "random_state": 0, **(params or {})}
    trees = booster(categorical_features=list(range(len(categorical))) or None, **settings)
    return Pipeline([("encode", encode), ("model", trees)])


def default_search_space(trial) -> dict:
    """Hyperparameters for `default_model` from an Optuna trial."""
    return {"learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
            "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 8, 63, log=True),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 5, 100, log=True),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-6, 10.0, log=True),
            "max_iter": trial.suggest_int("max_iter", 50, 400, log=True)}

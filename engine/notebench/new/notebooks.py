"""The project's use-case notebooks, written from the data: 01_data, 02_model, 03_use_case.

nbdev exports them into the project's package (`<name>_lib`): `data` (names, schema, where the data is), `model`
(the scikit-learn pipeline and its search space) and `use_case` (the contract `settings.ini` names). Every cell has a
fixed id, so exporting never makes a diff; their lessons run on the sample of the user's own data (`data/sample`) and
check what is true of any data, never a score the data may not reach.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from notebench.new.schema import bounds, categories, number, schema_code

__all__ = ["notebooks", "write_notebooks"]

METRIC_CODE = {
    "binary": ("roc_auc_score", "roc_auc_score(holdout[TARGET], model.predict_proba(holdout[FEATURES])[:, 1])",
               "ROC AUC", "0.5 (a coin)"),
    "multiclass": ("log_loss", "log_loss(holdout[TARGET], model.predict_proba(holdout[FEATURES]), "
                   "labels=model.classes_)", "log loss", "that of always predicting the class shares"),
    "regression": ("root_mean_squared_error", "root_mean_squared_error(holdout[TARGET], "
                   "model.predict(holdout[FEATURES]))", "RMSE", "the spread of the target"),
}


def _md(cid: str, text: str):
    return new_markdown_cell(text.strip("\n"), id=cid)


def _code(cid: str, text: str):
    return new_code_cell(text.strip("\n"), id=cid)


def _notebook(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    # the kernelspec as nbdev-clean writes it, so that ci/check finds the notebooks clean
    nb.metadata = {"kernelspec": {"display_name": "notebench", "language": "python", "name": "notebench"}}
    return nb


def _list(names) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


def _wrapped(prefix: str, names, width: int = 116) -> str:
    """`prefix[...]` with the names wrapped under the bracket."""
    lines, line = [], prefix + "["
    for i, name in enumerate(names):
        item = f'"{name}"' + (", " if i < len(names) - 1 else "")
        if len(line) + len(item) > width:
            lines.append(line.rstrip())
            line = " " * (len(prefix) + 1)
        line += item
    return "\n".join([*lines, line + "]"])


def _categories(project) -> str:
    land = project.landing
    if not project.roles.categorical:
        return "CATEGORIES = {}  # no text column with few values"
    rows = [f'    "{c}": {categories(land.features[c])!r},'.replace("'", '"') for c in project.roles.categorical]
    return "CATEGORIES = {\n" + "\n".join(rows) + "\n}"


# ---------------------------------------------------------------------------------------------------------
# 01_data


def _roles_md(project) -> str:
    roles, land = project.roles, project.landing
    out = ["| role | column(s) | how |", "|---|---|---|"]
    how = roles.how
    out.append(f"| timestamp | `{roles.timestamp}` | {how['timestamp']} |")
    out.append(f"| entity | {', '.join(f'`{e}`' for e in roles.entities)} | {how['entities']} |")
    out.append(f"| target | `{roles.target}` | {how['target']} |")
    out.append(f"| task | **{roles.task}** | {how['task']} |")
    out.append(f"| numeric features | {', '.join(f'`{c}`' for c in roles.numeric) or 'none'} | numbers |")
    out.append(f"| categorical features | {', '.join(f'`{c}`' for c in roles.categorical) or 'none'} | "
               "text with few values |")
    for col, why in roles.left_out.items():
        out.append(f"| left out | `{col}` | {why} |")
    if project.renamed:
        out.append("")
        out.append("Renamed to plain identifiers: " + ", ".join(f"`{a}` → `{b}`" for a, b in project.renamed.items())
                   + ".")
    if land.codes:
        pairs = ", ".join(f"`{k!r}` → {v}" for k, v in land.codes.items())
        out.append("")
        out.append(f"The binary target is learnt as 0/1 ({pairs}): the model's score is the probability of 1.")
    return "\n".join(out)


def _names_code(project) -> str:
    roles, land = project.roles, project.landing
    lines = [f"ENTITIES = {_list(roles.entities)}  # whom or what a row is about",
             f'TIMESTAMP = "{roles.timestamp}"  # when the row was observed (UTC)',
             f'TARGET = "{roles.target}"  # what the model predicts',
             f'TASK = "{roles.task}"  # binary | multiclass | regression',
             f'LABELS = "{land.layout}"  # labels arrive in labels/ batches (separate) or in the batches (in_batches)',
             _wrapped("NUMERIC = ", roles.numeric), _categories(project),
             "CATEGORICAL = list(CATEGORIES)", "FEATURES = NUMERIC + CATEGORICAL",
             "KEYS = [*ENTITIES, TIMESTAMP]  # what makes a row unique"]
    if land.codes:
        codes = ", ".join(f"{k!r}: {v}" for k, v in land.codes.items())
        lines.append(f"TARGET_CODES = {{{codes}}}  # the target's values in the data you brought -> what is learnt")
    if roles.task == "multiclass":
        values = project.landing.labels if project.landing.labels is not None else project.landing.features
        classes = sorted(values[roles.target].dropna().unique().tolist())
        lines.append(f"CLASSES = {json.dumps([str(c) if isinstance(c, str) else c for c in classes])}  # the classes")
    return "\n".join(lines)


def _bad_value(project) -> str:
    """A lesson line that puts an impossible value into the first numeric feature (or an unknown category)."""
    roles, land = project.roles, project.landing
    if roles.numeric:
        col = roles.numeric[0]
        low, high, whole = bounds(land.features[col])
        return f'bad.loc[bad.index[0], "{col}"] = {number(high * 10 + 1000 if high >= 0 else 1000, whole)}', col
    col = roles.categorical[0]
    return f'bad.loc[bad.index[0], "{col}"] = "a value never seen"', col


def _source(project) -> str:
    """Where the notebook's content came from, in a sentence."""
    files = project.files
    labels = f" and {len(files.labels)} label file(s)" if files.labels else ""
    return (f"`notebench new` wrote this notebook from {len(files.features)} data file(s){labels} in "
            f"`{files.data}`: what it could tell from them is below, as code.")


def data_notebook(project) -> nbformat.NotebookNode:
    roles, land = project.roles, project.landing
    bad, bad_col = _bad_value(project)
    labels_join = ('rows = features.merge(read_batches(folder / "labels"), on=KEYS, how="inner")'
                   if land.layout == "separate" else "rows = features")
    shape_cols = "[*KEYS, *FEATURES]" + (", TARGET" if land.layout == "in_batches" else "")
    if land.layout == "in_batches":
        shape_cols = "[*KEYS, *FEATURES, TARGET]"
    layout_md = ("Labels arrive as their own batches (`data/batches/labels/`, the contract's `separate` layout): each "
                 "label row names the entity and the timestamp of the row it is about."
                 if land.layout == "separate" else
                 "Labels arrive inside the batches (the contract's `in_batches` layout): the target is a column of "
                 "each batch, missing while a row's outcome is not known.")
    cells = [
        _code("data-00", "#| default_exp data"),
        _md("data-01", f"# Data\n\n> The {project.name} use case's data: its columns, the schema every batch must "
                       "match, and where the data is."),
        _md("data-02", f"{_source(project)} It is yours now: correct a role, tighten a range, add a derived "
                       f"feature; then `nbdev-export` (or `make check`) writes the package `{project.package}`, which "
                       "the engine reads through `notebooks/03_use_case.ipynb`."),
        _code("data-03", "#| export\nfrom pathlib import Path\n\nimport pandas as pd\nimport pandera.pandas as pa\n"
                         "from notebench.data.batches import read_batches"),
        _code("data-04", "from fastcore.test import *\nfrom notebench.data.batches import time_split, validate_batch\n"
                         "from notebench.errors import BatchSchemaError\nfrom notebench.settings import load_settings"),
        _md("data-05", "## The use case in names\n\n" + _roles_md(project)),
        _code("data-06", "#| export\n" + _names_code(project)),
        _md("data-07", f"""
## Where the data is

`notebench new` cut the rows into one batch per {land.period} (a file named by the day it starts), as a data feed
would deliver them: `data/batches/` holds all {len(land.names)} of them. The first {land.n_train} are what the first
model trains on; `make demo` replays the last {len(land.replay)} as traffic, with their labels as feedback.
`data/sample/` is a small slice of the training batches (every batch, every class) that these lessons, the
project's tests and CI's smoke run use. {layout_md}
"""),
        _code("data-08", '''#| export
def project_folder() -> Path:
    "The project's folder: the nearest one holding settings.ini above this module, else above the working directory."
    for start in (globals().get("__file__"), Path.cwd()):
        if start is None: continue
        for folder in (Path(start).resolve(), *Path(start).resolve().parents):
            if (folder / "settings.ini").is_file(): return folder
    raise FileNotFoundError("no settings.ini above this module or the working directory: run from the project")

def batches(kind:str="batches", # data/<kind>: `batches` (all of them) or `sample`
            stream:str="features", # features, or labels
           ) -> list[Path]:
    "The parquet batches of data/<kind>/<stream>, oldest first."
    return sorted((project_folder() / "data" / kind / stream).glob("*.parquet"))

def labelled(kind:str="sample", # data/<kind>: `batches` or `sample`
            ) -> pd.DataFrame:
    "The rows of data/<kind> whose label is known, with their features, in time order."
    folder = project_folder() / "data" / kind
    features = read_batches(folder / "features")
    ''' + labels_join + '''
    return rows[rows[TARGET].notna()].sort_values(KEYS, ignore_index=True)'''),
        _code("data-09", f'''sample = read_batches(project_folder() / "data" / "sample" / "features")
test_eq(list(sample.columns), {shape_cols})
test_eq(len(batches()), {len(land.names)})
pd.Series({{"batches": len(batches()), "sample batches": len(batches("sample")), "sample rows": len(sample),
           "labelled sample rows": len(labelled())}})'''),
        _md("data-10", "## The schema of a batch"),
        _code("data-11", "#| export\n" + schema_code(land.features, roles, land.layout, project.name)),
        _md("data-12", """
The schema is what a batch must be for the pipeline to make sense of it: these columns and no others, these types,
one row per entity and time. It was inferred from your data, so it accepts all of it: each range is the one seen,
widened by half its width on each side (and kept at or above 0 where no value was negative), a column is nullable
where a value was missing, and a categorical column accepts the values seen. Tighten it where you know better: the
schema should refuse the impossible, while drift detection (the validate step and monitoring) flags the unusual.
"""),
        _code("data-13", '''def check(batch): return validate_batch(batch, SCHEMA, KEYS)
for path in batches("sample"): check(pd.read_parquet(path))  # every batch of the sample passes
test_eq(list(SCHEMA.columns)[:len(KEYS)], KEYS)'''),
        _md("data-14", "A value the schema cannot accept, or a row twice, is refused with the column named:"),
        _code("data-15", f'''bad = pd.read_parquet(batches("sample")[0]).head(3).copy()
{bad}
with expect_fail(BatchSchemaError, contains="{bad_col}"): check(bad)
twice = pd.concat([bad.head(1), bad.head(1)], ignore_index=True)
try: check(twice)
except BatchSchemaError as e: error = e
test_eq(any("duplicated" in p for p in error.problems), True)
print(error)'''),
        _md("data-16", """
## Labels, and a split by time

The engine joins each label with the row it is about, and splits by time: the model is judged on days it has not
seen, as it will be used. The holdout is `[training] holdout_days` long (settings.ini), chosen by `notebench new` so
that the fit, validation and holdout slices of your training batches each hold enough rows.
"""),
        _code("data-17", '''rows = labelled()
holdout_days = load_settings().value("training", "holdout_days")
train, holdout = time_split(rows, TIMESTAMP, holdout_days)
test_eq(train[TIMESTAMP].max() < holdout[TIMESTAMP].min(), True)
test_eq(len(train) + len(holdout), len(rows))
pd.DataFrame({"rows": [len(train), len(holdout)], "first": [train[TIMESTAMP].min(), holdout[TIMESTAMP].min()],
              "last": [train[TIMESTAMP].max(), holdout[TIMESTAMP].max()]}, index=["train", "holdout"])'''),
    ]
    return _notebook(cells)


# ---------------------------------------------------------------------------------------------------------
# 02_model


def model_notebook(project) -> nbformat.NotebookNode:
    roles, pkg = project.roles, project.package
    regression = roles.task == "regression"
    booster = "HistGradientBoostingRegressor" if regression else "HistGradientBoostingClassifier"
    scorer, expr, metric, baseline = METRIC_CODE[roles.task]
    predicts = {"binary": "a probability of the positive class", "multiclass": "a probability for each class",
                "regression": "a number"}[roles.task]
    check_output = {
        "binary": "scores = model.predict_proba(holdout[FEATURES])[:, 1]\n"
                  "test_eq(((scores >= 0) & (scores <= 1)).all(), True)",
        "multiclass": "probabilities = model.predict_proba(holdout[FEATURES])\n"
                      "test_close(probabilities.sum(axis=1), 1, eps=1e-6)\n"
                      "test_eq(set(model.classes_) <= set(rows[TARGET]), True)",
        "regression": "predictions = model.predict(holdout[FEATURES])\ntest_eq(np.isfinite(predictions).all(), True)",
    }[roles.task]
    cells = [
        _code("model-00", "#| default_exp model"),
        _md("model-01", f"# Model\n\n> One scikit-learn pipeline from the raw features to {predicts}, and the space "
                        "the tuner searches."),
        _md("model-02", f"""
Training, evaluation, the registry and the prediction service all handle one object: a `Pipeline` that takes the
columns of `FEATURES` as they land and returns {predicts}. The categorical columns are encoded inside it (a value it
has never seen, or a missing one, becomes a missing code) and gradient-boosted trees (`{booster}`) take missing
values as they come, so a logged model carries its whole preprocessing and serving cannot apply it differently.
Replace the model freely: the engine only needs `make_model(params)` and `search_space(trial)`.
"""),
        _code("model-03", f"""#| export
import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import {booster}
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from {pkg}.data import CATEGORICAL, CATEGORIES"""),
        _code("model-04", f"""import optuna
import pandas as pd
from fastcore.test import *
from notebench.data.batches import time_split
from notebench.settings import load_settings
from sklearn.metrics import {scorer}

from {pkg}.data import FEATURES, NUMERIC, TARGET, TIMESTAMP, labelled"""),
        _md("model-05", "## The model"),
        _code("model-06", f'''#| export
DEFAULT_PARAMS = dict(learning_rate=0.1, max_iter=200, max_leaf_nodes=31, min_samples_leaf=20, l2_regularization=0.0,
                      random_state=0)

def make_model(params:dict|None=None, # hyperparameters of the booster, over `DEFAULT_PARAMS`
              ) -> Pipeline:
    "An unfitted pipeline: the categorical columns as ordinal codes (unseen or missing: NaN), then boosted trees."
    codes = OrdinalEncoder(categories=[CATEGORIES[c] for c in CATEGORICAL], handle_unknown="use_encoded_value",
                           unknown_value=np.nan, encoded_missing_value=np.nan)
    encode = ColumnTransformer([("categories", codes, CATEGORICAL)], remainder="passthrough",
                               verbose_feature_names_out=False)
    booster = {booster}(**{{**DEFAULT_PARAMS, **(params or {{}})}},
                        categorical_features=list(range(len(CATEGORICAL))) or None)
    return Pipeline([("encode", encode.set_output(transform="pandas")), ("model", booster)])'''),
        _md("model-07", f"""
A fit on the sample's earlier days, judged on its last ones. The {metric} it reaches on a sample says little (the
pipeline tunes on all your training batches); the lesson checks what must hold for any data: the model fits, and
its outputs are what the engine expects. For scale, {baseline} is what knowing nothing gives.
"""),
        _code("model-08", f'''rows = labelled()
train, holdout = time_split(rows, TIMESTAMP, load_settings().value("training", "holdout_days"))
model = make_model({{"max_iter": 50}}).fit(train[FEATURES], train[TARGET])
{check_output}
pd.Series({{"train rows": len(train), "holdout rows": len(holdout), "{metric}": {expr}}})'''),
        _md("model-09", "A value the model has never seen, and missing values, still get a prediction:"),
        _code("model-10", '''odd = holdout[FEATURES].head(2).copy()
for col in CATEGORICAL: odd[col] = ["a value never seen", None]
for col in NUMERIC: odd[col] = [odd[col].iloc[0], np.nan]
test_eq(len(model.predict(odd)), 2)'''),
        _md("model-11", "## The search space\n\nThe tuner (Optuna, in the train step) explores these "
                        "hyperparameters around `DEFAULT_PARAMS`; this module never imports Optuna, so serving does "
                        "not load it."),
        _code("model-12", '''#| export
def search_space(trial, # an `optuna.Trial`
                ) -> dict:
    "Hyperparameters for `make_model`, suggested by `trial`."
    return dict(
        learning_rate=trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        max_iter=trial.suggest_int("max_iter", 50, 400, step=50),
        max_leaf_nodes=trial.suggest_int("max_leaf_nodes", 8, 64, log=True),
        min_samples_leaf=trial.suggest_int("min_samples_leaf", 5, 100, log=True),
        l2_regularization=trial.suggest_float("l2_regularization", 1e-4, 10.0, log=True))'''),
        _code("model-13", '''drawn = {"learning_rate": 0.1, "max_iter": 50, "max_leaf_nodes": 15,
         "min_samples_leaf": 20, "l2_regularization": 1.0}
params = search_space(optuna.trial.FixedTrial(drawn))
test_eq(make_model(params).named_steps["model"].max_leaf_nodes, 15)'''),
    ]
    return _notebook(cells)


# ---------------------------------------------------------------------------------------------------------
# 03_use_case


def use_case_notebook(project) -> nbformat.NotebookNode:
    land, pkg = project.landing, project.package
    cells = [
        _code("uc-00", "#| default_exp use_case"),
        _md("uc-01", f"# Use case\n\n> The {project.name} use case as one contract: the only object the engine "
                     "reads."),
        _md("uc-02", f"""
`settings.ini` names it (`[use_case] object = {pkg}.use_case:USE_CASE`). Every stage of the engine (the feature
store, the pipeline's steps, serving, monitoring, the demo) takes the entities, the timestamp, the target and its
task, the label layout, the schema, the features, the model factory and its search space from here.
`notebench check` says what is wrong with it, and with the landed data.
"""),
        _code("uc-03", f"""#| export
import shutil
from pathlib import Path

from notebench.usecase import UseCase

from {pkg}.data import CATEGORICAL, ENTITIES, LABELS, NUMERIC, SCHEMA, TARGET, TASK, TIMESTAMP, project_folder
from {pkg}.model import make_model, search_space"""),
        _code("uc-04", """import tempfile

import pandas as pd
from fastcore.test import *
from notebench.check import split_problems
from notebench.data.batches import load_landing, validate_batch
from notebench.settings import load_settings"""),
        _md("uc-05", f"""
## Your data, batch by batch

The contract carries two ways to land data. `sample` lands `data/sample/`: enough for the lessons and for CI's smoke
run to go through every step of every pipeline in minutes. `simulate` lands batches of `data/batches/`, your own
data replayed in the order it happened: `make demo` lands the first {land.n_train} (`DEMO["days"]`), trains and
serves a model, then replays the next {len(land.replay)} (`DEMO["more_days"]`) as traffic and feedback. What
changes in them is what changed in your data; the demo's `scenario` does not apply to recorded data.
"""),
        _code("uc-06", f'''#| export
LABEL_DELAY_DAYS = 0  # days after a row's timestamp until its label is known (0: with the row)
DEMO = {{"days": {land.n_train}, "more_days": {len(land.replay)}}}  # make demo: batches to train on, then to replay

def _land(folder:Path, # data/batches or data/sample
          landing:Path, # the landing folder to copy into
          names:list[str], # batch file names
         ):
    "Copy the batches `names` of `folder` (features/, and labels/ when labels are separate) into `landing`."
    for stream in ("features", "labels"):
        for name in names:
            if (folder / stream / name).exists():
                (Path(landing) / stream).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / stream / name, Path(landing) / stream / name)

def sample(landing, # folder to write a small landing area into
          ):
    "Land data/sample: a slice of every training batch, what the lessons and the smoke run train on."
    folder = project_folder() / "data" / "sample"
    _land(folder, landing, [p.name for p in sorted((folder / "features").glob("*.parquet"))])

def simulate(landing, # the landing folder
             start_day:int=0, # index of the first batch to land (0: the oldest)
             days:int=DEMO["days"], # how many batches
             seed:int=0, # unused: the data is what it is
             scenario:str="stable", # unused: recorded data changes as it did
             shift_day:int|None=None, # unused
             size:int|None=None, # unused
            ):
    "Land batches [start_day, start_day + days) of data/batches: your own data, replayed in order."
    folder = project_folder() / "data" / "batches"
    names = [p.name for p in sorted((folder / "features").glob("*.parquet"))]
    _land(folder, landing, names[start_day:start_day + days])'''),
        _md("uc-07", "## The contract"),
        _code("uc-08", f'''#| export
USE_CASE = UseCase(
    name="{project.name}", description={project.description!r},
    entities=ENTITIES, timestamp=TIMESTAMP, target=TARGET, task=TASK,
    labels=LABELS, label_delay_days=LABEL_DELAY_DAYS,
    schema=SCHEMA, numeric=NUMERIC, categorical=CATEGORICAL,
    make_model=make_model, search_space=search_space,
    segments=[],  # categorical columns to evaluate separately (and gate on), e.g. ["region"]
    sample=sample, simulate=simulate, extra={{"demo": DEMO}})'''),
        _md("uc-09", "The declaration is complete: the contract finds nothing to fix, and the primary metric follows "
                     "from the task (set `metric=` to choose another)."),
        _code("uc-10", '''test_eq(USE_CASE.problems(), [])
test_eq(USE_CASE.keys, [*ENTITIES, TIMESTAMP])
pd.Series({"task": USE_CASE.task, "metric": USE_CASE.metric, "direction": USE_CASE.direction,
           "features": len(USE_CASE.features), "labels": USE_CASE.labels})'''),
        _md("uc-11", "The sample is what the engine will see: every batch matches the schema, the labels pair with "
                     "their rows, and the split by time leaves enough rows in each slice, as `notebench check` "
                     "judges it."),
        _code("uc-12", '''tmp = tempfile.TemporaryDirectory()
landing = Path(tmp.name)
USE_CASE.sample(landing)
for path in sorted((landing / "features").glob("*.parquet")):
    validate_batch(pd.read_parquet(path), USE_CASE.schema, USE_CASE.keys, file=path)
rows = load_landing(USE_CASE, landing)
holdout_days = load_settings().value("training", "holdout_days")
test_eq(split_problems(USE_CASE, rows, holdout_days, holdout_days), [])
test_eq(len(rows) > 0, True)
tmp.cleanup()'''),
        _md("uc-13", "`simulate` lands your batches in order; the demo asks for them by index:"),
        _code("uc-14", '''tmp = tempfile.TemporaryDirectory()
USE_CASE.simulate(tmp.name, start_day=0, days=2)
test_eq(len(list((Path(tmp.name) / "features").glob("*.parquet"))), 2)
tmp.cleanup()'''),
    ]
    return _notebook(cells)


def notebooks(project) -> dict[str, nbformat.NotebookNode]:
    """{file name: notebook} of the use-case notebooks."""
    return {"01_data.ipynb": data_notebook(project), "02_model.ipynb": model_notebook(project),
            "03_use_case.ipynb": use_case_notebook(project)}


def write_notebooks(project, folder: Path) -> list[Path]:
    """Write the use-case notebooks into `folder`, as nbdev-clean writes them; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, nb in notebooks(project).items():
        nbformat.write(nb, folder / name)
        out.append(folder / name)
    return out

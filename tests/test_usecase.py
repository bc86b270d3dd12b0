"""The use-case contract: what `problems` says about bad declarations, how `load_use_case` fails, derived names."""

from __future__ import annotations

import dataclasses

import pandera.pandas as pa
import pytest
from conftest import FIXTURE_USE_CASE, ROOT
from notebench.errors import NotebenchError, UseCaseError
from notebench.usecase import UseCase, load_use_case


def declared(use_case, **changes) -> UseCase:
    """The fixture's declaration with `changes` (a `schema` change given as columns to drop or add)."""
    schema = use_case.schema
    if drop := changes.pop("drop", None):
        schema = schema.remove_columns(drop)
    if add := changes.pop("add", None):
        schema = schema.add_columns(add)
    return dataclasses.replace(use_case, schema=schema, **changes)


def test_the_fixture_declaration_has_no_problem_and_derives_its_names(use_case):
    assert use_case.problems() == []
    assert use_case.features == ["temperature", "vibration", "load_pct", "hours_since_service", "line", "site"]
    assert use_case.keys == ["device_id", "observed_at"] and use_case.feature_view == "sensors_features"
    assert (use_case.metric, use_case.direction, use_case.maximize) == ("auc", "maximize", True)  # the task's default
    assert declared(use_case, metric="brier", direction="").maximize is False  # no direction given: the metric's own


@pytest.mark.parametrize(("changes", "names", "fix"), [
    # a feature the schema does not hold
    ({"numeric": ["temperature", "pressure"]}, "numeric feature 'pressure'", "add it to the schema or fix the name"),
    ({"drop": ["site"]}, "categorical feature 'site'", "add it to the schema or fix the name"),
    ({"timestamp": "seen_at"}, "timestamp 'seen_at'", "add it to the schema or fix the name"),
    # the task and the label layout
    ({"task": "ranking"}, "task 'ranking'", "binary, multiclass, regression"),
    ({"labels": "later"}, "labels 'later'", "separate, in_batches"),
    ({"labels": "separate"}, "target 'failed' is a column of the feature batches",
     "set labels = 'in_batches', or drop it from the schema"),
    ({"drop": ["failed"]}, "target 'failed': labels = in_batches", "the schema must hold the target column"),
    # segments and entities
    ({"segments": ["temperature"]}, "segment 'temperature'", "must be a categorical feature"),
    ({"segments": ["plant"]}, "segment 'plant'", "add it to the schema or fix the name"),
    ({"entities": []}, "entities", "name at least one entity key column"),
    ({"entities": ["device_id", "sensor_id"]}, "entity 'sensor_id'", "add it to the schema or fix the name"),
    # the rest of the declaration
    ({"name": "sensor data"}, "name 'sensor data'", "letters, digits and underscores"),
    ({"metric": "lift", "direction": "maximize"}, "metric 'lift'", "expected one of"),
    ({"label_delay_days": -1}, "label_delay_days -1", "whole number of days >= 0"),
    ({"make_model": None}, "make_model", "expected a function"),
    ({"categorical": ["line", "site", "device_id"]}, "column 'device_id' is declared twice", "keep one role"),
])
def test_a_bad_declaration_is_one_line_naming_the_thing_and_the_fix(use_case, changes, names, fix):
    problems = declared(use_case, **changes).problems()
    assert len(problems) == 1, problems
    assert names in problems[0] and fix in problems[0]


def test_every_problem_is_listed_at_once(use_case):
    problems = declared(use_case, task="ranking", segments=["temperature"], drop=["failed"]).problems()
    assert len(problems) == 3 and all(isinstance(p, str) and "\n" not in p for p in problems)


def test_a_schema_that_is_not_a_pandera_schema_is_said_so(use_case):
    problems = dataclasses.replace(use_case, schema={"device_id": str}).problems()
    assert problems == ["schema: expected a pandera DataFrameSchema, got dict"]


@pytest.mark.parametrize(("reference", "says"), [
    ("fixture_lib.use_case", "expected module:NAME"),  # no attribute
    (":USE_CASE", "expected module:NAME"),  # no module
    ("no_such_module_xyz:USE_CASE", "cannot import 'no_such_module_xyz'"),
    ("fixture_lib.use_case:NOPE", "fixture_lib.use_case.NOPE is nothing, not a notebench.usecase.UseCase"),
    ("fixture_lib.use_case:SCHEMA", "is a DataFrameSchema, not a notebench.usecase.UseCase"),
])
def test_load_use_case_names_the_reference_and_the_fix(reference, says):
    with pytest.raises(UseCaseError) as caught:
        load_use_case(reference=reference)
    assert isinstance(caught.value, NotebenchError) and caught.value.exit_code == 2
    message = str(caught.value)
    assert f"[use_case] object = {reference!r}" in message and says in message
    fixes = {"expected module:NAME": "e.g. ", "cannot import": "nbdev-export", "not a notebench": "declare one"}
    assert any(hint in says and fix in message for hint, fix in fixes.items())


def test_load_use_case_reads_the_settings(monkeypatch, use_case):
    monkeypatch.chdir(ROOT)
    assert load_use_case() is use_case  # conftest's NOTEBENCH_USE_CASE_OBJECT overrides settings.ini
    assert load_use_case(reference=FIXTURE_USE_CASE) is use_case
    monkeypatch.setenv("NOTEBENCH_USE_CASE_OBJECT", "fixture_lib.use_case:SCHEMA")
    with pytest.raises(UseCaseError, match="not a notebench.usecase.UseCase"):
        load_use_case()


def test_entity_types_follow_the_schema(use_case):
    assert use_case.entity_types == {"device_id": "string"}  # "dev-0001"
    numbered = declared(use_case, entities=["plant_no", "device_id"],
                        add={"plant_no": pa.Column("int64"), "unit": pa.Column("uint32")})
    assert numbered.problems() == []
    assert numbered.entity_types == {"plant_no": "int64", "device_id": "string"}
    assert declared(numbered, entities=["unit"]).entity_types == {"unit": "int64"}

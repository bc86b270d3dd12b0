"""The registry on a real MLflow SQLite store with real logged scikit-learn models: promotion, force, rollback."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient
from notebench.errors import DeployCheckRequired, ModelNotBlessed, NoPreviousChampion, RegistryError
from notebench.registry import models as registry
from notebench.registry.tracking import log_sklearn_model
from sklearn.linear_model import LogisticRegression

BLESSED = {"blessed": True, "reasons": ["auc overall 0.8000 >= minimum 0.7000"]}
UNBLESSED = {"blessed": False, "reasons": ["auc on segment region=north dropped 0.0600 against the champion"]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite tracking + registry store holding three logged models that predict differently."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    experiment = client.create_experiment("registry-tests", artifact_location=(root / "artifacts").as_uri())
    import mlflow

    mlflow.set_tracking_uri(uri)
    X = pd.DataFrame({"a": [0.0, 1, 2, 3, 4, 5], "b": [1.0, 0, 1, 0, 1, 0]})
    models = []
    for i, y in enumerate(([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 1, 0, 1, 0, 1])):
        run = client.create_run(experiment, run_name=f"model {i}")
        info = log_sklearn_model(run.info.run_id, LogisticRegression().fit(X, y), X.head(3))
        models.append({"uri": info.model_uri, "model_id": info.model_id, "run_id": run.info.run_id})
    return {"uri": uri, "client": client, "models": models}


@pytest.fixture(autouse=True)
def _own_state(workspace):
    """Each test's champion history in its own workspace's state database (the registry is shared by the module)."""
    return workspace


@pytest.fixture
def name(request) -> str:
    """A registered model name of its own for each test."""
    return f"m-{request.node.name}"


def add(store, name: str, i: int, verdict: dict = BLESSED, **tags) -> str:
    model = store["models"][i]
    return registry.register(store["client"], name, model["uri"], {**registry.blessing_tags(verdict), **tags},
                             run_id=model["run_id"])


def test_register_links_the_run_and_tags_and_reuses_the_version_for_the_same_model(store, name):
    client = store["client"]
    v1 = add(store, name, 0, **registry.metric_tags({"auc": 0.8123, "brier": float("nan")}),
             **{"notebench.pipeline_run_id": "20260101-000000"})
    assert v1 == "1"
    mv = client.get_model_version(name, v1)
    assert mv.run_id == store["models"][0]["run_id"] and mv.source == store["models"][0]["uri"]
    assert mv.tags["notebench.blessed"] == "true" and mv.tags["notebench.pipeline_run_id"] == "20260101-000000"
    assert add(store, name, 0, UNBLESSED) == v1  # the same logged model: same version, tags updated
    assert client.get_model_version(name, v1).tags["notebench.blessed"] == "false"
    assert add(store, name, 1) == "2"
    rows = registry.versions(client, name)
    assert [r["version"] for r in rows] == ["2", "1"]
    assert rows[1]["blessed"] is False and rows[1]["reasons"] == UNBLESSED["reasons"]
    assert rows[1]["metrics"] == {"auc": 0.8123}  # NaN left out
    assert rows[1]["run_id"] == store["models"][0]["run_id"] and rows[1]["created"].endswith("+00:00")


def test_champion_and_versions_of_an_unknown_model_are_empty(store):
    assert registry.champion(store["client"], "never-registered") is None
    assert registry.versions(store["client"], "never-registered") == []
    assert registry.history(store["client"], "never-registered") == []


def test_promote_refuses_an_unblessed_version_with_its_reasons(store, name):
    version = add(store, name, 0, UNBLESSED)
    with pytest.raises(ModelNotBlessed, match="region=north") as err:
        registry.promote(store["client"], name, version)
    assert err.value.version == version and err.value.reasons == UNBLESSED["reasons"]
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.promote(store["client"], name, version, force=True)
    assert registry.champion(store["client"], name) is None
    assert registry.history(store["client"], name) == []


def test_forced_promotion_is_recorded_on_the_version_and_in_the_history(store, name):
    client = store["client"]
    version = add(store, name, 0, UNBLESSED)
    event = registry.promote(client, name, version, force=True, reason="segment gate too strict", who="ana")
    assert event["changed"] and event["forced"] and registry.champion(client, name) == version
    tags = client.get_model_version(name, version).tags
    assert tags["notebench.forced"] == "true" and tags["notebench.forced.by"] == "ana"
    assert tags["notebench.forced.reason"] == "segment gate too strict"
    (recorded,) = registry.history(client, name)
    assert recorded["forced"] is True and recorded["who"] == "ana" and recorded["why"] == "segment gate too strict"
    assert registry.promote(client, name, version)["changed"] is False  # already champion: no new event
    assert len(registry.history(client, name)) == 1


def test_the_deploy_check_gate_needs_a_passed_check_of_that_very_version(store, name):
    client = store["client"]
    unchecked, failed, passed = add(store, name, 0), add(store, name, 1), add(store, name, 2)
    client.set_model_version_tag(name, failed, registry.DEPLOY_CHECK_TAG, "failed")
    client.set_model_version_tag(name, failed, "notebench.deploy_check.at", "2026-11-27T12:00:00+00:00")
    client.set_model_version_tag(name, passed, registry.DEPLOY_CHECK_TAG, "passed")
    with pytest.raises(DeployCheckRequired, match=f"never deploy-checked; run `notebench deploy-check {unchecked}`"):
        registry.promote(client, name, unchecked, require_deploy_check=True)
    with pytest.raises(DeployCheckRequired, match="last deploy-check failed at 2026-11-27T12:00:00") as err:
        registry.promote(client, name, failed, require_deploy_check=True)
    assert (err.value.version, err.value.status) == (failed, "failed") and registry.champion(client, name) is None
    assert registry.promote(client, name, unchecked)["changed"]  # the gate is off unless asked for
    assert registry.promote(client, name, passed, require_deploy_check=True)["forced"] is False
    with pytest.raises(RegistryError, match="deploy_check gate needs a reason"):
        registry.promote(client, name, failed, require_deploy_check=True, force=True)
    event = registry.promote(client, name, failed, require_deploy_check=True, force=True, reason="hotfix", who="ci")
    assert event["forced"] and event["overrode"] == ["deploy_check"] and registry.champion(client, name) == failed
    assert client.get_model_version(name, failed).tags["notebench.forced.gates"] == "deploy_check"
    assert registry.history(client, name)[-1]["overrode"] == ["deploy_check"]


def test_challenger_moves_with_set_aliases_but_champion_only_through_promote(store, name):
    client = store["client"]
    v1, v2 = add(store, name, 0), add(store, name, 1)
    registry.set_aliases(client, name, v1, ["challenger"])
    registry.set_aliases(client, name, v2, "challenger")
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
    with pytest.raises(RegistryError, match="promote"):
        registry.set_aliases(client, name, v1, ["champion"])
    with pytest.raises(RegistryError, match="no version 9"):
        registry.set_aliases(client, name, "9", ["challenger"])


def test_rollback_walks_back_through_previous_champions(store, name):
    client = store["client"]
    v1, v2, v3 = (add(store, name, i) for i in range(3))
    with pytest.raises(NoPreviousChampion):
        registry.rollback(client, name)
    for v in (v1, v2, v3):
        registry.promote(client, name, v, reason=f"release {v}", who="ci")
    assert registry.rollback(client, name, who="ana", reason="v3 misbehaves")["version"] == v2
    assert registry.champion(client, name) == v2
    assert registry.rollback(client, name, who="ana")["version"] == v1  # twice: two champions back
    with pytest.raises(NoPreviousChampion):
        registry.rollback(client, name)
    events = registry.history(client, name)
    assert [(e["action"], e["version"], e["previous"]) for e in events] == [
        ("promote", v1, None), ("promote", v2, v1), ("promote", v3, v2), ("rollback", v2, v3), ("rollback", v1, v2)]
    assert events[3]["who"] == "ana" and events[3]["why"] == "v3 misbehaves" and events[3]["when"]


def test_rollback_undoes_an_alias_moved_outside_notebench_and_passes_over_deleted_versions(store, name):
    client = store["client"]
    v1, v2, v3 = (add(store, name, i) for i in range(3))
    registry.promote(client, name, v1)
    registry.promote(client, name, v2)
    client.set_registered_model_alias(name, "champion", v3)  # e.g. by hand in the MLflow UI
    assert registry.rollback(client, name)["version"] == v2
    client.delete_model_version(name, v1)
    registry.promote(client, name, v3)
    assert registry.rollback(client, name)["version"] == v2
    with pytest.raises(NoPreviousChampion, match=f"versions {v1} are deleted"):
        registry.rollback(client, name)


def test_history_survives_reopening_the_store(store, name):
    client = store["client"]
    v1, v2 = add(store, name, 0), add(store, name, 1)
    registry.promote(client, name, v1, who="ci")
    registry.promote(client, name, v2, who="ci")
    reopened = MlflowClient(store["uri"], store["uri"])
    assert registry.champion(reopened, name) == v2
    assert [e["version"] for e in registry.history(reopened, name)] == [v1, v2]
    assert registry.rollback(reopened, name)["version"] == v1
    raw = json.loads(reopened.get_registered_model(name).tags[registry.HISTORY_TAG])
    assert len(raw) == 3  # stored as JSON in the registry itself


def test_history_is_folded_when_it_outgrows_the_tag_and_rollback_still_works(store, name, monkeypatch):
    monkeypatch.setattr(registry, "HISTORY_LIMIT", 1500)
    client = store["client"]
    v1, v2, v3 = (add(store, name, i) for i in range(3))
    for v in (v1, v2) * 6 + (v3,):
        registry.promote(client, name, v, reason="x" * 40)
    copy = json.loads(client.get_registered_model(name).tags[registry.HISTORY_TAG])
    assert copy[0]["action"] == "baseline" and len(json.dumps(copy)) <= 1500  # the tag copy is folded to fit
    assert len(registry.history(client, name)) == 13  # the state database keeps every event
    assert registry.rollback(client, name)["version"] == v2
    assert registry.rollback(client, name)["version"] == v1


def test_champion_alias_loads_in_a_fresh_process(store, name):
    client = store["client"]
    add(store, name, 0)
    v2 = add(store, name, 1)
    registry.promote(client, name, v2)
    uri = f"models:/{name}@champion"
    check = registry.infra_check(uri, tracking_uri=store["uri"], registry_uri=store["uri"])
    assert check["status"] == "passed" and check["rows"] == 3 and check["shape"] == [3, 2], check["reason"]
    assert check["model_id"] == store["models"][1]["model_id"]  # the champion's model, not version 1's


def fake_python(tmp_path, body: str) -> str:
    """An interpreter stand-in that ignores its arguments and runs `body` (a shell script)."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(script)


def test_infra_check_fails_with_the_loaders_last_error_line(tmp_path):
    error = "MlflowException: alias champion not found"
    python = fake_python(tmp_path, f"echo 'Traceback ...' >&2\necho '{error}' >&2\nexit 1")
    check = registry.infra_check("models:/m@champion", python=python)
    assert check["status"] == "failed" and check["passed"] is False
    assert check["reason"] == ("models:/m@champion fails to load or predict in a fresh process: "
                               "MlflowException: alias champion not found")


def test_infra_check_fails_when_loading_outlasts_the_timeout(tmp_path):
    check = registry.infra_check("models:/m/1", python=fake_python(tmp_path, "exec sleep 5"), timeout=0.5)
    assert check["status"] == "failed"
    assert check["reason"] == "models:/m/1 did not load and predict within 0.5 s in a fresh process"

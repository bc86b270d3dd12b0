"""The dashboards' service card calls the prediction service "up" only when the service on `[serving] port` serves
THIS workspace's registered model: another workspace's service on the port (same model name, same version number,
another run) is reported as not up, saying why. One real `notebench serve` (workspace A) on a free port; workspaces
A and B (each its own MLflow store, each with a version 1 of the same registered model) both configure that port."""

from __future__ import annotations

import pytest
from fixture_models import free_port, readings_frame, register_model, start_service, stop_service, wait_until
from notebench.dashboards import panels
from notebench.workspace import Workspace


@pytest.fixture(scope="module")
def two_workspaces(tmp_path_factory):
    root = tmp_path_factory.mktemp("service-card")
    port = free_port()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NOTEBENCH_SERVING_PORT", str(port))  # both workspaces' settings name this port
        ours, other = Workspace.of(root / "a"), Workspace.of(root / "b")
        ours.experiment_id(ours.client())
        log = root / "service.log"
        proc = start_service(ours, port, log, "--watch-interval", "0.3")
        try:
            frame = readings_frame()
            a = register_model(ours, frame)
            b = register_model(other, frame, params={"max_iter": 5})
            assert (a.name, a.version) == (b.name, b.version) and a.run_id != b.run_id
            wait_until(f"http://127.0.0.1:{port}/ready", proc, log)
            yield ours, other, a, b, port
        finally:
            stop_service(proc)


def test_the_workspace_whose_model_is_served_sees_the_service_up(two_workspaces):
    ours, _, a, _, port = two_workspaces
    card = panels.service_health(ours)
    assert card["up"] and card["answers"] and card["error"] is None, card
    assert (card["model_name"], card["model_version"], card["url"]) == (a.name, "1", f"http://127.0.0.1:{port}/health")
    check = {c["name"]: c for c in panels.health(ours)["checks"]}["service"]
    assert check["state"] == "green" and "serving version 1" in check["text"]


def test_another_workspaces_service_on_the_port_is_not_up_and_the_card_says_why(two_workspaces):
    _, other, a, b, _ = two_workspaces
    card = panels.service_health(other)
    assert card["answers"] and not card["up"], card
    assert "another workspace's service is on this port" in card["error"]
    assert a.run_id in card["error"] and b.run_id in card["error"]  # the run served vs this workspace's run
    check = {c["name"]: c for c in panels.health(other)["checks"]}["service"]
    assert check["state"] == "red" and "does not serve this workspace's model" in check["text"]


def test_a_workspace_without_that_version_or_without_a_registry_is_told_so(two_workspaces, tmp_path):
    _, _, a, _, _ = two_workspaces
    empty = Workspace.of(tmp_path / "empty")  # nothing logged: no MLflow store at all
    card = panels.service_health(empty)
    assert not card["up"] and "has no model registry yet" in card["error"]
    bare = Workspace.of(tmp_path / "bare")
    bare.client().create_registered_model(a.name)  # the model's name, no version
    card = panels.service_health(bare)
    assert not card["up"] and "version 1, which this workspace's registry does not hold" in card["error"]


def test_nothing_on_the_port_is_down(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTEBENCH_SERVING_PORT", str(free_port()))
    card = panels.service_health(Workspace.of(tmp_path / "ws"))
    assert not card["answers"] and not card["up"] and card["error"]

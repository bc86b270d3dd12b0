"""Pipeline CD: releases built from a small real project (both wheels, pipelines, settings, lock), deployed dev ->
staging -> prod under the rules, refused when they must be (leaving the environment as it was), counted staging
runs, rollback, pruning, and the trigger service of an environment running in its release's venv."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import pytest
from conftest import notebench
from notebench.pipeline.store import PipelineStore
from notebench.release.bundle import STAGES, build_bundle, content_hash, record_stage, stage_results
from release_kit import QUIET, build, engine_wheel, git, make_project, output, tree


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return engine_wheel(tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, engine):
    """smoke: only smoke passed; green: every stage; green2, green3: other project versions, every stage."""
    tmp = tmp_path_factory.mktemp("bundles")
    one = make_project(tmp / "one", engine, "1.0.0")
    smoke = build(one, ["smoke"])
    (one / "dist" / "ci").rename(one / "dist" / "ci-smoke")
    return {"smoke": smoke, "green": build(one),
            "green2": build(make_project(tmp / "two", engine, "2.0.0", derived=True)),
            "green3": build(make_project(tmp / "three", engine, "3.0.0"))}


def env_state(workspace: Path, env: str):
    """What a refusal must leave alone: the current pointer and the history."""
    root = workspace / "environments" / env
    pointer = root / "current"
    history = root / "history.jsonl"
    return (pointer.readlink() if pointer.is_symlink() else None, history.read_text() if history.exists() else "")


def deploy(bundle, env: str, *extra: str):
    return notebench("deploy", str(bundle.path), "--env", env, *extra, env=QUIET)


def retar(bundle, target: Path, edit) -> Path:
    """A copy of a release tarball with `edit(folder)` applied to its unpacked files."""
    work = target.parent / (target.name + ".d")
    with tarfile.open(bundle.path) as tar:
        tar.extractall(work, filter="data")
    (top,) = work.iterdir()
    edit(top)
    with tarfile.open(target, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return target


# ---------------------------------------------------------------------------------------------------------


def test_same_commit_same_release_and_what_it_carries(tmp_path, engine):
    project = make_project(tmp_path / "p", engine)
    a = build(project)  # records the stages, then builds; the same results built again give the same release
    b = build_bundle(project, tmp_path / "again", stage_results(project / "dist", project, key=""),
                     wheels=sorted((project / "dist").glob("*.whl")), key="")
    assert a.hash == b.hash and a.path.read_bytes() == b.path.read_bytes()
    m = a.manifest
    assert a.path.name == f"release-sensors-1.0.0-{a.hash[:12]}.tar.gz"
    assert m["git"] == {"commit": git(project, "rev-parse", "HEAD"), "dirty": "false"}
    assert (m["name"], m["version"], m["use_case"]) == ("sensors", "1.0.0", "fixture_lib.use_case:USE_CASE")
    assert m["versions"] == {"notebench": engine.name.split("-")[1], "sensors": "1.0.0"}
    assert m["versions"]["notebench"] not in ("0.1.0", "0.2.0")
    assert m["pipelines"] == ["training"] and m["python"].count(".") == 1 and m["environments"] == ["dev", "staging",
                                                                                                      "prod"]
    assert {"mlflow", "papermill", "scikit-learn"} <= set(m["packages"])
    assert set(m["files"]) == {"uv.lock", "settings.ini", "project/pyproject.toml", "project/engine/pyproject.toml",
                               "pipelines/training/pipeline.yaml", "pipelines/training/a.ipynb",
                               f"wheels/{engine.name}", "wheels/sensors-1.0.0-py3-none-any.whl"}
    spec = project / "notebooks/pipelines/training/pipeline.yaml"
    assert m["files"]["pipelines/training/pipeline.yaml"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert {s: r["status"] for s, r in m["ci"].items()} == dict.fromkeys(STAGES, "passed")
    assert {r["source"] for r in m["ci"].values()} == {m["source"]} and m["hash"] == content_hash(m)
    with tarfile.open(a.path) as tar:  # fixed owners and times: nothing of the build machine in the bytes
        assert {(t.mtime, t.uid, t.gid, t.uname) for t in tar.getmembers()} == {(0, 0, 0, "")}

    # a new commit that changes a notebook: the old stage results are stale, and the release hash changes
    nb = project / "notebooks/pipelines/training/a.ipynb"
    nb.write_text(nb.read_text().replace("write_text", "write_text "))
    git(project, "commit", "-qam", "change")
    assert {s: r["status"] for s, r in stage_results(project / "dist", project, key="").items()} == \
        dict.fromkeys(STAGES, "stale")
    assert build(project).hash != a.hash


def test_a_build_refuses_what_the_release_could_not_run(tmp_path, engine):
    project = make_project(tmp_path / "p", engine)
    (project / "settings.ini").write_text("[environments.qa]\nserving.port = 1\n")
    with pytest.raises(Exception, match=r"\[environments.qa\] is not one of the environments"):
        build(project)
    (project / "settings.ini").write_text("[environments.prod]\nserving.port = http\n")
    with pytest.raises(Exception, match=r"\[serving\] port = 'http' \(from \[environments.prod\]\): expected an int"):
        build(project)
    (project / "settings.ini").write_text("[environments]\nsigning_key = hunter2\n")
    with pytest.raises(Exception, match="ships in every release"):
        build(project)
    (project / "settings.ini").write_text("[use_case]\nobject = fixture_lib.use_case:USE_CASE\n")
    (project / "dist" / f"{engine.name}").unlink()  # no engine wheel: the release would run the host's
    with pytest.raises(Exception, match="exactly one engine wheel"):
        build_bundle(project, project / "dist", key="")


def test_dev_staging_prod_rules_runs_rollback_and_pruning(workspace, bundles):
    smoke, green, green2, green3 = bundles["smoke"], bundles["green"], bundles["green2"], bundles["green3"]

    # dev takes a release whose smoke passed; staging wants every stage green
    assert deploy(smoke, "dev").returncode == 0
    refused = deploy(smoke, "staging")
    assert refused.returncode == 2 and "not all green (check missing, test missing)" in refused.stderr
    assert env_state(workspace, "staging") == (None, "")
    assert deploy(green, "staging").returncode == 0

    # prod: no staging runs yet -> refused even with approval
    refused = deploy(green, "prod", "--approve", "--by", "alice")
    assert refused.returncode == 2 and "0 successful 'training' run(s) in staging, and 2 are needed" in refused.stderr

    # two real runs of the deployed pipeline in staging (in its release's venv), recorded with release and env
    notebench("run", "training", "--env", "staging", check=True)  # its MLflow record is checked last
    notebench("run", "training", "--env", "staging", "--no-lineage", check=True)  # all cached: ran no code
    refused = deploy(green, "prod", "--approve")
    assert refused.returncode == 2 and "it has 1 successful 'training' run(s) in staging" in refused.stderr
    notebench("run", "training", "--env", "staging", "--force", "--no-lineage", check=True)
    staging_ws = workspace / "environments" / "staging" / "workspace"
    runs = [r for r in PipelineStore(staging_ws, "training", env="staging").runs()
            if any(s["state"] == "done" for s in r["steps"].values())]
    assert [(r["state"], r["bundle"], r["env"]) for r in runs] == [("succeeded", green.hash, "staging")] * 2
    assert runs[0]["git"]["commit"] == green.manifest["git"]["commit"]
    assert output(workspace, "staging")["model_name"] == "notebench-model-staging"
    assert not (workspace / "pipelines").exists()  # the project's own runs share nothing with it

    # prod without approval is refused; with it, deployed and the approval and evidence recorded
    refused = deploy(green, "prod")
    assert refused.returncode == 2 and "needs an explicit approval" in refused.stderr
    assert env_state(workspace, "prod") == (None, "")
    assert deploy(green, "prod", "--approve", "--by", "alice").returncode == 0
    event = json.loads((workspace / "environments/prod/history.jsonl").read_text().splitlines()[-1])
    assert event["approval"]["by"] == "alice" and sorted(event["staging_runs"]) == sorted(r["run_id"] for r in runs)
    assert event["new_layer"] is False  # staging built the lock's packages; prod reuses them
    again = deploy(green, "prod", "--approve", "--by", "alice")
    assert again.returncode == 0 and "prod already runs release" in again.stdout
    assert len((workspace / "environments/prod/history.jsonl").read_text().splitlines()) == 1

    # a new staging release, then one-command rollback to the one it replaced; nothing earlier than that
    assert deploy(green2, "staging").returncode == 0
    assert notebench("rollback", "--env", "staging", "--reason", "bad notebook").returncode == 0
    shown = {r["env"]: r for r in json.loads(notebench("environments", "--json", check=True).stdout)}
    assert shown["staging"]["bundle"] == green.hash and shown["staging"]["history"][-1]["action"] == "rollback"
    assert shown["prod"]["bundle"] == green.hash and shown["dev"]["bundle"] == smoke.hash
    assert shown["staging"]["succeeded"] == 2 and shown["staging"]["version"] == "1.0.0"
    again = notebench("rollback", "--env", "staging")
    assert again.returncode == 2 and "nothing to roll back to" in again.stderr
    table = notebench("environments", check=True).stdout
    assert "rollback" in table and "approved by alice" in table and "sensors 1.0.0" in table

    # keep_releases = 2: a third release removes the least recently used one (never the current), venv included
    assert deploy(green3, "staging").returncode == 0
    staging = workspace / "environments" / "staging"
    assert sorted(p.name for p in (staging / "releases").iterdir()) == sorted([green.hash, green3.hash])
    assert sorted(p.name for p in (staging / "venvs").iterdir()) == sorted([green.hash, green3.hash])
    assert json.loads((staging / "history.jsonl").read_text().splitlines()[-1])["removed"] == [green2.hash]
    assert deploy(green2, "staging").returncode == 0  # a removed release comes back from its file
    assert env_state(workspace, "staging")[0] == Path("releases") / green2.hash

    # the first staging run's MLflow parent run, in staging's own store, carries the release and the environment
    lineage = runs[1].path.parent / "lineage.json"  # written by the lineage sidecar when its record is complete
    deadline = time.time() + 180
    while not lineage.exists() and time.time() < deadline:
        time.sleep(0.5)
    from mlflow import MlflowClient

    parent = json.loads(lineage.read_text())["mlflow_runs"]["pipeline"]
    run = MlflowClient(f"sqlite:///{staging_ws / 'mlflow.db'}").get_run(parent)
    tags = run.data.tags
    assert (tags["notebench.bundle"], tags["notebench.env"]) == (green.hash, "staging")
    assert tags["notebench.release"] == "sensors 1.0.0"
    assert tags["notebench.version"] == green.manifest["versions"]["notebench"]
    assert not (workspace / "mlflow.db").exists()  # nothing of it in the host's store


def test_unknown_environment_and_missing_release_are_refused(workspace, bundles, tmp_path):
    proc = deploy(bundles["green"], "qa")
    assert proc.returncode == 2 and "unknown environment 'qa'; the environments are dev, staging, prod" in proc.stderr
    assert not (workspace / "environments" / "qa").exists()
    proc = notebench("deploy", str(tmp_path / "nope.tar.gz"), "--env", "dev")
    assert proc.returncode == 2 and "no such release file" in proc.stderr
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(io.BytesIO(b"not a tarball").getvalue())
    proc = notebench("deploy", str(garbage), "--env", "dev")
    assert proc.returncode == 2 and "cannot read the release" in proc.stderr
    for args in (("run", "training", "--env", "dev"), ("--env", "dev", "models"), ("serve", "--env", "dev")):
        proc = notebench(*args)
        assert proc.returncode == 2 and "nothing is deployed yet" in proc.stderr, args
    proc = notebench("--env", "dev", "deploy", str(garbage), "--env", "dev")
    assert proc.returncode == 1 and "manages environments from the host" in proc.stderr


def test_deploy_and_rollback_refused_while_a_run_holds_the_environment(workspace, bundles):
    assert deploy(bundles["smoke"], "dev").returncode == 0
    store = PipelineStore(workspace / "environments" / "dev" / "workspace", "training", env="dev")
    store.lock()  # the very lock a `notebench run training --env dev` holds while it runs
    before = tree(workspace / "environments")
    try:
        proc = deploy(bundles["green2"], "dev")
        assert proc.returncode == 3 and "while pipeline 'training' runs there" in proc.stderr
        assert tree(workspace / "environments") == before
    finally:
        store.unlock()
    assert deploy(bundles["green2"], "dev").returncode == 0  # once the run is over, the same deploy goes through
    assert env_state(workspace, "dev")[0] == Path("releases") / bundles["green2"].hash


def test_the_trigger_service_of_an_environment_runs_its_deployed_release(workspace, bundles):
    assert deploy(bundles["green2"], "dev").returncode == 0
    proc = notebench("trigger", "training", "--reason", "try the dev release", "--env", "dev", "--no-lineage",
                     check=True)
    assert "of training: succeeded" in proc.stdout
    dev_ws = workspace / "environments" / "dev" / "workspace"
    runs = PipelineStore(dev_ws, "training", env="dev").runs()
    assert [(r["env"], r["bundle"]) for r in runs] == [("dev", bundles["green2"].hash)]
    assert "try the dev release" in runs[0]["trigger"]
    assert output(workspace, "dev")["derived"] == ["temp_per_load"]  # release 2's code, from its venv
    events = json.loads(notebench("events", "--env", "dev", "--json", check=True).stdout)
    assert [(e["kind"], e["status"], e["run_id"]) for e in events] == [("on_demand", "started", runs[0]["run_id"])]
    project_events = json.loads(notebench("events", "--json", check=True).stdout)
    assert project_events == []  # the trigger queue is the environment's own: the project's is untouched
    assert json.loads(notebench("events", "--json", check=True).stdout) == []


def test_stage_results_count_only_on_their_source_and_with_the_key(tmp_path, engine):
    project = make_project(tmp_path / "p", engine)
    dist = project / "dist"
    record_stage(dist, "smoke", True, project, key="")
    assert stage_results(dist, project, key="")["smoke"]["status"] == "passed"
    assert stage_results(dist, project, key="k1")["smoke"]["status"] == "unsigned"  # anyone could have written it
    record_stage(dist, "smoke", True, project, key="k1")
    assert stage_results(dist, project, key="k1")["smoke"]["status"] == "passed"
    assert stage_results(dist, project, key="k2")["smoke"]["status"] == "unsigned"
    record = json.loads((dist / "ci" / "smoke.json").read_text())
    record["detail"] = "edited"
    (dist / "ci" / "smoke.json").write_text(json.dumps(record))
    assert stage_results(dist, project, key="k1")["smoke"]["status"] == "unsigned"
    record_stage(dist, "smoke", True, project, key="", source="0" * 40)
    assert stage_results(dist, project, key="")["smoke"]["status"] == "stale"


def test_pruning_ranks_releases_by_the_order_of_the_history_not_its_clock(workspace, monkeypatch):
    """A deploy and a rollback in the same second: the release rolled back to is the more recently used one."""
    monkeypatch.setenv("NOTEBENCH_ENVIRONMENTS_KEEP_RELEASES", "2")
    from notebench.release.environments import Environment, _prune
    from notebench.workspace import Workspace

    staging = Environment(Workspace.of(workspace), "staging")
    for name in ("old", "replaced", "current"):
        (staging.releases / name).mkdir(parents=True)
        (staging.releases / name / "manifest.json").write_text("{}")
    staging.pointer.symlink_to(Path("releases") / "current")
    for bundle in ("old", "replaced", "old", "current"):  # deploy, deploy, rollback, deploy: one second
        staging.record({"time": "2026-12-07T06:00:00Z", "bundle": bundle})
    assert _prune(staging) == ["replaced"]  # keep_releases = 2: the current one and the one rolled back to
    assert sorted(p.name for p in staging.releases.iterdir()) == ["current", "old"]

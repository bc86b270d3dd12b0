"""Pipeline CD: bundles built from a tiny real project, deployed dev -> staging -> prod under the rules, refused
when they must be (leaving the environment as it was), counted staging runs, and rollback."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, notebench
from notebench import __version__
from notebench.pipeline.store import PipelineStore
from notebench.release.bundle import STAGES, build_bundle, content_hash, record_stage, stage_results
from notebench.release.environments import current_release, run_variables
from notebench.settings import load_settings
from notebench.workspace import Workspace
from pipeline_kit import make_pipeline

# the step writes which environment its kernel was told it runs in, and where its settings say models go
# (from a release folder, which holds no settings.ini: the host's settings must reach the kernel)
BODY = ("import os, pathlib\nfrom notebench.settings import load_settings\n"
        "pathlib.Path(step.output('where')).write_text(os.environ.get('NOTEBENCH_ENVIRONMENT', '') + ' ' + "
        "load_settings().value('registry', 'model_name'))\n")
FAST = {"NOTEBENCH_PIPELINE_WARM_IMPORTS": "notebench.step"}  # the tiny step needs no pandas or mlflow in its kernel


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), "-c", "user.name=ci", "-c", "user.email=ci@example.org", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def make_project(folder: Path, body: str = BODY) -> Path:
    """A git project with one tiny pipeline named `training` and the real uv.lock."""
    pipeline = {"a": {"body": body, "products": {"where": "w.txt"}}}
    make_pipeline(folder / "notebooks" / "pipelines" / "training", pipeline)
    shutil.copy(ROOT / "uv.lock", folder / "uv.lock")
    git(folder, "init", "-q")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "tiny pipeline")
    return folder


def build(project: Path, dist: Path, stages=STAGES):
    """Record `stages` as passed on the project's source, then build its bundle into `dist`."""
    for stage in stages:
        record_stage(dist, stage, True, project)
    return build_bundle(project, dist, stage_results(dist, project))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """smoke: only smoke passed; green: every stage; green2: a changed notebook, every stage."""
    tmp = tmp_path_factory.mktemp("bundles")
    one = make_project(tmp / "one")
    two = make_project(tmp / "two", BODY + "# a change\n")
    return {"smoke": build(one, tmp / "d-smoke", ["smoke"]), "green": build(one, tmp / "d-green"),
            "green2": build(two, tmp / "d-green2")}


def env_state(workspace: Path, env: str):
    """What a refusal must leave alone: the current pointer and the history."""
    root = workspace / "environments" / env
    pointer = root / "current"
    history = root / "history.jsonl"
    return (pointer.readlink() if pointer.is_symlink() else None, history.read_text() if history.exists() else "")


def deploy(bundle, env: str, *extra: str):
    return notebench("deploy", str(bundle.path), "--env", env, *extra)


def retar(bundle, target: Path, edit) -> Path:
    """A copy of a bundle tarball with `edit(folder)` applied to its unpacked files."""
    work = target.parent / (target.name + ".d")
    with tarfile.open(bundle.path) as tar:
        tar.extractall(work, filter="data")
    (top,) = work.iterdir()
    edit(top)
    with tarfile.open(target, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return target


# ---------------------------------------------------------------------------------------------------------


def test_same_commit_same_bundle_and_manifest_contents(tmp_path):
    project = make_project(tmp_path / "p")
    a, b = build(project, tmp_path / "a"), build(project, tmp_path / "b")
    assert a.hash == b.hash and a.path.read_bytes() == b.path.read_bytes()
    assert a.path.name == f"notebench-pipelines-{__version__}-{a.hash[:12]}.tar.gz"
    m = a.manifest
    assert m["git"] == {"commit": git(project, "rev-parse", "HEAD"), "dirty": "false"}
    assert m["version"] == __version__ and m["pipelines"] == ["training"] and m["python"].startswith("3.")
    assert {"mlflow", "papermill", "scikit-learn"} <= set(m["packages"])
    assert set(m["files"]) == {"uv.lock", "pipelines/training/pipeline.yaml", "pipelines/training/a.ipynb"}
    spec = project / "notebooks/pipelines/training/pipeline.yaml"
    import hashlib

    assert m["files"]["pipelines/training/pipeline.yaml"] == hashlib.sha256(spec.read_bytes()).hexdigest()
    assert m["ci"] == dict.fromkeys(STAGES, "passed") and m["hash"] == content_hash(__version__, m["files"])
    with tarfile.open(a.path) as tar:  # fixed owners and times: nothing of the build machine in the bytes
        assert {(t.mtime, t.uid, t.gid, t.uname) for t in tar.getmembers()} == {(0, 0, 0, "")}

    # a new commit that changes a notebook: the old stage results are stale, and the bundle hash changes
    nb = project / "notebooks/pipelines/training/a.ipynb"
    nb.write_text(nb.read_text().replace("w.txt", "w.txt").replace("write_text", "write_text "))
    git(project, "commit", "-qam", "change")
    assert stage_results(tmp_path / "a", project) == dict.fromkeys(STAGES, "stale")
    assert build(project, tmp_path / "c").hash != a.hash


def test_dev_staging_prod_rules_runs_and_rollback(workspace, bundles):
    smoke, green, green2 = bundles["smoke"], bundles["green"], bundles["green2"]

    # dev takes a bundle whose smoke passed; staging wants every stage green
    assert deploy(smoke, "dev").returncode == 0
    refused = deploy(smoke, "staging")
    assert refused.returncode == 2 and "not all green (check missing, test missing)" in refused.stderr
    assert env_state(workspace, "staging") == (None, "")
    assert deploy(green, "staging").returncode == 0

    # prod: no staging runs yet -> refused even with approval
    refused = deploy(green, "prod", "--approve", "--by", "alice")
    assert refused.returncode == 2 and "0 successful 'training' run(s) in staging, and 2 are needed" in refused.stderr

    # two real runs of the deployed pipeline in staging, recorded with bundle and environment
    notebench("run", "training", "--env", "staging", env=FAST, check=True)  # its MLflow record is checked last
    notebench("run", "training", "--env", "staging", "--no-lineage", check=True)  # all cached: ran no code
    refused = deploy(green, "prod", "--approve")
    assert refused.returncode == 2 and "it has 1 successful 'training' run(s) in staging" in refused.stderr
    notebench("run", "training", "--env", "staging", "--force", "--no-lineage", env=FAST, check=True)
    runs = [r for r in PipelineStore(workspace, "training", env="staging").runs()
            if any(s["state"] == "done" for s in r["steps"].values())]
    assert [(r["state"], r["bundle"], r["env"]) for r in runs] == [("succeeded", green.hash, "staging")] * 2
    assert runs[0]["git"]["commit"] == green.manifest["git"]["commit"]
    product = workspace / "pipelines" / "training@staging" / "products" / "a" / "w.txt"
    model = load_settings().value("registry", "model_name")
    assert product.read_text() == f"staging {model}-staging"  # staging models never touch the served model
    assert not (workspace / "pipelines" / "training").exists()  # the project's own runs share nothing with it

    # prod without approval is refused; with it, deployed and the approval and evidence recorded
    refused = deploy(green, "prod")
    assert refused.returncode == 2 and "needs an explicit approval" in refused.stderr
    assert env_state(workspace, "prod") == (None, "")
    assert deploy(green, "prod", "--approve", "--by", "alice").returncode == 0
    event = json.loads((workspace / "environments/prod/history.jsonl").read_text().splitlines()[-1])
    assert event["approval"]["by"] == "alice" and sorted(event["staging_runs"]) == sorted(r["run_id"] for r in runs)
    again = deploy(green, "prod", "--approve", "--by", "alice")
    assert again.returncode == 0 and "prod already runs bundle" in again.stdout
    assert len((workspace / "environments/prod/history.jsonl").read_text().splitlines()) == 1
    ws = Workspace()  # prod's runs register under the served model's own name
    assert "NOTEBENCH_REGISTRY_MODEL_NAME" not in run_variables(ws, "prod", current_release(ws, "prod"))

    # a new staging release, then one-command rollback to the one it replaced; nothing earlier than that
    assert deploy(green2, "staging").returncode == 0
    assert notebench("rollback", "--env", "staging", "--reason", "bad notebook").returncode == 0
    shown = {r["env"]: r for r in json.loads(notebench("environments", "--json", check=True).stdout)}
    assert shown["staging"]["bundle"] == green.hash and shown["staging"]["history"][-1]["action"] == "rollback"
    assert shown["prod"]["bundle"] == green.hash and shown["dev"]["bundle"] == smoke.hash
    assert shown["staging"]["succeeded"] == 2
    again = notebench("rollback", "--env", "staging")
    assert again.returncode == 2 and "nothing to roll back to" in again.stderr
    table = notebench("environments", check=True).stdout
    assert "rollback" in table and "approved by alice" in table
    assert deploy(green2, "staging").returncode == 0  # its release is still there, verified, and taken back
    assert env_state(workspace, "staging")[0] == Path("releases") / green2.hash

    # the first staging run's MLflow parent run carries the bundle and the environment
    lineage = runs[1].path.parent / "lineage.json"  # written by the lineage sidecar when its record is complete
    deadline = time.time() + 180
    while not lineage.exists() and time.time() < deadline:
        time.sleep(0.5)
    from mlflow import MlflowClient

    parent = json.loads(lineage.read_text())["mlflow_runs"]["pipeline"]
    tags = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}").get_run(parent).data.tags
    assert (tags["notebench.bundle"], tags["notebench.env"]) == (green.hash, "staging")


def test_tampered_bundle_is_refused(workspace, bundles, tmp_path):
    def edit_notebook(folder):
        nb = folder / "pipelines/training/a.ipynb"
        nb.write_text(nb.read_text().replace("NOTEBENCH_ENVIRONMENT", "HOME"))

    tampered = retar(bundles["green"], tmp_path / "t.tar.gz", edit_notebook)
    proc = notebench("deploy", str(tampered), "--env", "dev")
    assert proc.returncode == 2
    assert "pipelines/training/a.ipynb: content does not match the manifest's sha256" in proc.stderr
    assert env_state(workspace, "dev") == (None, "")
    assert not list((workspace / "environments").glob("*/releases/*"))

    def forge_manifest(folder):  # the file's new digest written into the manifest: the bundle hash gives it away
        edit_notebook(folder)
        m = json.loads((folder / "manifest.json").read_text())
        import hashlib

        m["files"]["pipelines/training/a.ipynb"] = hashlib.sha256((folder / "pipelines/training/a.ipynb")
                                                                   .read_bytes()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps(m))

    proc = notebench("deploy", str(retar(bundles["green"], tmp_path / "f.tar.gz", forge_manifest)), "--env", "dev")
    assert proc.returncode == 2 and "is not the hash of its file list" in proc.stderr


def test_bundle_for_another_version_is_refused(workspace, bundles, tmp_path):
    def other_version(folder):  # a consistent bundle (hash recomputed), only for another notebench
        m = json.loads((folder / "manifest.json").read_text())
        m["version"] = "9.9.9"
        m["hash"] = content_hash("9.9.9", m["files"])
        (folder / "manifest.json").write_text(json.dumps(m))

    proc = notebench("deploy", str(retar(bundles["green"], tmp_path / "v.tar.gz", other_version)), "--env", "dev")
    assert proc.returncode == 2
    assert f"the bundle is for notebench 9.9.9, but notebench {__version__} is installed" in proc.stderr
    assert env_state(workspace, "dev") == (None, "")


def test_unknown_environment_and_missing_bundle_are_refused(workspace, bundles, tmp_path):
    proc = deploy(bundles["green"], "qa")
    assert proc.returncode == 2 and "unknown environment 'qa'; the environments are dev, staging, prod" in proc.stderr
    assert not (workspace / "environments" / "qa").exists()
    proc = notebench("deploy", str(tmp_path / "nope.tar.gz"), "--env", "dev")
    assert proc.returncode == 2 and "no such bundle file" in proc.stderr
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(io.BytesIO(b"not a tarball").getvalue())
    proc = notebench("deploy", str(garbage), "--env", "dev")
    assert proc.returncode == 2 and "cannot read the bundle" in proc.stderr
    proc = notebench("run", "training", "--env", "dev")
    assert proc.returncode == 2 and "nothing is deployed yet" in proc.stderr


def test_deploy_and_rollback_refused_while_a_run_holds_the_environment(workspace, bundles):
    assert deploy(bundles["smoke"], "dev").returncode == 0
    before = env_state(workspace, "dev")
    store = PipelineStore(workspace, "training", env="dev")
    store.lock()  # the very lock a `notebench run training --env dev` holds while it runs
    try:
        proc = deploy(bundles["green2"], "dev")
        assert proc.returncode == 3 and "while pipeline 'training' runs there" in proc.stderr
        assert env_state(workspace, "dev") == before
        assert not (workspace / "environments/dev/releases" / bundles["green2"].hash).exists()
    finally:
        store.unlock()
    assert deploy(bundles["green2"], "dev").returncode == 0  # once the run is over, the same deploy goes through
    assert env_state(workspace, "dev")[0] == Path("releases") / bundles["green2"].hash


def test_the_trigger_service_of_an_environment_runs_its_deployed_pipeline(workspace, bundles):
    assert deploy(bundles["green"], "dev").returncode == 0
    proc = notebench("trigger", "training", "--reason", "try the dev release", "--env", "dev", "--no-lineage",
                     env=FAST, check=True)
    assert "of training: succeeded" in proc.stdout
    runs = PipelineStore(workspace, "training", env="dev").runs()
    assert [(r["env"], r["bundle"]) for r in runs] == [("dev", bundles["green"].hash)]
    assert "try the dev release" in runs[0]["trigger"]
    events = json.loads(notebench("events", "--env", "dev", "--json", check=True).stdout)
    assert [(e["kind"], e["status"], e["run_id"]) for e in events] == [("on_demand", "started", runs[0]["run_id"])]
    assert json.loads(notebench("events", "--json", check=True).stdout) == []  # the project's queue saw nothing
    assert not (workspace / "pipelines" / "training").exists()

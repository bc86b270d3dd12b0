"""Settings are part of a step's cache key: changing one (in settings.ini or by NOTEBENCH_<SECTION>_<KEY>)
re-runs exactly the steps that read it, declared in pipeline.yaml (`settings:`) or read literally by the notebook,
and their downstream; `--explain` names the setting. Real runner, real kernels, real CLI."""

from __future__ import annotations

import configparser
import json
import threading
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, notebench
from notebench.errors import SpecError
from notebench.pipeline.progress import Progress
from notebench.pipeline.runner import RunOptions, explain, run_pipeline
from notebench.pipeline.spec import load_spec
from notebench.settings import load_settings
from notebench.workspace import Workspace
from pipeline_kit import make_pipeline

WRITE = "import pathlib\npathlib.Path(step.output({product!r})).write_text({text})\n"
READ = "from notebench.workspace import Workspace\nsettings = Workspace().settings\n"


def steps() -> dict:
    """split reads training.holdout_days literally (undeclared); gate declares gates.data_skew_distance and reads it
    through a computed key; other reads no setting; after is downstream of gate only."""
    return {
        "split": {"products": {"split": "split.txt"},
                  "body": READ + "days = settings.value('training', 'holdout_days')\n"
                          + WRITE.format(product="split", text="f'holdout {days}'")},
        "gate": {"upstream": ["split"], "settings": ["gates.data_skew_distance"], "products": {"gate": "gate.txt"},
                 "body": READ + "key = 'data_skew' + '_distance'\nbar = settings.value('gates', key)\n"
                         + WRITE.format(product="gate", text="pathlib.Path(step.input('split')).read_text()"
                                                             " + f' bar {bar}'")},
        "other": {"products": {"other": "other.txt"}, "body": WRITE.format(product="other", text="'constant'")},
        "after": {"upstream": ["gate"], "products": {"after": "after.txt"},
                  "body": WRITE.format(product="after", text="pathlib.Path(step.input('gate')).read_text()")},
    }


@pytest.fixture
def light(monkeypatch, workspace):
    """Kernels that import only the step API before a step starts (the tiny steps need nothing else)."""
    monkeypatch.setenv("NOTEBENCH_PIPELINE_WARM_IMPORTS", "notebench.step")
    return workspace


def run(spec: Path) -> dict[str, str]:
    """Run in this process (kernels inherit its environment, as under the CLI); each step's state."""
    record = run_pipeline(spec, RunOptions(lineage=False), progress=Progress(), workspace=Workspace())
    return {name: s["state"] for name, s in record["steps"].items()}


def plan(spec: Path) -> dict[str, tuple[str, list[str]]]:
    """What a run would do now: step -> (action, reasons)."""
    return {p.step: (p.action, p.reasons) for p in explain(load_spec(spec), Workspace())}


def product(ws: Path, pipeline: str, step: str) -> str:
    return (ws / "pipelines" / pipeline / "products" / step / f"{step}.txt").read_text()


def test_a_changed_setting_reruns_exactly_the_steps_reading_it_and_their_downstream(light, tmp_path, monkeypatch):
    spec = make_pipeline(tmp_path / "sp", steps())
    base = load_settings()
    days, bar = base.value("training", "holdout_days"), base.value("gates", "data_skew_distance")
    assert set(run(spec).values()) == {"done"}
    assert product(light, "sp", "after") == f"holdout {days} bar {bar}"

    monkeypatch.setenv("NOTEBENCH_GATES_DATA_SKEW_DISTANCE", str(bar + 0.05))
    now = plan(spec)
    assert now["gate"] == ("run", [f"setting gates.data_skew_distance changed: {bar!r} -> {bar + 0.05!r}"])
    assert now["split"][0] == now["other"][0] == "cached"
    assert now["after"] == ("maybe", ["runs if the products of gate change"])
    assert run(spec) == {"split": "cached", "gate": "done", "other": "cached", "after": "done"}
    assert product(light, "sp", "after") == f"holdout {days} bar {bar + 0.05}"  # the kernel read what was hashed

    monkeypatch.setenv("NOTEBENCH_TRAINING_HOLDOUT_DAYS", str(days + 2))  # read by split, declared nowhere
    now = plan(spec)
    assert now["split"] == ("run", [f"setting training.holdout_days changed: {days} -> {days + 2}"])
    assert now["gate"][0] == now["after"][0] == "maybe" and now["other"][0] == "cached"
    assert run(spec) == {"split": "done", "gate": "done", "other": "cached", "after": "done"}
    assert product(light, "sp", "after") == f"holdout {days + 2} bar {bar + 0.05}"

    # gate reads [gates] by a computed key: its declaration says which key counts, so another gate changes nothing
    monkeypatch.setenv("NOTEBENCH_GATES_MAX_REGRESSION", str(base.value("gates", "max_regression") + 1))
    monkeypatch.setenv("NOTEBENCH_TRAINING_SEED", str(base.value("training", "seed") + 1))
    assert {s: p[0] for s, p in plan(spec).items()} == dict.fromkeys(("split", "gate", "other", "after"), "cached")
    assert run(spec) == dict.fromkeys(("split", "gate", "other", "after"), "cached")


@pytest.fixture
def tracking_server():
    """An HTTP server on 127.0.0.1 that answers MLflow's /health, so the runner's check of [tracking] uri passes (the
    steps here never call MLflow); its host:port."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_settings_file_declarations_and_secrets_are_explained(light, tmp_path, monkeypatch, tracking_server):
    pipeline = steps()
    pipeline["secret"] = {"settings": ["tracking.uri", "serving"], "products": {"secret": "secret.txt"},
                          "body": WRITE.format(product="secret", text="'ok'")}
    spec = make_pipeline(tmp_path / "sf", pipeline)
    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", f"http://alice:hunter2@{tracking_server}")
    monkeypatch.setenv("NOTEBENCH_SERVING_TOKEN", "tok-hunter2")
    assert set(run(spec).values()) == {"done"}
    manifests = "".join(p.read_text() for p in (light / "pipelines" / "sf" / "products").glob("*/_manifest.json"))
    assert "hunter2" not in manifests and "alice" not in manifests  # secrets are kept as digests only
    secret = json.loads((light / "pipelines" / "sf" / "products" / "secret" / "_manifest.json").read_text())
    assert secret["fingerprint"]["settings"]["tracking.uri"].startswith("sha256:")
    assert secret["fingerprint"]["settings"]["serving.port"] == load_settings().value("serving", "port")

    # the same change made in a settings file (NOTEBENCH_SETTINGS points at a copy of the project's)
    bar = load_settings().value("gates", "data_skew_distance")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "settings.ini")
    parser["gates"]["data_skew_distance"] = str(bar + 0.1)
    edited = tmp_path / "settings.ini"
    with edited.open("w") as f:
        parser.write(f)
    monkeypatch.setenv("NOTEBENCH_SETTINGS", str(edited))
    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", f"http://alice:hunter3@{tracking_server}")
    now = plan(spec)
    assert now["gate"] == ("run", [f"setting gates.data_skew_distance changed: {bar!r} -> {bar + 0.1!r}"])
    assert now["secret"] == ("run", ["setting tracking.uri changed (value hidden: it may hold credentials)"])
    assert now["split"][0] == now["other"][0] == "cached"
    monkeypatch.delenv("NOTEBENCH_SETTINGS")
    monkeypatch.setenv("NOTEBENCH_TRACKING_URI", f"http://alice:hunter2@{tracking_server}")

    # declaring a setting, or dropping the declaration that narrowed a computed read, is a change too
    data = yaml.safe_load(spec.read_text())
    data["steps"]["other"]["settings"] = ["training.seed"]
    del data["steps"]["gate"]["settings"]  # gate's computed key now counts as the whole [gates] section
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    now = plan(spec)
    seed = load_settings().value("training", "seed")
    assert now["other"] == ("run", [f"setting training.seed now read: {seed!r}"])
    assert now["gate"][0] == "run"
    assert f"setting gates.promotion now read: {load_settings().value('gates', 'promotion')!r}" in now["gate"][1]
    assert not any("data_skew_distance" in r for r in now["gate"][1])  # still read, unchanged


@pytest.mark.parametrize(("entry", "message", "fix"), [
    ("gate", "no settings section [gate] (did you mean 'gates'?)", "use a section of settings.ini: workspace,"),
    ("gates.max_regresion", "[gates] has no key 'max_regresion' (did you mean 'max_regression'?)",
     "use one of gates.metric_threshold,"),
    ("gates.min_auc", "[gates] min_auc was renamed", "use gates.metric_threshold"),
])
def test_spec_refuses_unknown_settings_naming_file_step_and_fix(tmp_path, entry, message, fix):
    spec = make_pipeline(tmp_path / "bad", {"only": {"settings": [entry, "training"]}})
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    text = str(err.value)
    assert str(spec) in text and "step 'only'" in text and message in text and f"fix: {fix}" in text


def test_spec_refuses_a_notebook_reading_an_unknown_key(tmp_path):
    spec = make_pipeline(tmp_path / "bad", {"only": {"body": READ + "settings.value('training', 'holdout')"}})
    with pytest.raises(SpecError, match=r"only.ipynb reads setting 'training.holdout': \[training\] has no key"):
        load_spec(spec)


def test_project_pipelines_declare_what_their_notebooks_read():
    reads = {name: set(step.reads) for p in ("training", "monitoring")
             for name, step in load_spec(ROOT / "notebooks" / "pipelines" / p / "pipeline.yaml").steps.items()}
    assert {"training.holdout_days", "training.n_trials", "training.seed", "registry.model_name"} <= reads["train"]
    assert {"gates.metric_threshold", "gates.max_regression", "gates.segment_tolerance"} <= reads["validate_model"]
    assert "gates.promotion" not in reads["validate_model"] and "gates.metric_threshold" not in reads["train"]
    assert {"gates.promotion", "gates.deploy_check"} <= reads["register"]
    assert reads["evaluate"] == {"training.seed"} and reads["ingest"] == set()
    assert {"gates.data_null_increase", "monitoring.p_value"} <= reads["validate"]
    assert {"features.ttl_days", "monitoring.window", "monitoring.settle"} <= reads["features"] | reads["monitor"]


def test_cli_explain_names_an_environment_override_and_later_steps_would_run(light, tmp_path):
    spec = make_pipeline(tmp_path / "cli", steps())
    notebench("run", str(spec), "--no-lineage", check=True)
    days = load_settings().value("training", "holdout_days")
    override = {"NOTEBENCH_TRAINING_HOLDOUT_DAYS": str(days + 5)}
    out = notebench("run", str(spec), "--explain", env=override, check=True).stdout
    lines = {ln.split()[0]: ln for ln in out.splitlines()}
    assert lines["split"].split()[1] == "run"
    assert f"setting training.holdout_days changed: {days} -> {days + 5}" in lines["split"]
    assert lines["gate"].split()[1] == "maybe" and "split" in lines["gate"]
    assert lines["after"].split()[1] == "maybe" and lines["other"].split()[1] == "cached"
    assert "holdout_days" not in lines["gate"] + lines["other"] + lines["after"]
    notebench("run", str(spec), "--no-lineage", env=override, check=True)
    assert product(light, "cli", "after").startswith(f"holdout {days + 5} ")

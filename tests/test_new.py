"""`notebench new DIR --data PATH`: a project from a folder of Parquet or CSV, made with copier from this repository.

Fast tests: what is inferred from the data (roles, task, schema ranges), every refusal of bad input (a clear error,
nothing written), the one message that asks for what the data cannot say, the project's files (the template's shared
files byte for byte, the generated notebooks and data, the contract it exports), and `copier update` bringing a
template change into a project. Slow tests: three small folders (binary with separate labels, multiclass with labels
in CSV batches, regression) each make a project whose lessons pass, whose training pipeline runs and registers a
model, and whose prediction service answers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, ROOT, notebench
from notebench.new import NeedAnswers, NewProjectError, Options, create_project, plan
from notebench.new.infer import infer_task, safe_names
from notebench.new.schema import bounds

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch):
    for key, value in GIT_ENV.items():
        monkeypatch.setenv(key, value)


def world(folder: Path, task: str = "binary", layout: str = "separate", days: int = 24, size: int = 60,
          fmt: str = "parquet", seed: int = 0) -> Path:
    """A small deterministic world of `days` daily files: stores observed at 09:00 with a target of `task`."""
    rng = np.random.default_rng(seed)
    (folder / ("labels" if layout == "separate" else "")).mkdir(parents=True, exist_ok=True)
    for day in range(days):
        at = pd.Timestamp("2026-03-02 09:00") + pd.Timedelta(days=day)
        footfall = rng.normal(100, 20, size)
        area = rng.gamma(3, 40, size)
        area[rng.random(size) < 0.05] = np.nan
        zone = rng.choice(["north", "south", "west"], size)
        signal = (footfall - 100) / 20 + (zone == "north") + rng.normal(0, 0.5, size)
        target = {"binary": np.where(signal > 0.3, "yes", "no"),
                  "multiclass": np.select([signal < -0.3, signal < 0.8], ["low", "mid"], "high"),
                  "regression": 50 + 12 * signal + np.nan_to_num(area) / 20}[task]
        rows = pd.DataFrame({"store_id": [f"s{i:03d}" for i in range(size)], "observed at": at,
                             "footfall": footfall.round(1), "Floor Area": area, "zone": zone,
                             "comment": [f"note {rng.integers(10**9)}" for _ in range(size)]})
        if layout == "separate":
            pd.DataFrame({"store_id": rows["store_id"], "observed at": at, "outcome": target}).to_parquet(
                folder / "labels" / f"labels-{day:02d}.parquet", index=False)
        else:
            rows["outcome"] = target
        if fmt == "csv":
            rows.to_csv(folder / f"batch-{day:02d}.csv", index=False)
        else:
            rows.to_parquet(folder / f"batch-{day:02d}.parquet", index=False)
    return folder


def nothing_written(dest: Path) -> bool:
    """DIR was not created (or is as empty as before), and no staging folder is left beside it."""
    return (not dest.exists() or not any(dest.iterdir())) and not list(dest.parent.glob("*.notebench-new-*"))


# ---------------------------------------------------------------------------------------------------------
# what is inferred


def test_roles_task_and_features_are_inferred_from_the_data(tmp_path):
    project = plan(world(tmp_path / "data"), Options(), name="stores")
    roles, land = project.roles, project.landing
    assert (roles.timestamp, roles.entities, roles.target, roles.task) == ("observed_at", ["store_id"], "outcome",
                                                                           "binary")
    assert project.renamed == {"observed at": "observed_at", "Floor Area": "floor_area"}
    assert (roles.numeric, roles.categorical) == (["footfall", "floor_area"], ["zone"])
    assert "comment" in roles.left_out and "free text" in roles.left_out["comment"]
    assert land.layout == "separate" and land.codes == {"no": 0, "yes": 1}
    assert (len(land.names), land.n_train, land.period) == (24, 18, "day")  # the last quarter is replayed
    assert 1 <= land.holdout_days <= 4
    assert str(land.features["observed_at"].dtype) == "datetime64[us, UTC]"


def test_a_csv_with_month_first_dates_and_numbered_rows(tmp_path):
    rng = np.random.default_rng(1)
    days = pd.date_range("2026-01-01", periods=40, freq="D").repeat(24)
    frame = pd.DataFrame({"instant": np.arange(1, len(days) + 1), "day": days.strftime("%m/%d/%Y"),
                          "temp": rng.normal(10, 4, len(days)), "rides": rng.poisson(200, len(days)) + 100})
    frame.to_csv(tmp_path / "hourly.csv", index=False)
    project = plan(tmp_path / "hourly.csv", Options(target="rides"))
    assert (project.roles.timestamp, project.roles.entities, project.roles.task) == ("day", ["instant"], "regression")
    assert project.landing.features["day"].dt.strftime("%m-%d").iloc[-1] == "02-09"  # 02/09/2026, month first


@pytest.mark.parametrize(("values", "task"), [
    (["a", "b", "a"], "binary"), ([0, 1, 1], "binary"), (["x", "y", "z"], "multiclass"), ([1, 2, 3, 4], "multiclass"),
    ([0.5, 1.25, 3.0], "regression"), (list(range(40)), "regression")])
def test_the_task_follows_from_the_target(values, task):
    assert infer_task(pd.Series(values), "t") == task


def test_a_schema_range_is_the_observed_one_widened_and_kept_non_negative():
    assert bounds(pd.Series([10.0, 20.0])) == (5.0, 25.0, False)
    assert bounds(pd.Series([2, 12], dtype="int64")) == (0, 17, True)  # never negative: not below 0
    assert bounds(pd.Series([-4.0, 4.0])) == (-8.0, 8.0, False)


def test_column_names_become_plain_identifiers():
    assert safe_names(["ok_name", "Price (USD)", "2nd try", "price_usd"]) == {"Price (USD)": "price_usd_2",
                                                                              "2nd try": "c_2nd_try"}


# ---------------------------------------------------------------------------------------------------------
# bad input: a clear error, nothing written


def _refused(tmp_path, data: Path, match: str, options: Options | None = None, **kw) -> str:
    dest = kw.pop("dest", tmp_path / "project")
    with pytest.raises(NewProjectError, match=match) as caught:
        create_project(dest, data, options, with_lock=False, say=lambda _: None, **kw)
    assert nothing_written(dest)
    return str(caught.value)


def test_no_timestamp_column_is_refused(tmp_path):
    data = world(tmp_path / "data", layout="in_batches", days=6)
    for path in data.glob("*.parquet"):
        pd.read_parquet(path).drop(columns="observed at").to_parquet(path)
    said = _refused(tmp_path, data, "no timestamp column")
    assert "store_id" in said and "every row needs the time" in said


def test_a_single_valued_target_is_refused(tmp_path):
    data = world(tmp_path / "data", layout="in_batches", days=6)
    for path in data.glob("*.parquet"):
        pd.read_parquet(path).assign(outcome="yes").to_parquet(path)
    said = _refused(tmp_path, data, "target 'outcome'")
    assert "the same value ('yes')" in said


def test_files_whose_schemas_disagree_are_refused_naming_both_files_and_the_column(tmp_path):
    data = world(tmp_path / "data", layout="in_batches", days=6)
    odd = data / "batch-03.parquet"
    pd.read_parquet(odd).assign(footfall=lambda f: f.footfall.astype(str)).to_parquet(odd)
    said = _refused(tmp_path, data, "the files disagree on column 'footfall'")
    assert str(data / "batch-00.parquet") in said and str(odd) in said
    pd.read_parquet(odd).drop(columns="zone").to_parquet(odd)
    said = _refused(tmp_path, data, "has a column 'zone' that")
    assert str(data / "batch-00.parquet") in said and str(odd) in said


def test_an_existing_non_empty_folder_is_refused_and_left_alone(tmp_path):
    dest = tmp_path / "project"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(NewProjectError, match="exists and is not empty"):
        create_project(dest, world(tmp_path / "data", days=6), with_lock=False, say=lambda _: None)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"] and (dest / "mine.txt").read_text() == "keep me"


def test_a_target_that_is_also_an_entity_is_refused(tmp_path):
    data = world(tmp_path / "data", layout="in_batches", days=6)
    _refused(tmp_path, data, "target 'store_id' is also an entity",
             Options(target="store_id", entities=("store_id",)))


def test_a_template_that_cannot_be_rendered_leaves_nothing_behind(tmp_path):
    _refused(tmp_path, world(tmp_path / "data", days=6), "no copier.yml", template=str(tmp_path))


def test_what_the_data_cannot_say_is_asked_for_in_one_message(tmp_path):
    data = world(tmp_path / "data", layout="in_batches", days=6)
    for path in data.glob("*.parquet"):
        pd.read_parquet(path).rename(columns={"outcome": "result", "store_id": "store"}).to_parquet(path)
    dest = tmp_path / "project"
    proc = notebench("new", str(dest), "--data", str(data), "--no-lock")
    assert proc.returncode == 2 and nothing_written(dest)
    said = proc.stderr
    assert "does not say everything a project needs" in said
    assert "--target COLUMN; candidates: result" in said  # the last column first
    assert "--entity COLUMN, repeatable; candidates: store" in said
    assert f"notebench new {dest} --data {data} --target result --entity store" in said  # what to run next
    with pytest.raises(NeedAnswers):  # the same through the library, and the answers make it go through
        plan(data, Options())
    assert plan(data, Options(target="result", entities=("store",))).roles.task == "binary"


# ---------------------------------------------------------------------------------------------------------
# the project


@pytest.fixture(scope="module")
def binary_project(tmp_path_factory):
    """A project made through the CLI from daily Parquet files with separate label files."""
    base = tmp_path_factory.mktemp("new")
    data = world(base / "data")
    proc = notebench("new", str(base / "stores"), "--data", str(data), "--no-lock", env=GIT_ENV, check=True)
    return base / "stores", proc.stdout


def _shared_files() -> list[str]:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [n for n in tracked if n in ("Makefile", ".gitignore") or n.startswith(
        ("ci/", ".github/", "dashboards/", "notebooks/pipelines/"))]


def test_the_project_holds_the_template_the_notebooks_and_the_data(binary_project):
    project, said = binary_project
    assert "target       outcome (inferred), task binary" in said and "make demo" in said
    for name in _shared_files():  # one source: this repository's own files, byte for byte
        assert (project / name).read_bytes() == (ROOT / name).read_bytes(), name
    for name in ("notebooks/01_data.ipynb", "notebooks/02_model.ipynb", "notebooks/03_use_case.ipynb",
                 "stores_lib/data.py", "stores_lib/model.py", "stores_lib/use_case.py", "tests/test_project.py",
                 "README.md", ".copier-answers.yml", "data/sample/labels/2026-03-02.parquet"):
        assert (project / name).is_file(), name
    assert len(list((project / "data" / "batches" / "features").glob("*.parquet"))) == 24
    assert len(list((project / ".notebench" / "landing" / "labels").glob("*.parquet"))) == 18  # training batches
    for leaked in ("engine", "nbs_lib", "examples", "benchmarks", "tests/conftest.py", "notebooks/00_demo_data.ipynb",
                   "copier.yml", "settings.ini.jinja"):
        assert not (project / leaked).exists(), leaked


def test_the_project_settings_and_dependencies_are_its_own(binary_project):
    import configparser
    import tomllib

    project, _ = binary_project
    settings = configparser.ConfigParser()
    settings.read(project / "settings.ini")
    assert settings["use_case"]["object"] == "stores_lib.use_case:USE_CASE"
    assert settings["registry"]["model_name"] == "stores-model"
    assert "stores_lib.use_case" in settings["pipeline"]["warm_imports"]
    answers = (project / ".copier-answers.yml").read_text()
    assert f"holdout_days: {settings['training']['holdout_days']}" in answers and "_commit:" in answers
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == ["notebench"]  # the engine alone
    engine = project / pyproject["tool"]["uv"]["sources"]["notebench"]["path"]
    assert engine.resolve() == (ROOT / "engine").resolve()
    assert pyproject["tool"]["nbdev"]["lib_path"] == "stores_lib"
    log = subprocess.run(["git", "log", "--oneline"], cwd=project, capture_output=True, text=True, check=True)
    assert len(log.stdout.splitlines()) == 1


def test_the_engine_comes_from_a_wheel_or_an_index_as_chosen(tmp_path):
    import tomllib

    from notebench import __version__

    data = world(tmp_path / "data", days=6)
    wheel = tmp_path / f"notebench-{__version__}-py3-none-any.whl"
    wheel.write_bytes(b"a wheel")  # rendering only: nothing installs it here
    create_project(tmp_path / "by_wheel", data, engine="wheel", engine_from=str(wheel), with_lock=False,
                   with_git=False, say=lambda _: None)
    pyproject = tomllib.loads((tmp_path / "by_wheel" / "pyproject.toml").read_text())
    assert pyproject["tool"]["uv"]["sources"]["notebench"] == {"path": f"wheels/{wheel.name}"}
    assert (tmp_path / "by_wheel" / "wheels" / wheel.name).read_bytes() == b"a wheel"
    create_project(tmp_path / "by_index", data, engine="index", engine_from="https://packages.example.org/simple",
                   with_lock=False, with_git=False, say=lambda _: None)
    pyproject = tomllib.loads((tmp_path / "by_index" / "pyproject.toml").read_text())
    assert pyproject["project"]["dependencies"] == [f"notebench>={__version__}"]
    assert pyproject["tool"]["uv"]["index"] == [{"name": "notebench", "url": "https://packages.example.org/simple",
                                                 "explicit": True}]
    assert not (tmp_path / "by_index" / ".git").exists()


def test_the_notebooks_hold_the_schema_as_code_with_fixed_cell_ids(binary_project):
    project, _ = binary_project
    data = json.loads((project / "notebooks" / "01_data.ipynb").read_text())
    ids = [c["id"] for c in data["cells"]]
    assert ids[:3] == ["data-00", "data-01", "data-02"] and len(set(ids)) == len(ids)
    source = "".join("".join(c["source"]) for c in data["cells"])
    assert 'SCHEMA = pa.DataFrameSchema({' in source and '"zone": pa.Column(str, pa.Check.isin(CATEGORIES["zone"]))' \
        in source
    assert "TARGET_CODES = {'no': 0, 'yes': 1}" in source
    module = (project / "stores_lib" / "data.py").read_text()
    assert "AUTOGENERATED" in module and "#data-11" in module  # the cell id travels into the export


def test_the_project_exports_a_complete_contract(binary_project):
    project, _ = binary_project
    probe = ("from notebench.usecase import load_use_case; uc = load_use_case(); "
             "print(uc.name, uc.task, uc.labels, uc.metric, uc.extra['demo'], uc.problems())")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTEBENCH_USE_CASE_OBJECT", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=project, env={**env, "PYTHONPATH": str(project)},
                          capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "stores binary separate auc {'days': 18, 'more_days': 6} []"


def test_copier_update_brings_a_template_change_into_a_project(tmp_path):
    template = tmp_path / "template"  # this repository as it is now, committed in a repository of its own
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (template / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, template / name)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "template v1"]):
        subprocess.run([*git, *cmd], cwd=template, check=True, capture_output=True)
    project = tmp_path / "stores"
    create_project(project, world(tmp_path / "data", days=8), template=str(template), with_lock=False,
                   say=lambda _: None)
    notebook = (project / "notebooks" / "01_data.ipynb").read_text()
    with open(template / "ci" / "smoke", "a") as smoke:
        smoke.write("# a later template change\n")
    subprocess.run([*git, "commit", "-qam", "template v2"], cwd=template, check=True, capture_output=True)
    proc = subprocess.run([str(BIN / "copier"), "update", "--defaults", "--quiet"], cwd=project, capture_output=True,
                          text=True, check=False, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, proc.stderr
    assert (project / "ci" / "smoke").read_text().endswith("# a later template change\n")
    assert (project / "notebooks" / "01_data.ipynb").read_text() == notebook  # the user's notebooks are left alone
    assert "template v2" not in (project / ".copier-answers.yml").read_text()


# ---------------------------------------------------------------------------------------------------------
# three projects through their lessons, training and serving (slow)

THREE = {
    "binary": dict(task="binary", layout="separate", fmt="parquet"),
    "multiclass": dict(task="multiclass", layout="in_batches", fmt="csv"),
    "regression": dict(task="regression", layout="in_batches", fmt="parquet"),
}


def _env(project: Path, ws: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTEBENCH_USE_CASE_OBJECT", "PYTHONPATH")}
    return {**env, "PYTHONPATH": str(project), "NOTEBENCH_WORKSPACE_PATH": str(ws),
            "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}


def _run(cmd: list[str], cwd: Path, env: dict, timeout: float = 1200) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    said = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{said}"
    return proc


def _serve_and_predict(project: Path, env: dict, records: list[dict]) -> dict:
    """Start the project's prediction service, wait until it is ready, and score `records`."""
    import httpx
    from notebench.serving.deploycheck import free_port

    port = free_port()
    log = open(project / "service.log", "wb")
    service = subprocess.Popen([sys.executable, "-m", "notebench.serving", "--port", str(port), "--log-level",
                                "warning"], cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert service.poll() is None, (project / "service.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"records": records}, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()
    finally:
        service.terminate()
        service.wait(timeout=60)
        log.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["binary", "multiclass", "regression"])
def test_a_new_project_trains_and_serves(kind, tmp_path):
    project = tmp_path / kind
    data = world(tmp_path / "data", **THREE[kind])
    said = _run([str(BIN / "notebench"), "new", str(project), "--data", str(data), "--no-lock"], tmp_path,
                {**os.environ, **GIT_ENV}).stdout
    assert f"task {kind}" in said
    env = _env(project, tmp_path / "ws")
    _run([str(BIN / "nbdev-test"), "--skip-folder-re", "^(pipelines|[_.].*)$"], project, env)  # the lessons
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], project, env)  # its own tests
    shutil.copytree(project / ".notebench" / "landing", tmp_path / "ws" / "landing")
    _run([str(BIN / "notebench"), "run", "training", "-p", "n_trials=2", "-p", "tuning_timeout=60"], project, env)
    registration = json.loads((tmp_path / "ws" / "pipelines" / "training" / "products" / "register" /
                               "registration.json").read_text())
    assert registration["version"] in (1, "1") and "champion" in (registration.get("aliases") or [])
    replayed = sorted((project / "data" / "batches" / "features").glob("*.parquet"))[-1]
    features = pd.read_parquet(replayed).drop(columns=["store_id", "observed_at", "outcome"], errors="ignore").head(5)
    body = _serve_and_predict(project, env, json.loads(features.to_json(orient="records")))
    assert len(body["predictions"]) == 5 and str(body["model_version"]) == "1"

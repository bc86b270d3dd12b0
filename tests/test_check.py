"""`notebench check`: the use case and the landed data, checked before anything runs — through the real CLI, on
the fixture use case's world, then broken one way at a time."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from conftest import notebench
from fixture_lib.use_case import LABEL_DELAY_DAYS, simulate

# variants of the fixture contract, each wrong in one way, importable by the CLI from tmp_path
VARIANTS = '''
import dataclasses
from fixture_lib.use_case import ENTITY, SCHEMA, TARGET, USE_CASE

INT_IDS = dataclasses.replace(USE_CASE, schema=SCHEMA.update_column(ENTITY, dtype="int64", checks=[]))
NO_NAME = dataclasses.replace(USE_CASE, name="", make_model=lambda params: object())
SEPARATE = dataclasses.replace(USE_CASE, labels="separate", schema=SCHEMA.remove_columns([TARGET]))
NOT_A_USE_CASE = {"name": "sensors"}
'''


def tree(root) -> list[str] | None:
    """Every path under `root` (None: it does not exist)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else None


def land(workspace, days: int = 30, size: int = 60) -> list:
    """Land `days` arrival days of the fixture world; the feature batch files, oldest first."""
    simulate(workspace / "landing", days=days, size=size, seed=42)
    return sorted((workspace / "landing" / "features").glob("*.parquet"))


def problems(proc) -> list[str]:
    """The `problem:` lines of a `notebench check` (each one problem)."""
    return [ln.removeprefix("problem: ") for ln in proc.stdout.splitlines() if ln.startswith("problem: ")]


def variant(tmp_path, name: str) -> dict:
    """Environment selecting the contract `name` of VARIANTS."""
    (tmp_path / "check_variants.py").write_text(VARIANTS)
    return {"NOTEBENCH_USE_CASE_OBJECT": f"check_variants:{name}",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]])}


def rewrite(path, change) -> None:
    """Re-land a batch file as `change(frame)`."""
    change(pd.read_parquet(path)).to_parquet(path, index=False)


def test_a_sound_world_passes_and_nothing_is_written(workspace):
    empty = notebench("check")
    assert empty.returncode == 2 and problems(empty) == [
        "landing/features: no feature batches; land some (for the demo world: `notebench demo-data`)"]
    assert tree(workspace) is None  # not even the workspace folder

    land(workspace)
    before = tree(workspace)
    proc = notebench("check", check=True)
    assert problems(proc) == [] and proc.stderr == ""
    ok = [ln for ln in proc.stdout.splitlines() if ln.startswith("ok: ")]
    assert [ln.split(":")[1].split()[0] for ln in ok] == [
        "use", "model", "landing", "entities", "batches", "segments", "labels", "split"]
    assert "fit 14 days" in proc.stdout and "validation 7 days" in proc.stdout and "holdout 7 days" in proc.stdout
    report = json.loads(notebench("check", "--json", check=True).stdout)
    assert report["ok"] is True and report["problems"] == [] and len(report["passed"]) == len(ok)
    assert tree(workspace) == before and not (workspace / "mlflow.db").exists()


def test_the_first_batch_off_the_schema_is_named_with_its_column_and_row(workspace):
    files = land(workspace)

    def too_hot(frame):
        frame.loc[7, "temperature"] = 999.0
        return frame

    rewrite(files[3], too_hot)
    rewrite(files[9], lambda f: f.rename(columns={"site": "plant"}))
    first = problems(notebench("check"))
    assert len(first) == 1, first  # the first failing batch only, in one line
    assert first[0].startswith(f"landing/features/{files[3].name}: temperature: ") and "(first at row 7)" in first[0]
    assert "fix the batch" in first[0]

    rewrite(files[3], lambda f: f.assign(temperature=f["temperature"].clip(upper=80.0)))
    later = problems(notebench("check"))
    assert len(later) == 1 and later[0].startswith(f"landing/features/{files[9].name}: ")
    assert "site" in later[0] or "plant" in later[0]


def test_a_string_entity_declared_int64(workspace, tmp_path):
    files = land(workspace, days=20)
    proc = notebench("check", env=variant(tmp_path, "INT_IDS"))
    assert proc.returncode == 2
    assert problems(proc) == [  # one line: not also the batch's dtype problem
        f"entity 'device_id': landing/features/{files[0].name} holds object values (e.g. 'dev-0000'), but the "
        "schema declares int64; declare it as a string (pa.Column(str)), or land the type the schema declares"]


def test_a_broken_contract_is_named(workspace, tmp_path):
    land(workspace, days=20)
    found = problems(notebench("check", env=variant(tmp_path, "NO_NAME")))
    assert found[0] == "name '': give a short name of letters, digits and underscores"
    assert "make_model: returns a object without fit, predict, predict_proba; return an unfitted scikit-learn " \
           "estimator" in found
    missing = notebench("check", env=variant(tmp_path, "NOT_A_USE_CASE"))
    assert missing.returncode == 2 and len(problems(missing)) == 1
    assert "check_variants.NOT_A_USE_CASE is a dict, not a notebench.usecase.UseCase" in problems(missing)[0]


def test_the_label_layout_must_match_the_data(workspace, tmp_path):
    files = land(workspace, days=20)
    found = problems(notebench("check", env=variant(tmp_path, "SEPARATE")))
    assert found == [
        "landing/labels: no label batches, but the use case's labels = 'separate'; land labels/*.parquet "
        "(device_id, observed_at, failed), or set labels = 'in_batches'",
        f"landing/features/{files[0].name}: holds the target 'failed', but labels = 'separate'; set labels = "
        "'in_batches' (and add the target to the schema), or land it in labels/"]

    (workspace / "landing" / "labels").mkdir()
    frame = pd.read_parquet(files[0])
    frame[["device_id", "observed_at", "failed"]].to_parquet(workspace / "landing" / "labels" / files[0].name)
    rewrite(files[-1], lambda f: f.drop(columns=["failed"]))
    found = problems(notebench("check"))
    assert found[0].startswith("landing/labels: label batches landed, but the use case's labels = 'in_batches'")
    assert found[1].startswith(f"landing/features/{files[-1].name}: no target column 'failed'")


def test_one_class_refuses_check_and_run_before_anything_runs(workspace):
    for path in land(workspace, days=20):
        rewrite(path, lambda f: f.assign(failed=f["failed"].where(f["failed"].isna(), 0.0)))
    labelled = sum(pd.read_parquet(p)["failed"].notna().sum() for p in sorted(workspace.rglob("*.parquet")))
    one = f"target 'failed': the {labelled:,} labelled rows hold one class (0.0); a binary model needs at least two"
    proc = notebench("check")
    assert proc.returncode == 2 and problems(proc) == [f"{one}: land data with other outcomes"]

    before = tree(workspace)
    run = notebench("run", "training")
    assert run.returncode == 2, run.stderr
    assert "so training did not start" in run.stderr and one in run.stderr
    assert tree(workspace) == before  # no run folder, no MLflow store: nothing ran


def test_the_split_needs_enough_days_and_rows_of_each_class(workspace):
    land(workspace, days=10)  # labels of 10 - LABEL_DELAY_DAYS days
    days = 10 - LABEL_DELAY_DAYS
    short = problems(notebench("check"))
    assert short == [f"labelled rows span {days} days (2026-02-01 to 2026-02-0{days}): the 7-day holdout and the "
                     f"7-day validation slice leave nothing to fit on; land at least {15 - days} more day(s), or "
                     "lower [training] holdout_days (NOTEBENCH_TRAINING_HOLDOUT_DAYS)"]

    files = land(workspace, days=30)
    last = pd.read_parquet(files[-1]).dropna(subset=["failed"])  # a batch holds one day: the 1-day holdout
    positives = int((last["failed"] == 1).sum())
    assert positives < 10  # the world's seed makes the last day's positives too few for a holdout of one day
    found = problems(notebench("check", env={"NOTEBENCH_TRAINING_HOLDOUT_DAYS": "1"}))
    assert f"the 1-day holdout slice would hold {len(last)} labelled rows: {positives} of class 1.0 (each class " \
           "needs 10); land more data, or raise [training] holdout_days" in found[-1]


@pytest.mark.parametrize(("only", "to", "expected"), [(None, None, True), ("train", None, False),
                                                     (None, "ingest", True), ("ingest", None, True)])
def test_runs_check_first_when_a_step_reads_the_landing_area(workspace, only, to, expected):
    from notebench.check import reads_landing
    from notebench.pipeline.runner import resolve
    from notebench.workspace import Workspace

    training, _ = resolve("training", Workspace())
    assert reads_landing(training, only, to) is expected
    assert not reads_landing(resolve("monitoring", Workspace())[0])


def test_segments_must_be_in_the_data(workspace, use_case):
    import dataclasses

    from notebench.check import read_landing, segment_problems

    files = land(workspace, days=5)
    landed = read_landing(workspace / "landing", workspace)
    assert segment_problems(dataclasses.replace(use_case, segments=("line",)), landed) == []
    rewrite(files[1], lambda f: f.drop(columns=["line"]))
    assert segment_problems(dataclasses.replace(use_case, segments=("line",)), read_landing(workspace / "landing",
                                                                                            workspace)) == [
        f"segment 'line': no such column in landing/features/{files[1].name} (1 batch without it); land it, or drop "
        "it from the segments"]

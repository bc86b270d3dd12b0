"""The trigger service end to end: a real event store, real pipeline runs (tiny ones), a real `notebench watch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from conftest import BIN, ROOT, notebench
from notebench.pipeline.store import PipelineStore
from notebench.triggers import EventStore, enqueue, read_events, tick
from pipeline_kit import make_pipeline

INGEST = ("import json\nfrom notebench.data.landing import read_ledger, reconcile, scan\n"
          "ledger = reconcile(read_ledger(step.previous('ledger')), scan(step.workspace / 'landing'), "
          "run_id=context['run_id'])\nstep.output('ledger').write_text(json.dumps(ledger))")
TRAIN = ("import pathlib, time\ntime.sleep({sleep})\n"
         "pathlib.Path(step.output('model')).write_text(context['trigger'])")


def trigger_pipeline(folder: Path, sleep: float = 0.0, train: str | None = None) -> Path:
    """ingest (takes landing batches into a ledger, like the training pipeline's) -> train (sleeps)."""
    return make_pipeline(folder, {
        "ingest": {"body": INGEST, "inputs": ["landing/*/*.parquet"], "products": {"ledger": "ledger.json"}},
        "train": {"body": train or TRAIN.format(sleep=sleep), "upstream": ["ingest"],
                  "products": {"model": "model.txt"}},
    })


@pytest.fixture
def pipeline(workspace, tmp_path, monkeypatch):
    """A tiny two-step pipeline that triggers start, with cheap kernels."""
    spec = trigger_pipeline(tmp_path / "tp")
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_PIPELINE", str(spec))
    monkeypatch.setenv("NOTEBENCH_PIPELINE_WARM_IMPORTS", "notebench.step")
    return spec


def runs(ws: Path, pipeline: str = "tp") -> list[dict]:
    return [dict(r) for r in PipelineStore(ws, pipeline).runs()]


def events(ws: Path) -> dict[int, dict]:
    return {int(r["id"]): r for r in sorted(read_events(ws).to_dict("records"), key=lambda r: r["id"])}


def test_ten_drift_events_start_exactly_one_run_even_with_two_ticks_at_once(workspace, pipeline):
    for i in range(10):
        enqueue(workspace, "drift", f"feature f{i} drifted", details={"feature": f"f{i}"})
    env = {"NOTEBENCH_TRIGGERS_PIPELINE": str(pipeline), "NOTEBENCH_PIPELINE_WARM_IMPORTS": "notebench.step"}
    cmd = [str(BIN / "notebench"), "tick", "--no-lineage"]
    ticks = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) for _ in range(2)]
    outs = [t.communicate(timeout=120) for t in ticks]
    assert [t.returncode for t in ticks] == [0, 0], outs
    assert len(runs(workspace)) == 1, outs
    run = runs(workspace)[0]
    assert run["state"] == "succeeded" and run["trigger"].startswith("drift×10 (events #1..#10)")
    evs = events(workspace)
    assert {e["run_id"] for e in evs.values()} == {run["run_id"]}
    assert [e["status"] for e in evs.values()] == ["started"] + ["coalesced"] * 9
    assert {e["coalesced_into"] for e in list(evs.values())[1:]} == {1}
    assert "feature f3 drifted" in (workspace / "pipelines/tp/products/train/model.txt").read_text()


def test_cooldown_suppresses_drift_but_not_on_demand_and_disabled_kinds_never_run(workspace, pipeline, monkeypatch):
    enqueue(workspace, "on_demand", "first model")
    first = tick(workspace, lineage=False)
    assert first.run_state == "succeeded" and len(runs(workspace)) == 1

    drift = enqueue(workspace, "drift", "temperature drifted")
    second = tick(workspace, lineage=False)
    assert second.run_id is None and len(runs(workspace)) == 1
    assert [e.id for e in second.skipped] == [drift.id]
    assert events(workspace)[drift.id]["status"] == "skipped"
    assert events(workspace)[drift.id]["note"].startswith("cooldown:")

    asked = enqueue(workspace, "on_demand", "analyst asked")
    late_drift = enqueue(workspace, "quality", "AUC fell")  # coalesced into the run on_demand starts anyway
    third = tick(workspace, lineage=False)
    assert third.run_state == "succeeded" and len(runs(workspace)) == 2
    assert {e.id: e.status for e in third.joined} == {asked.id: "started", late_drift.id: "coalesced"}

    monkeypatch.setenv("NOTEBENCH_TRIGGERS_KINDS", "on_demand, new_data")
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_COOLDOWN", "0")
    off = enqueue(workspace, "drift", "drift, but drift may not start training here")
    fourth = tick(workspace, lineage=False)
    assert fourth.run_id is None and len(runs(workspace)) == 2
    assert events(workspace)[off.id]["status"] == "skipped"
    assert "not in [triggers] kinds" in events(workspace)[off.id]["note"]


def test_a_failed_run_is_final_for_its_events_and_the_pass_exits_1(workspace, tmp_path, monkeypatch):
    broken = trigger_pipeline(tmp_path / "tp", train="raise ValueError('no model today')")
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_PIPELINE", str(broken))
    monkeypatch.setenv("NOTEBENCH_PIPELINE_WARM_IMPORTS", "notebench.step")
    event = enqueue(workspace, "on_demand", "try it")
    failed = tick(workspace, lineage=False)
    assert failed.run_state == "failed" and failed.exit_code == 1 and "no model today" in failed.error
    assert events(workspace)[event.id]["status"] == "started" and events(workspace)[event.id]["run_id"] == failed.run_id
    again = tick(workspace, lineage=False)  # not retried in a loop: a failed run is fixed, then triggered again
    assert again.run_id is None and again.exit_code == 0 and len(runs(workspace)) == 1


# `notebench tick` in a process where notebench.monitoring.monitor cannot be imported (a build without it)
WITHOUT_MONITORING = ("import sys; sys.modules['notebench.monitoring.monitor'] = None  # import raises ImportError\n"
                      "from notebench.cli import main; sys.exit(main(['tick']))")


def test_tick_says_when_monitoring_is_missing(workspace, pipeline):
    env = {**os.environ, "NOTEBENCH_TRIGGERS_KINDS": "drift, quality"}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_MONITORING], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # the other kinds go on: a missing source is a note
    assert "drift, quality: notebench.monitoring.monitor is not in this build" in proc.stdout, proc.stdout
    assert "drift and quality are not polled" in proc.stdout and runs(workspace) == []
    built = notebench("tick", env={"NOTEBENCH_TRIGGERS_KINDS": "drift, quality"}, check=True)  # with monitoring
    assert "is not in this build" not in built.stdout, built.stdout


def test_schedule_fires_once_per_due_time_across_restarts(workspace, pipeline, monkeypatch):
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_KINDS", "schedule")
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_SCHEDULE", "0 * * * *")  # hourly, on the hour

    def at(hh, mm, ss=0):
        return datetime(2026, 3, 2, hh, mm, ss).timestamp()

    def fired(now):
        return [e.details["due"][11:16] for e in tick(workspace, run=False, now=now).enqueued]

    assert fired(at(10, 30)) == []  # the first pass starts the clock: nothing from before the schedule existed
    assert fired(at(10, 59, 59)) == []
    assert fired(at(11, 0, 5)) == ["11:00"]
    assert fired(at(11, 0, 30)) == []  # not twice for the same due time
    assert fired(at(14, 10)) == ["12:00", "13:00", "14:00"]  # down for three hours: none skipped
    assert fired(at(14, 20)) == []
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_SCHEDULE", "*/15 * * * *")
    assert fired(at(14, 21)) == []  # a changed schedule counts from now
    assert fired(at(14, 31)) == ["14:30"]
    assert len(read_events(workspace)) == 5 and runs(workspace) == []


def test_a_registered_kind_is_polled_once_per_condition_and_unknown_kinds_are_refused(workspace, pipeline,
                                                                                      monkeypatch):
    from notebench.errors import SettingsError
    from notebench.triggers import KINDS, Found, register_kind

    closed = ["T-1"]
    register_kind("ticket", lambda poll: [Found(f"ticket {t} closed", {"ticket": t}, key=t) for t in closed],
                  cooldown=True)
    try:
        monkeypatch.setenv("NOTEBENCH_TRIGGERS_KINDS", "ticket")
        assert [e.reason for e in tick(workspace, run=False).enqueued] == ["ticket T-1 closed"]
        closed.append("T-2")
        assert [e.reason for e in tick(workspace, run=False).enqueued] == ["ticket T-2 closed"]
        assert tick(workspace, run=False).enqueued == []
    finally:
        del KINDS["ticket"]
    with pytest.raises(SettingsError, match="unknown kind.*ticket") as err:
        tick(workspace, run=False)
    assert err.value.exit_code == 2


def _batch(ws: Path, uc, day: int) -> str:
    """Land arrival day `day` of the use case's world (a few devices); return the batch's landing path."""
    before = set((ws / "landing" / "features").glob("*.parquet"))
    uc.simulate(ws / "landing", start_day=day, days=1, size=5)
    [path] = set((ws / "landing" / "features").glob("*.parquet")) - before
    return path.relative_to(ws / "landing").as_posix()


def test_new_data_fires_for_unconsumed_batches_only(workspace, pipeline, monkeypatch, use_case):
    monkeypatch.setenv("NOTEBENCH_TRIGGERS_KINDS", "new_data")
    assert tick(workspace, run=False).enqueued == []
    first = _batch(workspace, use_case, 2)
    found = tick(workspace, run=False).enqueued
    assert [e.kind for e in found] == ["new_data"] and found[0].details["batches"] == [first]
    assert tick(workspace, run=False).enqueued == []  # the same unconsumed batches are one event

    ran = tick(workspace, lineage=False)
    assert ran.run_state == "succeeded" and [e.id for e in ran.joined] == [found[0].id]
    after = tick(workspace, lineage=False)
    assert after.enqueued == [] and after.run_id is None and len(runs(workspace)) == 1  # consumed: no new event

    second = _batch(workspace, use_case, 3)
    again = tick(workspace, lineage=False)
    assert [e.details["batches"] for e in again.enqueued] == [[second]]
    assert again.run_state == "succeeded" and len(runs(workspace)) == 2


class Watch:
    """A real `notebench watch` subprocess whose output lines are collected as they come."""

    def __init__(self, pipeline: Path, interval: float = 0.3):
        env = {**os.environ, "NOTEBENCH_TRIGGERS_PIPELINE": str(pipeline),
               "NOTEBENCH_PIPELINE_WARM_IMPORTS": "notebench.step", "NOTEBENCH_TRIGGERS_KINDS": "on_demand"}
        cmd = [str(BIN / "notebench"), "watch", "--interval", str(interval), "--no-lineage"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hit = next((ln for ln in self.lines if text in ln), None)
            if hit:
                return hit
            assert self.proc.poll() is None or any(text in ln for ln in self.lines), "\n".join(self.lines)
            time.sleep(0.1)
        raise AssertionError(f"no line with {text!r} in {timeout} s:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.1)
        return code


def test_queued_event_survives_a_restart_of_watch_and_sigterm_lets_a_run_finish(workspace, tmp_path):
    slow = trigger_pipeline(tmp_path / "tp", sleep=3)
    holder = PipelineStore(workspace, "tp")
    holder.lock()  # a run holds the pipeline's lock
    try:
        first = Watch(slow)
        first.wait_for("watching for triggers")
        notebench("trigger", "tp", "--reason", "retrain while busy", "--no-run",
                  env={"NOTEBENCH_TRIGGERS_PIPELINE": str(slow)}, check=True)
        first.wait_for("already running")
        assert first.stop() == 0, "\n".join(first.lines)  # SIGTERM while busy: stops, the event stays queued
        assert [e["status"] for e in events(workspace).values()] == ["queued"] and runs(workspace) == []
    finally:
        holder.unlock()

    second = Watch(slow)  # the restart
    second.wait_for("started for event(s) #1")
    assert second.stop() == 0, "\n".join(second.lines)  # SIGTERM during the run: it finishes, then watch stops
    assert any("finishing the run in progress" in ln for ln in second.lines)
    [event] = events(workspace).values()
    [run] = runs(workspace)
    assert run["state"] == "succeeded" and set(s["state"] for s in run["steps"].values()) == {"done"}
    assert event["status"] == "started" and event["run_id"] == run["run_id"]
    assert "retrain while busy" in run["trigger"]


def test_a_second_sigterm_records_the_run_interrupted_and_requeues_its_event(workspace, tmp_path):
    watch = Watch(trigger_pipeline(tmp_path / "tp", sleep=3))
    watch.wait_for("watching for triggers")
    enqueue(workspace, "on_demand", "interrupt me")
    watch.wait_for("started for event(s) #1")
    watch.proc.send_signal(signal.SIGTERM)
    watch.wait_for("finishing the run in progress")
    code = watch.stop()  # the second signal
    assert code == 130, "\n".join(watch.lines)
    [run] = runs(workspace)
    assert run["state"] == "interrupted" and run["steps"]["train"]["state"] == "pending", run
    [event] = events(workspace).values()
    assert event["status"] == "queued" and event["run_id"] is None and "interrupted" in event["note"]
    assert not (workspace / "pipelines/tp/products/train").exists()  # nothing half-made became a product


def test_cli_trigger_events_and_bad_input(workspace, pipeline):
    bad = notebench("trigger", "nope", "--reason", "x")
    assert bad.returncode == 2 and "triggers start pipeline 'tp'" in bad.stderr
    unknown = notebench("trigger", "tp", "--kind", "lunar", "--reason", "x")
    assert unknown.returncode == 2 and "unknown trigger kind 'lunar'" in unknown.stderr
    empty = notebench("trigger", "tp", "--reason", " ")
    assert empty.returncode == 2 and "needs a reason" in empty.stderr
    notebench("trigger", "tp", "--reason", "queued by hand", "--no-run", check=True)
    listed = notebench("events", "--json", check=True)
    [event] = json.loads(listed.stdout)
    assert event["kind"] == "on_demand" and event["status"] == "queued" and "@" in event["source"]
    frame = read_events(workspace)  # what the dashboards show
    assert list(frame.columns[:9]) == ["id", "time", "kind", "reason", "source", "status", "run_id", "coalesced_into",
                                       "details"]
    assert str(frame["time"].dtype) == "datetime64[ns, UTC]" and frame.loc[0, "details"] == {"pipeline": "tp"}
    with EventStore(workspace) as store:  # in the workspace's state database ([state] uri empty: SQLite, WAL)
        assert store.db.path == workspace / "state.db"
        with store.db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"

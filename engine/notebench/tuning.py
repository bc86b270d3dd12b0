"""Tuning trials: one objective for the train step's kernel and for Dask workers.

`TrialObjective` fits the use case's model with a trial's hyperparameters on the fit rows, scores the contract's
primary metric on the validation slice, and records the trial as an MLflow child run of the train step's run. It is
plain data (the use case by reference, the frames, the URIs), so it pickles: the same object runs in the kernel
(`study.optimize(objective, ...)`, `[training] trial_workers = 1`, reproducible) and on workers.

`run_trials` spreads trials over the Dask workers of `[dask] scheduler` (`[training] trial_workers` > 1): the
objective is sent once to each worker, then one task per trial, at most `workers` at a time; each task loads the
study from the shared storage and runs one trial with `study.optimize`, so Optuna's heartbeats (when the storage
has them) mark a trial whose worker died as failed. With the storage shared, each trial's sampler sees every
finished trial; each task's sampler is seeded differently (seed + trial index), so no two draw the same start-up
trials, but the order trials finish in varies: results are not reproducible, as with `n_jobs > 1`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["TrialObjective", "run_trials"]


@dataclass(eq=False)
class TrialObjective:
    """One trial: fit `make_model(search_space(trial))`, score the primary metric, log an MLflow child run."""

    use_case: str  # the contract, module:NAME ([use_case] object), imported where the trial runs
    fit: object = field(repr=False)  # the rows each trial fits on (a DataFrame)
    validation: object = field(repr=False)  # the rows each trial is scored on (a DataFrame)
    seed: int  # the model's random_state
    tracking_uri: str  # MLflow, where trial runs go
    experiment_id: str
    parent_run_id: str  # the train step's MLflow run: each trial is its child
    study_name: str  # tagged on each trial's run
    pythonpath: list[str] = field(default_factory=list)  # folders the use case's module needs on a worker

    def __post_init__(self):
        self._local()

    def _local(self) -> None:
        """What is made where the objective runs, never pickled: the use case, the MLflow client, a lock."""
        self._uc = self._client = None
        self._lock = threading.Lock()  # trials in threads (n_jobs > 1) write MLflow one at a time (SQLite)

    def __getstate__(self) -> dict:
        """What travels to a worker: the frames cut to the contract's columns (the features and the target: all a
        trial reads), without what `_local` makes."""
        state = {k: v for k, v in self.__dict__.items() if k not in {"_uc", "_client", "_lock"}}
        columns = [*self.uc.features, self.uc.target]
        for name in ("fit", "validation"):
            frame = state[name]
            if set(columns) <= set(frame.columns) and len(columns) < len(frame.columns):
                state[name] = frame[columns]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local()

    @property
    def uc(self):
        """The use case, imported on first use."""
        if self._uc is None:
            from notebench.usecase import load_use_case

            sys.path[:0] = [p for p in self.pythonpath if p not in sys.path]
            self._uc = load_use_case(reference=self.use_case)
        return self._uc

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __call__(self, trial) -> float:
        from mlflow.entities import Metric, Param
        from threadpoolctl import threadpool_limits

        from notebench.evaluation import primary_score

        uc, client = self.uc, self.client
        params = {**uc.search_space(trial), "random_state": self.seed}
        with self._lock:
            child = client.create_run(self.experiment_id, run_name=f"trial {trial.number}", tags={
                "mlflow.parentRunId": self.parent_run_id, "notebench.kind": "trial", "optuna.study": self.study_name,
                "optuna.trial": str(trial.number), "notebench.worker": _where()}).info.run_id
        try:
            with threadpool_limits(limits=1, user_api="openmp"):  # one OpenMP thread per fit: trials run side by side
                model = uc.make_model(params).fit(self.fit[uc.features], self.fit[uc.target])
                score = primary_score(uc, model, self.validation)
        except Exception:
            with self._lock:
                client.set_terminated(child, "FAILED")
            raise
        with self._lock:
            client.log_batch(child, metrics=[Metric(f"validation_{uc.metric}", score, int(time.time() * 1000), 0)],
                             params=[Param(k, str(v)) for k, v in params.items()])
            client.set_terminated(child, "FINISHED")
        return score


def _where() -> str:
    """The Dask worker running this, or "kernel"."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "kernel"


_STORAGES: dict = {}  # a worker process's study storages, by (URL, heartbeat): made once, not once per trial


def _storage(url: str, heartbeat: int | None):
    """This process's Optuna storage for `url`: one engine and one schema check for all its trials (a new storage
    per trial costs a connection pool and Optuna's version check, about as much as a small trial), with heartbeats
    when the settings ask for them, so a trial whose worker died is marked failed."""
    key = (url, heartbeat)
    if key not in _STORAGES:
        import warnings

        import optuna

        from notebench.state.uri import sqlalchemy_url

        # workers on one machine share a SQLite file: wait for its lock, never fail on it
        engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {"pool_pre_ping": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
            _STORAGES[key] = optuna.storages.RDBStorage(sqlalchemy_url(url), engine_kwargs=engine,
                                                        heartbeat_interval=heartbeat or None,
                                                        grace_period=2 * heartbeat if heartbeat else None)
    return _STORAGES[key]


def _trial_task(objective: TrialObjective, study_name: str, storage: str, seed: int,
                heartbeat: int | None = None) -> dict:
    """On a worker: one trial of the shared study, run by `study.optimize` (heartbeats, failure states)."""
    import os

    import optuna

    from notebench.pipeline.dask_executor import roomy_malloc

    roomy_malloc()  # a fit under the nanny's malloc setting is 15-25% slower
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"  # a line per trial run in the worker's log otherwise
    study = optuna.load_study(study_name=study_name, storage=_storage(storage, heartbeat),
                              sampler=optuna.samplers.TPESampler(seed=seed))
    ran = []
    study.optimize(objective, n_trials=1, callbacks=[lambda _, trial: ran.append(trial)])
    return {"number": ran[0].number, "value": ran[0].value, "worker": _where()}


def run_trials(study, objective: TrialObjective, n_trials: int, timeout: float, workers: int, settings,
               storage: str) -> dict:
    """Run `n_trials` trials of `objective` on `study` (in `storage`) as Dask tasks, `workers` at a time; no new
    trial starts after `timeout` seconds. A trial's error is raised here, as `study.optimize` raises it.
    Returns {"trials": started, "workers": {worker address: trials}, "scheduler": address}."""
    from distributed import as_completed

    from notebench.pipeline.dask_executor import TRIAL, connect, offering, redact

    client, cluster = connect(settings, workers=workers)
    try:
        shared = client.scatter(objective, broadcast=True, hash=False)  # the frames travel once per worker
        slots = offering(client, TRIAL)  # workers that run one trial at a time; else any worker's threads
        resources = {TRIAL: 1} if slots else None
        slots = slots or sorted(client.scheduler_info()["workers"])
        deadline, seed = time.time() + timeout, objective.seed
        heartbeat = settings.value("training", "study_heartbeat") or None
        placed: dict = {}  # running trial's future -> the worker it was given to

        def submit(index: int):
            """Trial `index` on the worker with the fewest running trials: left to itself, the scheduler queues them
            all on the worker that is not running the train step (the step looks like load to it; it only waits)."""
            target = min(slots, key=lambda w: sum(1 for p in placed.values() if p == w))
            future = client.submit(_trial_task, shared, study.study_name, storage, seed + index, heartbeat,
                                   pure=False,
                                   resources=resources, workers=[target], allow_other_workers=True,
                                   key=f"notebench-trial-{study.study_name}-{index}")
            placed[future] = target
            return future

        started = min(workers, n_trials)
        pending = as_completed([submit(i) for i in range(started)], loop=client.loop)
        where: Counter = Counter()
        for future in pending:
            placed.pop(future, None)
            where[future.result()["worker"]] += 1
            if started < n_trials and time.time() < deadline:
                pending.add(submit(started))
                started += 1
        return {"trials": started, "workers": dict(where),
                "scheduler": "a local cluster" if cluster else redact(client.scheduler.address)}
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

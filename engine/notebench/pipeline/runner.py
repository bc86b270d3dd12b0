"""The pipeline runner: plan which steps must run, run them through papermill in parallel, record everything.

`run_pipeline` reads as its steps: check the spec → take the lock → plan (cache) → start the lineage sidecar and,
if a step will run, the executor (`[pipeline] executor`: warm kernels here, or a Dask cluster) → hand each ready
step to it as a job (plain data: `StepJob`) and wait through its `wait` → retry a failed job or commit the step's
products atomically → stop at the first failure, keeping its executed notebook → record the run. A step is skipped
when its products exist and its fingerprint (code, modules, parameters, the settings it reads, upstream products)
is unchanged, so a run after a failure resumes where the last one stopped.
"""

from __future__ import annotations

import getpass
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from notebench import __version__
from notebench.errors import NotebenchError, StepFailed
from notebench.pipeline.cache import Fingerprint, path_digest, setting_values
from notebench.pipeline.executors import JobResult, StepJob, get_executor, kernel_imports, read_claim
from notebench.pipeline.lineage import LineageClient, now_ms, published_id
from notebench.pipeline.notebooks import read_notebook
from notebench.pipeline.progress import Progress, TerminalProgress
from notebench.pipeline.spec import INJECTED, PipelineSpec, StepSpec, find_pipeline, load_spec
from notebench.pipeline.store import PipelineStore, RunRecord, new_run_id
from notebench.state.services import check_tracking
from notebench.state.uri import mask_uri
from notebench.workspace import Workspace, git_info

__all__ = ["RunOptions", "StepPlan", "explain", "resolve", "run", "run_pipeline"]


@dataclass
class RunOptions:
    """What the user asked for: which steps, forced or not, parameters, who triggered the run."""

    force: bool = False  # re-run every step
    from_step: str | None = None  # re-run this step and everything downstream of it
    only: str | None = None  # run only this step (its upstream products must exist)
    to_step: str | None = None  # run this step and what it depends on, nothing downstream
    parameters: dict = field(default_factory=dict)  # overrides of pipeline and step parameters
    trigger: str = "manual"  # what started the run: manual, schedule, drift, ...
    wait: bool = False  # queue behind a run in progress instead of refusing
    executor: str | None = None  # where steps run: local, dask or another installed one; None: [pipeline] executor
    lineage: bool = True  # record the run in MLflow
    wait_lineage: bool = False  # return only when MLflow has the whole record (else it is finished in background)
    env: str | None = None  # run the version deployed in this environment, with its own state (see environments)


@dataclass
class StepPlan:
    """Whether a step will run, and why."""

    step: str
    action: str  # "run", "cached", "maybe" (runs if an upstream's products change)
    reasons: list[str]


def _selection(spec: PipelineSpec, opts: RunOptions) -> tuple[list[str], set[str]]:
    """(steps to consider, in order; steps forced to run) for the options."""
    for name in (opts.only, opts.from_step, opts.to_step):
        if name and name not in spec.steps:
            raise NotebenchError(f"{spec.file}: no step named '{name}'; steps: {', '.join(spec.steps)}")
    if opts.only:
        return [opts.only], {opts.only}
    steps = spec.upstream_of(opts.to_step) if opts.to_step else list(spec.steps)
    if opts.from_step:
        return steps, set(spec.downstream(opts.from_step)) & set(steps)
    return steps, set(steps) if opts.force else set()


def _input_digests(step: StepSpec, ws: Workspace) -> dict[str, str]:
    """Content digests of the outside files a step reads (its `inputs` globs, relative to the workspace)."""
    out = {}
    for pattern in step.inputs:
        for path in sorted(ws.root.glob(pattern)):
            if path.is_file():
                out[f"input:{path.relative_to(ws.root)}"] = path_digest(path)
    return out


def _upstream_digests(spec: PipelineSpec, step: StepSpec, store: PipelineStore) -> dict[str, str] | None:
    """Content digests of the step's upstream products from their manifests; None if one is missing."""
    out = {}
    for up in step.upstream:
        manifest = store.manifest(up)
        if manifest is None:
            return None
        out.update({f"{up}.{p}": d for p, d in manifest["products"].items()})
    return out


def _fingerprint(spec, step, store, ws, opts) -> Fingerprint | None:
    digests = _upstream_digests(spec, step, store)
    if digests is None:
        return None
    digests.update(_input_digests(step, ws))
    params = {k: _literal(v) for k, v in step.declared.items() if k not in INJECTED}  # the notebook's defaults
    params.update(spec.step_parameters(step, opts.parameters))
    roots, seeds = _code_roots(ws)
    # the settings the step reads (the spec's and the notebook's) as the kernel will see them: the kernel inherits
    # this process's environment, NOTEBENCH_<SECTION>_<KEY> overrides included; every step reads the use case
    settings = setting_values(ws.settings, {*step.reads, "use_case.object"})
    return Fingerprint.of(read_notebook(step.notebook), roots, params, digests, seeds, settings)


def _code_roots(ws) -> tuple[list[Path], set[str]]:
    """The package folders whose modules a step's fingerprint follows (the engine's, the use case's), and the
    use-case contract's module, which every step depends on through `step.use_case`."""
    import importlib.util

    from notebench.usecase import use_case_module

    roots = [Path(__file__).resolve().parents[1]]
    module = use_case_module(ws.settings.value("use_case", "object"))
    found = importlib.util.find_spec(module.split(".")[0]) if module else None
    if found is not None and found.submodule_search_locations:
        roots.append(Path(next(iter(found.submodule_search_locations))).resolve())
    return roots, ({module} if found is not None else set())


def _literal(source: str):
    """A parameter default's value when it is a literal, else its source text."""
    import ast

    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def _cache_reasons(step: StepSpec, fp: Fingerprint, store: PipelineStore) -> list[str]:
    """Why the step's current products cannot be reused (empty: they can)."""
    manifest = store.manifest(step.name)
    reasons = fp.changes(manifest["fingerprint"] if manifest else None)
    if not reasons:
        missing = [p for p, f in step.products.items() if not (store.product_dir(step.name) / f).exists()]
        reasons = [f"product {p} is missing" for p in missing]
    return reasons


def explain(spec: PipelineSpec, ws: Workspace, opts: RunOptions | None = None) -> list[StepPlan]:
    """What a run with `opts` would do for each step, and why, without running anything."""
    opts = opts or RunOptions()
    store = PipelineStore(ws.root, spec.name, env=opts.env)
    selected, forced = _selection(spec, opts)
    will_run: set[str] = set()
    plans = []
    for name in selected:
        step = spec.steps[name]
        running_ups = [u for u in step.upstream if u in will_run]
        if name in forced:
            plans.append(StepPlan(name, "run", ["forced (--force, --from or --only)"]))
            will_run.add(name)
            continue
        fp = _fingerprint(spec, step, store, ws, opts)
        if fp is None and not running_ups:
            plans.append(StepPlan(name, "run", ["an upstream step has no products yet"]))
            will_run.add(name)
        elif running_ups:
            plans.append(StepPlan(name, "maybe", [f"runs if the products of {', '.join(running_ups)} change"]))
            will_run.add(name)
        else:
            reasons = _cache_reasons(step, fp, store)
            plans.append(StepPlan(name, "run" if reasons else "cached", reasons or ["nothing changed"]))
            if reasons:
                will_run.add(name)
    return plans


class _Run:
    """One pipeline run in progress: its record, store, lineage and kernel pool."""

    def __init__(self, spec: PipelineSpec, ws: Workspace, opts: RunOptions, progress: Progress, release=None):
        self.spec, self.ws, self.opts, self.progress = spec, ws, opts, progress
        self.release = release  # the environment's release the spec comes from (None: the project's own)
        self.store = PipelineStore(ws.root, spec.name, env=opts.env)
        self.run_id = new_run_id()
        self.run_dir = self.store.run_dir(self.run_id)
        self.executor = None
        self.lineage: LineageClient | None = None
        self.cfg = ws.settings["pipeline"]

    # the run, step by step ---------------------------------------------------------------------------
    def execute(self) -> RunRecord:
        selected, forced = _selection(self.spec, self.opts)
        self._check_only_inputs()
        self.store.clean_staging()
        self.executor = get_executor(self.opts.executor or self.cfg["executor"], self.ws.settings)
        self.record = RunRecord.create(
            self.run_dir / "run.json", run_id=self.run_id, pipeline=self.spec.name, state="running",
            pid=os.getpid(), started=time.time(), trigger=self.opts.trigger, user=getpass.getuser(),
            parameters=self.opts.parameters, spec=str(self.spec.file), spec_digest=self.spec.digest,
            git=self._git(), version=__version__, env=self.opts.env,
            bundle=self.release.hash if self.release else None, executor=self.executor.name,
            steps={n: {"state": "pending"} for n in selected})
        self._start_lineage()
        self.progress.start(self.spec, self.run_id, selected)
        try:
            if any(p.action != "cached" for p in explain(self.spec, self.ws, self.opts)):
                self.executor.start()  # warm kernels, a cluster: only when some step will run
                self.record.update(executor=self.executor.describe())
            failure = self._schedule(selected, forced)
        except BaseException as exc:  # a signal (KeyboardInterrupt) or a bug mid-run: never leave it "running"
            self._finish(None, unexpected=exc)
            raise
        self._finish(failure)
        if failure:
            raise failure
        return self.record

    def _schedule(self, selected: list[str], forced: set[str]) -> StepFailed | None:
        """Submit each step whose upstream finished, settle each result (commit, retry, fail), until none is left."""
        running: dict = {}  # executor's handle -> (step, job, fingerprint)
        finished: set[str] = set()
        failure = None
        try:
            while True:
                if failure is None:
                    self._start_ready(selected, forced, finished, running)
                if not running:
                    break
                results = self.executor.wait(list(running), timeout=_POLL)
                self._note_claims(running.values())
                for handle, result in results.items():
                    step, job, fp = running.pop(handle)
                    try:
                        retry = self._settle(step, job, fp, result)
                    except StepFailed as exc:
                        failure = failure or exc
                        continue
                    if retry is None:
                        finished.add(step.name)
                    else:
                        running[self.executor.submit(retry)] = (step, retry, fp)
        finally:
            self.executor.shutdown()
        return failure

    def _start_ready(self, selected: list[str], forced: set[str], finished: set[str], running: dict) -> None:
        """Start every pending step whose upstream steps finished: cached ones at once, the others on the executor."""
        progressed = True
        while progressed:  # a cached step finishes at once, which may make its downstream ready
            progressed = False
            for name in selected:
                step = self.spec.steps[name]
                ups = [u for u in step.upstream if u in selected]
                if self.record["steps"][name]["state"] != "pending" or not all(u in finished for u in ups):
                    continue
                progressed = True
                started = time.time()
                fp = _fingerprint(self.spec, step, self.store, self.ws, self.opts)
                reasons = ["forced"] if name in forced else _cache_reasons(step, fp, self.store)
                if not reasons:
                    self._cached(step, fp, started)
                    finished.add(name)
                    continue
                self._set(name, state="queued", queued=started, reasons=reasons, cached=False)
                self._send_start(step, fp, started)
                job = self._job(step, attempt=1)
                running[self.executor.submit(job)] = (step, job, fp)

    def _job(self, step: StepSpec, attempt: int) -> StepJob:
        """The step as plain data for the executor: notebook, parameters, kernel, paths, environment."""
        staging = self.store.products_root / ".staging" / f"{step.name}-{self.run_id}"
        products = {p: str(staging / f) for p, f in step.products.items()}
        records = self.run_dir / f"{step.name}.records.json"
        params = self.spec.step_parameters(step, self.opts.parameters)
        injected = {"products": products, "context": self._context(step, records),
                    "upstream": {u: {p: str(self.store.product_dir(u) / f)
                                     for p, f in self.spec.steps[u].products.items()} for u in step.upstream}}
        params.update({k: v for k, v in injected.items() if k in step.declared and k in INJECTED})
        return StepJob(pipeline=self.spec.name, step=step.name, run_id=self.run_id, attempt=attempt,
                       notebook=str(step.notebook), output=str(self.run_dir / f"{step.name}.ipynb"), parameters=params,
                       staging=str(staging), products=products, cwd=str(step.notebook.parent),
                       claim=str(self.run_dir / "workers" / f"{step.name}.json"), env=self._kernel_env(),
                       timeout=step.timeout or self.cfg["timeout"], warm_imports=kernel_imports(self.ws.settings))

    def _note_claims(self, jobs) -> None:
        """Mark started jobs "running", with where they run (a job moved to another worker adds one)."""
        for step, job, _ in jobs:
            claim = read_claim(job)
            state = self.record["steps"][step.name]
            if claim is None or claim.get("attempt") != job.attempt:
                continue
            where = {k: claim[k] for k in ("worker", "host", "pid")}
            history = state.get("workers", [])
            if state["state"] in {"queued", "retrying"} or (history and history[-1] != where):
                self._set(step.name, state="running", started=state.get("started") or claim["started"],
                          attempts=job.attempt, worker=claim["worker"],
                          workers=[*history, where] if not history or history[-1] != where else history)

    def _settle(self, step: StepSpec, job: StepJob, fp: Fingerprint, result: JobResult) -> StepJob | None:
        """Commit a finished job's products; a failed one is retried (the next job returned) or raises StepFailed."""
        self._note_claims([(step, job, fp)])
        state = self.record["steps"][step.name]
        started = state.get("started") or state["queued"]
        if result.ok:
            return self._commit(step, job, fp, result, started)
        attempts = 1 + (step.retries if step.retries is not None else self.cfg["retries"])
        if job.attempt < attempts:
            self._set(step.name, state="retrying", attempts=job.attempt, error=result.error)
            return self._job(step, job.attempt + 1)
        ended = time.time()
        self._set(step.name, state="failed", ended=ended, error=result.error.splitlines()[0] if result.error else "",
                  duration=ended - started, attempts=job.attempt, worker=result.worker, kernel=result.kernel)
        exc = StepFailed(step.name, result.error, notebook=Path(job.output), cell=result.cell,
                         resume=self._resume_hint(step))
        self._send_end(step, "FAILED", started, error=str(exc))
        raise exc

    def _commit(self, step: StepSpec, job: StepJob, fp: Fingerprint, result: JobResult, started: float) -> None:
        """Make the job's staged products current (one rename), record the step done, send its lineage."""
        digests = {p: path_digest(Path(path)) for p, path in job.products.items()}
        # no MLflow run id here: asking the sidecar would make the step wait for MLflow (a cached step finds the id
        # the sidecar published in the producing run's folder)
        manifest = {"fingerprint": fp.to_dict(), "products": digests, "run_id": self.run_id, "produced": time.time()}
        final = self.store.commit(step.name, Path(job.staging), manifest)
        ended = time.time()
        notebook = Path(job.output)
        self._set(step.name, state="done", ended=ended, duration=ended - started, attempts=job.attempt,
                  notebook=str(notebook), products={p: str(final / f) for p, f in step.products.items()},
                  worker=result.worker, kernel=result.kernel)
        self._send_end(step, "FINISHED", started, notebook=notebook, records=self.run_dir / f"{step.name}.records.json",
                       products={p: {"path": str(final / step.products[p]), "sha256": d} for p, d in digests.items()})
        return None

    def _cached(self, step: StepSpec, fp: Fingerprint, started: float) -> None:
        manifest = self.store.manifest(step.name) or {}
        products = {p: str(self.store.product_dir(step.name) / f) for p, f in step.products.items()}
        self._set(step.name, state="cached", cached=True, started=started, ended=time.time(), duration=0.0,
                  reasons=["nothing changed"], cached_from=manifest.get("run_id"), products=products)
        self._send_start(step, fp, started, cached_from=manifest)
        self._send_end(step, "FINISHED", started, products={
            p: {"path": products[p], "sha256": d} for p, d in manifest.get("products", {}).items()})

    def _finish(self, failure: StepFailed | None, unexpected: BaseException | None = None) -> None:
        interrupted = isinstance(unexpected, (KeyboardInterrupt, SystemExit))
        state = "interrupted" if interrupted else "failed" if failure or unexpected else "succeeded"
        error = ("interrupted by a signal; steps that had not started did not run" if interrupted
                 else f"{type(unexpected).__name__}: {unexpected}" if unexpected else failure)
        self.record.update(state=state, ended=time.time(), error=str(error) if error else None)
        self.record.save()
        cached = sum(1 for s in self.record["steps"].values() if s.get("state") == "cached")
        if self.lineage:
            status = {"interrupted": "KILLED", "failed": "FAILED"}.get(state, "FINISHED")
            self.lineage.send({"op": "end", "key": "pipeline", "status": status,
                               "end_ms": now_ms(), "tags": {"notebench.state": self.record["state"]},
                               "metrics": {"duration_s": self.record["ended"] - self.record["started"],
                                           "steps_cached": cached}})
            self.lineage.close(wait=self.opts.wait_lineage)
        self.progress.end(self.record)

    # helpers ----------------------------------------------------------------------------------------
    def _git(self) -> dict:
        """The source's commit: the bundle's in an environment, else the project's working tree."""
        if self.release:
            git = self.release.manifest.get("git", {})
            return {"commit": git.get("commit", "unknown"), "dirty": git.get("dirty", "unknown")}
        return git_info(self.ws.settings.root)

    def _kernel_env(self) -> dict[str, str]:
        """A step kernel's variables: MLflow's, and the run's settings file (a pipeline folder outside the project
        would find none, or another one, from its own working directory; `step.use_case` reads it)."""
        env = {**_forwarded(os.environ), **self.ws.mlflow_env(), "NOTEBENCH_SETTINGS": str(self.ws.settings.file),
               **self.executor.env()}
        if self.release:
            from notebench.release.environments import run_variables

            env.update(run_variables(self.ws, self.opts.env, self.release))
        return env

    def _set(self, name: str, **fields) -> None:
        self.record["steps"][name].update(fields)
        self.record.save()
        self.progress.update(name, self.record["steps"][name])

    def _check_only_inputs(self) -> None:
        if self.opts.only:
            for up in self.spec.steps[self.opts.only].upstream:
                if self.store.manifest(up) is None:
                    raise NotebenchError(f"--only {self.opts.only}: upstream step '{up}' has no products yet; "
                                         f"run `notebench run {self.spec.name}` first")

    def _context(self, step: StepSpec, records: Path) -> dict:
        return {"pipeline": self.spec.name, "step": step.name, "run_id": self.run_id, "run_dir": str(self.run_dir),
                "lineage": self.lineage is not None,
                "tracking_uri": mask_uri(self.ws.tracking_uri), "registry_uri": mask_uri(self.ws.registry_uri),
                "workspace": str(self.ws.root), "records": str(records), "trigger": self.opts.trigger,
                "env": self.opts.env, "bundle": self.record.get("bundle"), "git": self.record["git"],
                "previous": {p: str(self.store.product_dir(step.name) / f) for p, f in step.products.items()}}

    def _resume_hint(self, step: StepSpec) -> str:
        env = f" --env {self.opts.env}" if self.opts.env else ""
        return f"notebench run {self.spec.name}{env}   (finished steps are cached; it resumes at '{step.name}')"

    def _start_lineage(self) -> None:
        if not self.opts.lineage:
            return
        self.lineage = LineageClient(self.run_dir, {
            "tracking_uri": self.ws.tracking_uri, "registry_uri": self.ws.registry_uri,
            "experiment": self.ws.experiment, "artifact_location": self.ws.artifact_location(),
            "run_dir": str(self.run_dir)})
        git = self.record["git"]
        self.lineage.send({"op": "start", "key": "pipeline", "name": f"{self.spec.name} {self.run_id}",
                           "start_ms": int(self.record["started"] * 1000),
                           "tags": {"notebench.pipeline": self.spec.name, "notebench.run_id": self.run_id,
                                    "notebench.spec_digest": self.spec.digest, "notebench.version": __version__,
                                    "mlflow.source.git.commit": git["commit"], "notebench.git.dirty": git["dirty"],
                                    "notebench.trigger": self.opts.trigger, "mlflow.user": self.record["user"],
                                    "notebench.kind": "pipeline",
                                    **({"notebench.env": self.opts.env, "notebench.bundle": self.record["bundle"],
                                        "notebench.release": f"{self.release.manifest.get('name')} "
                                                             f"{self.release.manifest.get('version')}"}
                                       if self.release else {})},
                           "params": {**self.spec.parameters, **self.opts.parameters}})

    def _send_start(self, step: StepSpec, fp: Fingerprint | None, started: float, cached_from: dict | None = None):
        if not self.lineage:
            return
        tags = {"notebench.pipeline": self.spec.name, "notebench.step": step.name, "notebench.kind": "step",
                "notebench.notebook": str(step.notebook), "notebench.fingerprint": fp.digest if fp else "",
                "notebench.cached": str(cached_from is not None).lower()}
        if cached_from is not None:
            tags["notebench.cached_from_run"] = cached_from.get("run_id", "")
            producer = cached_from.get("run_id")
            tags["notebench.cached_from_mlflow_run"] = cached_from.get("mlflow_run_id") or (producer and published_id(
                self.store.run_dir(producer), f"step:{step.name}")) or ""
        self.lineage.send({"op": "start", "key": f"step:{step.name}", "name": step.name,
                           "start_ms": int(started * 1000), "tags": tags,
                           "params": self.spec.step_parameters(step, self.opts.parameters)})

    def _send_end(self, step: StepSpec, status: str, started: float, notebook: Path | None = None,
                  records: Path | None = None, products: dict | None = None, error: str | None = None):
        if not self.lineage:
            return
        rec = _read_json(records) if records else {}
        tags = {f"notebench.verdict.{k}": ("passed" if v["passed"] else "failed") + ": " + "; ".join(v["reasons"])
                for k, v in rec.get("verdicts", {}).items()}
        tags.update(rec.get("tags", {}))
        if error:
            tags["notebench.error"] = error
        notebook = notebook or (self.run_dir / f"{step.name}.ipynb")
        self.lineage.send({"op": "end", "key": f"step:{step.name}", "status": status, "end_ms": now_ms(),
                           "metrics": {**rec.get("metrics", {}), "duration_s": time.time() - started},
                           "tags": tags, "products": products,
                           "notebooks": [str(notebook)] if notebook.exists() else []})


def _read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


_POLL = 1.0  # seconds between looks at started jobs' claims while waiting for results
# what of the runner's environment shapes a step: its settings overrides, MLflow's variables, the import path travel
# with the job (a worker elsewhere has its own environment); thread counts are the worker's to decide
_FORWARDED = ("NOTEBENCH_", "MLFLOW_", "PYTHONPATH")


def _forwarded(environ) -> dict[str, str]:
    """The runner's variables that shape what a step computes, for a kernel started anywhere."""
    return {k: v for k, v in environ.items() if k.startswith(_FORWARDED) and k != "NOTEBENCH_SETTINGS"}


def resolve(pipeline: str | Path, ws: Workspace, env: str | None = None):
    """(checked spec, release) of a pipeline: the project's (release None), or the one deployed in `env`."""
    if env is None:
        return load_spec(find_pipeline(str(pipeline), ws.settings.root)), None
    from notebench.release.environments import current_release

    release = current_release(ws, env)  # read once: a deploy switching `current` meanwhile changes nothing here
    return load_spec(release.spec_path(str(pipeline)).resolve()), release


def run_pipeline(pipeline: str | Path, options: RunOptions | None = None, progress: Progress | None = None,
                 workspace: Workspace | None = None) -> RunRecord:
    """Run a pipeline by name or path; return its record, or raise `StepFailed` / `SpecError` / `PipelineBusy`."""
    ws = workspace or Workspace()
    opts = options or RunOptions()
    spec, release = resolve(pipeline, ws, opts.env)
    ws.ensure()  # the workspace and its .gitignore, wherever settings put it
    check_tracking(ws)  # a server that is down is an error naming it now, before the lock, a record or a step
    store = PipelineStore(ws.root, spec.name, env=opts.env)
    store.lock(wait=opts.wait)
    try:
        return _Run(spec, ws, opts, progress or TerminalProgress(), release).execute()
    finally:
        store.unlock()


def run(pipeline: str | Path, **options) -> RunRecord:
    """Run a pipeline from a notebook cell or a script: `run("training", force=True)`, progress shown in place."""
    in_kernel = "ipykernel" in __import__("sys").modules
    progress = None
    if in_kernel:
        from notebench.pipeline.progress import NotebookProgress

        progress = NotebookProgress()
    return run_pipeline(pipeline, RunOptions(**options), progress=progress)

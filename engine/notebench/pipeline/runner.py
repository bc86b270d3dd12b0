"""The pipeline runner: plan which steps must run, run them through papermill in parallel, record everything.

`run_pipeline` reads as its steps: check the spec → take the lock → plan (cache) → start the kernel pool and
the lineage sidecar → run ready steps on the executor → commit each step's products atomically → stop at the
first failure, keeping its executed notebook → record the run. A step is skipped when its products exist
and its fingerprint (code, modules, parameters, the settings it reads, upstream products) is unchanged, so a run
after a failure resumes where the last one stopped.
"""

from __future__ import annotations

import getpass
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from notebench import __version__
from notebench.errors import NotebenchError, StepFailed
from notebench.imports import defer_iri_grammar
from notebench.pipeline.cache import Fingerprint, path_digest, setting_values
from notebench.pipeline.executors import get_executor, wait_any
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
    executor: str = "local"  # a registered executor
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
        self.pool = None
        self.lineage: LineageClient | None = None
        self.cfg = ws.settings["pipeline"]

    # the run, step by step ---------------------------------------------------------------------------
    def execute(self) -> RunRecord:
        selected, forced = _selection(self.spec, self.opts)
        self._check_only_inputs()
        self.store.clean_staging()
        self.record = RunRecord.create(
            self.run_dir / "run.json", run_id=self.run_id, pipeline=self.spec.name, state="running",
            pid=os.getpid(), started=time.time(), trigger=self.opts.trigger, user=getpass.getuser(),
            parameters=self.opts.parameters, spec=str(self.spec.file), spec_digest=self.spec.digest,
            git=self._git(), version=__version__, env=self.opts.env,
            bundle=self.release.hash if self.release else None,
            steps={n: {"state": "pending"} for n in selected})
        self._start_lineage()
        if any(p.action != "cached" for p in explain(self.spec, self.ws, self.opts)):
            self.pool = _start_pool(self.cfg["warm_imports"], self.ws.root, self.cfg["parallelism"])
            threading.Thread(target=_import_papermill, daemon=True).start()
        self.progress.start(self.spec, self.run_id, selected)
        try:
            failure = self._schedule(selected, forced)
        except BaseException as exc:  # a signal (KeyboardInterrupt) or a bug mid-run: never leave it "running"
            self._finish(None, unexpected=exc)
            raise
        self._finish(failure)
        if failure:
            raise failure
        return self.record

    def _schedule(self, selected: list[str], forced: set[str]) -> StepFailed | None:
        executor = get_executor(self.opts.executor, self.cfg["parallelism"])
        running: dict = {}
        finished: set[str] = set()
        failure = None
        try:
            while True:
                if failure is None:
                    for name in selected:
                        step = self.spec.steps[name]
                        ups = [u for u in step.upstream if u in selected]
                        if self.record["steps"][name]["state"] == "pending" and all(u in finished for u in ups):
                            self._set(name, state="queued")
                            running[executor.submit(self._step, step, name in forced)] = name
                if not running:
                    break
                for future in wait_any(running):
                    name = running.pop(future)
                    try:
                        future.result()
                        finished.add(name)
                    except StepFailed as exc:
                        failure = failure or exc
        finally:
            executor.shutdown()
        return failure

    def _step(self, step: StepSpec, forced: bool) -> None:
        started = time.time()
        fp = _fingerprint(self.spec, step, self.store, self.ws, self.opts)
        reasons = ["forced"] if forced else _cache_reasons(step, fp, self.store)
        if not reasons:
            return self._cached(step, fp, started)
        self._set(step.name, state="running", started=started, reasons=reasons, cached=False)
        self._send_start(step, fp, started)
        attempts = 1 + (step.retries if step.retries is not None else self.cfg["retries"])
        for attempt in range(1, attempts + 1):
            try:
                self._run_notebook(step, fp, attempt)
                return None
            except StepFailed as exc:
                if attempt == attempts:
                    self._set(step.name, state="failed", ended=time.time(), error=str(exc).splitlines()[0],
                              duration=time.time() - started, attempts=attempt)
                    self._send_end(step, "FAILED", started, error=str(exc))
                    raise
                self._set(step.name, state="retrying", attempts=attempt)
        return None

    def _run_notebook(self, step: StepSpec, fp: Fingerprint, attempt: int) -> None:
        staging = self.store.staging(step.name, self.run_id)
        products = {p: str(staging / f) for p, f in step.products.items()}
        notebook = self.run_dir / f"{step.name}.ipynb"
        records = self.run_dir / f"{step.name}.records.json"
        params = self.spec.step_parameters(step, self.opts.parameters)
        injected = {"products": products, "context": self._context(step, records),
                    "upstream": {u: {p: str(self.store.product_dir(u) / f)
                                     for p, f in self.spec.steps[u].products.items()} for u in step.upstream}}
        params.update({k: v for k, v in injected.items() if k in step.declared and k in INJECTED})
        timeout = step.timeout or self.cfg["timeout"]
        _import_papermill()  # waits for the warm-up import if it is still running
        _papermill(step, notebook, params, timeout, self._kernel_kwargs(step), self._resume_hint(step))
        missing = [p for p, path in products.items() if not Path(path).exists()]
        if missing:
            raise StepFailed(step.name, f"did not write its declared product(s) {', '.join(missing)} "
                                        f"(to {', '.join(products[p] for p in missing)})",
                             notebook=notebook, resume=self._resume_hint(step))
        digests = {p: path_digest(Path(path)) for p, path in products.items()}
        # no MLflow run id here: asking the sidecar would make the step wait for MLflow (a cached step finds the id
        # the sidecar published in the producing run's folder)
        manifest = {"fingerprint": fp.to_dict(), "products": digests, "run_id": self.run_id, "produced": time.time()}
        final = self.store.commit(step.name, staging, manifest)
        ended = time.time()
        started = self.record["steps"][step.name]["started"]
        self._set(step.name, state="done", ended=ended, duration=ended - started, attempts=attempt,
                  notebook=str(notebook), products={p: str(final / f) for p, f in step.products.items()})
        self._send_end(step, "FINISHED", started, notebook=notebook, records=records,
                       products={p: {"path": str(final / step.products[p]), "sha256": d} for p, d in digests.items()})

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
        if self.pool:
            self.pool.close()
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
        env = {**self.ws.mlflow_env(), "NOTEBENCH_SETTINGS": str(self.ws.settings.file)}
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

    def _kernel_kwargs(self, step: StepSpec) -> dict:
        """Where the step's kernel comes from, and its working directory (the notebook's folder)."""
        if self.pool:  # MLflow's defaults in the kernel (and its subprocesses) point at this workspace
            return self.pool.papermill_kwargs(cwd=step.notebook.parent, env=self._kernel_env())
        return {"kernel_name": "notebench", "resources": {"metadata": {"path": str(step.notebook.parent)}}}

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


_IMPORTS = threading.Lock()  # papermill and jupyter_client imported by two threads at once can deadlock importlib


def _import_papermill() -> None:
    """Import papermill ahead of the first step (it takes seconds)."""
    defer_iri_grammar()  # nbformat's jsonschema would build IRI parsers: 2.75 s (see notebench.imports)
    with _IMPORTS:
        import jupyter_client.kernelspec  # noqa: F401
        import papermill  # noqa: F401


def _start_pool(imports: list[str], root: Path, parallelism: int):
    """A warm kernel pool that imports `imports` once, while the first step starts.

    Steps running side by side each get an equal share of the cores for OpenMP and BLAS (OpenMP reads its
    thread count when the server imports it), unless the user set one.
    """
    from notebench.pipeline.kernels import KernelPool

    threads = str(max(1, (os.cpu_count() or 1) // parallelism))
    env = {k: threads for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k not in os.environ}
    return KernelPool(imports, state_dir=root / "kernels", server_env=env).start()


def _papermill(step: StepSpec, output: Path, params: dict, timeout: int, kernel_kwargs: dict, resume: str):
    """Execute one step notebook; turn papermill's errors into `StepFailed` with the cell and the error."""
    import papermill
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    try:
        papermill.execute_notebook(str(step.notebook), str(output), parameters=params,
                                   progress_bar=False, execution_timeout=timeout, **kernel_kwargs)
    except papermill.PapermillExecutionError as exc:
        what = exc.evalue if exc.ename == "StepStopped" else f"{exc.ename}: {exc.evalue} (cell {exc.exec_count})"
        raise StepFailed(step.name, what, notebook=output, cell=exc.exec_count, resume=resume) from exc
    except CellTimeoutError as exc:
        raise StepFailed(step.name, f"timed out after {timeout} s", notebook=output, resume=resume) from exc
    except DeadKernelError as exc:
        raise StepFailed(step.name, f"its kernel died: {exc}", notebook=output, resume=resume) from exc


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

"""Environments: where releases are deployed, what runs in each, the promotion rules, rollback and pruning.

```
<workspace>/environments/
  .layers/<lock key>/       the locked packages of a lock, shared by the releases that have it (see venvs)
  <env>/
    releases/<hash>/        an unpacked, verified release (manifest.json, wheels/, pipelines/, settings.ini, uv.lock)
    venvs/<hash>/           the release's venv: its Python, its wheels, its kernelspec
    workspace/              the environment's own state: MLflow store, Feast repo, Optuna storage, products and
                            runs, trigger queue, prediction log, monitoring (nothing shared with another environment)
    current                 symlink to releases/<hash>, replaced in one rename: readers see old or new
    history.jsonl           every deploy and rollback: when, who, which release, what it replaced, the evidence
```

A deploy verifies the release (every file against its manifest, the manifest against its hash, the signature
when a key is set), finds its Python, checks its rules, makes its venv from its lock and wheels (uv, cached), checks
its settings and its code inside that venv, then switches `current` and records it; then it removes the releases
beyond `[environments] keep_releases` (never the current one). Anything refused or failed leaves the environment
as it was. A rollback points `current` back at the release the current one replaced: code, settings and notebooks
together, in well under a second, since that release's venv is still there.

Rules come from `[environments]`, by position in `names` (promotion order), unless a rule list is registered
for a name with `register_rules`: the first environment accepts a release whose smoke stage passed; the others
need every CI stage green; the last (prod) also needs `prod_min_staging_runs` successful runs of that same
release's training pipeline (`[triggers] pipeline`) in the environment before it (runs that executed at least one
step: an all-cached run ran none of its code), and an explicit approval.

Everything that runs in an environment runs in its release's venv with its release's settings (see runtime).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from notebench.errors import BundleError, DeployRefused, PipelineBusy, SpecError
from notebench.pipeline.spec import find_pipeline
from notebench.pipeline.store import PipelineStore
from notebench.release import venvs
from notebench.release.bundle import (
    STAGES,
    Bundle,
    ci_status,
    open_bundle,
    signing_key,
    verify_folder,
    verify_signature,
)
from notebench.workspace import Workspace

__all__ = ["Environment", "Release", "current_release", "deploy", "environment", "pipeline_spec_path",
           "register_rules", "rollback", "run_variables", "status"]


@dataclass
class Release:
    """A release deployed in an environment: its folder, its venv and its manifest."""

    env: str
    hash: str
    path: Path  # <workspace>/environments/<env>/releases/<hash>
    manifest: dict = field(repr=False, default_factory=dict)

    @property
    def venv(self) -> Path:
        """The release's venv (<workspace>/environments/<env>/venvs/<hash>)."""
        return self.path.parent.parent / "venvs" / self.hash

    @property
    def settings_file(self) -> Path:
        return self.path / "settings.ini"

    def spec_path(self, pipeline: str) -> Path:
        """The pipeline.yaml of `pipeline` in this release."""
        path = self.path / "pipelines" / pipeline / "pipeline.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.parent.name for p in (self.path / "pipelines").glob("*/pipeline.yaml")))
            raise SpecError(f"no pipeline named '{pipeline}' in the release {self.hash[:12]} deployed in "
                            f"'{self.env}'", file=self.path, fix=f"use one of: {known or '(none)'}")
        return path


class Environment:
    """One deployment environment's folder: its releases, venvs, state, current pointer and history."""

    def __init__(self, ws: Workspace, name: str):
        self.ws, self.name = ws, name
        self.order = ws.settings.value("environments", "names")  # every environment, in promotion order
        if name not in self.order:
            raise DeployRefused(f"unknown environment '{name}'; the environments are {', '.join(self.order)} "
                                "([environments] names)")
        self.base = ws.root / "environments"  # every environment's folder, and the shared layers
        self.root = self.base / name
        self.releases = self.root / "releases"
        self.venvs = self.root / "venvs"
        self.workspace = self.root / "workspace"  # the environment's own state (its settings' [workspace] path)
        self.pointer = self.root / "current"
        self.history_file = self.root / "history.jsonl"

    @property
    def previous_env(self) -> str | None:
        """The environment before this one in promotion order."""
        i = self.order.index(self.name)
        return self.order[i - 1] if i else None

    def current(self) -> Release | None:
        """The release that runs here now, or None."""
        try:
            target = os.readlink(self.pointer)
        except OSError:
            return None
        return self.release(Path(target).name)

    def release(self, bundle_hash: str) -> Release:
        path = self.releases / bundle_hash
        try:
            manifest = json.loads((path / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise DeployRefused(f"release {bundle_hash[:12]} is missing or unreadable in {path} ({exc})",
                                env=self.name) from exc
        return Release(self.name, bundle_hash, path, manifest)

    def history(self) -> list[dict]:
        """Every deploy and rollback here, oldest first."""
        if not self.history_file.exists():
            return []
        return [json.loads(line) for line in self.history_file.read_text().splitlines() if line.strip()]

    def record(self, event: dict) -> None:
        """Append an event to the history, durably."""
        with open(self.history_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())

    @contextlib.contextmanager
    def changing(self):
        """Hold this environment's deploy lock (deploys and rollbacks of one environment queue behind each other, on
        every machine sharing the state database)."""
        from notebench.state.store import open_state

        self.root.mkdir(parents=True, exist_ok=True)
        with open_state(self.ws).lock(f"deploy:{self.name}").held(wait=None):
            yield

    def switch(self, bundle_hash: str) -> None:
        """Point `current` at a release in one rename."""
        tmp = self.root / f".current.{uuid.uuid4().hex[:8]}"
        os.symlink(f"releases/{bundle_hash}", tmp)
        os.replace(tmp, self.pointer)

    def store(self, pipeline: str) -> PipelineStore:
        """The runs, products and lock of `pipeline` in this environment (in its own workspace)."""
        return PipelineStore(self.workspace, pipeline, env=self.name)

    def runs(self, pipeline: str) -> list[dict]:
        """Run records of `pipeline` in this environment, newest first."""
        return self.store(pipeline).runs()

    def successful_runs(self, bundle_hash: str, pipeline: str | None = None) -> list[str]:
        """Ids of the succeeded runs of the training pipeline (or `pipeline`) of that release here in which a step
        executed: a run that found everything cached ran none of the release's code, so it proves nothing."""
        pipeline = pipeline or self.ws.settings.value("triggers", "pipeline")
        return [r["run_id"] for r in self.runs(pipeline) if r.get("bundle") == bundle_hash
                and r.get("state") == "succeeded" and any(s.get("state") == "done" for s in r["steps"].values())]


def environment(ws: Workspace, name: str) -> Environment:
    """The environment `name`, or `DeployRefused` naming the known ones."""
    return Environment(ws, name)


# ---------------------------------------------------------------------------------------------------------
# promotion rules: each returns why it refuses, or None


@dataclass
class DeployRequest:
    """What a rule judges: the environment, the verified release, and the approval given."""

    env: Environment
    bundle: Bundle
    approve: bool = False
    by: str = ""
    evidence: dict = field(default_factory=dict)  # what the rules found, recorded in the history


def smoke_passed(req: DeployRequest) -> str | None:
    """The release's smoke stage passed (on its own source)."""
    status = ci_status(req.bundle.manifest)["smoke"]
    return None if status == "passed" else f"its smoke stage is '{status}', not passed (run ci/smoke, then ci/build)"


def ci_green(req: DeployRequest) -> str | None:
    """Every CI stage of the release passed (on its own source)."""
    ci = ci_status(req.bundle.manifest)
    bad = [f"{s} {ci[s]}" for s in STAGES if ci[s] != "passed"]
    return None if not bad else (f"its CI stages are not all green ({', '.join(bad)}); run make test "
                                 "(ci/check, ci/test, ci/smoke, ci/build) on the commit and deploy that release")


def previous_runs(req: DeployRequest) -> str | None:
    """Enough successful training runs of this release in the environment before."""
    before = req.env.previous_env
    needed = req.env.ws.settings.value("environments", "prod_min_staging_runs")
    pipeline = req.env.ws.settings.value("triggers", "pipeline")
    runs = Environment(req.env.ws, before).successful_runs(req.bundle.hash, pipeline) if before else []
    req.evidence[f"{before}_runs"] = runs
    if len(runs) >= needed:
        return None
    return (f"it has {len(runs)} successful '{pipeline}' run(s) in {before}, and {needed} are needed "
            f"([environments] prod_min_staging_runs); deploy it to {before} and run `notebench run {pipeline} "
            f"--env {before}`")


def approved(req: DeployRequest) -> str | None:
    """An explicit approval, by someone."""
    if not req.approve:
        return f"deploying to {req.env.name} needs an explicit approval: add --approve --by NAME"
    req.evidence["approval"] = {"by": req.by, "at": _now()}
    return None


Rule = Callable[[DeployRequest], "str | None"]
RULES: dict[str, list[Rule]] = {}  # environment name -> its rules, when not the default by position


def register_rules(env: str, *rules: Rule) -> None:
    """Give environment `env` its own rules instead of the default ones for its position."""
    RULES[env] = list(rules)


def rules_for(env: Environment) -> list[Rule]:
    """The rules a release must pass to enter `env`."""
    if env.name in RULES:
        return RULES[env.name]
    position = env.order.index(env.name)
    if position == 0:
        return [smoke_passed]
    if position == len(env.order) - 1:
        return [ci_green, previous_runs, approved]
    return [ci_green]


# ---------------------------------------------------------------------------------------------------------
# deploy and rollback


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Locked:
    """Hold the run locks of the given pipelines in an environment; `PipelineBusy` if one is running."""

    def __init__(self, env: Environment, pipelines: set[str]):
        self.stores = [env.store(p) for p in sorted(pipelines)]
        self.env = env.name

    def __enter__(self):
        held = []
        try:
            for store in self.stores:
                store.lock(wait=False)
                held.append(store)
        except PipelineBusy:
            for store in held:
                store.unlock()
            holder = store.holder() or "another process"
            raise PipelineBusy(f"environment '{self.env}': refusing to change it while pipeline "
                               f"'{store.pipeline}' runs there ({holder}); the environment is unchanged, try "
                               "again when the run has finished") from None
        return self

    def __exit__(self, *exc):
        for store in self.stores:
            store.unlock()


def _pipelines(*releases: Release | Bundle | None) -> set[str]:
    return {p for r in releases if r is not None for p in r.manifest.get("pipelines", [])}


def _unpack(ws: Workspace, bundle_path: Path) -> tuple[Path, Bundle]:
    """Unpack and verify a release into a fresh folder beside the environments; remove it on failure."""
    folder = ws.root / "environments" / ".incoming" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    try:
        return folder, open_bundle(Path(bundle_path), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _trust(bundle: Bundle, env: str) -> str:
    """The signature check (when a key is set here), as a `DeployRefused`."""
    try:
        return verify_signature(bundle, signing_key())
    except BundleError as exc:
        raise DeployRefused(str(exc), env=env, bundle=bundle.hash) from exc


def deploy(ws: Workspace, bundle_path: Path | str, env: str, *, approve: bool = False, by: str | None = None,
           reason: str = "") -> dict:
    """Deploy a release into `env` if it is sound and its rules allow: its venv made, `current` switched to it,
    recorded, older releases pruned; return the event. Refused (the environment unchanged) otherwise."""
    target = environment(ws, env)
    folder, bundle = _unpack(ws, Path(bundle_path))
    try:
        signature = _trust(bundle, env)
        python = _python(bundle, env)
        req = DeployRequest(target, bundle, approve=approve, by=by or getpass.getuser(),
                            evidence={"signature": signature})
        refusals = [why for rule in rules_for(target) if (why := rule(req))]
        if refusals:
            raise DeployRefused("refused: " + "; ".join(refusals), env=env, bundle=bundle.hash)
        with target.changing():
            previous = target.current()
            if previous and previous.hash == bundle.hash:
                return {"env": env, "action": "none", "bundle": bundle.hash, "previous": bundle.hash,
                        "why": f"{env} already runs release {bundle.hash[:12]}"}
            return _install(ws, target, folder, bundle, python, previous, req, reason, bundle_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _remove_if_empty(folder.parent)


def _python(bundle: Bundle, env: str) -> str:
    """The interpreter of the Python the release was built on, or `DeployRefused`."""
    try:
        return venvs.find_python(str(bundle.manifest.get("python")))
    except DeployRefused as exc:
        raise DeployRefused(str(exc), env=env, bundle=bundle.hash) from None


def _install(ws: Workspace, target: Environment, folder: Path, bundle: Bundle, python: str,
             previous: Release | None, req: DeployRequest, reason: str, bundle_path) -> dict:
    """Make the release's venv (its layer too, if new) while runs go on; then, with no run of the environment's
    pipelines in progress, move the release in and switch; record; prune. On any failure, remove what this call
    made: the environment is as it was."""
    started = time.perf_counter()
    made: list[Path] = []
    try:
        layer, new_layer = venvs.ensure_layer(target.base, folder, python)
        if new_layer:
            made.append(layer)
        venv = target.venvs / bundle.hash
        mark = venvs.venv_mark(venv)
        if mark is None or mark.get("layer") != layer.name:
            shutil.rmtree(venv, ignore_errors=True)
            venv.parent.mkdir(parents=True, exist_ok=True)
            made.append(venv)
            mark = venvs.build_venv(venv, folder, bundle.manifest, layer, python, target.name)
        with _Locked(target, _pipelines(previous, bundle)):
            release_dir = target.releases / bundle.hash
            if release_dir.exists():
                verify_folder(release_dir)  # a release already there must still be intact
            else:
                release_dir.parent.mkdir(parents=True, exist_ok=True)
                os.replace(folder, release_dir)
                made.append(release_dir)
            target.switch(bundle.hash)
    except BaseException as exc:
        for path in reversed(made):
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, (DeployRefused, BundleError)) and not getattr(exc, "env", None):
            raise DeployRefused(f"{exc} (the environment is unchanged)", env=target.name, bundle=bundle.hash) from exc
        raise
    m = bundle.manifest
    event = {"time": _now(), "env": target.name, "action": "deploy", "bundle": bundle.hash,
             "previous": previous.hash if previous else None, "version": m.get("version"), "name": m.get("name"),
             "versions": m.get("versions"), "commit": m.get("git", {}).get("commit"), "python": python,
             "layer": mark["layer"], "new_layer": new_layer, "seconds": round(time.perf_counter() - started, 2),
             "user": getpass.getuser(), "by": req.by, "reason": reason,
             "bundle_file": str(Path(bundle_path).resolve()), "ci": ci_status(m), **req.evidence}
    event["removed"] = _prune(target)
    target.record(event)
    if new_layer and ws.settings.value("environments", "compile_bytecode"):
        venvs.compile_in_background(layer)
    return event


def _prune(target: Environment) -> list[str]:
    """Remove the releases (and venvs) beyond `[environments] keep_releases`, the least recently used first, never
    the current one; then the layers no kept release uses. Returns the removed release hashes."""
    keep = target.ws.settings.value("environments", "keep_releases")
    current = target.current()
    used: dict[str, int] = {}  # by the order of the history, not its times: two events can share a second
    for order, event in enumerate(target.history()):
        used[event.get("bundle")] = order
    present = {p.name for p in target.releases.iterdir()} if target.releases.is_dir() else set()
    present |= {p.name for p in target.venvs.iterdir()} if target.venvs.is_dir() else set()
    ranked = sorted(present - {current.hash if current else ""}, key=lambda h: used.get(h, -1), reverse=True)
    removed = ranked[max(0, keep - 1):]
    for bundle_hash in removed:
        shutil.rmtree(target.releases / bundle_hash, ignore_errors=True)
        shutil.rmtree(target.venvs / bundle_hash, ignore_errors=True)
    in_use = {(venvs.venv_mark(v) or {}).get("layer") for v in target.base.glob("*/venvs/*")}
    venvs.remove_unused_layers(target.base, {layer for layer in in_use if layer})
    return removed


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def rollback(ws: Workspace, env: str, *, by: str | None = None, reason: str = "") -> dict:
    """Point `env` back at the release its current one replaced (code, settings, notebooks); recorded."""
    target = environment(ws, env)
    with target.changing():
        return _roll_back(target, by, reason)


def _roll_back(target: Environment, by: str | None, reason: str) -> dict:
    env = target.name
    current = target.current()
    if current is None:
        raise DeployRefused("nothing is deployed, so there is nothing to roll back", env=env)
    deploys = [e for e in target.history() if e.get("action") == "deploy" and e.get("bundle") == current.hash]
    previous = deploys[-1].get("previous") if deploys else None
    if not previous:
        raise DeployRefused(f"release {current.hash[:12]} replaced no earlier release: nothing to roll back to",
                            env=env)
    if not (target.releases / previous).is_dir() or venvs.venv_mark(target.venvs / previous) is None:
        raise DeployRefused(f"release {previous[:12]}, which {current.hash[:12]} replaced, is no longer kept "
                            "([environments] keep_releases); deploy its release file again instead", env=env)
    release = target.release(previous)
    verify_folder(release.path)
    with _Locked(target, _pipelines(current, release)):
        target.switch(previous)
        event = {"time": _now(), "env": env, "action": "rollback", "bundle": previous, "previous": current.hash,
                 "version": release.manifest.get("version"), "name": release.manifest.get("name"),
                 "versions": release.manifest.get("versions"),
                 "commit": release.manifest.get("git", {}).get("commit"),
                 "user": getpass.getuser(), "by": by or getpass.getuser(), "reason": reason}
        target.record(event)
    return event


# ---------------------------------------------------------------------------------------------------------
# what runs where


def current_release(ws: Workspace, env: str) -> Release:
    """The release this process runs for `env`; only a process inside that environment's venv has one (the CLI
    re-executes itself there: `notebench run P --env E`), so that no release runs on the host's code."""
    from notebench.release import runtime

    if runtime.inside(env):
        return runtime.this_release()
    raise DeployRefused(f"what runs in environment '{env}' runs in its release's venv, with its settings: use the "
                        f"command line (`notebench run PIPELINE --env {env}`, `notebench serve --env {env}`...), "
                        "which re-executes itself there", env=env)


def pipeline_spec_path(workspace: Workspace, pipeline: str, env: str | None = None) -> Path:
    """The pipeline.yaml to run: the project's (env None) or that of the release deployed in `env`."""
    if env is None:
        return find_pipeline(pipeline, workspace.settings.root)
    return current_release(workspace, env).spec_path(pipeline).resolve()


def run_variables(ws: Workspace, env: str, release: Release) -> dict[str, str]:
    """Environment variables a step kernel of a run in `env` gets: which environment and release, and the release's
    settings file (read for `env`: its overrides, its workspace, its experiment and model name)."""
    return {"NOTEBENCH_ENVIRONMENT": env, "NOTEBENCH_BUNDLE": release.hash, "NOTEBENCH_RELEASE": release.hash,
            "NOTEBENCH_SETTINGS": str(release.settings_file)}


def status(ws: Workspace) -> list[dict]:
    """For each environment: its current release, the runs of it, and its history."""
    pipeline = ws.settings.value("triggers", "pipeline")
    out = []
    for name in ws.settings.value("environments", "names"):
        env = Environment(ws, name)
        current = env.current()
        runs = [r for r in env.runs(pipeline) if current and r.get("bundle") == current.hash]
        history = env.history()
        last = next((e for e in reversed(history) if current and e.get("bundle") == current.hash), {})
        kept = sorted(p.name for p in env.releases.iterdir()) if env.releases.is_dir() else []
        out.append({"env": name, "bundle": current.hash if current else None,
                    "name": current.manifest.get("name") if current else None,
                    "version": current.manifest.get("version") if current else None,
                    "versions": current.manifest.get("versions") if current else None,
                    "commit": current.manifest.get("git", {}).get("commit") if current else None,
                    "venv": str(current.venv) if current else None, "workspace": str(env.workspace),
                    "since": last.get("time"), "by": last.get("by"), "pipeline": pipeline, "kept": kept,
                    "runs": len(runs), "succeeded": len(env.successful_runs(current.hash, pipeline)) if current else 0,
                    "last_run": ({"run_id": runs[0]["run_id"], "state": runs[0]["state"]} if runs else None),
                    "history": history})
    return out

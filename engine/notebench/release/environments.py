"""Environments: where pipeline bundles are released, which one runs, the promotion rules, and rollback.

```
<workspace>/environments/<env>/
  releases/<bundle hash>/   an unpacked, verified bundle (manifest.json, uv.lock, pipelines/<name>/...)
  current                   symlink to releases/<hash>, replaced in one rename: readers see old or new
  history.jsonl             every deploy and rollback: when, who, which bundle, what it replaced, the evidence
```
Rules come from `[environments]`, by position in `names` (promotion order), unless a rule list is registered
for a name with `register_rules`: the first environment accepts a bundle whose smoke stage passed; the others
need every CI stage green; the last (prod) also needs `prod_min_staging_runs` successful runs of that same
bundle's training pipeline (`[triggers] pipeline`) in the environment before it (runs that executed at least one
step: an all-cached run ran none of its code), and an explicit approval.
Every refusal leaves the environment as it was.

A pipeline run in an environment (`notebench run P --env E`) reads the spec of E's current release, keeps its
products, runs and lock in `pipelines/<P>@<E>/` (so dev and prod share no cache or lock), records the bundle
hash and environment, and registers models under `<model_name>-<E>` except in the last environment, so that
only prod's runs can move the served champion.
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

from notebench import __version__
from notebench.errors import DeployRefused, PipelineBusy, SpecError
from notebench.pipeline.spec import find_pipeline
from notebench.pipeline.store import PipelineStore
from notebench.release.bundle import STAGES, Bundle, open_bundle, verify_folder
from notebench.workspace import Workspace

__all__ = ["Environment", "Release", "current_release", "deploy", "environment", "pipeline_spec_path",
           "register_rules", "rollback", "run_variables", "status"]


@dataclass
class Release:
    """A bundle released into an environment: its folder and manifest."""

    env: str
    hash: str
    path: Path  # <workspace>/environments/<env>/releases/<hash>
    manifest: dict = field(repr=False, default_factory=dict)

    def spec_path(self, pipeline: str) -> Path:
        """The pipeline.yaml of `pipeline` in this release."""
        path = self.path / "pipelines" / pipeline / "pipeline.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.parent.name for p in (self.path / "pipelines").glob("*/pipeline.yaml")))
            raise SpecError(f"no pipeline named '{pipeline}' in the release {self.hash[:12]} deployed in "
                            f"'{self.env}'", file=self.path, fix=f"use one of: {known or '(none)'}")
        return path


class Environment:
    """One deployment environment's folder: its releases, current pointer and history."""

    def __init__(self, ws: Workspace, name: str):
        self.ws, self.name = ws, name
        self.order = ws.settings.value("environments", "names")  # every environment, in promotion order
        if name not in self.order:
            raise DeployRefused(f"unknown environment '{name}'; the environments are {', '.join(self.order)} "
                                "([environments] names)")
        self.root = ws.root / "environments" / name
        self.releases = self.root / "releases"
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

    def runs(self, pipeline: str) -> list[dict]:
        """Run records of `pipeline` in this environment, newest first."""
        return PipelineStore(self.ws.root, pipeline, env=self.name).runs()

    def successful_runs(self, bundle_hash: str, pipeline: str | None = None) -> list[str]:
        """Ids of the succeeded runs of the training pipeline (or `pipeline`) of that bundle here in which a step
        executed: a run that found everything cached ran none of the bundle's code, so it proves nothing."""
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
    """What a rule judges: the environment, the verified bundle, and the approval given."""

    env: Environment
    bundle: Bundle
    approve: bool = False
    by: str = ""
    evidence: dict = field(default_factory=dict)  # what the rules found, recorded in the history


def smoke_passed(req: DeployRequest) -> str | None:
    """The bundle's smoke stage passed."""
    status = req.bundle.manifest.get("ci", {}).get("smoke", "missing")
    return None if status == "passed" else f"its smoke stage is '{status}', not passed (run ci/smoke, then ci/build)"


def ci_green(req: DeployRequest) -> str | None:
    """Every CI stage of the bundle passed."""
    ci = req.bundle.manifest.get("ci", {})
    bad = [f"{s} {ci.get(s, 'missing')}" for s in STAGES if ci.get(s) != "passed"]
    return None if not bad else (f"its CI stages are not all green ({', '.join(bad)}); run make test "
                                 "(ci/check, ci/test, ci/smoke, ci/build) on the commit and deploy that bundle")


def previous_runs(req: DeployRequest) -> str | None:
    """Enough successful training runs of this bundle in the environment before."""
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
    """The rules a bundle must pass to enter `env`."""
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

    def __init__(self, ws: Workspace, env: str, pipelines: set[str]):
        self.stores = [PipelineStore(ws.root, p, env=env) for p in sorted(pipelines)]
        self.env = env

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


def _install(env: Environment, folder: Path, bundle: Bundle) -> Release:
    """Move a verified unpacked bundle into releases/<hash> (reusing an identical one already there)."""
    target = env.releases / bundle.hash
    if target.exists():
        verify_folder(target)  # a release already there must still be intact
        shutil.rmtree(folder)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder, target)
    return env.release(bundle.hash)


def _unpack(ws: Workspace, bundle_path: Path) -> tuple[Path, Bundle]:
    """Unpack and verify a bundle into a fresh folder beside the environments; remove it on failure."""
    folder = ws.root / "environments" / ".incoming" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True)
    try:
        return folder, open_bundle(Path(bundle_path), folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def deploy(ws: Workspace, bundle_path: Path | str, env: str, *, approve: bool = False, by: str | None = None,
           reason: str = "") -> dict:
    """Release a bundle into `env` if its rules allow, switch `current` to it, record it; return the event."""
    target = environment(ws, env)
    folder, bundle = _unpack(ws, Path(bundle_path))
    try:
        version = bundle.manifest.get("version")
        if version != __version__:
            raise DeployRefused(f"the bundle is for notebench {version}, but notebench {__version__} is installed; "
                                "build the bundle from this version, or install the version it was built for",
                                env=env, bundle=bundle.hash)
        req = DeployRequest(target, bundle, approve=approve, by=by or getpass.getuser())
        refusals = [why for rule in rules_for(target) if (why := rule(req))]
        if refusals:
            raise DeployRefused("refused: " + "; ".join(refusals), env=env, bundle=bundle.hash)
        with target.changing():
            previous = target.current()
            if previous and previous.hash == bundle.hash:
                return {"env": env, "action": "none", "bundle": bundle.hash, "previous": bundle.hash,
                        "why": f"{env} already runs bundle {bundle.hash[:12]}"}
            return _switch_to(ws, target, folder, bundle, previous, req, reason, bundle_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _remove_if_empty(folder.parent)


def _switch_to(ws: Workspace, target: Environment, folder: Path, bundle: Bundle, previous: Release | None,
               req: DeployRequest, reason: str, bundle_path) -> dict:
    """With no run of the environment's pipelines in progress: install the release, switch to it, record it."""
    with _Locked(ws, target.name, _pipelines(previous, bundle)):
        release = _install(target, folder, bundle)
        target.switch(release.hash)
        event = {"time": _now(), "env": target.name, "action": "deploy", "bundle": bundle.hash,
                 "previous": previous.hash if previous else None, "version": bundle.manifest.get("version"),
                 "commit": bundle.manifest.get("git", {}).get("commit"), "user": getpass.getuser(),
                 "by": req.by, "reason": reason, "bundle_file": str(Path(bundle_path).resolve()),
                 "ci": bundle.manifest.get("ci", {}), **req.evidence}
        target.record(event)
    return event


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def rollback(ws: Workspace, env: str, *, by: str | None = None, reason: str = "") -> dict:
    """Point `env` back at the release its current one replaced; recorded. One command, no bundle needed."""
    target = environment(ws, env)
    with target.changing():
        return _roll_back(ws, target, by, reason)


def _roll_back(ws: Workspace, target: Environment, by: str | None, reason: str) -> dict:
    env = target.name
    current = target.current()
    if current is None:
        raise DeployRefused("nothing is deployed, so there is nothing to roll back", env=env)
    deploys = [e for e in target.history() if e.get("action") == "deploy" and e.get("bundle") == current.hash]
    previous = deploys[-1].get("previous") if deploys else None
    if not previous:
        raise DeployRefused(f"release {current.hash[:12]} replaced no earlier release: nothing to roll back to",
                            env=env)
    release = target.release(previous)
    verify_folder(release.path)
    with _Locked(ws, env, _pipelines(current, release)):
        target.switch(previous)
        event = {"time": _now(), "env": env, "action": "rollback", "bundle": previous, "previous": current.hash,
                 "version": release.manifest.get("version"), "commit": release.manifest.get("git", {}).get("commit"),
                 "user": getpass.getuser(), "by": by or getpass.getuser(), "reason": reason}
        target.record(event)
    return event


# ---------------------------------------------------------------------------------------------------------
# what runs where


def current_release(ws: Workspace, env: str) -> Release:
    """The release `env` runs now; `DeployRefused` when nothing is deployed there."""
    target = environment(ws, env)
    release = target.current()
    if release is None:
        raise DeployRefused("nothing is deployed yet; deploy a bundle with `notebench deploy BUNDLE --env "
                            f"{env}`", env=env)
    return release


def pipeline_spec_path(workspace: Workspace, pipeline: str, env: str | None = None) -> Path:
    """The pipeline.yaml to run: the project's (env None) or that of the release deployed in `env`."""
    if env is None:
        return find_pipeline(pipeline, workspace.settings.root)
    return current_release(workspace, env).spec_path(pipeline).resolve()


def run_variables(ws: Workspace, env: str, release: Release) -> dict[str, str]:
    """Environment variables a step kernel of a run in `env` gets: which environment and bundle, the host's
    settings file, and where its models are registered (`<model_name>-<env>` except in the last environment)."""
    order = ws.settings.value("environments", "names")
    out = {"NOTEBENCH_ENVIRONMENT": env, "NOTEBENCH_BUNDLE": release.hash,
           "NOTEBENCH_SETTINGS": str(ws.settings.file)}  # the host's settings: a release folder holds none
    if env != order[-1]:
        out["NOTEBENCH_REGISTRY_MODEL_NAME"] = f"{ws.settings.value('registry', 'model_name')}-{env}"
    return out


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
        out.append({"env": name, "bundle": current.hash if current else None,
                    "version": current.manifest.get("version") if current else None,
                    "commit": current.manifest.get("git", {}).get("commit") if current else None,
                    "since": last.get("time"), "by": last.get("by"), "pipeline": pipeline,
                    "runs": len(runs), "succeeded": len(env.successful_runs(current.hash, pipeline)) if current else 0,
                    "last_run": ({"run_id": runs[0]["run_id"], "state": runs[0]["state"]} if runs else None),
                    "history": history})
    return out

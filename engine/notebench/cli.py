"""The `notebench` command: one entry point, a subcommand per job, heavy libraries imported only when used."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from notebench.errors import NotebenchError, UseCaseError
from notebench.imports import defer_iri_grammar

__all__ = ["main"]


def _workspace():
    from notebench.workspace import Workspace

    return Workspace()


# ---------------------------------------------------------------------------------------------------------
# subcommands: each parses nothing itself, calls the library and returns an exit code


def cmd_config(args) -> int:
    """Print every effective setting and where it came from."""
    from notebench.settings import SCHEMA, load_settings

    settings = load_settings()
    if args.json:
        import json

        out = {f"{s}.{k}": {"value": settings.value(s, k) if SCHEMA[s][k].secret == "" else shown, "type": t,
                            "source": src} for s, k, t, shown, src in settings.rows()}  # secrets only masked
        print(json.dumps(out, indent=2, default=str))
        return 0
    from notebench.workspace import Workspace

    print(f"# settings file: {settings.file}")
    print(f"# workspace:     {Workspace(settings).root}")
    if settings.environment:
        print(f"# environment:   {settings.environment} (its [environments.{settings.environment}] section applied)")
    rows = list(settings.rows())
    width = max(len(f"{s}.{k}") for s, k, *_ in rows)
    section = None
    for s, k, type_, text, source in rows:
        if s != section:
            print(f"\n[{s}]")
            section = s
        line = f"{s}.{k}".ljust(width) + f"  = {text!s:<32} ({type_}; from {source})"
        print(line)
        if args.doc:
            print(" " * (width + 4) + "# " + SCHEMA[s][k].doc)
    return 0


def cmd_demo_data(args) -> int:
    """Write days of the use case's world (its contract's `simulate`) into the workspace landing area."""
    from notebench.usecase import load_use_case

    ws = _workspace()
    uc = load_use_case(ws.settings)
    landing = Path(args.out) if args.out else ws.landing
    if args.sample:
        return _write_sample(uc, landing, Path(args.from_landing) if args.from_landing else None)
    if uc.simulate is None:
        raise UseCaseError(f"use case {uc.name!r} declares no `simulate`: land your own batches in {landing} instead")
    print(f"Landing {args.days} day(s) of the {uc.name} world, scenario '{args.scenario}', from day {args.start_day} "
          f"into {landing}", file=sys.stderr)
    shift = {} if args.shift_day is None else {"shift_day": args.shift_day}
    try:
        uc.simulate(landing, start_day=args.start_day, days=args.days, seed=args.seed, scenario=args.scenario,
                    **shift, **({"size": args.size} if args.size else {}))
    except ValueError as exc:  # the use case's own refusal, e.g. an unknown scenario
        raise UseCaseError(f"the {uc.name} use case's simulate refused: {exc}") from exc
    print(f"Wrote {sum(1 for _ in landing.rglob('*.parquet'))} batch file(s) under {landing}", file=sys.stderr)
    return 0


def _write_sample(uc, landing: Path, project_landing: Path | None, days: int = 24) -> int:
    """The contract's sample into `landing`; without one, the newest `days` batches of the project's own landing."""
    import shutil

    if uc.sample is not None:
        print(f"Writing the {uc.name} use case's sample into {landing}", file=sys.stderr)
        uc.sample(landing)
        return 0
    batches = sorted((project_landing or Path("/nonexistent")).glob("features/*.parquet"))
    if not batches:
        raise UseCaseError(f"use case {uc.name!r} declares no `sample`, and there is no landed data to sample"
                           f"{f' in {project_landing}' if project_landing else ''}: declare one in the contract, "
                           "or pass --from-landing DIR")
    names = {p.name for p in batches[-days:]}
    for folder in ("features", "labels"):
        for path in sorted((project_landing / folder).glob("*.parquet")):
            if path.name in names:
                (landing / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, landing / folder / path.name)
    print(f"Copied the newest {len(names)} batch day(s) of {project_landing} into {landing}", file=sys.stderr)
    return 0


def cmd_lab(args, extra: list[str]) -> int:
    """Start JupyterLab on the project with the notebench kernel and the workspace's MLflow store."""
    ws = _workspace()
    env = {**os.environ, **ws.mlflow_env()}
    ws.experiment_id(ws.client())  # so that notebooks logging to it get artifacts inside the workspace
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--notebook-dir={ws.settings.root}",
           "--MultiKernelManager.default_kernel_name=notebench", f"--ServerApp.ip={args.ip}",
           f"--ServerApp.port={args.port}", *(["--no-browser"] if args.no_browser else []),
           *(["--allow-root"] if os.geteuid() == 0 else []), *extra]
    print(f"MLflow tracking: {ws.tracking_uri}", file=sys.stderr)
    print(" ".join(cmd), file=sys.stderr)
    if args.dry_run:
        return 0
    os.execve(sys.executable, cmd, env)
    return 0  # not reached


def cmd_demo(args) -> int:
    """Run the closed loop on the demo world, showing each event."""
    from notebench.demo import run_demo
    from notebench.usecase import load_use_case

    ws = _workspace()
    sizes = {"days": 30, "more_days": 8, **load_use_case(ws.settings).extra.get("demo", {})}  # a project's own data
    return run_demo(ws, days=sizes["days"] if args.days is None else args.days,
                    more_days=sizes["more_days"] if args.more_days is None else args.more_days, size=args.size,
                    trials=args.trials)


def cmd_new(args) -> int:
    """Make a project from a folder of Parquet or CSV: the use case inferred, the template rendered with copier."""
    from notebench.new import Options, create_project

    options = Options(target=args.target, entities=tuple(args.entity or ()), timestamp=args.timestamp, task=args.task,
                      row_id=args.row_id)
    labels = {"same-batch": "same-batch", "separate": "separate"}.get(args.labels)
    create_project(Path(args.dir), Path(args.data), options, labels=labels,
                   label_data=Path(args.label_data) if args.label_data else None, name=args.name, engine=args.engine,
                   engine_from=args.engine_from, template=args.template, with_lock=not args.no_lock,
                   with_git=not args.no_git)
    return 0


def _parse_params(items: list[str]) -> dict:
    """`key=value` pairs, values read as YAML scalars (numbers, booleans, strings)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise NotebenchError(f"parameter {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def cmd_check(args) -> int:
    """Check the use case and the landed data against it; exit 2 on any problem. Reads only: writes nothing."""
    from notebench.check import check

    report = check()
    if args.json:
        import json

        print(json.dumps({"ok": not report.problems, "problems": report.problems, "passed": report.ok}, indent=1))
        return 2 if report.problems else 0
    for line in report.ok:
        print(f"ok: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    if report.problems:
        print(f"notebench check: {len(report.problems)} problem(s); fix them before running the pipelines",
              file=sys.stderr)
    return 2 if report.problems else 0


def _check_first(args, ws) -> None:
    """`notebench check` before a run that reads the landing area, except each batch's schema (the validate step
    gates that, with a recorded report); UseCaseError (exit 2) listing the problems, and nothing runs."""
    from notebench.check import check, reads_landing
    from notebench.pipeline.runner import resolve

    spec, _ = resolve(args.pipeline, ws)
    if not reads_landing(spec, args.only, args.to_step):
        return
    problems = check(ws.settings, batches=False).problems
    if problems:
        raise UseCaseError(f"`notebench check` found {len(problems)} problem(s) in the use case or the landed data, "
                           f"so {spec.name} did not start (fix them, or run with --no-check):", problems=problems)


def cmd_run(args) -> int:
    """Run a pipeline (or explain what a run would do)."""
    from notebench.pipeline.runner import RunOptions, explain, resolve, run_pipeline

    opts = RunOptions(force=args.force, from_step=args.from_step, only=args.only, to_step=args.to_step,
                      parameters=_parse_params(args.param), trigger=args.trigger, wait=args.wait,
                      executor=args.executor, lineage=not args.no_lineage, wait_lineage=args.wait_lineage,
                      env=args.env)
    if args.explain:
        ws = _workspace()
        spec, _ = resolve(args.pipeline, ws, args.env)
        for plan in explain(spec, ws, opts):
            print(f"{plan.step:<16} {plan.action:<7} {'; '.join(plan.reasons)}")
        return 0
    if not (args.no_check or args.env):  # a deployed release checks its own use case in its own environment
        _check_first(args, _workspace())
    run_pipeline(args.pipeline, opts)
    return 0


def cmd_runs(args) -> int:
    """List recent pipeline runs."""
    from notebench.pipeline.store import PipelineStore

    ws = _workspace()
    records = []
    for folder in sorted((ws.root / "pipelines").glob("*")) if (ws.root / "pipelines").exists() else []:
        if not args.pipeline or folder.name.split("@")[0] == args.pipeline:
            records += PipelineStore(ws.root, folder.name).runs()
    records.sort(key=lambda r: r["started"], reverse=True)
    if not records:
        print("no runs yet; start one with `notebench run PIPELINE`")
        return 0
    print(f"{'run':<24} {'pipeline':<16} {'state':<10} {'steps':<20} {'started':<19} trigger")
    for rec in records[: args.limit]:
        states = [s.get("state", "?") for s in rec["steps"].values()]
        counts = ", ".join(f"{states.count(k)} {k}" for k in ("done", "cached", "failed") if states.count(k))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rec["started"]))
        where = rec["pipeline"] + (f"@{rec['env']}" if rec.get("env") else "")
        trigger = rec.get("trigger", "") or ""
        trigger = trigger if len(trigger) <= 60 else trigger[:57] + "..."  # `notebench show` prints it whole
        print(f"{rec['run_id']:<24} {where:<16} {rec['state']:<10} {counts:<20} {started:<19} {trigger}")
    return 0


def cmd_show(args) -> int:
    """Show one run: its steps, products and where the executed notebooks are."""
    import json

    from notebench.pipeline.progress import summary_rows
    from notebench.pipeline.store import RunRecord

    ws = _workspace()
    matches = sorted((ws.root / "pipelines").glob(f"*/runs/{args.run}*/run.json"))
    if len(matches) != 1:
        raise NotebenchError(f"{len(matches)} runs match '{args.run}'; see `notebench runs`")
    rec = RunRecord.load(matches[0])
    if args.json:
        print(json.dumps(rec, indent=1, default=str))
        return 0
    lineage = matches[0].parent / "lineage.json"
    mlflow_ids = json.loads(lineage.read_text()).get("mlflow_runs", {}) if lineage.exists() else {}
    print(f"run {rec['run_id']} of pipeline {rec['pipeline']}: {rec['state']}")
    print(f"  trigger {rec.get('trigger')} by {rec.get('user')}; git {rec['git']['commit'][:12]}"
          f"{' (dirty)' if rec['git']['dirty'] == 'true' else ''}; MLflow run {mlflow_ids.get('pipeline', '-')}")
    if rec.get("env"):
        print(f"  in environment {rec['env']}, bundle {rec['bundle'][:12]}  (see `notebench environments`)")
    if rec.get("executor"):
        print(f"  steps ran on: {rec['executor']}")
    for name, state, duration, note in summary_rows(rec):
        step = rec["steps"][name]
        print(f"\n  {name}: {state} {duration}  {note}")
        for where in step.get("workers", []) if step.get("worker", "local") != "local" else []:
            print(f"    worker {where['worker']} (host {where['host']}, pid {where['pid']})")
        if step.get("kernel") and step.get("worker", "local") != "local":
            print(f"    kernel: {step['kernel']}")
        if step.get("notebook"):
            print(f"    notebook: {step['notebook']}")
        for product, path in (step.get("products") or {}).items():
            print(f"    product {product}: {path}")
    if rec.get("error"):
        print(f"\n{rec['error']}")
    return 0


def cmd_features(args) -> int:
    """Manage the workspace's Feast feature repo: apply the definitions, materialize, show."""
    import json

    from notebench.features.store import FeatureRepo

    repo = FeatureRepo()
    source = Path(args.source) if getattr(args, "source", None) else repo.path / "data" / "snapshots.parquet"
    if args.action == "apply":
        changes = repo.apply(source)
        print(json.dumps(changes or {"registry": "unchanged"}, indent=1))
    elif args.action == "materialize":
        loaded = repo.materialize(end=args.end, start=args.start)
        for view, (begin, end) in loaded.items() or {}:
            print(f"{view}: {begin} -> {end}")
        if not loaded:
            print("nothing new to materialize")
    else:
        print(json.dumps(repo.show(), indent=1, default=str))
    print(f"feature repo: {repo.path}  (the feast CLI works there: cd {repo.path} && feast feature-views list)",
          file=sys.stderr)
    return 0


def _registry():
    ws = _workspace()
    return ws, ws.client(), ws.settings.value("registry", "model_name")


def cmd_models(args) -> int:
    """List the registered model's versions: aliases, key metrics, blessed or not."""
    from notebench.registry.models import versions

    ws, client, name = _registry()
    rows = versions(client, name)
    if not rows:
        print(f"no versions of {name} yet; train one with `notebench run training`")
        return 0
    if args.json:
        import json

        print(json.dumps(rows, indent=1, default=str))
        return 0
    from notebench.usecase import primary_metric

    metric = primary_metric(ws.settings)[1]  # the use case's primary metric, by name
    width = max(len(metric), 8)
    print(f"{name}  ({ws.registry_uri})")
    print(f"{'version':>7}  {'aliases':<20} {'blessed':<8} {metric:>{width}}  {'created':<20} reasons")
    for r in rows:
        blessed = {True: "yes", False: "NO", None: "?"}[r["blessed"]]
        value = r["metrics"].get(metric)
        reasons = "; ".join(r["reasons"])
        print(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<20} {blessed:<8} "
              f"{'-' if value is None else f'{value:.4g}':>{width}}  {(r['created'] or '')[:19]:<20} "
              f"{reasons[:100] + ('...' if len(reasons) > 100 else '')}")
    return 0


def cmd_promote(args) -> int:
    """Make a version the champion (an unblessed one only with --force and a reason, recorded)."""
    from notebench.registry.models import promote

    ws, client, name = _registry()
    event = promote(client, name, args.version, force=args.force, reason=args.reason or "",
                    require_deploy_check=ws.settings.value("gates", "deploy_check"))
    forced = f" - FORCED past the {' and '.join(event['overrode'])} gate: {args.reason}" if event.get("forced") else ""
    print(event["why"] if not event.get("changed") else
          f"{name}: champion is now version {event['version']} (was {event['previous'] or 'none'}){forced}")
    return 0


def cmd_rollback(args) -> int:
    """Move the champion back to the previous champion (or, with --env, an environment to its previous release)."""
    if args.env:
        from notebench.release.commands import cmd_rollback_env

        return cmd_rollback_env(args)
    from notebench.registry.models import rollback

    _, client, name = _registry()
    event = rollback(client, name, reason=args.reason or "")
    print(f"{name}: champion rolled back to version {event['version']} (was {event['previous']})")
    return 0


# ---------------------------------------------------------------------------------------------------------
# the parser


# Subcommands that live beside the machinery they drive: each module has `add_commands(sub)` and imports
# nothing heavy at module level, so that `notebench --help` stays instant.
COMMAND_MODULES = (
    "notebench.serving.commands",
    "notebench.monitoring.commands",
    "notebench.triggers.commands",
    "notebench.dashboards.commands",
    "notebench.release.commands",
)


class _Version(argparse.Action):
    """`--version`: the engine's and the project's versions, computed only when asked (git costs ~0.3 s)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from notebench.release import runtime
        from notebench.version import describe

        env = getattr(namespace, "global_env", None)
        if env and not runtime.inside(env):  # `notebench --env E --version`: the release's versions
            try:
                runtime.enter(env, ["--version"])
            except NotebenchError as exc:
                parser.exit(exc.exit_code, f"notebench: error: {exc}\n")

        try:
            from notebench.settings import load_settings
            from notebench.usecase import use_case_module

            module = use_case_module(load_settings().value("use_case", "object"))
        except NotebenchError:  # no settings here: the engine's version alone
            module = None
        lines = describe(module)
        if os.environ.get("NOTEBENCH_ENVIRONMENT"):
            lines.append(f"environment {os.environ['NOTEBENCH_ENVIRONMENT']}: release "
                         f"{os.environ.get('NOTEBENCH_RELEASE', '?')[:12]}")
        print("\n".join(lines))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="notebench",
        description="Notebench: notebooks to a continuously trained, delivered and monitored prediction service.",
        epilog="Settings come from settings.ini (or $NOTEBENCH_SETTINGS); any key can be overridden by "
               "NOTEBENCH_<SECTION>_<KEY>. See `notebench config`.")
    p.add_argument("--env", dest="global_env", metavar="ENV",
                   help="run the command in this deployment environment: its current release's venv, settings and "
                        "state (e.g. notebench --env prod models)")
    p.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS,
                   help="show the engine's and the project's versions (from git: each commit has its own) and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("config", help="print every effective setting and where it came from")
    c.add_argument("--doc", action="store_true", help="also print what each key means")
    c.add_argument("--json", action="store_true", help="print JSON instead of a table")
    c.set_defaults(func=cmd_config)

    d = sub.add_parser("demo-data", help="land days of the use case's world (its contract's simulate) or its sample")
    d.add_argument("--sample", action="store_true",
                   help="write the contract's small sample instead (as ci/smoke does); without one, the newest "
                        "24 days of --from-landing")
    d.add_argument("--from-landing", default=None, metavar="DIR",
                   help="with --sample: the project's own landing folder to sample when the contract has no sample")
    d.add_argument("--scenario", default="stable",
                   help="how the world changes after --shift-day, as the use case names it (default: stable)")
    d.add_argument("--days", type=int, default=30, help="number of days to write (default: 30)")
    d.add_argument("--start-day", type=int, default=0, help="index of the first day to write (default: 0)")
    d.add_argument("--size", type=int, default=None, help="size of the world (entities; default: the use case's)")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    d.add_argument("--shift-day", type=int, default=None, help="day index where the scenario starts")
    d.add_argument("--out", default=None, help="landing folder (default: <workspace>/landing)")
    d.set_defaults(func=cmd_demo_data)

    lab = sub.add_parser("lab", help="start JupyterLab on the project, the notebench kernel and MLflow store",
                         epilog="Arguments after -- go to jupyter lab unchanged.")
    lab.add_argument("--ip", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    lab.add_argument("--port", type=int, default=8888, help="port (default: 8888)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser")
    lab.add_argument("--dry-run", action="store_true", help="print the command and environment, start nothing")
    lab.set_defaults(func=cmd_lab, passthrough=True)

    demo = sub.add_parser("demo", help="the whole loop: train, serve, replay shifted traffic, monitor, retrain on "
                                       "drift, promote, swap (what `make demo` runs)")
    demo.add_argument("--days", type=int, default=None,
                      help="days the first champion trains on (default: the contract's extra['demo'], else 30)")
    demo.add_argument("--more-days", type=int, default=None,
                      help="days replayed as traffic, then landed (the shift starts on the first; default: the "
                           "contract's extra['demo'], else 8)")
    demo.add_argument("--size", type=int, default=None, help="size of the world (entities; default: the use case's)")
    demo.add_argument("--trials", type=int, default=10, help="tuning trials per training run (default: 10)")
    demo.set_defaults(func=cmd_demo)

    nw = sub.add_parser(
        "new", help="start a project from a folder of your Parquet or CSV (made with copier; `copier update` later)",
        description="Start a project from your data: read the Parquet or CSV files at --data, infer the use case (the "
                    "timestamp, the entities, the target and its task, the features, the pandera schema), and write a "
                    "project in DIR: pyproject.toml, settings.ini, the Makefile (make demo, make test), ci/, the "
                    "GitHub workflow, the dashboards, the pipelines, and notebooks/01_data, 02_model, 03_use_case "
                    "written for the data, with lessons on a sample of it. The earlier batches train the first model; "
                    "`make demo` replays the later ones. What cannot be inferred is asked for in one message.",
        epilog="Labels: in the data files (--labels same-batch), or separate label files (entity columns, timestamp, "
               "target) in DATA/labels/ or at --label-data PATH (--labels separate). Nothing is written when the "
               "input is refused.")
    nw.add_argument("dir", help="the project folder to create (new, or empty)")
    nw.add_argument("--data", required=True, metavar="PATH", help="a Parquet or CSV file, or a folder of them")
    nw.add_argument("--label-data", metavar="PATH", help="separate label files (a file or folder); default: "
                                                          "DATA/labels/ when it exists")
    nw.add_argument("--labels", choices=["same-batch", "separate"],
                    help="where labels are: a column of the data files, or separate label files (default: separate "
                         "when label files are found)")
    nw.add_argument("--target", help="the column the model predicts (default: inferred)")
    nw.add_argument("--entity", action="append", metavar="COLUMN",
                    help="a column saying whom a row is about; repeat for several (default: inferred)")
    nw.add_argument("--row-id", action="store_true", help="the rows are about nothing that recurs: number them "
                                                          "(entity row_id)")
    nw.add_argument("--timestamp", help="the column saying when a row was observed (default: the date column)")
    nw.add_argument("--task", choices=["binary", "multiclass", "regression"], help="default: inferred from the target")
    nw.add_argument("--name", help="project name (lowercase, digits, _; default: from DIR)")
    nw.add_argument("--engine", choices=["path", "wheel", "index"],
                    help="where the project installs the engine from: its source folder (default in a checkout), a "
                         "wheel file, or a package index (default otherwise)")
    nw.add_argument("--engine-from", metavar="WHERE",
                    help="path: the engine folder; wheel: the .whl file (default: built from the checkout); index: "
                         "the index URL (default: PyPI)")
    nw.add_argument("--template", help="the project template: a Notebench checkout or its git URL (default: the "
                                       "checkout this engine runs from)")
    nw.add_argument("--no-lock", action="store_true", help="do not run `uv lock` in the project")
    nw.add_argument("--no-git", action="store_true", help="do not make the project a git repository")
    nw.set_defaults(func=cmd_new)

    ck = sub.add_parser(
        "check", help="check the use case and the landed data against it before anything runs (exit 2: problems)",
        description="Check the use-case contract ([use_case] object: found, declared right, make_model and "
                    "search_space work) and the workspace's landed batches against it: each batch against the "
                    "schema (the first failing file, column and row), the label layout, the entity types, the "
                    "target's classes, the fit / validation / holdout split ([training] holdout_days) with enough "
                    "rows of each class, the segments. One line per problem, naming the file or name and the fix. "
                    "Reads only: creates no folder and no MLflow store.",
        epilog="Exit 0: all passed (one `ok:` line per part); 2: problems (one `problem:` line each). "
               "`notebench run` runs the same checks, except each batch's schema (its validate step gates that), "
               "before a pipeline whose steps read the landing area.")
    ck.add_argument("--json", action="store_true", help="print {ok, problems, passed} as JSON")
    ck.set_defaults(func=cmd_check)

    r = sub.add_parser("run", help="run a pipeline: cached, parallel, recorded in MLflow")
    r.add_argument("pipeline", help="pipeline name (notebooks/pipelines/NAME) or path to its pipeline.yaml")
    r.add_argument("--explain", action="store_true", help="say for each step whether it would run and why; run nothing")
    r.add_argument("--force", action="store_true", help="run every step, cached or not")
    r.add_argument("--from", dest="from_step", metavar="STEP", help="run STEP and everything downstream of it")
    r.add_argument("--only", metavar="STEP", help="run only STEP (its upstream products must exist)")
    r.add_argument("--to", dest="to_step", metavar="STEP", help="run STEP and the steps it needs, nothing after it")
    r.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="override a parameter (repeatable)")
    r.add_argument("--env", help="run the pipeline version deployed in this environment (see `notebench environments`)")
    r.add_argument("--trigger", default="manual", help="what started this run, recorded in lineage (default: manual)")
    r.add_argument("--wait", action="store_true", help="wait for a run in progress instead of refusing")
    r.add_argument("--executor", help="where steps run: local, dask, or one a package registers (default: "
                                      "[pipeline] executor)")
    r.add_argument("--no-lineage", action="store_true", help="do not record the run in MLflow")
    r.add_argument("--no-check", action="store_true",
                   help="skip `notebench check` (by default a run whose steps read landed data runs it first)")
    r.add_argument("--wait-lineage", action="store_true",
                   help="return only once MLflow holds the whole record (by default its last writes finish in the "
                        "background, in a few seconds)")
    r.set_defaults(func=cmd_run)

    rs = sub.add_parser("runs", help="list recent pipeline runs")
    rs.add_argument("pipeline", nargs="?", help="only this pipeline")
    rs.add_argument("-n", "--limit", type=int, default=20, help="how many (default: 20)")
    rs.set_defaults(func=cmd_runs)

    fs = sub.add_parser("features", help="the Feast feature repo in the workspace: apply, materialize, show")
    fs.add_argument("action", choices=["apply", "materialize", "show"], help="what to do")
    fs.add_argument("--source", help="apply: parquet of snapshots (default: the one the features step writes)")
    fs.add_argument("--start", help="materialize: from this time (default: where the last one ended)")
    fs.add_argument("--end", help="materialize: up to this time (default: the newest snapshot)")
    fs.set_defaults(func=cmd_features)

    m = sub.add_parser("models", help="registered model versions: aliases, metrics, blessing")
    m.add_argument("--json", action="store_true", help="print JSON")
    m.set_defaults(func=cmd_models)

    pr = sub.add_parser("promote", help="make VERSION the champion (refuses an unblessed one, or one without a passed "
                                        "deploy-check when [gates] deploy_check is on, unless --force)")
    pr.add_argument("version", help="model version number")
    pr.add_argument("--force", action="store_true",
                    help="promote past the blessing or deploy-check gate (recorded; needs --reason)")
    pr.add_argument("--reason", help="why, recorded in the champion history")
    pr.set_defaults(func=cmd_promote)

    rb = sub.add_parser("rollback", help="move the champion back to the previous champion (recorded); with --env, "
                                         "an environment back to its previous release")
    rb.add_argument("--reason", help="why, recorded in the champion (or environment) history")
    rb.add_argument("--env", help="roll back this deployment environment instead of the champion")
    rb.add_argument("--by", help="with --env: who, recorded (default: the current user)")
    rb.set_defaults(func=cmd_rollback)

    sh = sub.add_parser("show", help="show a run: steps, products, executed notebooks")
    sh.add_argument("run", help="run id (a unique prefix is enough)")
    sh.add_argument("--json", action="store_true", help="print the run record as JSON")
    sh.set_defaults(func=cmd_show)

    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    _environment_options(sub)
    return p


# Commands that run inside a deployment environment when given `--env E` (they re-execute themselves in its release's
# venv, with its settings and state; see notebench.release.runtime). `deploy`, `environments` and `rollback --env`
# manage environments from the host instead.
IN_ENVIRONMENT = ("run", "serve", "monitor", "deploy-check", "watch", "tick", "trigger", "events")
HOST_ONLY = ("deploy", "environments")
_ENV_HELP = ("run in this deployment environment: its current release's venv, settings and state (see `notebench "
             "environments`)")


def _environment_options(sub) -> None:
    """Give each command that can run in an environment an `--env` option (most already declare theirs)."""
    for name in IN_ENVIRONMENT:
        parser = sub.choices.get(name)
        if parser is None:
            continue
        if not any("--env" in action.option_strings for action in parser._actions):
            parser.add_argument("--env", help=_ENV_HELP)
            parser.set_defaults(env_added=True)  # its command knows no `env`: main() takes it away again
        parser.set_defaults(in_environment=True)


def _environment(args) -> str | None:
    """The deployment environment this command runs in: `notebench --env E ...`, or `--env` of a command that runs
    in one; None for the project's own."""
    if args.global_env and args.command in HOST_ONLY:
        raise NotebenchError(f"`notebench {args.command}` manages environments from the host: use `notebench "
                             f"{args.command} ... --env {args.global_env}` without the global --env")
    env = args.global_env or (getattr(args, "env", None) if getattr(args, "in_environment", False) else None)
    if env and getattr(args, "env", "absent") is None:
        args.env = env  # `notebench --env E run P` is `notebench run P --env E`
    for name in ("global_env", "in_environment", *(("env",) if vars(args).pop("env_added", False) else ())):
        vars(args).pop(name, None)  # the command gets only its own options
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the `notebench` command line; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = list(argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    defer_iri_grammar()  # 2.75 s saved in every command that reads notebooks (see notebench.imports)
    try:
        env = _environment(args)
        if env:
            from notebench.release import runtime

            if not runtime.inside(env):
                return runtime.enter(env, given)  # replaces this process: the release's notebench runs the command
        return args.func(args, extra) if getattr(args, "passthrough", False) else args.func(args)
    except NotebenchError as exc:
        print(f"notebench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("notebench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())

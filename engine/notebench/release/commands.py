"""`notebench deploy`, `notebench environments` and `notebench rollback --env`: the pipeline CD subcommands (run on
the host: they manage environments, where everything else runs in a release's own venv)."""

from __future__ import annotations

import json
import sys

__all__ = ["add_commands", "cmd_rollback_env"]


def _ws():
    from notebench.workspace import Workspace

    return Workspace()


def _short(bundle_hash: str | None) -> str:
    return bundle_hash[:12] if bundle_hash else "-"


def cmd_deploy(args) -> int:
    """Release a bundle into an environment if its rules allow it."""
    from notebench.release.environments import deploy

    event = deploy(_ws(), args.bundle, args.env, approve=args.approve, by=args.by, reason=args.reason or "")
    if event["action"] == "none":
        print(event["why"])
        return 0
    versions = ", ".join(f"{k} {v}" for k, v in (event.get("versions") or {}).items())
    layer = "new layer of locked packages" if event.get("new_layer") else "locked packages reused"
    print(f"{args.env}: now runs release {_short(event['bundle'])} ({versions}; commit {_short(event['commit'])}); "
          f"was {_short(event['previous'])}")
    print(f"  venv for Python {event.get('python')} ({layer}: {event.get('layer')}), made in {event.get('seconds')} s; "
          f"signature {event.get('signature')}")
    if event.get("removed"):
        print(f"  removed older releases ([environments] keep_releases): {', '.join(map(_short, event['removed']))}")
    if event.get("approval"):
        print(f"  approved by {event['approval']['by']} at {event['approval']['at']}")
    for key, runs in event.items():
        if key.endswith("_runs"):
            print(f"  evidence: {len(runs)} successful run(s) in {key[:-5]}: {', '.join(runs)}")
    return 0


def cmd_rollback_env(args) -> int:
    """Point an environment back at the release its current one replaced."""
    from notebench.release.environments import rollback

    event = rollback(_ws(), args.env, by=args.by, reason=args.reason or "")
    print(f"{args.env}: rolled back to release {_short(event['bundle'])} ({event.get('name')} {event.get('version')}, "
          f"commit {_short(event['commit'])}): its code, settings and notebooks; was {_short(event['previous'])}")
    return 0


def cmd_environments(args) -> int:
    """Show what runs in each environment, its runs and its history."""
    from notebench.release.environments import status

    rows = status(_ws())
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    print(f"{'env':<10} {'release':<13} {'version':<30} {'commit':<13} {'since':<21} {'by':<10} runs (ok/all)  "
          "last run")
    for r in rows:
        last = f"{r['last_run']['run_id']} {r['last_run']['state']}" if r["last_run"] else "-"
        version = f"{r['name']} {r['version']}" if r["version"] else "-"
        print(f"{r['env']:<10} {_short(r['bundle']):<13} {version:<30} {_short(r['commit']):<13} "
              f"{r['since'] or '-':<21} {r['by'] or '-':<10} {r['succeeded']}/{r['runs']:<12} {last}")
    events = sorted((e for r in rows for e in r["history"]), key=lambda e: e["time"])[-args.history:]
    if events:
        print("\nhistory (newest last):")
    for e in events:
        approval = f" approved by {e['approval']['by']}" if e.get("approval") else ""
        reason = f" - {e['reason']}" if e.get("reason") else ""
        print(f"  {e['time']}  {e['env']:<8} {e['action']:<8} {_short(e['bundle'])} (was {_short(e['previous'])}) "
              f"by {e.get('by')}{approval}{reason}")
    if not any(r["bundle"] for r in rows):
        print("\nnothing deployed yet: build a release with ci/build, then `notebench deploy dist/<release> --env "
              f"{rows[0]['env']}`", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    """Add `deploy` and `environments` to the `notebench` subcommands (`rollback --env` lives in cli.py)."""
    d = sub.add_parser("deploy", help="deploy a release into an environment (dev, staging, prod): its own venv",
                       description="Verify a release (every file against its manifest, the manifest against its "
                                   "hash, its signature when [environments] signing_key is set), find its Python, "
                                   "check the environment's rules, make the release's venv from its uv.lock and "
                                   "wheels (uv, cached) with its kernelspec, check its settings and code inside it, "
                                   "then switch the environment to it atomically, record it, and remove releases "
                                   "beyond [environments] keep_releases. Refused: the environment is unchanged.")
    d.add_argument("bundle", help="the release .tar.gz (ci/build writes it to dist/ and its path to dist/BUNDLE)")
    d.add_argument("--env", required=True, help="target environment ([environments] names)")
    d.add_argument("--approve", action="store_true", help="approve the deploy (prod requires it; recorded)")
    d.add_argument("--by", help="who deploys or approves (default: the current user)")
    d.add_argument("--reason", help="why, recorded in the environment's history")
    d.set_defaults(func=cmd_deploy)

    e = sub.add_parser("environments", help="what runs in each environment, its runs and its deploy history")
    e.add_argument("--history", type=int, default=20, help="how many history events to show (default: 20)")
    e.add_argument("--json", action="store_true", help="print JSON")
    e.set_defaults(func=cmd_environments)

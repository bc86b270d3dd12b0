"""Feast retrieval: point-in-time joins on Notebench's offline store vs Feast's DuckDB and file (Dask) stores.

Notebench's repo is Feast with `notebench.features.feast_offline.AsofDuckDBOfflineStore` (Feast's DuckDB store whose
point-in-time join is a DuckDB ASOF JOIN); `duckdb` and `file` are Feast's own stores as a user would configure
them; `asof` is the floor: the same join written by hand, without Feast.

The data is synthetic (numpy): `--entities` customers with one snapshot a day for `--days` days, carrying the
use case's 14 features (`nbs_lib.data.FEATURES`, same dtypes), written as parquet in a temporary folder. Entity
frames of each `--rows` size ask for a random customer at a random time. Every measurement runs in its own
subprocess (`--child`), so that its peak memory (the child's own `ru_maxrss`) is its alone; the parent also polls
the child's RSS and stops it beyond `--file-timeout` or `--memory-limit-gb`, which is then the result.

Online: p50/p99 of 1,000 single-entity reads through `FeatureStore.get_online_features` (to a dict and to a
DataFrame) and through `FeatureRepo.online`, the helper the prediction service calls.

Run with the project's venv from the project root: `.venv/bin/python benchmarks/feast_retrieval.py`. `--quick`:
300 customers x 20 days, one entity frame of 2,000 rows, every store, 50 online reads; targets not judged.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_GB, ONLINE_P99_MS = 60.0, 4.0, 10.0  # DuckDB at 1M rows; online p99 for one entity


# ---------------------------------------------------------------------------------------------------------
# data (parent)


def make_snapshots(entities: int, days: int, seed: int = 0):
    """One snapshot per customer per day with the use case's features and dtypes, from numpy alone."""
    import numpy as np
    import pandas as pd

    from nbs_lib.data import CATEGORIES, ENTITY, NUMERIC, SCHEMA, TIMESTAMP

    rng = np.random.default_rng(seed)
    n = entities * days
    ids = np.tile(np.arange(1, entities + 1, dtype=np.int64), days)
    offset = rng.integers(0, 86_400, entities)  # each customer's snapshot time of day
    seconds = np.repeat(np.arange(days, dtype=np.int64) * 86_400, entities) + np.tile(offset, days)
    frame = {ENTITY: ids, TIMESTAMP: pd.Timestamp("2025-01-01", tz="UTC") + pd.to_timedelta(seconds, "s")}
    for col in NUMERIC:
        ints = str(SCHEMA.columns[col].dtype).startswith("int")
        frame[col] = rng.integers(0, 100, n) if ints else np.round(rng.gamma(2.0, 20.0, n), 2)
    for col, values in CATEGORIES.items():
        frame[col] = np.asarray(values, dtype=object)[rng.integers(0, len(values), n)]
    return pd.DataFrame(frame).astype({TIMESTAMP: "datetime64[us, UTC]"})


def make_entity_frame(snapshots, rows: int, seed: int):
    """`rows` (entity, time) pairs at random, with a label column, over the snapshots' time range."""
    import numpy as np
    import pandas as pd

    from nbs_lib.data import ENTITY, TIMESTAMP

    rng = np.random.default_rng(seed)
    start, end = snapshots[TIMESTAMP].min(), snapshots[TIMESTAMP].max()
    span = int((end - start).total_seconds())
    return pd.DataFrame({ENTITY: rng.integers(1, snapshots[ENTITY].max() + 1, rows),
                         TIMESTAMP: start + pd.to_timedelta(rng.integers(0, span, rows), "s"),
                         "label": rng.integers(0, 2, rows)}).astype({TIMESTAMP: "datetime64[us, UTC]"})


# ---------------------------------------------------------------------------------------------------------
# children


PLAIN_STORES = {"duckdb": "duckdb", "file": "file"}  # Feast's own offline stores, as a user would configure them


def repo_for(store: str, folder: Path, source: Path):
    """`notebench`: the workspace's FeatureRepo (Feast with the ASOF offline store); else a plain
    feast.FeatureStore on Feast's own DuckDB or file (Dask) offline store; applied."""
    if store == "notebench":
        from notebench.features.store import FeatureRepo

        from nbs_lib.use_case import USE_CASE

        repo = FeatureRepo(path=folder / "repo_notebench", use_case=USE_CASE)
        repo.apply(source)
        return repo
    from feast import FeatureStore
    from notebench.features.definitions import feast_definitions

    from nbs_lib.use_case import USE_CASE

    path = folder / f"repo_{store}"
    (path / "data").mkdir(parents=True, exist_ok=True)
    (path / "feature_store.yaml").write_text(
        f"project: bench\nprovider: local\nregistry: {path / 'data/registry.db'}\noffline_store:\n"
        f"  type: {PLAIN_STORES[store]}\nonline_store:\n  type: sqlite\n  path: {path / 'data/online.db'}\n"
        "entity_key_serialization_version: 3\n")
    fs = FeatureStore(repo_path=str(path))
    fs.apply(feast_definitions(USE_CASE, str(source), 30))
    return fs


def child_retrieve(store: str, folder: Path, rows: int) -> dict:
    """Time one point-in-time retrieval of `rows` entity rows; report it with this process's peak memory."""
    import warnings

    import pandas as pd
    from notebench.features.definitions import feature_refs

    from nbs_lib.use_case import USE_CASE

    warnings.simplefilter("ignore")
    entity_df = pd.read_parquet(folder / f"entities_{rows}.parquet")
    repo = None if store == "asof" else repo_for(store, folder, folder / "snapshots.parquet")
    baseline, cpu = rss_mb(), cpu_s()
    start = time.perf_counter()
    if store == "notebench":  # FeatureRepo.historical: Feast's API on the ASOF store, row order, training dtypes
        out = repo.historical(entity_df)
    elif store == "asof":  # reference, not Feast: the same join as one DuckDB ASOF JOIN
        out = asof_join(entity_df, folder / "snapshots.parquet", ttl_days=30)
    else:
        out = repo.get_historical_features(entity_df=entity_df, features=feature_refs(USE_CASE)).to_df()
    wall, cpu = time.perf_counter() - start, cpu_s() - cpu
    feature = feature_refs(USE_CASE)[0].split(":")[1]
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "baseline_rss_mb": round(baseline), "rows_out": len(out),
            "rows_without_features": int(out[feature].isna().sum()),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def asof_join(entity_df, source: Path, ttl_days: int):
    """Point-in-time join without Feast: DuckDB's ASOF JOIN, features blanked beyond the ttl as Feast does."""
    import duckdb

    from nbs_lib.data import ENTITY, FEATURES, TIMESTAMP

    fresh = f'f."{TIMESTAMP}" >= e."{TIMESTAMP}" - INTERVAL {int(ttl_days)} DAY'
    picked = ", ".join(f'CASE WHEN {fresh} THEN f."{c}" END AS "{c}"' for c in FEATURES)
    sql = (f'SELECT e.*, {picked} FROM entity_df e ASOF LEFT JOIN read_parquet(?) f '
           f'ON e."{ENTITY}" = f."{ENTITY}" AND e."{TIMESTAMP}" >= f."{TIMESTAMP}"')
    with duckdb.connect() as con:
        con.register("entity_df", entity_df)
        return con.execute(sql, [str(source)]).df()


def child_online(folder: Path, calls: int) -> dict:
    """p50/p99 of single-entity online reads: Feast's get_online_features and FeatureRepo.online."""
    import random
    import warnings

    from notebench.features.definitions import feature_refs

    from nbs_lib.data import ENTITY
    from nbs_lib.use_case import USE_CASE

    warnings.simplefilter("ignore")
    repo = repo_for("notebench", folder, folder / "snapshots.parquet")
    repo.materialize()
    entities = json.loads((folder / "meta.json").read_text())["entities"]
    refs, fs, rng = feature_refs(USE_CASE), repo.store, random.Random(0)
    ways = {"feast get_online_features().to_dict()": lambda i: fs.get_online_features(refs, [{ENTITY: i}]).to_dict(),
            "feast get_online_features().to_df()": lambda i: fs.get_online_features(refs, [{ENTITY: i}]).to_df(),
            "notebench FeatureRepo.online()": lambda i: repo.online([i])}
    result = {}
    for name, read in ways.items():
        for _ in range(50):  # warm-up: first calls load the registry and prepare statements
            read(rng.randint(1, entities))
        times = []
        for _ in range(calls):
            entity = rng.randint(1, entities)
            start = time.perf_counter()
            read(entity)
            times.append(time.perf_counter() - start)
        times.sort()
        result[name] = {"p50_ms": round(statistics.median(times) * 1e3, 3),
                        "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1e3, 3),
                        "max_ms": round(times[-1] * 1e3, 3), "calls": calls}
    return result


def cpu_s() -> float:
    """CPU seconds this process has used (all threads): unlike wall time, barely moved by others' load."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """This process's current resident memory, in MB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


# ---------------------------------------------------------------------------------------------------------
# parent


def run_jobs(folder: str, jobs: list[tuple], timeout: float, memory_limit_gb: float) -> list[dict]:
    """Each job's result from one child running `jobs` in turn (each with the child's status: ok, stopped, failed)."""
    outcome = run_child(["jobs", folder, json.dumps(jobs)], timeout, memory_limit_gb)
    status = {k: v for k, v in outcome.items() if k != "results"}
    return [{**status, **r} for r in outcome["results"]] if "results" in outcome else [dict(status) for _ in jobs]


def run_child(args: list[str], timeout: float, memory_limit_gb: float) -> dict:
    """Run this script as `--child ...`; stop it past `timeout` or `memory_limit_gb`, and say so."""
    import psutil

    cmd = [sys.executable, __file__, "--child", *args]
    # importing feast makes a /tmp/feast_metrics_* folder, removed at exit: not when the child is killed
    metrics = Path(args[1]) / f"prometheus-{len(list(Path(args[1]).glob('prometheus-*')))}"
    metrics.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROCESS_DIR": str(metrics), "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    start, peak, load = time.perf_counter(), 0.0, round(os.getloadavg()[0], 2)  # others' load skews the times
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors, \
            subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=errors, text=True, env=env) as proc:
        watched = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)])
            except psutil.Error:
                rss = 0
            peak = max(peak, rss / 2**30)
            elapsed = time.perf_counter() - start
            if elapsed > timeout or peak > memory_limit_gb:
                proc.kill()
                proc.wait()
                why = f"over {timeout:.0f} s" if elapsed > timeout else f"over {memory_limit_gb:g} GB"
                return {"status": f"stopped: {why}", "wall_s": round(elapsed), "peak_rss_mb": round(peak * 1024),
                        "load_before": load}
            time.sleep(0.2)
        errors.seek(0)
        err = errors.read()
        out.seek(0)
        lines = out.read().strip().splitlines()
    if proc.returncode or not lines:
        return {"status": f"failed (exit {proc.returncode})", "error": err.strip().splitlines()[-3:]}
    return {"status": "ok", "load_before": load, **json.loads(lines[-1])}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=5000, help="customers (default 5000)")
    p.add_argument("--days", type=int, default=200, help="daily snapshots per customer (default 200)")
    p.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="entity-frame sizes")
    p.add_argument("--stores", nargs="+", default=["duckdb", "notebench", "file", "asof"],
                   help="duckdb: Feast's own DuckDB store; notebench: FeatureRepo.historical (Feast's API on "
                        "Notebench's ASOF DuckDB store); file: Feast's file (Dask) store; asof: floor without Feast, "
                        "one hand-written DuckDB ASOF JOIN")
    p.add_argument("--calls", type=int, default=1000, help="online reads per method (default 1000)")
    p.add_argument("--timeout", type=float, default=600, help="seconds a retrieval may take (default 600)")
    p.add_argument("--memory-limit-gb", type=float, default=8, help="RSS a retrieval may reach (default 8)")
    p.add_argument("--quick", action="store_true", help="small data, every store, targets not judged")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.entities, args.days, args.rows, args.calls = 300, 20, [2000], 50
    if args.child:
        _, folder, jobs = args.child
        results = [child_retrieve(job[1], Path(folder), int(job[2])) if job[0] == "retrieve"
                   else child_online(Path(folder), int(job[1])) for job in json.loads(jobs)]
        print(json.dumps({"results": results}))
        return 0

    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
               "data": {"entities": args.entities, "days": args.days, "feature_rows": args.entities * args.days,
                        "features": 14, "ttl_days": 30},
               "retrieval": [], "online": {}}
    with tempfile.TemporaryDirectory(prefix="feast-bench-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        snapshots = make_snapshots(args.entities, args.days)
        snapshots.to_parquet(folder / "snapshots.parquet")
        for rows in args.rows:
            make_entity_frame(snapshots, rows, seed=rows).to_parquet(folder / f"entities_{rows}.parquet")
        (folder / "meta.json").write_text(json.dumps({"entities": args.entities}))
        del snapshots
        print(f"data: {args.entities} entities x {args.days} days = {args.entities * args.days:,} feature rows "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
        jobs = [("retrieve", store, rows) for rows in args.rows for store in args.stores] + [("online", args.calls)]
        # one child per job, so that its peak memory is its own; --quick runs them all in one child (Feast is
        # imported once; the peaks are then the child's so far)
        for group in [jobs] if args.quick else [[job] for job in jobs]:
            for job, result in zip(group, run_jobs(tmp, group, args.timeout, args.memory_limit_gb), strict=True):
                if job[0] == "online":
                    results["online"] = result
                    continue
                results["retrieval"].append({"store": job[1], "rows": job[2], **result})
                print(f"  {job[1]:<10} {job[2]:>9,} rows  {result.get('status'):<22} {result.get('wall_s', '-'):>7} s  "
                      f"peak {result.get('peak_rss_mb', '-')} MB", flush=True)

    print_table(results)
    # the targets hold for what training calls: FeatureRepo.historical (Feast on DuckDB) at the largest size
    ours = next((r for r in results["retrieval"] if r["store"] == "notebench" and r["rows"] == max(args.rows)), {})
    online = results["online"].get("notebench FeatureRepo.online()", {})
    done, size = ours.get("status") == "ok", max(args.rows)
    results["targets"] = {
        f"historical_{size}_rows_under_{TARGET_S:g}s": done and ours["wall_s"] < TARGET_S,
        f"historical_{size}_rows_under_{TARGET_GB:g}gb": done and ours["peak_rss_mb"] < TARGET_GB * 1024,
        f"online_p99_under_{ONLINE_P99_MS:g}ms": bool(online) and online["p99_ms"] < ONLINE_P99_MS}
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in results["targets"].items())
          + (" (not judged in --quick)" if args.quick else ""))
    out = RESULTS / ("quick" if args.quick else "") / "feast_retrieval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    if args.quick:  # every store must still answer, whatever its time
        failed = [f"{r['store']} at {r['rows']} rows: {r['status']} {r.get('error', '')}"
                  for r in results["retrieval"] if r["status"] != "ok"]
        if results["online"].get("status") != "ok":
            failed.append(f"online reads: {results['online'].get('status')} {results['online'].get('error', '')}")
        print("\n".join(["FAILED:", *failed]) if failed else "every store answered")
        return 1 if failed else 0
    return 0 if all(results["targets"].values()) else 1


def print_table(results: dict) -> None:
    """The figures as two plain tables."""
    print(f"\n{'store':<10} {'entity rows':>11} {'status':<22} {'time s':>8} {'cpu s':>7} {'peak MB':>8} "
          f"{'base MB':>8} {'rows out':>9} {'no value':>9} {'load':>5}")
    for r in results["retrieval"]:
        print(f"{r['store']:<10} {r['rows']:>11,} {r['status']:<22} {r.get('wall_s', '-'):>8} {r.get('cpu_s', '-'):>7} "
              f"{r.get('peak_rss_mb', '-'):>8} {r.get('baseline_rss_mb', '-'):>8} {r.get('rows_out', '-'):>9} "
              f"{r.get('rows_without_features', '-'):>9} {r.get('load_before', '-'):>5}")
    print(f"\n{'online read, one entity':<40} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in results["online"].items():
        if isinstance(r, dict):
            print(f"{name:<40} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8}")
    print(f"(online: {results['online'].get('status')}, load average before: {results['online'].get('load_before')})")


if __name__ == "__main__":
    sys.exit(main())

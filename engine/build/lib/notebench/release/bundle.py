"""Pipeline bundles: the versioned, content-addressed artifact that CI builds and environments deploy.

A bundle is a deterministic `.tar.gz` holding one folder:

```
notebench-pipelines-<version>-<short hash>/
  manifest.json          package version, git commit and dirty flag, Python and key package versions,
                         the sha256 of every other file, the bundle hash, the CI stages that passed
  uv.lock                the lock the pipelines were tested with
  pipelines/<name>/...   each pipeline's pipeline.yaml and step notebooks, as in notebooks/pipelines/
```

The bundle hash is the sha256 of the package version and the (path, sha256) list of the files: it names the
content, so building twice from the same commit gives the same hash (and, with sorted entries, zero mtimes and
owners and a gzip header without a time, the same bytes). The manifest's `ci` block is the attestation of the
build that made it; it is not part of the content hash.

CI stages record their results with `record_stage` (`python -m notebench.release.bundle stage NAME passed|failed`) under
`dist/ci/`; a result counts for a build only when it was recorded on the same source (commit and diff).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from notebench import __version__
from notebench.errors import BundleError
from notebench.workspace import git_info

__all__ = ["STAGES", "Bundle", "build_bundle", "content_hash", "open_bundle", "record_stage", "stage_results",
           "verify_folder"]

STAGES = ("check", "test", "smoke")  # the CI stages a bundle's manifest reports
KEY_PACKAGES = ("papermill", "nbdev", "mlflow", "optuna", "scikit-learn", "pandas", "numpy", "pyarrow", "feast",
                "fastapi", "uvicorn")
MANIFEST = "manifest.json"
JUNK = {".ipynb_checkpoints", "__pycache__", ".DS_Store"}


@dataclass
class Bundle:
    """A built or opened bundle: where it is, its hash and its manifest."""

    path: Path  # the .tar.gz (or the folder it was unpacked into)
    hash: str  # sha256 of the content (see `content_hash`)
    manifest: dict

    @property
    def short(self) -> str:
        return self.hash[:12]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_hash(version: str, files: dict[str, str]) -> str:
    """The bundle hash: sha256 of the package version and the sorted (path, sha256) pairs of its files."""
    canonical = json.dumps({"version": version, "files": dict(sorted(files.items()))}, sort_keys=True,
                           separators=(",", ":"))
    return _sha256(canonical.encode())


# ---------------------------------------------------------------------------------------------------------
# CI stage results


def source_id(root: Path) -> str:
    """What the source is: the commit plus a digest of uncommitted changes (`unknown` outside git)."""
    git = git_info(root)
    if git["commit"] == "unknown":
        return "unknown"
    diff = subprocess.run(["git", "-C", str(root), "diff", "HEAD", "--binary"], capture_output=True, check=False,
                          env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"}).stdout
    return git["commit"] + ("" if git["dirty"] == "false" else "+" + _sha256(diff)[:16])


def record_stage(dist: Path, stage: str, passed: bool, root: Path, detail: str = "", source: str | None = None) -> Path:
    """Write `dist/ci/<stage>.json`: whether the stage passed, on which source (default: the current one), when."""
    folder = Path(dist) / "ci"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "status": "passed" if passed else "failed", "source": source or source_id(Path(root)),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "detail": detail}
    path = folder / f"{stage}.json"
    path.write_text(json.dumps(record, indent=1))
    return path


def stage_results(dist: Path, root: Path) -> dict[str, str]:
    """Each CI stage's status for the current source: passed, failed, stale (another source) or missing."""
    current = source_id(Path(root))
    out = {}
    for stage in STAGES:
        try:
            record = json.loads((Path(dist) / "ci" / f"{stage}.json").read_text())
        except (OSError, ValueError):
            out[stage] = "missing"
            continue
        out[stage] = record.get("status", "missing") if record.get("source") == current else "stale"
    return out


# ---------------------------------------------------------------------------------------------------------
# building


def pipeline_files(root: Path) -> dict[str, Path]:
    """Bundle path -> source file for every file of every pipeline folder under `notebooks/pipelines/`."""
    base = Path(root) / "notebooks" / "pipelines"
    out = {}
    for spec in sorted(base.glob("*/pipeline.yaml")):
        for path in sorted(spec.parent.rglob("*")):
            rel = path.relative_to(base)
            if path.is_file() and not any(part in JUNK or part.startswith(".") for part in rel.parts):
                out[f"pipelines/{rel.as_posix()}"] = path
    if not out:
        raise BundleError(f"no pipelines under {base}: nothing to bundle (a pipeline is a folder with pipeline.yaml)")
    return out


def locked_versions(lock: Path) -> dict[str, str]:
    """Versions of the key packages in uv.lock.

    uv writes each package as `[[package]]` then `name = ...` and `version = ...`; reading those lines takes
    milliseconds where parsing the whole TOML lock (1.4 MB) takes seconds.
    """
    import re

    text = lock.read_text(encoding="utf-8")
    pairs = re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, flags=re.MULTILINE)
    return dict(sorted((name, version) for name, version in pairs if name in KEY_PACKAGES))


def _manifest(root: Path, files: dict[str, bytes], stages: dict[str, str]) -> dict:
    digests = {name: _sha256(data) for name, data in sorted(files.items())}
    git = git_info(root)
    return {"format": 1, "package": "notebench", "version": __version__,
            "git": {"commit": git["commit"], "dirty": git["dirty"]},
            "python": platform.python_version(), "packages": locked_versions(root / "uv.lock"),
            "pipelines": sorted({name.split("/")[1] for name in files if name.startswith("pipelines/")}),
            "files": digests, "hash": content_hash(__version__, digests), "ci": stages}


def _tar_bytes(prefix: str, files: dict[str, bytes]) -> bytes:
    """A gzipped tar of `files` under `prefix/`, byte-identical for identical input."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def build_bundle(root: Path, dist: Path, stages: dict[str, str] | None = None) -> Bundle:
    """Build `dist/notebench-pipelines-<version>-<short hash>.tar.gz` from the project at `root`."""
    root, dist = Path(root).resolve(), Path(dist)
    lock = root / "uv.lock"
    if not lock.is_file():
        raise BundleError(f"{lock} is missing: a bundle carries the lock its pipelines were tested with")
    files = {name: path.read_bytes() for name, path in pipeline_files(root).items()}
    files["uv.lock"] = lock.read_bytes()
    manifest = _manifest(root, files, stages if stages is not None else stage_results(dist, root))
    prefix = f"notebench-pipelines-{__version__}-{manifest['hash'][:12]}"
    files[MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    dist.mkdir(parents=True, exist_ok=True)
    target = dist / f"{prefix}.tar.gz"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(_tar_bytes(prefix, files))
    os.replace(tmp, target)
    return Bundle(target, manifest["hash"], manifest)


# ---------------------------------------------------------------------------------------------------------
# opening and verifying


def open_bundle(path: Path, into: Path) -> Bundle:
    """Unpack a bundle tarball into the empty folder `into` (safely) and verify it; raise `BundleError`."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such bundle file (build one with ci/build; bundles are in dist/)")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/")[0] for m in members}
            if len(tops) != 1 or any(not m.isfile() and not m.isdir() for m in members):
                raise BundleError(f"{path}: not a pipeline bundle (expected one folder of regular files)")
            staging = into / ".unpack"
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: cannot read the bundle: {exc}") from exc
    unpacked = staging / tops.pop()
    for item in unpacked.iterdir():
        os.replace(item, into / item.name)
    unpacked.rmdir()
    staging.rmdir()
    bundle = verify_folder(into)
    bundle.path = path
    return bundle


def verify_folder(folder: Path) -> Bundle:
    """Check that an unpacked bundle's files are exactly those its manifest lists, with the same content."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        listed: dict[str, str] = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{folder}: no readable {MANIFEST} with a 'files' list ({exc})") from exc
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {MANIFEST}
    problems = [f"{name}: listed in the manifest but missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not listed in the manifest" for name in sorted(present - set(listed))]
    problems += [f"{name}: content does not match the manifest's sha256 (changed after the build)"
                 for name in sorted(set(listed) & present) if _sha256((folder / name).read_bytes()) != listed[name]]
    expected = content_hash(manifest.get("version", ""), listed)
    if manifest.get("hash") != expected:
        problems.append(f"the manifest's bundle hash {str(manifest.get('hash'))[:12]} is not the hash of its "
                        f"file list ({expected[:12]})")
    if problems:
        shown = "\n  - ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BundleError(f"bundle {folder.name} failed verification:\n  - {shown}\n"
                          "rebuild it with ci/build; never edit a bundle by hand")
    return Bundle(folder, manifest["hash"], manifest)


# ---------------------------------------------------------------------------------------------------------
# python -m notebench.release.bundle build|stage — what ci/build and the ci/ stages call


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m notebench.release.bundle", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the pipeline bundle into DIST")
    b.add_argument("--root", default=".", help="project root (default: .)")
    b.add_argument("--dist", default="dist", help="output folder (default: dist)")
    s = sub.add_parser("stage", help="record a CI stage's result under DIST/ci/")
    s.add_argument("stage", help="stage name")
    s.add_argument("status", choices=["passed", "failed"])
    s.add_argument("--root", default=".", help="project root (default: .)")
    s.add_argument("--dist", default="dist", help="output folder (default: dist)")
    s.add_argument("--detail", default="", help="what failed, recorded with the result")
    s.add_argument("--source", help="the source the stage ran on, taken when it started (default: the current one)")
    i = sub.add_parser("source", help="print the current source id (commit, plus a digest of uncommitted changes)")
    i.add_argument("--root", default=".", help="project root (default: .)")
    args = p.parse_args(argv)
    try:
        if args.command == "source":
            print(source_id(Path(args.root)))
            return 0
        if args.command == "stage":
            print(record_stage(Path(args.dist), args.stage, args.status == "passed", Path(args.root), args.detail,
                               args.source))
            return 0
        bundle = build_bundle(Path(args.root), Path(args.dist))
    except BundleError as exc:
        print(f"bundle: error: {exc}", file=sys.stderr)
        return exc.exit_code
    m = bundle.manifest
    print(f"bundle {bundle.path}\n  hash     {bundle.hash}\n  version  {m['version']}\n"
          f"  commit   {m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] == 'true' else ''}\n"
          f"  files    {len(m['files'])} ({', '.join(m['pipelines'])})\n"
          f"  ci       {', '.join(f'{k} {v}' for k, v in m['ci'].items())}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())

"""Releases: the versioned, content-addressed artifact that CI builds and environments deploy, carrying all it runs.

A release is a deterministic `.tar.gz` holding one folder:

```
release-<project>-<version>-<short hash>/
  manifest.json            what the release is (below), the sha256 of every other file, its hash, its signature
  wheels/*.whl             the code it runs: the engine's wheel and the project's (the one holding the use case)
  pipelines/<name>/...     each pipeline's pipeline.yaml and step notebooks, as in notebooks/pipelines/
  settings.ini             the project's settings, with its [environments.<name>] overrides, checked at build
  uv.lock                  the lock every other package is installed from
  project/pyproject.toml   the project's pyproject.toml and its uv workspace members' (what uv reads beside the lock)
```

The manifest names the code: the project's and the engine's versions (from git: every commit its own), the commit
and whether the tree was dirty, the source id the CI results are bound to, the Python it was built and tested on,
the key locked packages, the pipelines, the environments, and each CI stage's result. Its `hash` is the sha256 of
the whole manifest but the hash and signature: the file list *and* the CI results, so a release whose recorded
results were edited after the build is refused (its hash no longer matches). Building twice from one commit with
the same wheels and results gives the same hash and the same bytes (sorted entries, zero mtimes and owners, a gzip
header without a time).

CI stages record their results with `python -m notebench.release.bundle stage NAME passed|failed` under `dist/ci/`;
a result counts for a build only when it was recorded on the same source (commit and a digest of uncommitted
changes). Anyone who can run that command can record a result; what makes results trustworthy is a key: with
`[environments] signing_key` (set it as NOTEBENCH_ENVIRONMENTS_SIGNING_KEY, in CI's secrets), each result and the
release are signed with HMAC-SHA256, a build counts only results signed with the key, and a deploy where the key is
set refuses releases that are unsigned or signed with another key. Without a key, results are bound to the source
and covered by the hash (they cannot be edited after the build), but not authenticated.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from notebench.errors import BundleError, SettingsError
from notebench.workspace import git_info

__all__ = ["STAGES", "Bundle", "build_bundle", "ci_status", "content_hash", "open_bundle", "record_stage",
           "signing_key", "stage_results", "verify_folder", "verify_signature"]

STAGES = ("check", "test", "smoke")  # the CI stages a release's manifest reports
KEY_PACKAGES = ("papermill", "nbdev", "mlflow", "optuna", "scikit-learn", "pandas", "numpy", "pyarrow", "feast",
                "fastapi", "uvicorn")
MANIFEST = "manifest.json"
ENGINE = "notebench"  # the engine's distribution name
JUNK = {".ipynb_checkpoints", "__pycache__", ".DS_Store"}
UNHASHED = ("hash", "signature")  # the manifest's fields its hash does not cover


@dataclass
class Bundle:
    """A built or opened release: where it is, its hash and its manifest."""

    path: Path  # the .tar.gz (or the folder it was unpacked into)
    hash: str  # sha256 of the manifest (see `content_hash`)
    manifest: dict

    @property
    def short(self) -> str:
        return self.hash[:12]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def content_hash(manifest: dict) -> str:
    """The release hash: sha256 of the canonical manifest without its hash and signature (files, versions, CI)."""
    return _sha256(_canonical({k: v for k, v in manifest.items() if k not in UNHASHED}))


# ---------------------------------------------------------------------------------------------------------
# keys and signatures


def signing_key(settings=None) -> str:
    """`[environments] signing_key` (NOTEBENCH_ENVIRONMENTS_SIGNING_KEY), or "" when there is none."""
    if settings is None:
        from notebench.settings import load_settings

        try:
            settings = load_settings()
        except SettingsError:
            return os.environ.get("NOTEBENCH_ENVIRONMENTS_SIGNING_KEY", "")
    return settings.value("environments", "signing_key")


def _sign(key: str, data: dict) -> str:
    return hmac.new(key.encode(), _canonical(data), hashlib.sha256).hexdigest()


def _key_id(key: str) -> str:
    """A name for a key that does not reveal it: the first 12 hex digits of its sha256."""
    return _sha256(key.encode())[:12]


def _signature(key: str, data: dict) -> dict:
    return {"alg": "hmac-sha256", "key": _key_id(key), "value": _sign(key, data)}


def _signed_by(key: str, data: dict, signature) -> bool:
    """Whether `signature` is `key`'s HMAC of `data`."""
    return (isinstance(signature, dict) and signature.get("key") == _key_id(key)
            and hmac.compare_digest(str(signature.get("value", "")), _sign(key, data)))


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


def record_stage(dist: Path, stage: str, passed: bool, root: Path, detail: str = "", source: str | None = None,
                 key: str | None = None) -> Path:
    """Write `dist/ci/<stage>.json`: whether the stage passed, on which source (default: the current one), when;
    signed with `key` (default: the settings' signing key) when there is one."""
    folder = Path(dist) / "ci"
    folder.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "status": "passed" if passed else "failed", "source": source or source_id(Path(root)),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "detail": detail}
    key = signing_key() if key is None else key
    if key:
        record["signature"] = _signature(key, record)
    path = folder / f"{stage}.json"
    path.write_text(json.dumps(record, indent=1))
    return path


def stage_results(dist: Path, root: Path, key: str | None = None) -> dict[str, dict]:
    """Each CI stage's record for the current source, its `status` one of passed, failed, stale (recorded on
    another source), missing, or unsigned (a key is set and the record is not signed with it)."""
    current = source_id(Path(root))
    key = signing_key() if key is None else key
    out = {}
    for stage in STAGES:
        try:
            record = json.loads((Path(dist) / "ci" / f"{stage}.json").read_text())
        except (OSError, ValueError):
            out[stage] = {"status": "missing", "source": current}
            continue
        signature = record.pop("signature", None)
        if record.get("source") != current:
            record["status"] = "stale"
        elif key and not _signed_by(key, record, signature):
            record["status"] = "unsigned"
        if signature is not None:
            record["signature"] = signature
        out[stage] = record
    return out


def ci_status(manifest: dict) -> dict[str, str]:
    """Each CI stage's status as a release records it: a stage counts as passed only on the release's own source."""
    ci = manifest.get("ci", {})
    return {stage: (ci.get(stage, {}).get("status", "missing") if ci.get(stage, {}).get("source") ==
                    manifest.get("source") else "stale") for stage in STAGES}


# ---------------------------------------------------------------------------------------------------------
# what goes in


def pipeline_files(root: Path) -> dict[str, Path]:
    """Release path -> source file for every file of every pipeline folder under `notebooks/pipelines/`."""
    base = Path(root) / "notebooks" / "pipelines"
    out = {}
    for spec in sorted(base.glob("*/pipeline.yaml")):
        for path in sorted(spec.parent.rglob("*")):
            rel = path.relative_to(base)
            if path.is_file() and not any(part in JUNK or part.startswith(".") for part in rel.parts):
                out[f"pipelines/{rel.as_posix()}"] = path
    if not out:
        raise BundleError(f"no pipelines under {base}: nothing to release (a pipeline is a folder with pipeline.yaml)")
    return out


def project_files(root: Path) -> dict[str, Path]:
    """The project's pyproject.toml and those of its uv workspace members: what `uv sync --frozen` reads beside
    the lock (the members' sources are not needed: the release installs their wheels)."""
    import tomllib

    root = Path(root)
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        raise BundleError(f"{pyproject} is missing: a release installs its packages from uv.lock and its pyproject")
    out = {"project/pyproject.toml": pyproject}
    members = tomllib.loads(pyproject.read_text()).get("tool", {}).get("uv", {}).get("workspace", {}).get("members", [])
    for pattern in members:
        for folder in sorted(root.glob(pattern)):
            if (folder / "pyproject.toml").is_file():
                out[f"project/{folder.relative_to(root).as_posix()}/pyproject.toml"] = folder / "pyproject.toml"
    return out


def locked_versions(lock: Path) -> dict[str, str]:
    """Versions of the key packages in uv.lock.

    uv writes each package as `[[package]]` then `name = ...` and `version = ...`; reading those lines takes
    milliseconds where parsing the whole TOML lock (1.4 MB) takes seconds.
    """
    text = lock.read_text(encoding="utf-8")
    pairs = re.findall(r'^\[\[package\]\]\nname = "([^"]+)"\nversion = "([^"]+)"', text, flags=re.MULTILINE)
    return dict(sorted((name, version) for name, version in pairs if name in KEY_PACKAGES))


def wheel_info(path: Path) -> dict:
    """A wheel's distribution name (normalized), version and top-level packages, from its name and contents."""
    parts = Path(path).name[:-len(".whl")].split("-")
    if len(parts) < 5 or not Path(path).name.endswith(".whl"):
        raise BundleError(f"{path}: not a wheel file name (name-version-python-abi-platform.whl)")
    try:
        names = zipfile.ZipFile(path).namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"{path}: cannot read the wheel ({exc})") from exc
    tops = {n.split("/")[0].removesuffix(".py") for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    return {"name": re.sub(r"[-_.]+", "-", parts[0]).lower(), "version": parts[1], "packages": sorted(tops)}


def check_settings(file: Path) -> dict:
    """Check a settings file as every environment will read it; return its use case and environment names.
    `SettingsError` names the key; a file that holds a signing key is refused (the release would ship it)."""
    from notebench.settings import ENVIRONMENT_ENV, load_settings

    base = load_settings(file, environ={})
    if base.values["environments"]["signing_key"].source != "default" and base.value("environments", "signing_key"):
        raise SettingsError("[environments] signing_key is set in the file, which ships in every release: set "
                            "NOTEBENCH_ENVIRONMENTS_SIGNING_KEY where CI and deploys run instead",
                            file=file, key="environments.signing_key")
    names = base.value("environments", "names")
    for env in names:
        load_settings(file, environ={ENVIRONMENT_ENV: env})
    return {"use_case": base.value("use_case", "object"), "environments": names}


def _wheels(wheels: list[Path], use_case: str) -> dict[str, dict]:
    """The engine's wheel and the project's (the one holding the use case's package), by role; BundleError else."""
    infos = [{**wheel_info(w), "path": Path(w)} for w in wheels]
    engines = [w for w in infos if w["name"] == ENGINE]
    if len(engines) != 1:
        found = ", ".join(w["path"].name for w in infos) or "no wheels"
        raise BundleError(f"a release carries exactly one engine wheel ({ENGINE}-*.whl); found {len(engines)} among "
                          f"{found} (ci/build builds them into dist/)")
    top = use_case.partition(":")[0].split(".")[0]
    projects = [w for w in infos if w["name"] != ENGINE and top in w["packages"]]
    if len(projects) != 1:
        raise BundleError(f"the use case {use_case} ([use_case] object) must be in exactly one project wheel; found "
                          f"it in {len(projects)} of {', '.join(w['path'].name for w in infos)}")
    if len(infos) != 2:
        others = [w["path"].name for w in infos if w not in (engines[0], projects[0])]
        raise BundleError(f"unexpected wheels beside the engine's and the project's: {', '.join(others)}; remove "
                          "them from dist/ (ci/build does)")
    return {"engine": engines[0], "project": projects[0]}


# ---------------------------------------------------------------------------------------------------------
# building


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


def _manifest(root: Path, files: dict[str, bytes], wheels: dict, settings: dict, stages: dict, python: str) -> dict:
    git = git_info(root)
    project = wheels["project"]
    return {"format": 2, "name": project["name"], "version": project["version"],
            "versions": {ENGINE: wheels["engine"]["version"], project["name"]: project["version"]},
            "wheels": {w["name"]: f"wheels/{w['path'].name}" for w in wheels.values()},
            "use_case": settings["use_case"], "environments": settings["environments"],
            "git": {"commit": git["commit"], "dirty": git["dirty"]}, "source": source_id(root),
            "python": python, "python_built": platform.python_version(),
            "packages": locked_versions(root / "uv.lock"),
            "pipelines": sorted({name.split("/")[1] for name in files if name.startswith("pipelines/")}),
            "files": {name: _sha256(data) for name, data in sorted(files.items())}, "ci": stages}


def build_bundle(root: Path, dist: Path, stages: dict | None = None, *, wheels: list[Path] | None = None,
                 key: str | None = None, python: str | None = None) -> Bundle:
    """Build `dist/release-<project>-<version>-<short hash>.tar.gz` from the project at `root` and the wheels in
    `dist` (or `wheels`); sign it with `key` (default: the settings' signing key) when there is one."""
    root, dist = Path(root).resolve(), Path(dist)
    lock, settings_file = root / "uv.lock", root / "settings.ini"
    for needed, why in ((lock, "the lock every package is installed from"), (settings_file, "the settings it runs")):
        if not needed.is_file():
            raise BundleError(f"{needed} is missing: a release carries {why}")
    settings = check_settings(settings_file)
    found = _wheels(list(wheels) if wheels is not None else sorted(dist.glob("*.whl")), settings["use_case"])
    files = {name: path.read_bytes() for name, path in {**pipeline_files(root), **project_files(root)}.items()}
    files.update({"uv.lock": lock.read_bytes(), "settings.ini": settings_file.read_bytes()})
    files.update({f"wheels/{w['path'].name}": w["path"].read_bytes() for w in found.values()})
    key = signing_key() if key is None else key
    stages = stages if stages is not None else stage_results(dist, root, key)
    python = python or f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = _manifest(root, files, found, settings, stages, python)
    manifest["hash"] = content_hash(manifest)
    if key:
        manifest["signature"] = _signature(key, {"hash": manifest["hash"]})
    prefix = f"release-{manifest['name']}-{manifest['version']}-{manifest['hash'][:12]}"
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
    """Unpack a release tarball into the empty folder `into` (safely) and verify it; raise `BundleError`."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: no such release file (build one with ci/build; releases are in dist/)")
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/")[0] for m in members}
            if len(tops) != 1 or any(not m.isfile() and not m.isdir() for m in members):
                raise BundleError(f"{path}: not a release (expected one folder of regular files)")
            staging = into / ".unpack"
            tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{path}: cannot read the release: {exc}") from exc
    unpacked = staging / tops.pop()
    for item in unpacked.iterdir():
        os.replace(item, into / item.name)
    unpacked.rmdir()
    staging.rmdir()
    bundle = verify_folder(into)
    bundle.path = path
    return bundle


def verify_folder(folder: Path) -> Bundle:
    """Check that an unpacked release's files are exactly those its manifest lists, with the same content, and
    that the manifest (files, versions, CI results) is the one its hash names."""
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
    expected = content_hash(manifest)
    if manifest.get("hash") != expected:
        problems.append(f"the manifest's release hash {str(manifest.get('hash'))[:12]} is not the hash of its "
                        f"content ({expected[:12]}): its file list, versions or CI results were edited after the build")
    if manifest.get("format") != 2:
        problems.append(f"manifest format {manifest.get('format')!r}: this notebench reads releases of format 2")
    if problems:
        shown = "\n  - ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BundleError(f"release {folder.name} failed verification:\n  - {shown}\n"
                          "rebuild it with ci/build; never edit a release by hand")
    return Bundle(folder, manifest["hash"], manifest)


def verify_signature(bundle: Bundle, key: str) -> str:
    """With a key: the release and each of its passed CI results must be signed with it (BundleError); without
    one, say that nothing was checked. Returns what was checked, for the history."""
    if not key:
        return "unchecked (no [environments] signing_key here)"
    if not _signed_by(key, {"hash": bundle.hash}, bundle.manifest.get("signature")):
        what = "unsigned" if not bundle.manifest.get("signature") else "signed with another key"
        raise BundleError(f"release {bundle.short} is {what}, and this deploy requires releases signed with key "
                          f"{_key_id(key)} ([environments] signing_key): build it where CI has the key")
    for stage, recorded in bundle.manifest.get("ci", {}).items():
        record = dict(recorded)
        signature = record.pop("signature", None)
        if record.get("status") == "passed" and not _signed_by(key, record, signature):
            raise BundleError(f"release {bundle.short}: the '{stage}' result is not signed with key {_key_id(key)}")
    return f"signed with key {_key_id(key)}"


# ---------------------------------------------------------------------------------------------------------
# python -m notebench.release.bundle build|stage|source — what ci/build and the ci/ stages call


def _print(bundle: Bundle) -> None:
    m = bundle.manifest
    print(f"release {bundle.path}\n  hash     {bundle.hash}\n  version  {m['name']} {m['version']}, "
          f"notebench {m['versions'][ENGINE]} (Python {m['python']})\n"
          f"  commit   {m['git']['commit'][:12]}{' (dirty)' if m['git']['dirty'] == 'true' else ''}\n"
          f"  files    {len(m['files'])} ({', '.join(m['pipelines'])}; {', '.join(sorted(m['wheels']))} wheels)\n"
          f"  signed   {'yes, key ' + m['signature']['key'] if m.get('signature') else 'no'}\n"
          f"  ci       {', '.join(f'{k} {v}' for k, v in ci_status(m).items())}")


def _main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m notebench.release.bundle", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the release from ROOT and the wheels in DIST, into DIST")
    b.add_argument("--root", default=".", help="project root (default: .)")
    b.add_argument("--dist", default="dist", help="wheels' and output folder (default: dist)")
    s = sub.add_parser("stage", help="record a CI stage's result under DIST/ci/ (signed when a key is set)")
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
    except (BundleError, SettingsError) as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _print(bundle)
    return 0


if __name__ == "__main__":
    sys.exit(_main())

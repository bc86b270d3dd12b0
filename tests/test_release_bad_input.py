"""Bad releases are refused with a clear message, and the environments are exactly as they were (every file, link and
venv): a tampered wheel or notebook, edited CI results, a lock that does not install, settings that fail, a release
for another Python, an unsigned release where deploys require a key."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from conftest import notebench
from notebench.release.bundle import content_hash
from release_kit import QUIET, build, engine_wheel, make_project, tree

LOCK_HASH = "sha256:ab7ae7122974553370f0bdb919e1a960b2cd1bc1ef0276416d896db81c14582c"  # idna 3.20's wheel


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("releases")
    engine = engine_wheel(tmp / "engine")
    lock = (Path(__file__).resolve().parents[1] / "uv.lock").read_text()
    assert LOCK_HASH in lock, "uv.lock no longer pins idna 3.20: pick another package's wheel hash"
    broken = lock.replace(LOCK_HASH, "sha256:" + "0" * 64).encode()
    return {"one": build(make_project(tmp / "one", engine, "1.0.0")),
            "two": build(make_project(tmp / "two", engine, "2.0.0", derived=True)),
            "signed": build(make_project(tmp / "signed", engine, "2.1.0"), key="k1"),
            "bad_lock": build(make_project(tmp / "bad_lock", engine, "2.2.0", lock=broken))}


def repack(bundle, target: Path, edit, rehash: bool = False) -> Path:
    """A copy of a release with `edit(folder, manifest)` applied; with `rehash`, its manifest made consistent again
    (every file's digest and the hash recomputed, the signature dropped): what a forger without the key can make."""
    work = target.parent / (target.name + ".d")
    with tarfile.open(bundle.path) as tar:
        tar.extractall(work, filter="data")
    (top,) = work.iterdir()
    manifest = json.loads((top / "manifest.json").read_text())
    edit(top, manifest)
    if rehash:
        manifest["files"] = {name: hashlib.sha256((top / name).read_bytes()).hexdigest() for name in manifest["files"]}
        manifest.pop("signature", None)
        manifest["hash"] = content_hash(manifest)
    (top / "manifest.json").write_text(json.dumps(manifest))
    with tarfile.open(target, "w:gz") as tar:
        tar.add(top, arcname=top.name)
    return target


def refused(path: Path, *words: str, env: dict | None = None) -> None:
    proc = notebench("deploy", str(path), "--env", "dev", env={**QUIET, **(env or {})})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_bad_releases_are_refused_and_leave_the_environment_as_it_was(workspace, releases, tmp_path):
    one, two = releases["one"], releases["two"]
    notebench("deploy", str(one.path), "--env", "dev", env=QUIET, check=True)
    envs = workspace / "environments"
    before = tree(envs)
    assert any(name.startswith(".layers/") for name in before) and f"dev/venvs/{one.hash}" in before

    def wheel(folder, manifest):
        path = folder / manifest["wheels"]["sensors"]
        path.write_bytes(path.read_bytes() + b"\0")

    refused(repack(two, tmp_path / "wheel.tar.gz", wheel), "wheels/sensors-2.0.0-py3-none-any.whl: content does not "
            "match the manifest's sha256 (changed after the build)")
    assert tree(envs) == before

    def notebook(folder, manifest):
        path = folder / "pipelines/training/a.ipynb"
        path.write_text(path.read_text().replace("derived", "features"))

    refused(repack(two, tmp_path / "notebook.tar.gz", notebook), "pipelines/training/a.ipynb: content does not match")
    assert tree(envs) == before

    def results(folder, manifest):  # a recorded result edited, the files untouched
        manifest["ci"]["test"]["finished"] = "2099-01-01T00:00:00Z"

    refused(repack(two, tmp_path / "ci.tar.gz", results), "is not the hash of its content",
            "CI results were edited after the build")
    assert tree(envs) == before

    refused(releases["bad_lock"].path, "installing the release's uv.lock (uv sync --frozen) failed", "idna",
            "the environment is unchanged")
    assert tree(envs) == before

    def settings(folder, manifest):  # past the build's check (a forger rehashes): the release's own engine refuses
        (folder / "settings.ini").write_text("[use_case]\nobject = fixture_lib.use_case:USE_CASE\n"
                                             "[environments.dev]\nserving.port = http\n")

    refused(repack(two, tmp_path / "settings.tar.gz", settings, rehash=True),
            "checking the release in its venv (its settings for 'dev', its use case) failed",
            "[serving] port = 'http' (from [environments.dev]): expected an integer")
    assert tree(envs) == before

    def python(folder, manifest):
        manifest["python"] = "3.99"

    refused(repack(two, tmp_path / "python.tar.gz", python, rehash=True),
            "the release was built and tested on Python 3.99, and this machine has no Python 3.99")
    assert tree(envs) == before

    # where deploys hold a key: unsigned, forged or signed with another key is refused; signed with it, deployed
    key = {"NOTEBENCH_ENVIRONMENTS_SIGNING_KEY": "k1"}
    refused(two.path, f"release {two.short} is unsigned", env=key)
    forged = repack(releases["signed"], tmp_path / "forged.tar.gz", notebook, rehash=True)
    refused(forged, "is unsigned", env=key)
    refused(releases["signed"].path, "signed with another key", env={"NOTEBENCH_ENVIRONMENTS_SIGNING_KEY": "k2"})
    assert tree(envs) == before
    proc = notebench("deploy", str(releases["signed"].path), "--env", "dev", env={**QUIET, **key}, check=True)
    assert "signature signed with key" in proc.stdout

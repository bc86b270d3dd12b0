"""`notebench lab`: JupyterLab on the project, the notebench kernel by default, MLflow pointed at the workspace."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request

from conftest import BIN, ROOT, notebench


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kernelspec_is_installed_inside_the_venv():
    out = subprocess.run([str(BIN / "jupyter"), "kernelspec", "list", "--json"], capture_output=True, text=True,
                         check=True).stdout
    spec = json.loads(out)["kernelspecs"]["notebench"]
    assert spec["resource_dir"].startswith(str(BIN.parent))  # --sys-prefix, not a user-level kernelspec


def test_lab_dry_run_names_the_workspace_store(workspace):
    proc = notebench("lab", "--dry-run", check=True)
    assert f"sqlite:///{workspace}/mlflow.db" in proc.stderr
    assert "--MultiKernelManager.default_kernel_name=notebench" in proc.stderr


def test_lab_serves_with_the_notebench_kernel_by_default(workspace):
    port = free_port()
    proc = subprocess.Popen([str(BIN / "notebench"), "lab", "--no-browser", "--port", str(port), "--",
                             "--IdentityProvider.token=t0ken"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}/api/kernelspecs?token=t0ken"
        deadline, specs = time.time() + 60, None
        while time.time() < deadline and specs is None:
            try:
                specs = json.load(urllib.request.urlopen(url, timeout=2))
            except OSError:
                time.sleep(0.5)
        assert specs is not None, "JupyterLab did not answer within 60 s"
        assert specs["default"] == "notebench" and "notebench" in specs["kernelspecs"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)

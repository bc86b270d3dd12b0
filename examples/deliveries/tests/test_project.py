"""deliveries's own tests (the template of `notebench new` writes them): the use-case contract is complete, and
the sample of the project's data passes `notebench check` as a landing area. The notebooks' lessons (`nbdev-test`)
and the smoke run of every pipeline (`ci/smoke`) test the rest; `make test` runs them all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _use_case():
    from notebench.settings import load_settings
    from notebench.usecase import load_use_case

    return load_use_case(load_settings(ROOT / "settings.ini"))


def test_the_contract_is_complete():
    uc = _use_case()
    assert uc.problems() == []
    assert (uc.name, uc.task) == ("deliveries", "regression")


def test_the_sample_passes_notebench_check(tmp_path):
    uc = _use_case()
    uc.sample(tmp_path / "landing")
    env = {**os.environ, "NOTEBENCH_WORKSPACE_PATH": str(tmp_path)}
    env.pop("NOTEBENCH_USE_CASE_OBJECT", None)
    proc = subprocess.run([sys.executable, "-m", "notebench.cli", "check"], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: split" in proc.stdout

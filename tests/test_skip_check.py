"""ci/skip_check.py: every unconditional skip is found (decorator, pytestmark, module level, test body, constant
condition, through aliases), a conditional one is left alone, and this suite has none."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

BAD = '''
import unittest

import pytest
from pytest import mark, skip as sk

pytestmark = [pytest.mark.skip(reason="x")]
pytest.skip("not today", allow_module_level=True)
later = pytest.mark.skip


@mark.skip
def test_a():
    pass


@pytest.mark.skipif(True, reason="always")
def test_b():
    pass


@pytest.mark.skipif(condition="1")
def test_c():
    pass


def test_d():
    sk("no")


@unittest.skip("u")
def test_e():
    pass
'''
GOOD = '''
import sys

import pytest

if sys.platform == "win32":
    pytestmark = pytest.mark.skip(reason="windows")


@pytest.mark.skipif(sys.platform == "win32", reason="x")
def test_ok(tmp_path):
    if not tmp_path.exists():
        pytest.skip("no folder")
    try:
        import foo  # noqa: F401
    except ImportError:
        pytest.skip("no foo")
'''


def skip_check(*targets) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "ci" / "skip_check.py"), *map(str, targets)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_every_unconditional_skip_is_reported_with_its_line(tmp_path):
    (tmp_path / "test_bad.py").write_text(BAD)
    proc = skip_check(tmp_path)
    assert proc.returncode == 1, proc.stdout
    lines = [int(ln.split(":")[1]) for ln in proc.stdout.splitlines()]
    assert lines == [7, 8, 9, 12, 17, 22, 28, 31], proc.stdout
    assert "at module level" in proc.stdout and "in the body of a function" in proc.stdout
    assert "skipif(True)" in proc.stdout and "give it a condition" in proc.stdout


def test_a_conditional_skip_passes_and_so_does_this_suite(tmp_path):
    (tmp_path / "test_good.py").write_text(GOOD)
    assert skip_check(tmp_path).returncode == 0, skip_check(tmp_path).stdout
    proc = skip_check()  # tests/
    assert proc.returncode == 0 and "no test is skipped unconditionally" in proc.stdout, proc.stdout

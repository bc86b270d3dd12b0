"""Warm kernels: real kernels forked by a real server, driven by real papermill, checked with psutil."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import papermill
import psutil
import pytest
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook
from notebench.errors import KernelError
from notebench.pipeline.kernels import KernelPool

WARM = ["pandas"]  # not imported by a fresh kernel, and pulls in numpy, OpenBLAS and pyarrow's jemalloc thread
KERNELSPEC = {"name": "python3", "language": "python", "display_name": "Python 3"}


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """One pool for the module's tests, its state under pytest's (long) temporary path."""
    with KernelPool(WARM, state_dir=tmp_path_factory.mktemp("pool") / "state") as p:
        assert p.mode == "fork"
        yield p


def run(pool: KernelPool, folder: Path, *cells: str, name: str = "nb", cwd=None, env=None, papermill_cwd=None,
        **papermill_kwargs):
    """Execute a notebook made of `cells` through `pool`; return the executed notebook."""
    source = write_notebook(folder / f"{name}.ipynb", *cells)
    return papermill.execute_notebook(source, folder / f"{name}.out.ipynb", progress_bar=False, cwd=papermill_cwd,
                                      **pool.papermill_kwargs(cwd=cwd, env=env), **papermill_kwargs)


def write_notebook(path: Path, *cells: str) -> Path:
    """A notebook with one code cell per source, written to `path`."""
    nbformat.write(new_notebook(cells=[new_code_cell(c) for c in cells], metadata={"kernelspec": KERNELSPEC}), path)
    return path


def printed(nb, cell: int = 0):
    """What a cell printed, parsed as JSON."""
    return json.loads("".join(o["text"] for o in nb.cells[cell].outputs if o["output_type"] == "stream"))


def kernels() -> list[psutil.Process]:
    """Forked kernels alive under this test process (through their server)."""
    return [p for p in psutil.Process().children(recursive=True) if _name(p) == "nbs-kernel"]


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.NoSuchProcess:
        return ""


def _cmdline(p: psutil.Process) -> list[str]:
    try:
        return p.cmdline()
    except psutil.NoSuchProcess:
        return []


def wait_for(predicate, timeout: float = 20.0):
    """Poll `predicate` until it returns something truthy; return it, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {predicate.__name__}")


def in_thread(fn, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Start `fn` in a thread; the dict receives its result or exception."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = fn(*args, **kwargs)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def test_warm_modules_are_imported_before_the_first_cell(pool, tmp_path):
    nb = run(pool, tmp_path, "import gc, json, sys\n"
                             "print(json.dumps(['pandas' in sys.modules, 'sklearn' in sys.modules, gc.isenabled()]))")
    assert printed(nb) == [True, False, True]  # warm, only what was asked, and a kernel collects garbage as usual


def test_notebooks_share_no_variables_nor_module_state(pool, tmp_path):
    first = run(pool, tmp_path, "import json, os, numpy\nx = 41\njson.leak = True\n"
                                "print(json.dumps([os.getpid(), numpy.random.random()]))", name="first")
    second = run(pool, tmp_path, "import json, os, numpy\n"
                                 "print(json.dumps([os.getpid(), numpy.random.random(), 'x' in globals(), "
                                 "hasattr(json, 'leak')]))", name="second")
    (pid1, draw1), (pid2, draw2, saw_x, saw_leak) = printed(first), printed(second)
    assert pid1 != pid2 and not saw_x and not saw_leak
    assert draw1 != draw2  # each fork reseeds numpy's global random state


def test_concurrent_notebooks_from_two_threads_both_succeed(pool, tmp_path):
    cell = ("import json, os, time\nstart = time.time(); time.sleep(2)\n"
            "print(json.dumps([os.getpid(), start, time.time()]))")
    with ThreadPoolExecutor(2) as threads:
        futures = [threads.submit(run, pool, tmp_path, cell, name=f"nb{i}") for i in range(2)]
        (pid1, start1, end1), (pid2, start2, end2) = (printed(f.result()) for f in futures)
    assert pid1 != pid2
    assert start1 < end2 and start2 < end1  # they ran at the same time


def test_a_failing_cell_raises_and_the_output_notebook_is_written(pool, tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        run(pool, tmp_path, "x = 1", "raise ValueError('boom')", "x = 2")
    assert failure.value.ename == "ValueError" and failure.value.exec_count == 2
    written = nbformat.read(tmp_path / "nb.out.ipynb", as_version=4)
    errors = [o for c in written.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [e.evalue for e in errors] == ["boom"]


def test_execution_timeout_stops_a_sleeping_cell_within_seconds(pool, tmp_path):
    started = time.monotonic()
    with pytest.raises(CellTimeoutError):
        run(pool, tmp_path, "import time; time.sleep(60)", execution_timeout=2)
    assert time.monotonic() - started < 10
    wait_for(lambda: not kernels(), timeout=10)


def test_an_interrupt_reaches_the_forked_kernel(pool, tmp_path):
    started = time.monotonic()
    with pytest.raises(papermill.PapermillExecutionError) as failure:  # nbclient interrupts: SIGINT via the server
        run(pool, tmp_path, "import time; time.sleep(60)", "print('next')", execution_timeout=2,
            interrupt_on_timeout=True)
    assert failure.value.ename == "KeyboardInterrupt"
    assert time.monotonic() - started < 10


def test_cwd_and_environment_are_the_requested_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("NBS_STALE", "from the server's start")
    with KernelPool([]) as own:
        assert own.mode == "fork"
        monkeypatch.delenv("NBS_STALE")
        monkeypatch.setenv("NBS_RUNNER", "runner")
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        cell = ("import json, os\nprint(json.dumps([os.getcwd(), os.environ.get('NBS_STALE'), "
                "os.environ.get('NBS_RUNNER'), os.environ.get('NBS_STEP')]))")
        with_env = run(own, tmp_path, cell, name="env", env={"NBS_STEP": "train"})
        chdir_by_papermill = run(own, tmp_path, cell, name="a", papermill_cwd=tmp_path / "a")
        cwd_by_pool = run(own, tmp_path, cell, name="b", cwd=tmp_path / "b")
    assert printed(with_env) == [os.getcwd(), None, "runner", "train"]
    assert printed(chdir_by_papermill) == [str(tmp_path / "a"), None, "runner", None]
    assert printed(cwd_by_pool) == [str(tmp_path / "b"), None, "runner", None]


def test_close_kills_running_kernels_and_the_server(tmp_path):
    own = KernelPool([]).start()
    busy = tmp_path / "busy"
    thread, outcome = in_thread(run, own, tmp_path, f"open({str(busy)!r}, 'w').close(); import time; time.sleep(60)")
    wait_for(busy.exists)
    kernel = kernels()[0]
    server = kernel.parent()
    own.close()
    gone, alive = psutil.wait_procs([kernel, server], timeout=120)  # a condition, not a budget: busy CI
    assert not alive
    thread.join(15)
    assert isinstance(outcome.get("error"), DeadKernelError)  # what the runner turns into StepFailed
    with pytest.raises(KernelError):
        own.papermill_kwargs()


def test_a_dropped_kernel_handle_kills_the_kernel_and_the_server_carries_on(pool, tmp_path):
    kwargs = pool.papermill_kwargs()
    km = kwargs["kernel_manager_class"](kernel_name=kwargs["kernel_name"])
    asyncio.run(km.start_kernel())
    kernel = psutil.Process(km.provisioner.pid)
    assert kernel.name() == "nbs-kernel"
    km.provisioner.process.close()  # what the runner's death does to every handle it holds
    gone, alive = psutil.wait_procs([kernel], timeout=120)  # a condition, not a budget: busy CI
    assert not alive
    asyncio.run(km.cleanup_resources())
    assert pool.mode == "fork"
    assert printed(run(pool, tmp_path, "print(6 * 7)")) == 42


RUNNER = """
import asyncio, sys
from notebench.pipeline.kernels import KernelPool
kwargs = KernelPool([]).start().papermill_kwargs()
km = kwargs["kernel_manager_class"](kernel_name=kwargs["kernel_name"])
asyncio.run(km.start_kernel())
print("started", flush=True)
sys.stdin.read()
"""


def test_a_killed_runner_leaves_neither_server_nor_kernel():
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout.readline() == "started\n"
        tree = psutil.Process(runner.pid).children(recursive=True)
        kernel = [p for p in tree if _name(p) == "nbs-kernel"]
        server = [p for p in tree if "serve" in _cmdline(p) and p not in kernel]  # a kernel has its cmdline
        assert len(kernel) == 1 and len(server) == 1
    finally:
        runner.kill()
        runner.wait()
    gone, alive = psutil.wait_procs(kernel + server, timeout=120)  # a condition, not a budget
    assert not alive


def test_fallback_when_disabled_runs_plain_kernels_and_says_why(tmp_path):
    with KernelPool(WARM, enabled=False) as plain:
        assert plain.mode == "fallback: disabled"
        assert "kernel_manager_class" not in plain.papermill_kwargs()
        nb = run(plain, tmp_path, "import sys, os, json\n"
                                  "print(json.dumps(['pandas' in sys.modules, os.getppid(), os.environ['NBS_STEP']]))",
                 env={"NBS_STEP": "train"})
    assert printed(nb) == [False, os.getpid(), "train"]  # a fresh kernel, started by papermill from this process


def test_a_server_gone_before_a_kernel_starts_gives_a_plain_kernel_then_fallback(tmp_path):
    with KernelPool(WARM, state_dir=tmp_path / "state") as own:
        kwargs = own.papermill_kwargs()
        [server] = [p for p in psutil.Process().children() if "serve" in _cmdline(p) and p.cwd() == str(own.state_dir)]
        server.kill()
        wait_for(lambda: server.status() == psutil.STATUS_ZOMBIE)  # not reaped: the pool's Popen will see -9
        source = write_notebook(tmp_path / "nb.ipynb", "import sys, json; print(json.dumps('pandas' in sys.modules))")
        nb = papermill.execute_notebook(source, tmp_path / "out.ipynb", progress_bar=False, **kwargs)
        assert printed(nb) is False
        assert own.mode.startswith("fallback: server exited with code -9")


def test_imports_that_start_a_thread_make_the_pool_fall_back(tmp_path, monkeypatch):
    (tmp_path / "threaded.py").write_text("import threading, time\n"
                                          "threading.Thread(target=time.sleep, args=(60,), name='sneaky').start()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with KernelPool(["threaded"]) as own:
        assert own.mode == "fallback: the imports started threads ['sneaky']; forking is unsafe"
        assert "kernel_manager_class" not in own.papermill_kwargs()

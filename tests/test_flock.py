"""The engine's one file lock (`notebench.state.flock`), as the prediction log's compaction and the release layers
use it: another process's lock is refused at once with wait=0, waited for otherwise, and dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

from notebench.state.flock import file_lock

HOLD = textwrap.dedent("""
    import sys, time
    from notebench.state.flock import try_flock
    held = try_flock(sys.argv[1])
    print("held" if held else "busy", flush=True)
    time.sleep(600)
""")


def holder(path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_elsewhere_is_refused_at_once_and_freed_when_its_holder_is_killed(tmp_path):
    path = tmp_path / "sub" / ".lock"
    proc = holder(path)
    try:
        with file_lock(path, wait=0) as held:
            assert held is False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with file_lock(path, wait=60) as held:  # the kernel dropped the dead holder's lock
            assert held is True
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_caller_gets_the_lock_once_it_is_given_back(tmp_path):
    path, got = tmp_path / ".lock", []

    def wait_for_it():
        with file_lock(path) as held:  # flock is per open file: a second open waits, even in one process
            got.append(held)

    with file_lock(path) as first:
        assert first
        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        waiter.join(0.3)
        assert got == [] and waiter.is_alive()  # still waiting while the lock is held
    waiter.join(60)
    assert got == [True]

"""Warm Jupyter kernels: each one forked from a server that has already imported the heavy libraries.

A step notebook pays ~0.75 s to start a kernel and ~3.4 s of CPU to import pandas, scikit-learn and mlflow; on two
cores, starting kernels ahead of time cannot hide six times that. So the imports are paid once:

- `KernelPool.start()` spawns the **server** (`python -m notebench.pipeline.kernels serve`), which imports the
  configured modules and ipykernel's machinery, then listens on a Unix socket in a private folder.
- `KernelPool.papermill_kwargs()` hands papermill a jupyter_client kernel manager whose kernelspec lives in memory
  (no kernelspec folder is written, no `JUPYTER_PATH` is changed) and whose **provisioner** (jupyter_client's
  extension point for "how a kernel process is made") asks the server for a kernel instead of running a command.
  jupyter_client still writes the connection file, picks the ports, builds the environment and drives the
  kernel; only the process is different.
- The provisioner connects to the server and sends the connection file, working directory, environment and this
  process's stdout and stderr (as file descriptors). The server forks a child that sheds the server's state, adopts
  the request's, and runs `IPKernelApp`. The connection stays open as the kernel's handle: signals (interrupt,
  terminate, kill) travel over it to the kernel's process group, and the kernel's exit code comes back on it.

A launcher process per kernel (a kernelspec whose argv asks the server and stands in for the kernel) works too;
measured here it cost ~0.12 s of CPU per kernel and made a kernel ready in 0.6–0.75 s instead of 0.36–0.40 s.
If the server cannot be reached when a kernel is wanted, the provisioner starts that kernel the plain way.

Nothing is left behind: the server kills a kernel as soon as its connection closes (the runner closed it, or
died, even by SIGKILL); a forked kernel dies with the server (`PR_SET_PDEATHSIG`); the server exits, killing
every kernel, when its owner closes the pipe on its stdin or dies (the pipe closes, its parent pid changes).

Each kernel serves one notebook and is discarded, so steps stay isolated: a fork shares no variables and no
mutated module state with its siblings. Fork safety: the server runs no Python thread at fork time (it refuses
to serve if its imports started one); OpenBLAS stops its threads before a fork and restarts them in the child;
pyarrow's jemalloc is fork-aware; numpy's global random state is reseeded in each kernel.

A kernel's working directory, environment and sys.path are those a Popen'd kernel would get (the requester's cwd
and environment, plus what the server's imports set in it, such as debugpy's `PYDEVD_USE_FRAME_EVAL`). Caveats:
what the server's modules read from the environment when imported (`OMP_NUM_THREADS`, `OPENBLAS_NUM_THREADS`...)
and the interpreter's start-up settings (`PYTHONHASHSEED`, `-X` options) come from the server's start, not the
step's environment; a kernel's stdin is /dev/null, its cmdline the server's (its name, `comm`, is `nbs-kernel`);
at exit a kernel runs Python's thread joins and `atexit` handlers (IPython's namespace reset, MLflow's end of run,
logging's flush) but skips module teardown.

When forking is impossible (not Linux, disabled, the server failed or is not ready in time) the pool falls back
to plain papermill with the `notebench` kernelspec (`python3` if there is none) and says why in `mode`.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from notebench.errors import KernelError

__all__ = ["JOB_VARIABLE", "KernelPool", "forget_kernels", "kill_kernels"]

log = logging.getLogger(__name__)

_MODULE = "notebench.pipeline.kernels"  # what `python -m` runs for the server
_KERNEL_IMPORTS = (  # what IPKernelApp imports when it starts (measured), so that no kernel imports it again
    "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.debugger", "IPython.core.history", "IPython.core.debugger",
    "IPython.core.completerlib", "IPython.core.logger", "IPython.core.oinspect", "IPython.extensions.storemagic",
    "sqlite3", "psutil", "faulthandler", "tornado.platform.asyncio")
_SOCKET_MAX = 100  # bytes; AF_UNIX paths longer than ~107 bytes cannot be bound
_PR_SET_NAME, _PR_SET_PDEATHSIG = 15, 1  # prctl(2) options
JOB_VARIABLE = "NOTEBENCH_JOB"  # in a kernel's environment: the job it runs, so that `kill_kernels` can find it
_JOBS: dict[str, list] = {}  # job -> its kernels' processes (a Popen, or a _ServedKernel) in this process
_JOBS_LOCK = threading.Lock()
_CLASSES = 64  # kernel manager classes a pool keeps (one per environment)


def kill_kernels(job: str) -> int:
    """SIGKILL the kernels this process started for `job` (a job nobody waits for any more); how many."""
    with _JOBS_LOCK:
        processes = list(_JOBS.get(job, ()))
    killed = 0
    for process in processes:
        if process.poll() is None:
            process.kill()
            killed += 1
    return killed


def forget_kernels(job: str) -> None:
    """Stop tracking the kernels of a finished `job`."""
    with _JOBS_LOCK:
        _JOBS.pop(job, None)


# -- wire protocol: one JSON object per line over a Unix stream socket ----------------------------------------------


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """Write `message` as one JSON line, passing `fds` alongside it (SCM_RIGHTS)."""
    data = json.dumps(message).encode() + b"\n"
    sent = socket.send_fds(sock, [data], list(fds)) if fds else 0
    sock.sendall(data[sent:])


def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """Read a kernel request line and the file descriptors sent with it."""
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    try:
        while not data.endswith(b"\n"):
            chunk = conn.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the client hung up before its request was complete")
            data += chunk
        return json.loads(data), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


# -- the runner's side of one kernel: a Popen look-alike whose process the server forked ---------------------------


class _ServedKernel:
    """A forked kernel as jupyter_client's LocalProvisioner sees a process: pid, poll, wait, signals."""

    stdin = stdout = stderr = None  # nothing to close: the kernel writes straight to this process's stdout/stderr

    def __init__(self, server: str, request: dict, timeout: float = 30.0):
        self.returncode: int | None = None  # set once the kernel has exited, as Popen does
        self._buffer = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.pid = self._request(server, request, timeout)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, server: str, request: dict, timeout: float) -> int:
        """Ask the server for a kernel, passing this process's stdout and stderr; return the kernel's pid."""
        self.sock.settimeout(timeout)
        self.sock.connect(server)
        _send(self.sock, request, fds=[1, 2])
        reply = self._message() or {"error": "the server hung up"}
        if "pid" not in reply:
            raise KernelError(f"the kernel server refused a kernel: {reply['error']}")
        self.sock.settimeout(None)
        return reply["pid"]

    def _message(self) -> dict | None:
        """The next line from the server, or None once it has hung up."""
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def poll(self) -> int | None:
        """The kernel's exit code if it has exited (negative: the signal that killed it), else None."""
        if self.returncode is None and (b"\n" in self._buffer or select.select([self.sock], [], [], 0)[0]):
            self._collect()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Block until the kernel exits; return its exit code."""
        if self.poll() is None:
            if not select.select([self.sock], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
            self._collect()
        return self.returncode

    def _collect(self) -> None:
        """Read the kernel's exit code; if the server hung up without one, it died and took the kernel with it."""
        message = self._message() or {"exit": -signal.SIGKILL}
        self.returncode = message["exit"]
        self.close()

    def send_signal(self, signum: int) -> None:
        """Have the server signal the kernel's process group; nothing if the kernel has exited."""
        if self.returncode is None:
            try:
                _send(self.sock, {"signal": int(signum)})
            except OSError:
                pass

    def terminate(self) -> None:
        """SIGTERM the kernel."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the kernel."""
        self.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Let go of the kernel: the server kills it if it is still running."""
        self.sock.close()
        if self.returncode is None:
            self.returncode = -signal.SIGKILL


# -- the forked child: shed the server's state, adopt the request's, become a kernel --------------------------------


def _prctl(option: int, value) -> None:
    """Call prctl(2) on this process."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)


def _detach(server: _Server, conn: socket.socket, stdio: list[int]) -> None:
    """Lead a new session, die with the server, drop its descriptors, take the requester's stdout and stderr."""
    os.setsid()  # its own process group: interrupts and kills reach the kernel and its subprocesses only
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    _prctl(_PR_SET_NAME, b"nbs-kernel")
    if os.getppid() != server.pid:  # the server died before PR_SET_PDEATHSIG took effect
        os._exit(1)
    os.close(conn.detach())  # detached: the socket object will not close the number again
    server.close_in_child()
    for target, fd in zip((1, 2), stdio, strict=True):
        os.dup2(fd, target)
        os.close(fd)


def _adopt(server: _Server, request: dict) -> None:
    """Take a fresh process's signal handlers and the request's cwd, environment, argv and sys.path."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum, handler in server.handlers.items():
        signal.signal(signum, handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for name, value in server.imported_env.items():  # as a fresh kernel's imports would set them
        os.environ.setdefault(name, value)
    sys.argv = [_launcher_path(), "-f", request["connection_file"], *request["args"]]
    _adopt_sys_path(server, request["env"].get("PYTHONPATH", ""))
    if "numpy.random" in sys.modules:  # every fork would otherwise draw the same numbers
        sys.modules["numpy.random"].seed()


def _adopt_sys_path(server: _Server, pythonpath: str) -> None:
    """sys.path as `python -m ipykernel_launcher` has it: without the server's folder, with the request's PYTHONPATH."""
    wanted = [os.path.abspath(p) for p in pythonpath.split(os.pathsep) if p]
    sys.path[:] = [p for p in sys.path if p != server.path0 and (p not in server.pythonpath or p in wanted)]
    sys.path[:0] = [p for p in wanted if p not in sys.path]


def _launcher_path() -> str:
    """Where ipykernel_launcher.py is: a fresh kernel's sys.argv[0]."""
    import importlib.util

    return importlib.util.find_spec("ipykernel_launcher").origin


def _run_kernel(request: dict) -> int:
    """Initialize and run IPKernelApp on the request's connection file until it is shut down."""
    from ipykernel.kernelapp import IPKernelApp

    parent = request["env"].get("JPY_PARENT_PID") or "0"  # the class default was read in the server's environment
    app = IPKernelApp.instance()
    # jupyter_client binds step kernels to 127.0.0.1 over TCP; ipykernel 7 warns about it on every start, which
    # would print once per step into the run's progress
    app.log.addFilter(lambda record: "without encryption" not in record.getMessage())
    app.initialize(["-f", request["connection_file"], f"--IPKernelApp.parent_handle={parent}", *request["args"]])
    app.start()
    return 0


def _finish(code: int) -> None:
    """Exit as the interpreter does, minus module teardown: join threads, run atexit, flush; never returns."""
    import atexit

    try:
        threading._shutdown()  # what Python runs first at exit: threading's exit hooks, then joining non-daemon threads
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            stream.flush()
    finally:
        os._exit(code)


def _become_kernel(server: _Server, conn: socket.socket, request: dict, stdio: list[int]) -> None:
    """In the forked child: detach, adopt the request, run the kernel, exit; never returns."""
    code = 1
    try:
        _detach(server, conn, stdio)
        _adopt(server, request)
        code = _run_kernel(request)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        import traceback

        traceback.print_exc()  # to the requester's stderr, where a kernel's start-up errors belong
    finally:
        _finish(code)


# -- the server: import once, fork a kernel per request ------------------------------------------------------------


class _Kernel:
    """One forked kernel: its pid, a pidfd that turns readable when it exits, and its requester's connection."""

    def __init__(self, pid: int, conn: socket.socket):
        self.pid, self.conn, self.pidfd = pid, conn, os.pidfd_open(pid)
        self.buffer, self.connected = b"", True


class _Server:
    """The forkserver's loop: accept requests, fork kernels, relay signals and exits, clean up."""

    def __init__(self, path: str, handlers: dict, imported_env: dict[str, str]):
        import selectors

        self.pid, self.owner, self.handlers, self.path0 = os.getpid(), os.getppid(), handlers, sys.path[0]
        self.imported_env = imported_env  # variables the imports set (debugpy sets PYDEVD_USE_FRAME_EVAL, say)
        self.pythonpath = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
        self.owner_fd = os.dup(0)  # the pipe the owner holds open; fd 0 becomes /dev/null, every kernel's stdin
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(64)
        self.path, self.kernels, self.running = path, {}, True
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, (self._accept, None))
        self.selector.register(self.owner_fd, selectors.EVENT_READ, (self._owner_gone, None))

    def run(self) -> None:
        """Serve until the owner closes its pipe or dies, then kill every kernel."""
        try:
            while self.running:
                for key, _ in self.selector.select(timeout=1.0):
                    handler, kernel = key.data
                    handler(kernel)
                self.running = self.running and os.getppid() == self.owner
        finally:
            self.shutdown()

    def _owner_gone(self, _) -> None:
        """The owner closed its end of the pipe: stop."""
        self.running = False

    def _accept(self, _) -> None:
        """Take one request and fork its kernel; refuse it with a reason if that is not possible."""
        try:
            conn, _ = self.listener.accept()
        except OSError as exc:  # e.g. out of file descriptors: the requester will see its connection fail
            print(f"accept failed: {exc}", file=sys.stderr, flush=True)
            return
        conn.settimeout(5)
        stdio: list[int] = []
        try:
            _check_peer(conn)
            request, stdio = _recv_request(conn)
            if len(stdio) != 2 or threading.active_count() > 1:
                raise KernelError(f"cannot fork: got {len(stdio)} descriptors, threads {threading.enumerate()}")
            self._fork(conn, request, stdio)
        except (OSError, ValueError, KernelError) as exc:
            print(f"kernel request refused: {exc}", file=sys.stderr, flush=True)
            _send_quietly(conn, {"error": str(exc)})
            conn.close()
        finally:
            for fd in stdio:
                os.close(fd)

    def _fork(self, conn: socket.socket, request: dict, stdio: list[int]) -> None:
        """Fork the kernel, watch it and its requester's connection, and reply with its pid."""
        import selectors

        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become_kernel(self, conn, request, stdio)
        try:
            kernel = self.kernels[pid] = _Kernel(pid, conn)
        except OSError:
            _kill_group(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        self.selector.register(conn, selectors.EVENT_READ, (self._on_message, kernel))
        self.selector.register(kernel.pidfd, selectors.EVENT_READ, (self._on_exit, kernel))
        _send_quietly(conn, {"pid": pid})

    def _on_message(self, kernel: _Kernel) -> None:
        """The requester forwards a signal, or hung up: then its kernel is killed."""
        try:
            data = kernel.conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            self.selector.unregister(kernel.conn)
            kernel.connected = False
            return _kill_group(kernel.pid, signal.SIGKILL)
        kernel.buffer += data
        *lines, kernel.buffer = kernel.buffer.split(b"\n")
        for line in lines:
            try:
                _kill_group(kernel.pid, int(json.loads(line)["signal"]))
            except (ValueError, KeyError, TypeError):
                print(f"ignored a bad message: {line!r}", file=sys.stderr, flush=True)
        return None

    def _on_exit(self, kernel: _Kernel) -> None:
        """A kernel exited: reap it, stop watching it, tell its requester the exit code."""
        _, status = os.waitpid(kernel.pid, 0)
        del self.kernels[kernel.pid]
        self.selector.unregister(kernel.pidfd)
        os.close(kernel.pidfd)
        if kernel.connected:
            self.selector.unregister(kernel.conn)
            _send_quietly(kernel.conn, {"exit": os.waitstatus_to_exitcode(status)})
        kernel.conn.close()

    def shutdown(self) -> None:
        """Kill and reap every kernel, tell their requesters, remove the socket."""
        for kernel in list(self.kernels.values()):
            _kill_group(kernel.pid, signal.SIGKILL)
            self._on_exit(kernel)
        self.listener.close()
        Path(self.path).unlink(missing_ok=True)

    def close_in_child(self) -> None:
        """In a forked child: release every descriptor of the server's (detached, so nothing closes them twice)."""
        for sock in [self.listener, *(k.conn for k in self.kernels.values())]:
            os.close(sock.detach())
        for fd in [self.owner_fd, *(k.pidfd for k in self.kernels.values())]:
            os.close(fd)
        self.selector.close()


def _check_peer(conn: socket.socket) -> None:
    """Refuse requests from processes of another user (SO_PEERCRED)."""
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    if uid != os.getuid():
        raise KernelError(f"the requester runs as uid {uid}, not {os.getuid()}")


def _send_quietly(conn: socket.socket, message: dict) -> None:
    """Send `message` unless the peer is gone."""
    try:
        _send(conn, message)
    except OSError:
        pass


def _kill_group(pid: int, signum: int) -> None:
    """Signal the kernel's process group (it leads one), or the kernel alone before it has set it up."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _preimport(modules: list[str]) -> dict[str, str]:
    """Import each module; return the ones that failed, with their error."""
    import importlib

    failed = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # a module that will not import is reported, not fatal: kernels import it again
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed


def serve(path: str, imports: list[str], remove: list[str] = ()) -> int:
    """Import, check for threads, report ready on stdout, fork kernels until the owner leaves; then remove `remove`."""
    import gc
    import time

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # what a fresh Python has
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the owner's to handle
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.perf_counter()
    gc.disable()  # imports make ~400,000 objects: collecting as they go costs ~20% more CPU (measured)
    env = dict(os.environ)
    failed = _preimport([*imports, *_KERNEL_IMPORTS])
    imported_env = {name: value for name, value in os.environ.items() if env.get(name) != value}
    threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
    if threads:
        print(json.dumps({"error": f"the imports started threads {threads}; forking is unsafe"}), flush=True)
        os._exit(1)  # not waiting for threads that are not ours
    server = _Server(path, handlers, imported_env)
    gc.freeze()  # imported objects move to a permanent generation: kernels' collections do not copy their pages
    gc.enable()  # kernels inherit it
    print(json.dumps({"ready": True, "pid": os.getpid(), "failed": failed,
                      "seconds": round(time.perf_counter() - started, 3)}), flush=True)
    try:
        server.run()
    finally:  # the owner may be gone (even killed): nobody else would remove them; before ready, the owner does
        for folder in remove:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


# -- the pool: the runner's side ------------------------------------------------------------------------------------


class KernelPool:
    """Warm kernels for papermill, forked from one server that imported `imports`; or plain kernels if it cannot.

    Call `papermill.execute_notebook(input, output, parameters=..., **pool.papermill_kwargs())` from any thread;
    do not pass `kernel_name` yourself: the pool chooses it.
    """

    ready_timeout = 60.0  # seconds to wait for the server's imports before falling back

    def __init__(self, imports: list[str] = (), *, enabled: bool = True, state_dir: Path | None = None,
                 server_env: dict[str, str] | None = None):
        self.imports = list(imports)  # modules the server imports once for every kernel
        self.enabled = enabled  # False: always plain papermill kernels
        self.state_dir = Path(state_dir) if state_dir else None  # holds the socket and server.log; else a temp dir
        self.server_env = dict(server_env or {})  # added to the server's environment (read at import: OMP_*...)
        self._server: subprocess.Popen | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._reason: str | None = None  # why the pool falls back; None while forking is possible
        self._closed = False
        self._dirs: list[Path] = []  # private folders this pool created; removed by close() or the server's exit
        self._socket = self._log = None
        self._classes: collections.OrderedDict = collections.OrderedDict()  # the last _CLASSES manager classes

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> KernelPool:
        """Spawn the server, which imports in the background; return at once."""
        with self._lock:
            if self._server or self._reason or self._closed:
                return self
            self._reason = self._unsupported()
            if self._reason is None:
                try:
                    self._spawn()
                except OSError as exc:
                    self._reason = f"server failed to start: {exc}"
        if self._reason:
            self._ready.set()
            log.info("kernel pool falls back to plain kernels: %s", self._reason)
        return self

    def _unsupported(self) -> str | None:
        """Why this pool cannot fork kernels here, or None."""
        if not self.enabled:
            return "disabled"
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            return f"forking kernels needs Linux with pidfd_open (this is {sys.platform})"
        return None

    def _spawn(self) -> None:
        """Create the private folders and start the server process."""
        base = self.state_dir or self._private_dir("notebench-kernels-")
        base.mkdir(parents=True, exist_ok=True)
        sock = base / "server.sock"
        if len(os.fsencode(sock)) > _SOCKET_MAX:
            sock = self._private_dir("nbk-") / "server.sock"
        sock.unlink(missing_ok=True)
        self._socket, self._log = sock, base / "server.log"
        with open(self._log, "wb") as log_file:
            self._server = subprocess.Popen(
                [sys.executable, "-Xfrozen_modules=off", "-m", _MODULE, "serve", "--socket", str(sock),
                 *(f"--remove={d}" for d in self._dirs), *self.imports],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, cwd=base, start_new_session=True,
                env={**os.environ, **self.server_env})
        threading.Thread(target=self._await_ready, name="kernel-pool-ready", daemon=True).start()

    def _private_dir(self, prefix: str) -> Path:
        """A new 0700 folder that close() removes."""
        path = Path(tempfile.mkdtemp(prefix=prefix))
        self._dirs.append(path)
        return path

    def _await_ready(self) -> None:
        """Read the server's first line: ready, or why it cannot serve."""
        try:
            message = json.loads(self._server.stdout.readline())
        except (ValueError, OSError, AttributeError):  # not JSON, or the pool was closed meanwhile
            message = {"error": f"server exited before it was ready{self._log_tail()}"}
        if message.get("error"):
            with self._lock:
                self._reason = self._reason or message["error"]  # a reason given meanwhile (a timeout) stands
        else:
            log.info("kernel server %s ready after %.1f s", message["pid"], message["seconds"])
            for name, error in message["failed"].items():
                log.warning("kernel server could not import %s: %s", name, error)
        self._ready.set()

    def _log_tail(self) -> str:
        """The last lines the server wrote to its log, for a fallback reason."""
        try:
            tail = self._log.read_text(errors="replace").strip().splitlines()[-3:]
        except (OSError, AttributeError):
            return ""
        return (": " + " | ".join(tail)) if tail else ""

    def close(self) -> None:
        """Stop the server, which kills and reaps every kernel it forked; remove the pool's private folders."""
        with self._lock:
            self._closed, server, self._server = True, self._server, None
        if server:
            _stop(server)
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs.clear()

    def __enter__(self) -> KernelPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what callers use --------------------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """How kernels are made: "fork", or "fallback: <reason>"; waits (at most `ready_timeout`) for the server."""
        reason = self._fallback_reason()
        return "fork" if reason is None else f"fallback: {reason}"

    def _fallback_reason(self) -> str | None:
        """Start if needed, wait for readiness, notice a dead server; None when kernels can be forked."""
        self.start()
        if not self._ready.wait(self.ready_timeout):
            self._give_up(f"server not ready after {self.ready_timeout:.0f} s{self._log_tail()}")
        with self._lock:
            if self._reason is None and self._server is None:
                self._reason = "pool closed"
            elif self._reason is None and self._server.poll() is not None:
                self._reason = f"server exited with code {self._server.returncode}{self._log_tail()}"
            return self._reason

    def _give_up(self, reason: str) -> None:
        """Fall back for good: record why and stop the server."""
        with self._lock:
            self._reason, server, self._server = self._reason or reason, self._server, None
        if server:
            _stop(server, grace=0)  # it has no kernels yet
        log.warning("kernel pool falls back to plain kernels: %s", reason)

    def papermill_kwargs(self, *, cwd: str | Path | None = None, env: dict[str, str] | None = None) -> dict:
        """Keyword arguments for `papermill.execute_notebook` so that its kernel comes from this pool.

        `cwd` sets the kernel's working directory without papermill's process-wide `os.chdir` (safe in threads);
        `env` adds variables to the kernel's environment (which is otherwise this process's `os.environ`).
        """
        if self._closed:
            raise KernelError("this KernelPool is closed")
        reason = self._fallback_reason()
        kwargs: dict = {"kernel_name": _kernel_name()}
        if reason is None or env:
            server = str(self._socket) if reason is None else None
            kwargs["kernel_manager_class"] = self._manager_class(server, tuple(sorted((env or {}).items())))
        if cwd is not None:
            kwargs["resources"] = {"metadata": {"path": str(cwd)}}
        return kwargs

    def _manager_class(self, server: str | None, env: tuple) -> type:
        """The kernel manager class for `server` (None: plain kernels) and `env`, made once per pair."""
        with self._lock:
            if (server, env) not in self._classes:
                self._classes[server, env] = _kernel_manager_class(server, dict(env))
                while len(self._classes) > _CLASSES:  # each job's environment names it: a long-lived pool forgets
                    self._classes.popitem(last=False)
            self._classes.move_to_end((server, env))
            return self._classes[server, env]


def _stop(server: subprocess.Popen, grace: float = 10.0) -> None:
    """Close the server's owner pipe and wait `grace` seconds for it to kill its kernels and exit; else kill it."""
    try:
        server.stdin.close()
    except OSError:
        pass
    try:
        server.wait(grace)
    except subprocess.TimeoutExpired:  # still importing, or stuck
        server.kill()
        server.wait()
    server.stdout.close()  # only now: closing it would wait for the ready-reader thread's readline


@functools.cache
def _kernel_name() -> str:
    """`notebench` if that kernelspec is installed, else `python3`."""
    from jupyter_client.kernelspec import KernelSpecManager

    return "notebench" if "notebench" in KernelSpecManager().find_kernel_specs() else "python3"


def _kernel_manager_class(server: str | None, env: dict[str, str]) -> type:
    """An AsyncKernelManager whose kernels the server at `server` forks (None: plain kernels), with `env` added."""
    import uuid

    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner

    # the command a fresh kernel would run; the provisioner takes the connection file and extra arguments from it
    spec = KernelSpec(argv=[sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"], display_name="Python 3 (notebench, warm)", language="python")

    class ForkProvisioner(LocalProvisioner):
        """Has the server fork the kernel instead of running the kernelspec's command."""

        async def launch_kernel(self, cmd: list[str], **kwargs):
            """Ask the server for the kernel `cmd` describes; run `cmd` itself if the server cannot be reached."""
            env = {**kwargs["env"], "JPY_PARENT_PID": str(os.getpid())}  # as jupyter_client's launch_kernel sets it
            request = {"connection_file": cmd[len(spec.argv) - 1], "args": cmd[len(spec.argv):], "env": env,
                       "cwd": os.path.abspath(kwargs.get("cwd") or os.getcwd())}
            try:
                self.process = _ServedKernel(server, request)
            except (OSError, KernelError) as exc:  # the server is gone: this kernel starts the slow way
                log.warning("no warm kernel (%s); starting %s", exc, " ".join(cmd))
                return await super().launch_kernel(cmd, **kwargs)
            self.pid, self.pgid, self.cwd = self.process.pid, None, request["cwd"]  # no pgid: signals go via the server
            return self.connection_info

        async def cleanup(self, restart: bool = False) -> None:
            """Let go of the kernel (the server kills it if it still runs), then clean up as usual."""
            if self.process:
                self.process.close()
            await super().cleanup(restart)

    class PoolKernelManager(AsyncKernelManager):
        """Starts its kernel through the pool, with the pool's extra environment."""

        @property
        def kernel_spec(self):
            """The in-memory spec when forking; else the named kernelspec."""
            return spec if server else super().kernel_spec

        async def start_kernel(self, **kw):
            """Start the kernel with the fork provisioner (when forking) and the extra environment."""
            if server and self.provisioner is None:
                self.kernel_id = self.kernel_id or kw.pop("kernel_id", None) or str(uuid.uuid4())
                self.provisioner = ForkProvisioner(kernel_id=self.kernel_id, kernel_spec=spec, parent=self)
            if env:
                kw["env"] = {**kw.get("env", os.environ), **env}
            started = await super().start_kernel(**kw)
            job = env.get(JOB_VARIABLE)
            if job and self.provisioner is not None and self.provisioner.process is not None:
                with _JOBS_LOCK:
                    _JOBS.setdefault(job, []).append(self.provisioner.process)
            return started

    return PoolKernelManager


# -- entry point ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m notebench.pipeline.kernels serve --socket PATH [modules]`: the server's entry point."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description="The warm kernels' server.")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("serve", help="import modules, then fork a kernel per request")
    server.add_argument("--socket", required=True, help="Unix socket to listen on")
    server.add_argument("--remove", action="append", default=[], help="a folder to remove when the server exits")
    server.add_argument("imports", nargs="*", help="modules to import once")
    args = parser.parse_args(argv)
    return serve(args.socket, args.imports, args.remove)


if __name__ == "__main__":
    sys.exit(main())

"""`serve(...)`: Voila on the dashboards folder, with a landing page, the executed notebooks, and warm kernels.

Voila starts a kernel for every page view; on this kind of machine that kernel then spends ~4 s importing pandas,
matplotlib and MLflow before the first cell that reads anything. So the server keeps one *preheated* kernel per
dashboard (Voila's kernel pools): the kernel runs the dashboard's first cell (imports, the MLflow client) ahead of
time and pauses in `wait_for_visitor()`; a page request takes it and runs the remaining cells, which read the
workspace *now*, so the page is never stale. A visitor arriving while the pool refills gets a fresh kernel.

Routes added to Voila's own:

| route | what it serves |
|---|---|
| `/` | the landing page: the four dashboards, what each shows, the workspace |
| `/voila/render/<name>.ipynb` | a dashboard (Voila) |
| `/runs/<pipeline>/<run id>/<step>.html` | a step's executed notebook as HTML (the lineage's copy, or rendered now) |
| `/api/notebench/ready` | JSON: per dashboard, whether a preheated kernel waits for a visitor |

The pages use the `notebench` Voila template (`dashboards/_jupyter/`): Voila's lab template without the two
stylesheets it fetches from a CDN, so that a page offline neither waits for the network nor logs errors.
"""

from __future__ import annotations

import html
import os
import socket
import sys
from pathlib import Path

from notebench.errors import NotebenchError

__all__ = ["DASHBOARDS", "DashboardsBusy", "dashboards_folder", "kernel_env", "serve", "voila_argv"]

# name -> (title, what it shows); the landing page lists them in this order
DASHBOARDS = {
    "overview": ("Overview", "What serves, whether it is healthy, the last pipeline run, drift and the last triggers."),
    "registry": ("Registry", "Every model version: aliases, metrics per segment, blessing verdict and its reasons, "
                             "lineage to the pipeline run, data, code and executed notebooks."),
    "pipelines": ("Pipelines", "Recent runs: each step's state, duration and cache hit; failures with their error "
                               "and notebook."),
    "monitoring": ("Monitoring", "Per-feature drift over time, prediction volume, model quality as labels arrive, "
                                 "and the triggers that fired."),
}
RUNS_ROUTE = "runs"
# Voila loads every JupyterLab extension installed in the venv unless an allowlist names the ones to load. These
# pages use none (no widgets), and one a package brings along can break them: plotly's expects the widget manager
# and logs a console error without it. An allowlist that names no installed extension loads none.
NO_EXTENSION = "notebench-dashboards-load-no-extension"


class DashboardsBusy(NotebenchError):
    """The dashboards' port is taken."""

    exit_code = 3


def dashboards_folder(settings) -> Path:
    """The project's `dashboards/` folder (beside settings.ini)."""
    return Path(settings.root) / "dashboards"


def kernel_env(workspace) -> dict[str, str]:
    """What each dashboard kernel needs: the workspace, its MLflow stores and the settings file."""
    return {**workspace.mlflow_env(), "NOTEBENCH_SETTINGS": str(workspace.settings.file)}


def voila_argv(folder: Path, host: str, port: int, open_browser: bool, pool_size: int = 1) -> list[str]:
    """Voila's command line: serve `folder`, bind `host:port`, no code, `pool_size` preheated kernels a dashboard."""
    argv = [str(folder), f"--Voila.ip={host}", f"--port={port}", "--Voila.port_retries=0",
            "--strip_sources=True", "--theme=light", "--template=notebench", f"--Voila.open_browser={open_browser}",
            # a page holds its kernel until the tab closes; one left open is culled after 10 idle minutes
            "--MappingKernelManager.cull_idle_timeout=600", "--MappingKernelManager.cull_interval=60",
            # no widgets on these pages: the browser need not download and run any extension's JavaScript
            f"--VoilaConfiguration.extension_allowlist={NO_EXTENSION}"]
    if pool_size > 0:
        # a used kernel is replaced 10 s later: after the visitor's page rendered, not competing with it for CPU
        argv += ["--preheat_kernel=True", f"--pool_size={pool_size}", "--VoilaKernelManager.fill_delay=10"]
    return argv


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def landing_page(base_url: str, workspace_root: Path, names: list[str]) -> str:
    """The landing page's HTML: a card per dashboard found in the folder."""
    cards = "".join(
        f'<a class="card" href="{base_url}voila/render/{n}.ipynb"><h2>{html.escape(DASHBOARDS[n][0])}</h2>'
        f"<p>{html.escape(DASHBOARDS[n][1])}</p></a>" for n in DASHBOARDS if n in names)
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Notebench dashboards</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #1f2933; }}
h1 {{ margin-bottom: .2rem; }} .ws {{ color: #52606d; margin-top: 0; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(26rem, 1fr)); gap: 1rem; }}
.card {{ display: block; padding: 1rem 1.2rem; border: 1px solid #cbd2d9; border-radius: 8px; color: inherit;
        text-decoration: none; }}
.card:hover {{ border-color: #2563eb; box-shadow: 0 2px 8px rgba(0,0,0,.08); }}
.card h2 {{ margin: 0 0 .4rem 0; color: #2563eb; font-size: 1.2rem; }} .card p {{ margin: 0; }}
</style></head><body>
<h1>Notebench dashboards</h1>
<p class="ws">workspace <code>{html.escape(str(workspace_root))}</code></p>
<div class="grid">{cards}</div>
</body></html>"""


def _notebook_html(path: Path) -> str:
    """An executed notebook as HTML: the lineage's copy beside it, else rendered now."""
    rendered = path.with_suffix(".html")
    if rendered.exists():
        return rendered.read_text(encoding="utf-8")
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(path.with_suffix(".ipynb"), as_version=4))
    return body


def warm_pools(kernel_manager) -> dict[str, bool]:
    """Per dashboard, whether a preheated kernel has run its first cell and waits for a visitor.

    Reads Voila's pool (`_pools`: notebook -> kernel start tasks) and the kernels connected to its request-info
    socket (a preheated kernel connects when it reaches `wait_for_request`); no pools: nothing to warm."""
    from voila.request_info_handler import RequestInfoSocketHandler

    waiting = set(RequestInfoSocketHandler._waiters)
    out = {}
    for name, pool in getattr(kernel_manager, "_pools", {}).items():
        done = [t.result() for t in pool if t.done() and not t.cancelled() and t.exception() is None]
        out[Path(name).stem] = any(item["kernel_id"] in waiting for item in done)
    return out


def _app_class(workspace_root: Path, folder: Path):
    """A Voila application with the landing page and the executed-notebook route in front of Voila's routes."""
    import time

    import tornado.ioloop
    import tornado.web
    from voila.app import Voila

    pipelines = (workspace_root / "pipelines").resolve()

    class Landing(tornado.web.RequestHandler):
        def get(self):
            names = sorted(p.stem for p in folder.glob("*.ipynb"))
            self.finish(landing_page(self.settings["base_url"], workspace_root, names))

    class ExecutedNotebook(tornado.web.RequestHandler):
        def get(self, pipeline: str, run_id: str, step: str):
            path = (pipelines / pipeline / "runs" / run_id / f"{step}.html").resolve()
            if not path.is_relative_to(pipelines) or not path.with_suffix(".ipynb").exists():
                raise tornado.web.HTTPError(404, "no such executed notebook")
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish(_notebook_html(path))

    class Ready(tornado.web.RequestHandler):
        def get(self):
            pools = warm_pools(self.settings["kernel_manager"])
            self.finish({"ready": all(pools.values()), "dashboards": pools})

    class NotebenchVoila(Voila):
        name = "notebench-dashboards"

        def init_handlers(self):
            base = self.server_url or self.base_url
            ours = [(base, Landing), (f"{base}{RUNS_ROUTE}/([^/]+)/([^/]+)/([^/]+)\\.html", ExecutedNotebook),
                    (f"{base}api/notebench/ready", Ready)]
            self._announce_when_warm(time.time())
            return ours + super().init_handlers()

        def _announce_when_warm(self, started: float) -> None:
            """Say once when every dashboard has a warm kernel (how long a first visitor would have waited)."""
            def check():
                pools = warm_pools(self.kernel_manager)
                if all(pools.values()):
                    self.log.info("dashboards warm (%s) after %.1f s", ", ".join(pools) or "no pools",
                                  time.time() - started)
                    timer.stop()

            timer = tornado.ioloop.PeriodicCallback(check, 500)
            timer.start()

    return NotebenchVoila


def serve(workspace=None, *, host: str | None = None, port: int | None = None, open_browser: bool = True,
          pool_size: int = 1) -> None:
    """Serve the dashboards with Voila until Ctrl-C or SIGTERM (kernels are shut down on the way out)."""
    from notebench.workspace import Workspace

    ws = workspace or Workspace()
    cfg = ws.settings["dashboards"]
    host, port = host or cfg["host"], port or cfg["port"]
    folder = dashboards_folder(ws.settings)
    if not any(folder.glob("*.ipynb")):
        raise NotebenchError(f"no dashboards in {folder}: expected {', '.join(n + '.ipynb' for n in DASHBOARDS)}")
    if not _port_free(host, port):
        raise DashboardsBusy(f"{host}:{port} is in use ([dashboards] port); stop what holds it or pass --port")
    os.environ.update(kernel_env(ws))  # Voila starts each kernel with this process's environment
    os.environ["VOILA_APP_IP"] = "127.0.0.1" if host in ("0.0.0.0", "") else host  # where kernels wait for visitors
    os.environ["JUPYTER_PATH"] = os.pathsep.join(  # where the `notebench` Voila template lives
        [str(folder / "_jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    print(f"Notebench dashboards on http://{host}:{port}/  (workspace {ws.root}; Ctrl-C stops)", file=sys.stderr)
    app = _app_class(ws.root, folder)
    app.launch_instance(argv=voila_argv(folder, host, port, open_browser, pool_size))

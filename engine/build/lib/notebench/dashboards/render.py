"""How a dashboard panel looks: the page header, state badges, tables, plots and the "nothing yet" notice.

Everything returns HTML text or a matplotlib figure; `show(...)` displays either in the notebook. Text that comes
from the workspace (reasons, errors, tags) is escaped; only the links this module builds are markup.
"""

from __future__ import annotations

import html
import math
import os
import time
from datetime import UTC, datetime

__all__ = ["Markup", "ago", "badge", "bullets", "cards", "done", "drift_heatmap", "drift_lines", "esc", "gantt",
           "header", "kv", "link", "nothing_yet",
           "quality_plot", "show", "table", "volume_plot", "wait_for_visitor"]

COLORS = {"green": "#15803d", "amber": "#b45309", "red": "#b91c1c", "grey": "#6b7280"}
STATE_COLORS = {"succeeded": "green", "done": "green", "cached": "grey", "failed": "red", "running": "amber",
                "queued": "grey", "pending": "grey", "retrying": "amber", "killed": "red"}
PAGES = {"overview": "Overview", "registry": "Registry", "pipelines": "Pipelines", "monitoring": "Monitoring"}
DEMO_HINT = "notebench demo"

CSS = """<style>
.nb-page { font-family: system-ui, -apple-system, sans-serif; color: #1f2933; }
.nb-nav { display: flex; gap: 1rem; align-items: baseline; border-bottom: 1px solid #d9e2ec; padding-bottom: .4rem; }
.nb-nav a { color: #2563eb; text-decoration: none; } .nb-nav a.nb-here { color: #1f2933; font-weight: 600; }
.nb-nav .nb-asof { margin-left: auto; color: #627d98; font-size: .85em; }
.nb-badge { display: inline-block; padding: .1em .55em; border-radius: .8em; color: #fff; font-size: .85em;
            font-weight: 600; white-space: nowrap; }
.nb-cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: .8rem; margin: .6rem 0; }
.nb-card { border: 1px solid #d9e2ec; border-left: 6px solid var(--c); border-radius: 6px; padding: .6rem .8rem; }
.nb-card h4 { margin: 0 0 .3rem 0; text-transform: capitalize; }
.nb-table { border-collapse: collapse; font-size: .9em; margin: .4rem 0; }
.nb-table th, .nb-table td { border-bottom: 1px solid #e4e7eb; padding: .3em .6em; text-align: left !important;
                             vertical-align: top; }
.nb-table ul { margin: 0; padding-left: 1.1em; }
.nb-table th { background: #f5f7fa; }
.nb-table td.nb-num { text-align: right !important; font-variant-numeric: tabular-nums; }
.nb-empty { border: 1px dashed #9fb3c8; border-radius: 6px; padding: .8rem 1rem; color: #486581; background: #f8fafc; }
.nb-empty code, .nb-kv code { background: #e4e7eb; padding: 0 .3em; border-radius: 3px; }
.nb-kv { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; margin: .4rem 0; }
.nb-kv dt { color: #627d98; } .nb-kv dd { margin: 0; }
.nb-error { color: #b91c1c; white-space: pre-wrap; font-family: monospace; font-size: .85em; }
</style>"""


class Markup(str):
    """Text that is already HTML (built by this module): tables and lists leave it as is."""


def wait_for_visitor() -> None:
    """In a Voila preheated kernel, pause here until a page request takes the kernel; elsewhere return at once.

    What `voila.utils.wait_for_request` does (connect to the server's request-info socket for this kernel, receive
    the request's variables), without importing `voila`, which loads jupyter_server: seconds of CPU per kernel."""
    env = os.environ
    if env.get("VOILA_PREHEAT", "False") == "False" or not env.get("VOILA_KERNEL_ID"):
        return
    import json

    from websockets.sync.client import connect

    base = env.get("VOILA_WS_BASE_URL") or env.get("VOILA_SERVER_URL", "/")
    url = (f"{env.get('VOILA_WS_PROTOCOL', 'ws')}://{env.get('VOILA_APP_IP', '127.0.0.1')}:"
           f"{env.get('VOILA_APP_PORT', '8866')}{base}voila/query/{env['VOILA_KERNEL_ID']}")
    try:
        with connect(url, open_timeout=10, ping_interval=None) as socket:  # the wait may last hours
            info = socket.recv()
    except (OSError, TimeoutError) as exc:  # no server to wait for: render now, with the data as it is
        print(f"not waiting for a visitor: {exc}", file=__import__("sys").stderr)
        return
    env.update(json.loads(info))


def show(*items) -> None:
    """Display HTML text or matplotlib figures (each figure is closed once shown)."""
    from IPython.display import HTML, display

    for item in items:
        if isinstance(item, str):
            display(HTML(item))
        else:
            display(item)
            import matplotlib.pyplot as plt

            plt.close(item)


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def esc(value) -> str:
    """`value` as HTML-escaped text (None: empty)."""
    return _esc(value)


def bullets(items) -> Markup:
    """A bullet list of `items` (escaped); empty text for no items."""
    return Markup("<ul>" + "".join(f"<li>{_esc(x)}</li>" for x in items) + "</ul>") if len(items) else Markup("")


def link(url: str | None, text) -> str:
    """An anchor to `url` (a page of this server), or the plain text when there is no URL."""
    return f'<a href="{_esc(url)}" target="_blank">{_esc(text)}</a>' if url else _esc(text)


def badge(state: str, text: str | None = None) -> str:
    """A coloured pill: `state` is green/amber/red/grey or a run/step state (succeeded, failed, cached...)."""
    color = COLORS.get(state) or COLORS[STATE_COLORS.get(state, "grey")]
    return f'<span class="nb-badge" data-state="{_esc(state)}" style="background:{color}">{_esc(text or state)}</span>'


def header(page: str, subtitle: str = "") -> str:
    """The page's style, navigation between the four dashboards, title and the time the data was read."""
    base = os.environ.get("VOILA_BASE_URL", "/")
    nav = " ".join(f'<a class="nb-here" href="#">{t}</a>' if p == page else
                   f'<a href="{base}voila/render/{p}.ipynb">{t}</a>' for p, t in PAGES.items())
    asof = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    sub = f"<p>{_esc(subtitle)}</p>" if subtitle else ""
    return (f'{CSS}<div class="nb-page"><div class="nb-nav"><a href="{base}">Notebench</a> {nav}'
            f'<span class="nb-asof">read {asof}</span></div><h1>{_esc(PAGES.get(page, page))}</h1>{sub}</div>')


def nothing_yet(what: str, command: str = DEMO_HINT) -> str:
    """The friendly empty state: what is missing and the command that makes it."""
    return (f'<div class="nb-page nb-empty" data-empty="true"><b>Nothing yet</b>: {_esc(what)}. '
            f"Run <code>{_esc(command)}</code> to fill this in.</div>")


def cards(checks: list[dict]) -> str:
    """One card per health check: its name, a state badge and its one-line text."""
    body = "".join(f'<div class="nb-card" data-check="{_esc(c["name"])}" style="--c:{COLORS[c["state"]]}">'
                   f'<h4>{_esc(c["name"])} {badge(c["state"])}</h4>{_esc(c["text"])}</div>' for c in checks)
    return f'<div class="nb-page nb-cards">{body}</div>'


def kv(pairs: dict) -> str:
    """A definition list of label -> value (values escaped unless wrapped in `Markup`)."""
    body = "".join(f"<dt>{_esc(k)}</dt><dd>{v if isinstance(v, Markup) else _esc(v)}</dd>"
                   for k, v in pairs.items() if not _blank(v))
    return f'<dl class="nb-page nb-kv">{body}</dl>'


def _blank(value) -> bool:
    """None, NaN, or an empty text, list or dict (any other value, numpy's and pandas' included, is shown)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str | list | tuple | dict) and len(value) == 0


def _cell(value, fmt: str | None) -> tuple[str, bool]:
    """(html, numeric) for one table cell."""
    if isinstance(value, Markup):
        return value, False
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (format(value, fmt) if fmt else _esc(value)), True
    if isinstance(value, list | tuple):
        return _esc(", ".join(map(str, value))), False
    return _esc(value), False


def table(frame, columns: dict | None = None, formats: dict | None = None, row_id: str | None = None) -> str:
    """An HTML table of `frame`: `columns` maps column -> heading (and picks them), `formats` column -> format spec."""
    columns = columns or {c: c for c in frame.columns}
    formats = formats or {}
    head = "".join(f"<th>{_esc(h)}</th>" for h in columns.values())
    rows = []
    for _, rec in frame.iterrows():
        cells = []
        for col in columns:
            text, numeric = _cell(rec.get(col), formats.get(col))
            cells.append(f'<td class="nb-num">{text}</td>' if numeric else f"<td>{text}</td>")
        attr = f' data-row="{_esc(rec.get(row_id))}"' if row_id else ""
        rows.append(f"<tr{attr}>{''.join(cells)}</tr>")
    return f'<table class="nb-page nb-table"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def ago(iso: str | None) -> str:
    """'5 min ago' for an ISO time."""
    if not iso:
        return ""
    seconds = time.time() - datetime.fromisoformat(str(iso)).timestamp()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def done() -> str:
    """The page's last output: a marker that everything above it has rendered (browser tests wait for it)."""
    return '<div id="notebench-rendered" data-rendered="true" style="display:none"></div>'


# plots -----------------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    return fig, ax


def drift_heatmap(drift, last: int = 24):
    """Features x windows, red where the window's test flagged the feature, with the statistic in each cell."""
    import numpy as np

    windows = sorted(drift["window_end"].unique())[-last:]
    recent = drift[drift["window_end"].isin(windows)]
    alert = recent.pivot_table(index="feature", columns="window_end", values="alert", aggfunc="max").astype(float)
    stat = recent.pivot_table(index="feature", columns="window_end", values="statistic", aggfunc="first")
    fig, ax = _figure(min(12, 2.5 + 0.55 * len(windows)), 0.9 + 0.32 * len(alert))
    from matplotlib.colors import ListedColormap

    ax.imshow(alert.to_numpy(), aspect="auto", cmap=ListedColormap(["#dcfce7", "#fca5a5"]), vmin=0, vmax=1)
    if len(windows) <= 16:
        for (i, j), value in np.ndenumerate(stat.to_numpy()):
            if not np.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(alert)), alert.index)
    ax.set_xticks(range(len(windows)), [_short_time(w) for w in windows], rotation=45, ha="right", fontsize=8)
    ax.set_title("drift per feature and window (red: drift flagged; cell: test statistic)", fontsize=10)
    fig.tight_layout()
    return fig


def drift_lines(drift, features: list[str], limit: int = 6):
    """The statistic of each feature in `features` over time, against its threshold; flagged windows in red."""
    import matplotlib.pyplot as plt

    features = features[:limit]
    fig, axes = plt.subplots(1, len(features), figsize=(min(12, 3.2 * len(features)), 2.6), dpi=90, squeeze=False)
    for ax, feature in zip(axes[0], features, strict=True):
        f = drift[drift["feature"] == feature].sort_values("window_end")
        ax.plot(f["window_end"], f["statistic"], marker="o", ms=3, color="#2563eb")
        flagged = f[f["alert"].astype(bool)]
        ax.scatter(flagged["window_end"], flagged["statistic"], color="#dc2626", zorder=3, s=18)
        ax.plot(f["window_end"], f["threshold"], linestyle="--", color="#6b7280", linewidth=1)
        ax.set_title(f"{feature} ({f['method'].iloc[-1]})", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    return fig


def volume_plot(volume):
    """Predictions per time bucket, stacked by model version."""
    pivot = volume.pivot_table(index="time", columns="model_version", values="predictions", aggfunc="sum").fillna(0)
    fig, ax = _figure(10, 2.8)
    bottom = None
    width = _bar_width(pivot.index)
    for version in pivot.columns:
        ax.bar(pivot.index, pivot[version], width=width, bottom=bottom, label=f"v{version}", align="edge")
        bottom = pivot[version] if bottom is None else bottom + pivot[version]
    ax.set_ylabel(f"predictions per {volume.attrs.get('freq', 'bucket')}")
    ax.legend(title="model", fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def quality_plot(quality):
    """Live quality per window against its alert threshold; windows that alerted in red."""
    fig, ax = _figure(10, 2.8)
    q = quality.sort_values("window_end")
    ax.plot(q["window_end"], q["statistic"], marker="o", color="#2563eb", label=q["method"].iloc[-1] or "quality")
    ax.plot(q["window_end"], q["threshold"], linestyle="--", color="#6b7280", label="alert threshold")
    bad = q[q["alert"].astype(bool)]
    ax.scatter(bad["window_end"], bad["statistic"], color="#dc2626", zorder=3, label="alert")
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def gantt(steps):
    """A run's steps on a time line: when each started and how long it took; cached steps grey, failed red."""
    s = steps.dropna(subset=["offset_s"])
    fig, ax = _figure(10, 0.6 + 0.35 * len(s))
    colors = [COLORS[STATE_COLORS.get(state, "grey")] for state in s["state"]]
    ax.barh(s["step"], s["duration_s"].fillna(0).clip(lower=0.05), left=s["offset_s"], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the run started")
    fig.tight_layout()
    return fig


def _bar_width(index):
    """A bar width (in days, matplotlib's date unit) matching the spacing of a time index."""
    if len(index) < 2:
        return 1 / 24
    return (index[1] - index[0]).total_seconds() / 86400 * 0.9


def _short_time(value) -> str:
    import pandas as pd

    return pd.Timestamp(value).strftime("%m-%d %H:%M")

"""The stakeholders' dashboards: Voila notebooks in `dashboards/` that read the workspace only through here.

    panels     one function per panel (champion, health, versions, runs, drift, volume, quality, triggers)
    render     how a panel looks: state badges, tables, plots, the "nothing yet" notice
    server     `notebench dashboards`: Voila with a landing page, executed notebooks and preheated kernels

Importing this package is cheap: each module loads what it needs on first use.
"""

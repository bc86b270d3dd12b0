"""Notebench: a notebook-centric MLOps workbench, from JupyterLab experiments to a continuously trained, delivered
and monitored prediction service. The engine reads a project's use case only through `notebench.usecase`."""


def __getattr__(name: str):
    """`__version__`, computed when first asked (from git in a checkout: see notebench.version)."""
    if name == "__version__":
        from notebench.version import engine_version

        return engine_version()
    raise AttributeError(f"module 'notebench' has no attribute {name!r}")

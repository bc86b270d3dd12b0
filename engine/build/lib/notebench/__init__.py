"""Notebench: a notebook-centric MLOps workbench, from JupyterLab experiments to a continuously trained, delivered
and monitored prediction service. The engine reads a project's use case only through `notebench.usecase`."""

__version__ = "0.2.0"

"""The workspace: the one folder, named by `[workspace] path`, that holds all of Notebench's runtime state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from notebench.settings import Settings, load_settings

__all__ = ["Workspace", "git_info"]


class Workspace:
    """Paths inside the workspace and the MLflow URIs that point into it; created on first use."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or load_settings()  # effective settings; the default reads settings.ini
        self.root = self.settings.path("workspace", "path")

    @classmethod
    def of(cls, workspace: Workspace | Settings | str | os.PathLike | None = None) -> Workspace:
        """A `Workspace` from a `Workspace`, `Settings`, a workspace folder (with the settings file's other
        settings), or None (the settings file's workspace): what library functions taking `workspace=` accept."""
        if isinstance(workspace, Workspace):
            return workspace
        if workspace is None or isinstance(workspace, Settings):
            return cls(workspace)
        ws = cls()
        ws.root = Path(workspace).resolve()
        return ws

    def ensure(self) -> Path:
        """Create the workspace folder (and its parents) if missing, git-ignored wherever it is; return it."""
        self.root.mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():  # runtime state never belongs in git, whatever `[workspace] path` says
            ignore.write_text("# Notebench runtime state: never commit it (written by notebench)\n*\n")
        return self.root

    def path(self, *parts: str) -> Path:
        """A path inside the workspace, its parent folder created."""
        p = self.ensure().joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def landing(self) -> Path:
        """Where new data batches arrive."""
        return self.ensure() / "landing"

    @property
    def artifacts(self) -> Path:
        """Root of MLflow artifacts when this process writes the tracking store itself (not through a server)."""
        return self.ensure() / "mlartifacts"

    @property
    def tracking_uri(self) -> str:
        """`[tracking] uri`, or SQLite inside the workspace when it is empty."""
        return self.settings.value("tracking", "uri") or f"sqlite:///{self.ensure() / 'mlflow.db'}"

    @property
    def registry_uri(self) -> str:
        """`[registry] uri`, or the tracking URI when it is empty."""
        return self.settings.value("registry", "uri") or self.tracking_uri

    @property
    def experiment(self) -> str:
        return self.settings.value("tracking", "experiment")

    def mlflow_env(self) -> dict[str, str]:
        """Environment variables that point MLflow's fluent API and CLI at this workspace."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_REGISTRY_URI": self.registry_uri,
                "MLFLOW_EXPERIMENT_NAME": self.experiment, "NOTEBENCH_WORKSPACE_PATH": str(self.root)}

    @property
    def tracking_server(self) -> bool:
        """True when tracking goes through an `mlflow server` (http/https), which decides where artifacts go."""
        from notebench.state.uri import scheme

        return scheme(self.tracking_uri) in ("http", "https", "databricks")

    def artifact_location(self, name: str | None = None) -> str | None:
        """Where a new experiment's artifacts go: inside the workspace when the tracking store is a database this
        process writes directly, None (the server's own, proxied) when tracking is an `mlflow server`."""
        return None if self.tracking_server else (self.artifacts / (name or self.experiment)).as_uri()

    def experiment_id(self, client, name: str | None = None) -> str:
        """The id of experiment `name` (default: the settings'), created with `artifact_location(name)`."""
        name = name or self.experiment
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return client.create_experiment(name, artifact_location=self.artifact_location(name))

    def client(self):
        """An `MlflowClient` on this workspace's tracking and registry stores (imports mlflow), once they answered
        (`notebench.state.check_tracking`: a clear error within seconds when a server is down)."""
        from mlflow import MlflowClient

        from notebench.state.services import check_tracking

        check_tracking(self)
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)


def git_info(root: Path) -> dict[str, str]:
    """The commit at `root` and whether the tree has uncommitted changes (`unknown` outside git)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], check=False, capture_output=True, text=True,
                             timeout=10,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        if out.returncode:
            raise RuntimeError(out.stderr.strip())
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(dirty).lower()}

"""The exceptions Notebench raises: one root, subclasses that carry what went wrong as fields."""

from __future__ import annotations

__all__ = ["BatchSchemaError", "BundleError", "DeployRefused", "KernelError", "NotebenchError", "SettingsError",
           "UseCaseError"]


class NotebenchError(Exception):
    """Root of every error Notebench raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1  # what the CLI exits with when this error reaches it


class SettingsError(NotebenchError):
    """A settings file, key or value is wrong; names the file, the key and what was expected."""

    exit_code = 2

    def __init__(self, message: str, *, file=None, key: str | None = None, expected: str | None = None):
        self.file, self.key, self.expected = file, key, expected
        where = f"{file}: " if file else ""
        super().__init__(where + message)


class UseCaseError(NotebenchError):
    """The use-case contract cannot be found or is wrong; `problems` has one line per fault."""

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None):
        self.problems = list(problems or [])
        super().__init__(message + "".join(f"\n  - {p}" for p in self.problems))


class BatchSchemaError(NotebenchError, ValueError):
    """A landed batch does not match the use case's schema; `problems` has one line per column and check."""

    def __init__(self, problems: list[str], failure_cases=None, *, file=None):
        self.problems, self.failure_cases, self.file = problems, failure_cases, file
        where = f"{file}: " if file else ""
        super().__init__(where + "batch does not match the schema:\n" + "\n".join(f"- {p}" for p in problems))


class SpecError(NotebenchError):
    """A pipeline spec is wrong: names the file, the step and how to fix it."""

    exit_code = 2

    def __init__(self, message: str, *, file=None, step: str | None = None, fix: str | None = None):
        self.file, self.step, self.fix = file, step, fix
        text = f"{file}: " if file else ""
        text += f"step '{step}': " if step else ""
        text += message
        text += f"\n  fix: {fix}" if fix else ""
        super().__init__(text)


class StepFailed(NotebenchError):
    """A step's notebook raised, timed out or did not write a declared product."""

    def __init__(self, step: str, message: str, *, notebook=None, cell: int | None = None, resume: str = ""):
        self.step, self.notebook, self.cell, self.resume = step, notebook, cell, resume
        text = f"step '{step}' failed: {message}"
        text += f"\n  executed notebook: {notebook}" if notebook else ""
        text += f"\n  resume with: {resume}" if resume else ""
        super().__init__(text)


class PipelineBusy(NotebenchError):
    """Another run of the same pipeline holds the workspace's lock."""

    exit_code = 3


class StepStopped(NotebenchError):
    """Raised by a step notebook (through `notebench.step`) to stop the pipeline with a readable reason."""


class KernelError(NotebenchError):
    """The warm kernel pool cannot serve a request: it is closed, or its server refused a launcher."""


class FeatureStoreError(NotebenchError):
    """The feature repo cannot do what was asked: not applied yet, a missing source, a malformed entity frame."""


class UnknownEntityError(FeatureStoreError, LookupError):
    """Online features were asked for entities the online store does not hold; `ids` lists them."""

    def __init__(self, entity: str, ids: list):
        self.entity, self.ids = entity, list(ids)  # the entity's join key, and the ids it does not know
        shown = ", ".join(map(repr, self.ids[:10])) + (f" and {len(self.ids) - 10} more" if len(self.ids) > 10 else "")
        super().__init__(f"no online features for {entity} {shown}: unknown, or not materialized yet")


class RegistryError(NotebenchError):
    """The model registry cannot do what was asked; names the registered model (and version) at fault."""

    def __init__(self, message: str, *, model: str | None = None, version: str | None = None):
        self.model, self.version = model, version  # the registered model's name and the version concerned
        where = f"model '{model}'" + (f" version {version}" if version else "") + ": " if model else ""
        super().__init__(where + message)


class ModelNotBlessed(RegistryError):
    """A version the blessing gate did not pass was asked to become champion without `force`; `reasons` says why."""

    def __init__(self, model: str, version: str, reasons: list[str]):
        self.reasons = list(reasons)  # the blessing's reasons, as recorded on the version
        why = "; ".join(self.reasons) or "no blessing recorded"
        super().__init__(f"not blessed ({why}); promote it anyway with force=True and a reason",
                         model=model, version=version)


class DeployCheckRequired(RegistryError):
    """`[gates] deploy_check` is on and the version has no passed `notebench deploy-check`; `status` is its last
    result (None: never checked)."""

    def __init__(self, model: str, version: str, status: str | None, at: str | None = None):
        self.status, self.at = status, at  # the version's last deploy-check result and its time
        last = f"its last deploy-check {status} at {at}" if status else "it was never deploy-checked"
        super().__init__(f"[gates] deploy_check = true and {last}; run `notebench deploy-check {version}`, or "
                         "promote it anyway with force and a reason", model=model, version=version)


class NoPreviousChampion(RegistryError):
    """A rollback was asked for, but the champion history holds no earlier champion to go back to."""


class ServingError(NotebenchError):
    """The prediction service cannot do what was asked: no model to serve, or one it cannot load or serve."""


class ModelLoadError(ServingError):
    """A registered model version (or model URI) cannot be found, loaded or served; names what was asked for."""

    def __init__(self, message: str, *, model: str | None = None, alias: str | None = None,
                 version: str | None = None):
        self.model, self.alias, self.version = model, alias, version  # the registered model, alias, version asked for
        where = f"model '{model}'" if model else ""
        where += f"@{alias}" if alias and model else ""
        where += f" version {version}" if version and model else ""
        super().__init__(f"{where}: {message}" if where else message)


class InvalidInputError(ServingError, ValueError):
    """A prediction request does not match the model's signature; `problems` holds one readable line per fault."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)  # what is wrong, one per line
        shown = self.problems[:20] + ([f"... and {len(self.problems) - 20} more"] if len(self.problems) > 20 else [])
        super().__init__("; ".join(shown))


class MalformedRequestError(InvalidInputError):
    """A prediction request's body cannot be read at all: not JSON or CSV, or not one of the accepted formats."""


class NoFeatureRepoError(UnknownEntityError):
    """Entities were asked for, but the workspace has no feature repo, so no entity is known; `path` is its folder."""

    def __init__(self, entity: str, ids: list, path):
        super().__init__(entity, ids)
        self.path = path  # the feature repo folder that does not exist
        self.args = (f"no online features for any {entity}: this workspace has no feature repo at {path}; apply and "
                     "materialize one, or send full feature records instead",)


class DeployCheckInputError(NotebenchError):
    """`notebench deploy-check` was asked for something that cannot be checked: an unknown model, version or alias,
    or a limit out of range."""

    exit_code = 2

    def __init__(self, message: str, *, model: str | None = None):
        self.model = model  # the registered model concerned
        super().__init__(f"model '{model}': {message}" if model else message)


class BundleError(NotebenchError):
    """A pipeline bundle cannot be built, read or trusted: names the file and what does not match."""

    exit_code = 2


class DeployRefused(NotebenchError):
    """A deploy or rollback was refused by an environment's rules; the environment is unchanged."""

    exit_code = 2

    def __init__(self, message: str, *, env: str | None = None, bundle: str | None = None):
        self.env, self.bundle = env, bundle  # the environment asked for, and the bundle hash concerned
        where = f"environment '{env}'" + (f", bundle {bundle[:12]}" if bundle else "") + ": " if env else ""
        super().__init__(where + message)

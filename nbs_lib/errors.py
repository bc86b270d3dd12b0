"""The exceptions Notebench raises: one root, subclasses that carry what went wrong as fields."""

from __future__ import annotations

__all__ = ["NotebenchError", "SettingsError"]


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

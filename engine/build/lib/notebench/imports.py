"""Import-time costs of our dependencies that a process can refuse to pay.

`defer_iri_grammar()`: `import nbformat` (hence papermill and nbconvert) imports jsonschema's format checkers,
and jsonschema imports `rfc3987_syntax` for its `iri` and `iri-reference` formats. That module builds three Earley
parsers from its grammar when it is imported: 2.75 s of CPU on this machine, in every process that reads or runs a
notebook, for formats that no notebook schema uses (jsonschema issue #1428; the regex-based alternative, `rfc3987`,
is GPL). The runner and the lineage sidecar both import nbformat while the kernel server is importing the steps'
libraries, so on two cores those seconds came straight out of the first step's start.

After `defer_iri_grammar()`, `rfc3987_syntax` is a stand-in whose `is_valid_syntax` loads the real module the
first time it is called, and then always answers as the real one: IRI validation still works, it just costs its
parsers when it is first used instead of at import.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types

__all__ = ["defer_iri_grammar"]

_NAME = "rfc3987_syntax"
_LOCK = threading.Lock()


def defer_iri_grammar() -> bool:
    """Put the stand-in for `rfc3987_syntax` in place unless the module is loaded already or not installed; True
    when the stand-in is (now) in place."""
    with _LOCK:
        current = sys.modules.get(_NAME)
        if current is not None:
            return getattr(current, "__notebench_deferred__", False)
        spec = importlib.machinery.PathFinder.find_spec(_NAME)
        if spec is None:
            return False
        stand_in = types.ModuleType(_NAME, "rfc3987_syntax, loaded on first use (see notebench.imports)")
        stand_in.__notebench_deferred__ = True
        stand_in.__spec__ = None

        def is_valid_syntax(term: str, value: str) -> bool:
            return _load(spec).is_valid_syntax(term, value)

        def __getattr__(name: str):  # anything else: the real module's (import machinery probes: not there)
            if name.startswith("__"):
                raise AttributeError(name)
            return getattr(_load(spec), name)

        stand_in.is_valid_syntax, stand_in.__getattr__ = is_valid_syntax, __getattr__
        sys.modules[_NAME] = stand_in
        return True


def _load(spec) -> types.ModuleType:
    """The real `rfc3987_syntax`, imported once (it replaces the stand-in in `sys.modules`)."""
    with _LOCK:
        module = sys.modules.get(_NAME)
        if module is not None and not getattr(module, "__notebench_deferred__", False):
            return module
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # its submodules import the package by name while it loads
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(_NAME, None)
            raise
        return module

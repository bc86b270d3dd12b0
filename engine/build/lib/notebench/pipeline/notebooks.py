"""Reading step notebooks without a kernel: the parameters they declare, their code, the modules they import."""

from __future__ import annotations

import ast
import hashlib
import json
import threading
from pathlib import Path

# ast.parse is not thread-safe in CPython 3.11 ("AST constructor recursion depth mismatch"); steps are
# fingerprinted from several runner threads
_AST_LOCK = threading.Lock()


def parse_python(source: str):
    """`ast.parse` under a process-wide lock."""
    with _AST_LOCK:
        return ast.parse(source)


__all__ = ["code_digest", "declared_parameters", "imported_modules", "read_notebook"]


def read_notebook(path: Path) -> dict:
    """The notebook at `path` as plain JSON (no nbformat import: this runs on every cached run)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]


def _is_parameters(cell: dict) -> bool:
    return "parameters" in cell.get("metadata", {}).get("tags", [])


def _unparse(node) -> str:
    with _AST_LOCK:
        return ast.unparse(node)


def declared_parameters(nb: dict) -> dict[str, str] | None:
    """Names assigned in the cell tagged `parameters`, with their default's source; None without such a cell."""
    cells = [c for c in _code_cells(nb) if _is_parameters(c)]
    if not cells:
        return None
    names: dict[str, str] = {}
    for cell in cells:
        tree = parse_python(_source(cell))
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name):
                    names[target.id] = _unparse(node.value) if node.value is not None else "None"
    return names


def code_digest(nb: dict) -> str:
    """sha256 of the code cells' sources: outputs, metadata and markdown do not count."""
    h = hashlib.sha256()
    for cell in _code_cells(nb):
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        h.update(_source(cell).encode())
        h.update(b"\0")
    return h.hexdigest()


def imported_modules(source: str, package: str) -> set[str]:
    """Modules of `package` that `source` imports (IPython magics and shell lines are skipped)."""
    lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        tree = parse_python("\n".join(lines))
    except SyntaxError:
        return set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == package}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == package:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def notebook_imports(nb: dict, package: str) -> set[str]:
    """Modules of `package` imported anywhere in the notebook's code cells."""
    return set().union(*(imported_modules(_source(c), package) for c in _code_cells(nb)))

"""ci/skip_check.py — no test is skipped unconditionally: a skip must say when (a condition), never always.

Flags, in the test files under the given folders (default: tests/):
- `pytest.mark.skip` (a decorator, a `pytestmark`, a name bound to it) outside an `if`: skipif takes a condition;
- `pytest.mark.skipif(True)`, `skipif(1)`, `skipif("True")`: a condition that is a constant;
- `pytest.skip(...)` as a statement of the module or of a function's body, not under an `if`/`try`/`with`/loop;
- the same through `from pytest import mark, skip` and `unittest.skip`.
Usage: python ci/skip_check.py [FOLDER_OR_FILE ...]. Exits 1 with one line per finding (file:line: what, fix).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

FIX = "give it a condition (pytest.mark.skipif(<what is missing>, reason=...)), or fix or delete the test"
GUARDS = (ast.If, ast.IfExp, ast.Try, ast.With, ast.For, ast.While, ast.Match, ast.BoolOp)


def _dotted(node: ast.AST) -> str:
    """`pytest.mark.skip` for an attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


class Finder(ast.NodeVisitor):
    """Walks one module, keeping the chain of enclosing nodes, and collects unconditional skips."""

    def __init__(self, path: Path):
        self.path, self.found, self.stack = path, [], []
        self.aliases = {"pytest.mark.skip": "pytest.mark.skip", "pytest.skip": "pytest.skip",
                        "pytest.mark.skipif": "pytest.mark.skipif", "unittest.skip": "pytest.mark.skip"}

    def visit(self, node: ast.AST):
        self.stack.append(node)
        try:
            super().visit(node)
        finally:
            self.stack.pop()

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        """`from pytest import mark, skip` (and `as` names): their uses count as pytest's."""
        for alias in node.names:
            full = f"{node.module}.{alias.name}"
            for known in list(self.aliases):
                if known == full or known.startswith(full + "."):
                    self.aliases[(alias.asname or alias.name) + known[len(full):]] = self.aliases[known]
        self.generic_visit(node)

    def _meaning(self, node: ast.AST) -> str:
        return self.aliases.get(_dotted(node), "")

    def _guarded(self) -> bool:
        """Whether an enclosing node makes what is being visited conditional."""
        return any(isinstance(n, GUARDS) for n in self.stack[:-1])

    def _add(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.path}:{node.lineno}: {what}; {FIX}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        parent = self.stack[-2] if len(self.stack) > 1 else None
        inner = isinstance(parent, ast.Attribute) and parent.value is node  # part of a longer chain
        if not inner and self._meaning(node) == "pytest.mark.skip" and not self._guarded():
            self._add(node, f"{_dotted(node)} skips always")
        self.generic_visit(node)

    visit_Name = visit_Attribute  # `skip` imported from unittest, `mark.skip` caught through the Attribute

    def visit_Call(self, node: ast.Call) -> None:
        meaning = self._meaning(node.func)
        if meaning == "pytest.mark.skipif":
            condition = node.args[0] if node.args else next((k.value for k in node.keywords
                                                            if k.arg == "condition"), None)
            if isinstance(condition, ast.Constant) and _always(condition.value):
                self._add(node, f"skipif({condition.value!r}) is a condition that always holds")
        elif meaning == "pytest.skip" and self._statement_of_a_body():
            self._add(node, "pytest.skip(...) runs unconditionally "
                            + ("at module level" if len(self.stack) <= 3 else "in the body of a function"))
        self.generic_visit(node)

    def _statement_of_a_body(self) -> bool:
        """The call is a whole statement directly in the module or a function body (no guard on the way)."""
        if len(self.stack) < 3 or not isinstance(self.stack[-2], ast.Expr):
            return False
        return isinstance(self.stack[-3], ast.Module | ast.FunctionDef | ast.AsyncFunctionDef) and not self._guarded()


def _always(value) -> bool:
    """A constant condition that holds: True, 1, a non-empty string pytest evaluates to a truthy literal."""
    if isinstance(value, str):
        try:
            return bool(ast.literal_eval(value.strip()))
        except (ValueError, SyntaxError):
            return False
    return bool(value)


def check(path: Path) -> list[str]:
    """The findings of one Python file."""
    finder = Finder(path)
    finder.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return finder.found


def files(targets: list[str]) -> list[Path]:
    out = []
    for target in map(Path, targets):
        out += [target] if target.is_file() else sorted(p for p in target.rglob("*.py")
                                                        if "fixture_project" not in p.parts)
    return out


def main(argv: list[str]) -> int:
    targets = files(argv or ["tests"])
    found = [line for path in targets for line in check(path)]
    print("\n".join(f"   {line}" for line in found) or f"   {len(targets)} files: no test is skipped unconditionally")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

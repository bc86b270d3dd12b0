"""ci/check's contract stage: the engine reads the use case only through `notebench.usecase`.

Fails, naming file and line, when
- a module of the engine (`engine/`) imports a use-case package (the package of `[use_case] object`, or `nbs_lib`),
  or names one in a string other than the settings default;
- a test of the engine (`tests/`) imports the project's use-case package (they run on `tests/fixture_project`);
- the engine, a pipeline's step notebooks, `ci/`, the dashboards or the engine's tests name the reference use case:
  its name, entity, target, its features with compound names, and "customer" (case-insensitive).
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_MENTION = {ROOT / "engine/notebench/settings.py", ROOT / "engine/notebench/usecase.py"}  # the default
# `[use_case] object` and its documentation name the nbdev package


def use_case_words() -> tuple[set[str], list[str]]:
    """The use-case packages and the reference use case's telltale names (from its own contract)."""
    sys.path.insert(0, str(ROOT))
    from notebench.settings import load_settings
    from notebench.usecase import load_use_case, use_case_module

    settings = load_settings(ROOT / "settings.ini")
    reference = settings.value("use_case", "object")
    uc = load_use_case(reference=reference)
    packages = {use_case_module(reference).split(".")[0], "nbs_lib"}
    words = {uc.name, uc.target, *uc.entities, "customer", *(f for f in uc.features if "_" in f)}
    return packages, sorted(w for w in words if len(w) >= 4)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module))
    return found


def text_of(path: Path) -> str:
    """A file's text; a notebook's cell sources only (outputs may quote anything)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(c["source"]) for c in cells)
    return path.read_text(encoding="utf-8", errors="replace")


def files(folder: str) -> list[Path]:
    """The files of `folder` that git tracks or would track (build output and other ignored files left out)."""
    import subprocess

    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", folder], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return sorted(ROOT / name for name in out.split("\0") if name and (ROOT / name).is_file())


def main() -> int:
    packages, words = use_case_words()
    problems = []
    engine = [p for p in files("engine") if p.suffix == ".py"]
    tests = [p for p in files("tests") if p.suffix == ".py" and "fixture_project" not in p.parts]
    for path in engine + tests:
        for line, module in imports(path):
            if module.split(".")[0] in packages:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {module}; read the use case through "
                                "notebench.usecase.load_use_case (tests: the fixture use case)")
    for path in engine:
        if path in ALLOWED_MENTION:
            continue
        for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\b(" + "|".join(sorted(packages)) + r")\.", text):
                problems.append(f"{path.relative_to(ROOT)}:{n}: names a use-case package: {text.strip()[:80]}")
    scanned = engine + tests + files("notebooks/pipelines") + files("ci") + files("dashboards")
    pattern = re.compile(r"(" + "|".join(map(re.escape, words)) + r")", re.IGNORECASE)
    for path in scanned:
        if not path.is_file() or path.suffix not in (".py", ".ipynb", ".yaml", ".yml", "") or path == Path(__file__):
            continue
        for n, text in enumerate(text_of(path).splitlines(), 1):
            if m := pattern.search(text):
                problems.append(f"{path.relative_to(ROOT)}:{n}: names the reference use case ({m.group(1)!r}): "
                                f"{text.strip()[:80]}")
    for p in problems:
        print("   " + p)
    print(f"   {len(problems)} problem(s); words searched: {', '.join(words)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

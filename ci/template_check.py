"""ci/check's template stage: the project template of `notebench new` is this repository, with no second copy.

`copier.yml` makes this repository the template. The check renders it (copier, into a temporary folder) and fails,
naming the file, when
- a file the template shares with this repository (its pipelines, ci/, .github/, dashboards/, Makefile, .gitignore)
  comes out different from this repository's own file, or a shared file is missing;
- the template renders anything else than those files and its `.jinja` files (a test, the engine, the reference use
  case leaking into new projects);
- a `.jinja` file stands for a shared file (`Makefile.jinja`, `ci/check.jinja`, ...): a second copy that could drift;
- a tracked file elsewhere in this repository has the same content as a shared file (a copy kept by hand; a project
  inside this repository, such as an example, links the shared files instead);
- the rendered settings.ini does not hold exactly this repository's settings keys.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import io
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "engine"))
from notebench.new.template import SHARED as _SHARED  # noqa: E402 - the list `notebench new` links in an example

SHARED = tuple(f"{n}/" if (ROOT / n).is_dir() else n for n in _SHARED)  # copied into a new project as they are
RENDERED = {"pyproject.toml", "settings.ini", "README.md", "tests/test_project.py", ".copier-answers.yml"}  # .jinja


def tracked() -> list[str]:
    """This repository's files (tracked or new, not ignored), relative to its root."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    return sorted(n for n in out.split("\0") if n and (ROOT / n).is_file()
                  and (ROOT / n).resolve() == (ROOT / n).absolute())  # not reached through a link


def is_shared(name: str) -> bool:
    return any(name == s or (s.endswith("/") and name.startswith(s)) for s in SHARED)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def render(out: Path) -> None:
    """The template rendered into `out` with its default answers."""
    import copier

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")  # "dirty template changes included", "no git tags found"
        copier.run_copy(str(ROOT), str(out), defaults=True, quiet=True, data={"engine": "path",
                                                                             "engine_from": str(ROOT / "engine")})


def main() -> int:
    files = tracked()
    shared = [n for n in files if is_shared(n) and not n.endswith((".pyc", ".jinja"))]
    problems = [f"{n}: a template of a shared file; the template must copy {n[:-6]} itself"
                for n in files if n.endswith(".jinja") and n[:-6] not in RENDERED]
    by_content: dict[str, str] = {}
    for name in shared:
        by_content.setdefault(digest(ROOT / name), name)
    problems += [f"{n}: the same content as the shared {by_content[digest(ROOT / n)]}; keep one copy"
                 for n in files if not is_shared(n) and (ROOT / n).stat().st_size > 0
                 and digest(ROOT / n) in by_content]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "project"
        render(out)
        made = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        for name in shared:
            if not (out / name).is_file():
                problems.append(f"{name}: shared, but the template does not copy it (see copier.yml _exclude)")
            elif digest(out / name) != digest(ROOT / name):
                problems.append(f"{name}: the template renders it differently from this repository's own file")
        problems += [f"{n}: rendered into every new project, but neither shared nor a .jinja file (copier.yml "
                     "_exclude lets it through)" for n in made if not is_shared(n) and n not in RENDERED]
        ours, theirs = configparser.ConfigParser(), configparser.ConfigParser()
        ours.read(ROOT / "settings.ini")
        theirs.read(out / "settings.ini")
        keys = {(s, k) for s in ours.sections() for k in ours[s]}
        other = {(s, k) for s in theirs.sections() for k in theirs[s]}
        problems += [f"settings.ini.jinja: [{s}] {k} is missing from a new project's settings" for s, k in keys - other]
        problems += [f"settings.ini.jinja: [{s}] {k} is not a key of settings.ini" for s, k in other - keys]
    for p in problems:
        print("   " + p)
    print(f"   {len(problems)} problem(s); {len(shared)} shared files, {len(RENDERED)} rendered from .jinja files")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""pipeline.yaml: a pipeline's steps, their notebooks, upstream steps, parameters and products — and its checks.

Every check runs before anything executes, and each failure is a `SpecError` naming the file, the step and
the fix. The runner injects three parameters into a step's notebook when its `parameters` cell declares them:
`upstream` ({step: {product: path}}), `products` ({product: path to write}) and `context` (the run's ids).

The settings a step reads are part of its cache key (`StepSpec.reads`): those its `settings:` entry declares
(`section.key`, or `section` for all its keys) and those its notebook reads literally, `.value("section", "key")`,
`.path(...)`, `settings["section"]["key"]` (a read whose key is not a literal counts as its whole section, unless
the step declares keys of that section: then the declaration says which).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from notebench.errors import SpecError
from notebench.pipeline.notebooks import declared_parameters, parse_python, read_notebook
from notebench.settings import RENAMED, SCHEMA

__all__ = ["INJECTED", "PipelineSpec", "StepSpec", "load_spec", "find_pipeline", "settings_read"]

INJECTED = ("upstream", "products", "context")  # parameters the runner fills in
STEP_KEYS = {"notebook", "upstream", "parameters", "products", "inputs", "settings", "timeout", "retries",
             "description"}
TOP_KEYS = {"description", "parameters", "steps"}


@dataclass
class StepSpec:
    """One step: a notebook, the steps it needs, its parameters and the files it must produce."""

    name: str
    notebook: Path  # absolute path of the step's source notebook
    upstream: list[str] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)  # the spec's values; pipeline parameters are merged in
    products: dict[str, str] = field(default_factory=dict)  # product name -> file name in the step's folder
    inputs: list[str] = field(default_factory=list)  # globs of outside files it reads, relative to the workspace
    timeout: int | None = None  # seconds; None: [pipeline] timeout
    retries: int | None = None  # None: [pipeline] retries
    declared: dict[str, str] = field(default_factory=dict)  # names in the notebook's parameters cell
    settings: list[str] = field(default_factory=list)  # the spec's `settings:` entries: "section" or "section.key"
    reads: list[str] = field(default_factory=list)  # every "section.key" the step reads: declared, then scanned


@dataclass
class PipelineSpec:
    """A validated pipeline: steps in topological order."""

    name: str
    file: Path
    steps: dict[str, StepSpec]
    parameters: dict
    digest: str  # sha256 of pipeline.yaml
    description: str = ""
    env: str | None = None  # the environment whose deployed release this spec was read from; None: the project's

    @property
    def folder(self) -> Path:
        return self.file.parent

    def downstream(self, name: str) -> list[str]:
        """`name` and every step that depends on it, in run order."""
        out = [name]
        for step in self.steps.values():
            if any(u in out for u in step.upstream) and step.name not in out:
                out.append(step.name)
        return out

    def upstream_of(self, name: str) -> list[str]:
        """`name` and every step it depends on, in run order."""
        needed = {name}
        for step in reversed(list(self.steps.values())):
            if step.name in needed:
                needed.update(step.upstream)
        return [n for n in self.steps if n in needed]

    def step_parameters(self, step: StepSpec, overrides: dict | None = None) -> dict:
        """The user parameters a step gets: pipeline parameters it declares, its own, then `overrides`."""
        merged = {k: v for k, v in self.parameters.items() if k in step.declared}
        merged.update(step.parameters)
        merged.update({k: v for k, v in (overrides or {}).items() if k in step.declared})
        return merged


def find_pipeline(name_or_path: str, root: Path) -> Path:
    """The pipeline.yaml for a pipeline name (`notebooks/pipelines/<name>`) or a folder or file path."""
    candidate = Path(name_or_path)
    named = root / "notebooks" / "pipelines" / name_or_path / "pipeline.yaml"
    for path in (candidate, candidate / "pipeline.yaml", named):
        if path.is_file():
            return path.resolve()
    known = sorted(p.parent.name for p in (root / "notebooks" / "pipelines").glob("*/pipeline.yaml"))
    raise SpecError(f"no pipeline named '{name_or_path}'", file=root / "notebooks" / "pipelines",
                    fix=f"use one of: {', '.join(known) or '(none yet)'}, or a path to a pipeline.yaml")


def _yaml_loader():
    """A safe YAML loader that refuses duplicate keys instead of keeping the last one."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise SpecError(f"'{key}' is declared twice (line {key_node.start_mark.line + 1})",
                                fix="keep one declaration")
            seen.add(key)
        return loader.construct_mapping(node, deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def _read_yaml(file: Path) -> dict:
    import yaml

    if not file.is_file():
        raise SpecError("pipeline spec not found", file=file, fix="create pipeline.yaml (see the README)")
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except SpecError as exc:
        raise SpecError(str(exc), file=file) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}", file=file) from exc
    if not isinstance(data, dict) or not isinstance(data.get("steps"), dict) or not data["steps"]:
        raise SpecError("expected a mapping with a non-empty 'steps' mapping", file=file)
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise SpecError(f"unknown top-level key(s) {sorted(unknown)}", file=file, fix=f"use only {sorted(TOP_KEYS)}")
    return data


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _parse_step(name: str, raw, file: Path) -> StepSpec:
    if not isinstance(raw, dict):
        raise SpecError("expected a mapping with at least 'notebook'", file=file, step=name)
    unknown = set(raw) - STEP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise SpecError(f"unknown key '{key}'{_suggest(key, STEP_KEYS)}", file=file, step=name,
                        fix=f"use only {sorted(STEP_KEYS)}")
    if "notebook" not in raw:
        raise SpecError("no 'notebook'", file=file, step=name,
                        fix="name the step's notebook, e.g. notebook: train.ipynb")
    upstream = raw.get("upstream") or []
    upstream = [upstream] if isinstance(upstream, str) else list(upstream)
    products = raw.get("products") or {}
    parameters = raw.get("parameters") or {}
    if not isinstance(products, dict) or not isinstance(parameters, dict):
        raise SpecError("'products' and 'parameters' must be mappings", file=file, step=name)
    settings = raw.get("settings") or []
    settings = [settings] if isinstance(settings, str) else settings
    if not isinstance(settings, list) or not all(isinstance(e, str) for e in settings):
        raise SpecError(f"'settings' must be a list of settings names, not {settings!r}", file=file, step=name,
                        fix="write e.g. settings: [training.holdout_days, gates] (a section stands for all its keys)")
    for entry in settings:
        _check_setting(entry, file, name)
    return StepSpec(name=name, notebook=(file.parent / raw["notebook"]).resolve(), upstream=upstream,
                    parameters=parameters, products={str(k): str(v) for k, v in products.items()},
                    inputs=[raw["inputs"]] if isinstance(raw.get("inputs"), str) else list(raw.get("inputs") or []),
                    settings=list(settings), timeout=raw.get("timeout"), retries=raw.get("retries"))


def _check_setting(entry: str, file: Path, step: str, where: str = "'settings' entry") -> None:
    """Refuse a settings name ("section" or "section.key") that settings.ini has no section or key for."""
    section, _, key = entry.partition(".")
    if section not in SCHEMA:
        raise SpecError(f"{where} '{entry}': no settings section [{section}]{_suggest(section, SCHEMA)}", file=file,
                        step=step, fix=f"use a section of settings.ini: {', '.join(SCHEMA)}")
    if key and (section, key) in RENAMED:
        new_section, new_key, _ = RENAMED[(section, key)]
        raise SpecError(f"{where} '{entry}': [{section}] {key} was renamed", file=file, step=step,
                        fix=f"use {new_section}.{new_key}")
    if key and key not in SCHEMA[section]:
        raise SpecError(f"{where} '{entry}': [{section}] has no key '{key}'{_suggest(key, SCHEMA[section])}",
                        file=file, step=step, fix=f"use one of {', '.join(f'{section}.{k}' for k in SCHEMA[section])}"
                                                  f", or '{section}' for all of them")


def _literal(node) -> str | None:
    """The string a node spells literally, else None."""
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _is_settings(node) -> bool:
    """`settings` or `<anything>.settings`: what a `[...]` read of a settings section is taken from."""
    return (isinstance(node, ast.Name) and node.id == "settings") or \
        (isinstance(node, ast.Attribute) and node.attr == "settings")


def settings_read(nb: dict) -> set[tuple[str, str | None]]:
    """(section, key) of every setting a notebook's code cells read literally; key None: a key not written literally.

    Reads are `<x>.value("section", "key")` and `<x>.path(...)` with a settings section as first argument, and
    `settings["section"]["key"]` / `<x>.settings["section"]` (the whole section)."""
    found: set[tuple[str, str | None]] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell.get("source"), list) else cell.get("source", "")
        try:
            tree = parse_python("\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!"))))
        except SyntaxError:
            continue
        keyed: set[int] = set()  # section subscripts read with a literal key
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args \
                    and node.func.attr in ("value", "path") and _literal(node.args[0]) in SCHEMA:
                found.add((node.args[0].value, _literal(node.args[1]) if len(node.args) > 1 else None))
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Subscript) \
                    and _is_settings(node.value.value) and _literal(node.value.slice) in SCHEMA:
                keyed.add(id(node.value))
                found.add((node.value.slice.value, _literal(node.slice)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Subscript) and id(node) not in keyed and _is_settings(node.value) \
                    and _literal(node.slice) in SCHEMA:
                found.add((node.slice.value, None))
    return found


def _step_reads(step: StepSpec, nb: dict, file: Path) -> list[str]:
    """Every "section.key" the step reads: its `settings:` entries, plus what its notebook reads literally."""
    declared: dict[str, set[str]] = {}
    for entry in step.settings:
        section, _, key = entry.partition(".")
        declared.setdefault(section, set()).update([key] if key else SCHEMA[section])
    reads = {f"{s}.{k}" for s, keys in declared.items() for k in keys}
    for section, key in sorted(settings_read(nb), key=str):
        if key is not None:
            _check_setting(f"{section}.{key}", file, step.name, where=f"{step.notebook.name} reads setting")
            reads.add(f"{section}.{key}")
        elif section not in declared:  # a computed key: all of the section, unless the spec says which keys
            reads.update(f"{section}.{k}" for k in SCHEMA[section])
    return sorted(reads)


def _check_notebook(step: StepSpec, pipeline_params: dict, file: Path) -> None:
    if not step.notebook.is_file():
        others = [p.name for p in step.notebook.parent.glob("*.ipynb")]
        raise SpecError(f"unknown notebook '{step.notebook.name}'{_suggest(step.notebook.name, others)}",
                        file=file, step=step.name, fix=f"create {step.notebook} or fix the 'notebook' entry")
    nb = read_notebook(step.notebook)
    step.reads = _step_reads(step, nb, file)
    declared = declared_parameters(nb)
    if declared is None:
        raise SpecError(f"notebook {step.notebook.name} has no cell tagged 'parameters'", file=file, step=step.name,
                        fix="tag the cell holding the step's parameters with 'parameters' (papermill's convention)")
    step.declared = declared
    for name in step.parameters:
        if name not in declared:
            raise SpecError(f"parameter '{name}' is not declared in {step.notebook.name}'s parameters cell"
                            f"{_suggest(name, declared)}", file=file, step=step.name,
                            fix=f"add `{name} = ...` to the parameters cell, or remove it from the spec")
    needs = {"products": bool(step.products), "upstream": bool(step.upstream)}
    for name, needed in needs.items():
        if needed and name not in declared:
            raise SpecError(f"the step has {name} but {step.notebook.name}'s parameters cell does not declare "
                            f"'{name}'", file=file, step=step.name,
                            fix=f"add `{name} = None` to the parameters cell (the runner fills it in)")


def _order(steps: dict[str, StepSpec], file: Path) -> list[str]:
    """Topological order (stable: spec order among ready steps); a cycle is an error naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]):
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name):] + [name]
            raise SpecError(f"cycle: {' -> '.join(cycle)}", file=file, step=name,
                            fix="remove one of these upstream links")
        state[name] = 1
        for up in steps[name].upstream:
            visit(up, path + [name])
        state[name] = 2
        order.append(name)

    for name in steps:
        visit(name, [])
    return order


def load_spec(file: Path | str) -> PipelineSpec:
    """Read and check a pipeline.yaml; raise `SpecError` on the first problem, before anything runs."""
    file = Path(file).resolve()
    data = _read_yaml(file)
    parameters = data.get("parameters") or {}
    steps = {str(name): _parse_step(str(name), raw, file) for name, raw in data["steps"].items()}
    owners: dict[str, str] = {}
    for step in steps.values():
        for up in step.upstream:
            if up not in steps:
                raise SpecError(f"upstream '{up}' is not a step{_suggest(up, steps)}", file=file, step=step.name,
                                fix=f"use one of: {', '.join(steps)}")
        for product, filename in step.products.items():
            if product in owners:
                raise SpecError(f"product '{product}' is declared twice (also by step '{owners[product]}')",
                                file=file, step=step.name, fix="give each product a unique name")
            if Path(filename).is_absolute() or ".." in Path(filename).parts:
                raise SpecError(f"product '{product}' must be a relative file name, not {filename!r}",
                                file=file, step=step.name)
            owners[product] = step.name
    order = _order(steps, file)
    for name in order:
        _check_notebook(steps[name], parameters, file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return PipelineSpec(name=file.parent.name, file=file, steps={n: steps[n] for n in order},
                        parameters=parameters, digest=digest, description=str(data.get("description", "")))

"""Build small real pipelines (pipeline.yaml + step notebooks) in a folder, for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import nbformat
import yaml
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

PARAMS = "upstream = None\nproducts = None\ncontext = None\n"


def step_notebook(path: Path, body: str, params: str = "", name: str = "") -> Path:
    """A step notebook: a tagged parameters cell (`upstream`, `products`, `context` + `params`), then `body`."""
    nb = new_notebook()
    nb.metadata = {"kernelspec": {"name": "notebench", "display_name": "Python (notebench)", "language": "python"}}
    cell = new_code_cell(PARAMS + params, id="params")
    cell.metadata["tags"] = ["parameters"]
    setup = new_code_cell(f"from notebench.step import Step\nstep = Step({name or path.stem!r}, upstream=upstream, "
                          "products=products, context=context)", id="setup")
    nb.cells = [new_markdown_cell(f"# {path.stem}", id="title"), cell, setup, new_code_cell(body, id="body")]
    nbformat.write(nb, path)
    return path


def make_pipeline(folder: Path, steps: dict[str, dict], parameters: dict | None = None) -> Path:
    """Write pipeline.yaml and one notebook per step.

    `steps[name]` holds `body` (code), optional `params` (parameters-cell source), `upstream`, `products`,
    `parameters`, and any other spec key.
    """
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict = {"steps": {}}
    if parameters:
        spec["parameters"] = parameters
    for name, s in steps.items():
        step_notebook(folder / f"{name}.ipynb", s.get("body", "pass"), s.get("params", ""), name)
        entry = {"notebook": f"{name}.ipynb"}
        entry.update({k: v for k, v in s.items() if k not in {"body", "params"}})
        spec["steps"][name] = entry
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder / "pipeline.yaml"


WRITE = "import time, pathlib\nt0 = time.time()\ntime.sleep({sleep})\n"
TIMES = "pathlib.Path(step.output({product!r})).write_text(f'{{t0}} {{time.time()}} ' + {content})\n"


def fork_join(folder: Path, sleep: float = 1.0) -> Path:
    """a -> (b, c) -> d; each step sleeps, then writes its start and end time and what it read."""
    def body(product, reads=()):
        read = " + ".join(f"pathlib.Path(step.input({r!r})).read_text()" for r in reads) or "''"
        return WRITE.format(sleep=sleep) + TIMES.format(product=product, content=read)

    return make_pipeline(folder, {
        "a": {"body": body("a_out"), "products": {"a_out": "a.txt"}},
        "b": {"body": body("b_out", ["a_out"]), "upstream": ["a"], "products": {"b_out": "b.txt"}},
        "c": {"body": body("c_out", ["a_out"]), "upstream": ["a"], "products": {"c_out": "c.txt"}},
        "d": {"body": body("d_out", ["b_out", "c_out"]), "upstream": ["b", "c"], "products": {"d_out": "d.txt"}},
    })

"""pipeline.yaml checks: every mistake is refused before anything runs, naming the file, the step and the fix."""

from __future__ import annotations

import pytest
import yaml
from conftest import notebench
from notebench.errors import SpecError
from notebench.pipeline.spec import load_spec
from pipeline_kit import fork_join, make_pipeline


def edit(spec_file, change):
    data = yaml.safe_load(spec_file.read_text())
    change(data)
    spec_file.write_text(yaml.safe_dump(data, sort_keys=False))


def test_valid_spec_is_ordered_and_reads_declared_parameters(tmp_path):
    spec = load_spec(fork_join(tmp_path / "p"))
    assert list(spec.steps) == ["a", "b", "c", "d"]
    assert set(spec.steps["d"].declared) == {"upstream", "products", "context"}
    assert spec.downstream("b") == ["b", "d"]


@pytest.mark.parametrize("change, step, words", [
    (lambda d: d["steps"]["b"].update(notebook="nope.ipynb"), "b", ["unknown notebook 'nope.ipynb'"]),
    (lambda d: d["steps"]["a"].update(upstream=["d"]), "a", ["cycle", "a -> d"]),
    (lambda d: d["steps"]["b"].update(upstream=["z"]), "b", ["upstream 'z' is not a step"]),
    (lambda d: d["steps"]["b"].update(upstream=["aa"]), "b", ["did you mean 'a'"]),
    (lambda d: d["steps"]["c"].update(parameters={"n_trials": 3}), "c",
     ["parameter 'n_trials' is not declared", "parameters cell"]),
    (lambda d: d["steps"]["c"]["products"].update(b_out="again.txt"), "c", ["product 'b_out' is declared twice"]),
    (lambda d: d["steps"]["c"].update(upsteam=["a"]), "c", ["unknown key 'upsteam'", "did you mean 'upstream'"]),
    (lambda d: d["steps"]["c"]["products"].update(c_out="../escape.txt"), "c", ["relative file name"]),
])
def test_bad_specs_name_file_step_and_fix(tmp_path, change, step, words):
    spec_file = fork_join(tmp_path / "p")
    edit(spec_file, change)
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    message = str(err.value)
    assert str(spec_file) in message and f"step '{step}'" in message
    for word in words:
        assert word in message


def test_duplicate_yaml_key_is_refused(tmp_path):
    spec_file = fork_join(tmp_path / "p")
    spec_file.write_text(spec_file.read_text() + "  a:\n    notebook: a.ipynb\n")
    with pytest.raises(SpecError, match="'a' is declared twice"):
        load_spec(spec_file)


def test_notebook_without_parameters_cell(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    spec_file = make_pipeline(tmp_path / "p", {"a": {"body": "pass"}})
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1", id="x")]), tmp_path / "p" / "a.ipynb")
    with pytest.raises(SpecError, match="no cell tagged 'parameters'"):
        load_spec(spec_file)


def test_step_with_products_must_declare_products(tmp_path):
    spec_file = make_pipeline(tmp_path / "p", {"a": {"body": "pass", "products": {"x": "x.txt"}}})
    nb = (tmp_path / "p" / "a.ipynb")
    nb.write_text(nb.read_text().replace("products = None\\n", ""))
    with pytest.raises(SpecError, match="does not declare 'products'"):
        load_spec(spec_file)


def test_cli_exits_2_on_a_bad_spec(tmp_path, workspace):
    spec_file = fork_join(tmp_path / "p")
    edit(spec_file, lambda d: d["steps"]["b"].update(upstream=["z"]))
    proc = notebench("run", str(spec_file))
    assert proc.returncode == 2
    assert "step 'b'" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (workspace / "pipelines").exists()  # nothing ran, nothing was written


def test_unknown_pipeline_name_lists_known_ones(workspace):
    proc = notebench("run", "no-such-pipeline")
    assert proc.returncode == 2 and "no pipeline named 'no-such-pipeline'" in proc.stderr


def test_every_shipped_pipeline_spec_is_valid():
    from conftest import ROOT

    specs = sorted((ROOT / "notebooks" / "pipelines").glob("*/pipeline.yaml"))
    assert specs, "no pipelines shipped"
    for spec_file in specs:
        assert load_spec(spec_file).steps  # notebooks exist and declare parameters (tags survive nbdev-clean)

"""`notebench.imports`: reading notebooks without paying for jsonschema's IRI grammar, and IRI checks still right."""

import subprocess
import sys

SCRIPT = """
import sys, time
from notebench.imports import defer_iri_grammar
assert defer_iri_grammar() and defer_iri_grammar()  # in place, and idempotent
import nbformat, papermill
assert "lark" not in sys.modules, "nbformat loaded the IRI grammar at import"
from jsonschema import Draft7Validator
iri = Draft7Validator({"type": "string", "format": "iri"}, format_checker=Draft7Validator.FORMAT_CHECKER)
assert iri.is_valid("https://example.org/caf\\u00e9?q=1")
assert not iri.is_valid("not an iri")
import rfc3987_syntax  # now the real module, answering directly
assert not getattr(rfc3987_syntax, "__notebench_deferred__", False)
assert rfc3987_syntax.is_valid_syntax("iri", "http://example.org/")
print("ok")
"""


def test_notebooks_load_without_the_iri_grammar_and_iri_checks_still_work():
    out = subprocess.run([sys.executable, "-c", SCRIPT], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_nothing_to_defer_once_the_real_module_is_loaded():
    script = ("import sys, rfc3987_syntax\nfrom notebench.imports import defer_iri_grammar\n"
              "assert defer_iri_grammar() is False and sys.modules['rfc3987_syntax'] is rfc3987_syntax\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

"""Structure guards from the 'one home per idea' review: no unused code the linter can see, no oversized module,
and runbooks that hold calls and display, not logic."""
from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from conftest import ROOT

MODULES = sorted(p for p in (ROOT / "mlflow_template").glob("*.py") if p.name not in ("_modidx.py", "__init__.py"))
RUNBOOKS = sorted((ROOT / "nbs" / "pipeline").glob("[0-9]*.ipynb"))
MAX_MODULE_LINES = 450
MAX_RUNBOOK_CELL_LINES = 15


def test_package_has_no_unused_imports_or_names():
    "pyflakes finds no unused import, undefined name or shadowed definition in the exported package"
    r = subprocess.run([sys.executable, "-m", "pyflakes", *map(str, MODULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_no_module_is_oversized(module):
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module.name} has {lines} lines (at most {MAX_MODULE_LINES}): split it by idea"


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.name)
def test_runbook_cells_are_short(runbook):
    "Every code cell of a runbook, but its parameters cell, is calls and display: a few lines"
    nb = nbformat.read(runbook, as_version=4)
    long = [(i, len(c.source.splitlines())) for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and "parameters" not in c.metadata.get("tags", []) and len(c.source.splitlines()) > MAX_RUNBOOK_CELL_LINES]
    assert not long, f"{runbook.name}: code cells over {MAX_RUNBOOK_CELL_LINES} lines (cell, lines): {long}"


@pytest.mark.parametrize("runbook", RUNBOOKS, ids=lambda p: p.name)
def test_runbooks_define_no_functions_or_classes(runbook):
    "A runbook that needs a function of its own has logic that belongs in a library notebook"
    import ast
    nb = nbformat.read(runbook, as_version=4)
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code": continue
        defs = [getattr(n, "name", "lambda") for n in ast.walk(ast.parse(c.source))
                if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda))]
        assert not defs, f"{runbook.name} cell {i} defines {defs}"

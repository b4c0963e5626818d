"""`make test`'s own guard: notebooks, package and README in sync, named when not; and the public API pinned."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import mlflow_template.cli, mlflow_template.pages, mlflow_template.runfolder, mlflow_template.runner
import mlflow_template.scope, mlflow_template.settings
import mlflow_template.synthetic

from conftest import BIN, ROOT


@pytest.fixture
def copy(tmp_path):
    "The project's notebooks, package and README in a temporary folder"
    for f in ("pyproject.toml", "settings.ini", "README.md"): shutil.copy(ROOT / f, tmp_path / f)
    for d in ("nbs", "mlflow_template"):
        shutil.copytree(ROOT / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    return tmp_path


def check(path):
    return subprocess.run([str(BIN / "mlflow-template"), "check-sync"], cwd=path, capture_output=True, text=True,
                          timeout=300)


def test_in_sync_tree_passes(copy):
    r = check(copy)
    assert r.returncode == 0, r.stderr


def test_hand_edited_module_names_its_notebook(copy):
    core = copy / "mlflow_template" / "core.py"
    core.write_text(core.read_text() + "\nHAND_EDIT = 1\n")
    r = check(copy)
    assert r.returncode == 1
    assert "mlflow_template/core.py: out of date with nbs/00_core.ipynb" in r.stderr


def test_stale_readme_is_named(copy):
    (copy / "README.md").write_text("# edited by hand\n")
    r = check(copy)
    assert r.returncode == 1 and "README.md: not what nbs/index.ipynb renders to" in r.stderr


def test_public_api_is_deliberate():
    assert set(mlflow_template.settings.__all__) == {'SettingsError', 'RESERVED', 'stage_name', 'runbooks', 'runbook_parameters',
                                                'parse_value', 'Settings', 'read_settings', 'apply_overrides', 'resolve',
                                                'load_parameters'}
    assert set(mlflow_template.runfolder.__all__) == {'PRODUCERS', 'RunFolder', 'open_run'}
    assert set(mlflow_template.pages.__all__) == {'export_html', 'write_index'}
    assert set(mlflow_template.runner.__all__) == {'new_run_id', 'run_pipeline'}
    assert set(mlflow_template.cli.__all__) == {'render_readme', 'check_sync', 'main'}
    assert set(mlflow_template.scope.__all__) == {'TASKS', 'METRICS', 'LOWER_IS_BETTER', 'DEFAULT_METRIC', 'ProblemSpec',
                                             'check_columns', 'objective', 'threshold_checks'}
    assert set(mlflow_template.synthetic.__all__) == {'make_churn', 'best_roc_auc', 'parse_synthetic_uri', 'load_synthetic'}

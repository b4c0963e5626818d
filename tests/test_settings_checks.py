"""Out-of-range settings are refused before a run starts, by the rules of the stage that owns each option."""
from __future__ import annotations

import importlib
import os
import subprocess

import pytest

from conftest import BIN, ROOT, copy_project
from mlflow_template.settings import SettingsError, load_parameters

PIPELINE = ROOT / "nbs" / "pipeline"
CHECKED = ("acquire", "prepare", "explore", "train", "evaluate", "monitor")  # stages whose module owns option rules

# override -> what the message must say: the setting, the value given and what is allowed
BAD = {
    "train.n_iter=-5": ("train.n_iter", "-5", ">= 1"),
    "train.cv_folds=1": ("train.cv_folds", "got 1", ">= 2"),
    "train.families=['linear', 'boosting']": ("train.families", "'boosting'", "linear, tree, forest, neural"),
    "evaluate.threshold_strategy=median": ("evaluate.threshold_strategy", "'median'", "cost, fixed"),
    "prepare.test_size=1.5": ("prepare.test_size", "1.5", "(0, 1)"),
    "monitor.p_threshold=2": ("monitor.p_threshold", "got 2", "(0, 1)"),
    "deploy.max_records=0": ("deploy.max_records", "got 0", ">= 1"),  # a service limit, refused before the run
}


def problems(error: SettingsError) -> list[str]:
    return [line.strip() for line in str(error).splitlines()[1:]]


def test_every_out_of_range_value_is_named_in_one_error():
    with pytest.raises(SettingsError) as e:
        load_parameters(ROOT / "settings.ini", list(BAD), folder=PIPELINE)
    lines = problems(e.value)
    assert len(lines) == len(BAD), str(e.value)
    for override, parts in BAD.items():
        hits = [l for l in lines if l.startswith(parts[0])]
        assert len(hits) == 1, f"{override}: {str(e.value)}"
        assert all(p in hits[0] for p in parts), f"{override}: {hits[0]}"


@pytest.mark.parametrize("settings", ["settings.ini", *sorted(f"tests/settings/{p.name}" for p in (ROOT / "tests" / "settings").glob("*.ini"))])
def test_shipped_settings_pass_every_stage_check(settings):
    params = load_parameters(ROOT / settings, folder=PIPELINE)
    for stage in CHECKED:
        check = importlib.import_module(f"mlflow_template.{stage}").check_options
        assert check(**params[stage]) == [], (settings, stage)


def test_cli_refuses_bad_values_before_creating_a_run(tmp_path):
    project = copy_project(tmp_path)
    r = subprocess.run([str(BIN / "mlflow-template"), "run", "--set", "train.n_iter=-5",
                        "--set", 'train.families=["linear","boosting"]', "--set", "evaluate.threshold_strategy=median"],
                       cwd=project, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "BENTOML_HOME": str(project / "bentoml_home")})
    assert r.returncode == 2, r.stdout + r.stderr
    for part in ("train.n_iter must be a whole number >= 1, got -5", "train.families: unknown 'boosting'",
                 "evaluate.threshold_strategy: 'median' is not one of cost, fixed"):
        assert part in r.stderr, r.stderr
    assert [p for p in (project / "reports").iterdir()] == []

"""The pipeline end to end, unchanged code, on three differently shaped public data sets that scikit-learn ships
(binary, multiclass, regression): each is written to data/raw/ of a copy of the project, as a user would bring a
file of their own, and run with nothing but its settings file, tests/settings/<name>.ini. Each run's monitoring
stage checks a drifted copy of the data, and the promoted regression and multiclass models answer over real HTTP."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn import datasets

from conftest import BIN, ROOT, RunsTogether, bentoml_serve, copy_project

pytestmark = pytest.mark.slow

STAGES = ["scope", "acquire", "prepare", "explore", "train", "evaluate", "deploy", "monitor"]


def _shifted(df: pd.DataFrame, column: str, seed: int, rows: int = 150) -> pd.DataFrame:
    "A later batch: a seeded sample of the rows with `column` moved up by two standard deviations (labels kept)"
    batch = df.sample(rows, random_state=seed, replace=len(df) < rows).reset_index(drop=True)
    batch[column] = batch[column] + 2 * df[column].std()
    return batch


def breast_cancer(raw: Path) -> str:
    "Binary, 30 numeric columns with spaces in their names, an integer 0/1 target, an id and a binned size group; CSV"
    df = datasets.load_breast_cancer(as_frame=True).frame
    df.insert(0, "sample_id", [f"S{i:04d}" for i in range(len(df))])
    df["size_group"] = pd.qcut(df["mean radius"], 3, labels=["small", "medium", "large"]).astype(str)
    df.to_csv(raw / "breast_cancer.csv", index=False)
    current = _shifted(df, "mean texture", seed=1)
    current.loc[::3, "target"] = np.nan  # feedback has arrived for two rows in three: 0/1 labels read back as floats
    current.to_csv(raw / "breast_cancer_current.csv", index=False)
    return "mean texture"


def wine(raw: Path) -> str:
    "Multiclass with three named classes, 13 numeric columns, 178 rows, no id and no sensitive feature; Parquet"
    bunch = datasets.load_wine(as_frame=True)
    df = bunch.frame.rename(columns={"target": "cultivar"})
    df["cultivar"] = np.asarray(bunch.target_names)[df["cultivar"]]
    df.to_parquet(raw / "wine.parquet", index=False)
    _shifted(df, "alcohol", seed=2).to_parquet(raw / "wine_current.parquet", index=False)
    return "alcohol"


def diabetes(raw: Path) -> str:
    "Regression on measurements in their own units, sex coded 1/2 as the sensitive feature; CSV"
    df = datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
    df.to_csv(raw / "diabetes.csv", index=False)
    _shifted(df, "bmi", seed=3).to_csv(raw / "diabetes_current.csv", index=False)
    return "bmi"


# name -> (writer, the gate's thresholds in tests/settings/<name>.ini, the model name)
DATASETS = {"breast_cancer": (breast_cancer, {"min_roc_auc": 0.95, "min_recall": 0.85}, "breast_cancer_model"),
            "wine": (wine, {"min_f1_macro": 0.85, "min_accuracy": 0.85}, "wine_model"),
            "diabetes": (diabetes, {"min_r2": 0.3, "max_mae": 55.0}, "diabetes_model")}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A copy of the project's settings and runbooks, the data files under data/raw/, and its own BentoML store"
    path = copy_project(tmp_path_factory.mktemp("datasets"))
    shutil.copytree(ROOT / "tests" / "settings", path / "settings")
    raw = path / "data" / "raw"
    raw.mkdir(parents=True)
    drifted = {name: writer(raw) for name, (writer, _, _) in DATASETS.items()}
    env = {**os.environ, "BENTOML_HOME": str(path / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    return SimpleNamespace(path=path, env=env, store=path / "bentoml_home", drifted=drifted)


_runs = {}

def run_on(project, name: str):
    "The whole pipeline on one data set's settings file, run once per session (a failed run is not repeated); all three start together"
    if "runs" not in _runs:
        _runs["runs"] = RunsTogether({n: [str(BIN / "mlflow-template"), "run", "--settings", f"settings/{n}.ini"] for n in DATASETS},
                                     project.path, project.env)
    r = _runs["runs"][name]
    assert r.returncode == 0, f"{name}: stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    d = project.path / r.stdout.strip().splitlines()[-1]
    return SimpleNamespace(dir=d, record=json.loads((d / "run.json").read_text()), read=lambda f: json.loads((d / f).read_text()))


def test_settings_files_are_the_ones_the_tests_check():
    "The thresholds asserted below are the ones the committed settings files hold"
    from mlflow_template.settings import read_settings
    for name, (_, thresholds, model) in DATASETS.items():
        s = read_settings(ROOT / "tests" / "settings" / f"{name}.ini")
        assert json.loads(s.sections["scope"]["success_thresholds"]) == thresholds
        assert s.defaults["model_name"] == model


@pytest.mark.parametrize("name", list(DATASETS))
def test_pipeline_runs_end_to_end(project, name):
    run = run_on(project, name)
    rec = run.record
    assert rec["status"] == "ok" and rec["settings_file"] == f"settings/{name}.ini"
    assert [(s["stage"], s["status"]) for s in rec["stages"]] == [(s, "ok") for s in STAGES]
    assert all(s["seconds"] > 0 for s in rec["stages"])
    # only the settings differ: the source and the task came from the data set's own file
    assert rec["parameters"]["acquire"]["source"].startswith(f"data/raw/{name}")
    spec = run.read("spec.json")
    assert spec["task"] == {"breast_cancer": "binary", "wine": "multiclass", "diabetes": "regression"}[name]


def test_every_family_learns_on_small_data(project):
    "178 wines leave about 65 rows per search fold: the tree family's leaves must fit them, or it predicts one class"
    board = run_on(project, "wine").read("train.json")["leaderboard"]
    assert {r["family"] for r in board} >= {"linear", "tree"}
    assert all(r["cv f1_macro"] > 0.8 for r in board), board


@pytest.mark.parametrize("name", list(DATASETS))
def test_gate_and_promotion(project, name):
    run = run_on(project, name)
    _, thresholds, model = DATASETS[name]
    gate, metrics = run.read("gate.json"), run.read("metrics.json")["test"]
    assert {c["threshold"]: c["bound"] for c in gate["checks"]} == thresholds
    for key, bound in thresholds.items():  # the gate's verdict is the thresholds applied to the measured metrics
        kind, _, metric = key.partition("_")
        assert metrics[metric] is not None and (metrics[metric] >= bound if kind == "min" else metrics[metric] <= bound), \
            f"{name}: {metric} = {metrics[metric]} misses {key} = {bound}"
    assert gate["passed"], gate["reason"]
    deploy = run.read("deploy.json")
    assert deploy["promoted"] and deploy["tag"].startswith(f"{model}:")
    assert (project.store / "models" / model / deploy["tag"].split(":")[1] / "model.skops").is_file()
    assert "Gate: PASSED" in (run.dir / "model_card.md").read_text()


@pytest.mark.parametrize("name", list(DATASETS))
def test_monitoring_catches_the_drifted_column(project, name):
    run = run_on(project, name)
    alerts = run.read("alerts.json")
    assert project.drifted[name] in {a["feature"] for a in alerts}, alerts
    drift = run.read("drift.json")
    assert drift["quarantined"] == 0 and drift["accepted"] == drift["rows"] == 150
    table = {r["feature"]: r for r in drift["features"]}
    assert sum(r["drifted"] for r in table.values()) == 1  # only the shifted column, nothing else
    perf = {r["data"]: r for r in drift["performance"]}  # the labelled rows of the batch are scored
    assert perf["current"]["labelled rows"] == (100 if name == "breast_cancer" else 150)
    metric = run.read("spec.json")["primary_metric"]
    assert perf["current"][metric] is not None and perf["reference (training snapshot)"][metric] is not None


def _records(project, name: str, target: str, n: int = 4) -> tuple[pd.DataFrame, list]:
    "The first `n` rows of the data set's file as request records (the target left out), and their true values"
    df = pd.read_parquet(project.path / "data" / "raw" / f"{name}.parquet") if name == "wine" else \
        pd.read_csv(project.path / "data" / "raw" / f"{name}.csv")
    rows = df.head(n)
    return rows[target].tolist(), rows.drop(columns=target).to_dict(orient="records")


def test_regression_model_answers_with_values(project, tmp_path):
    tag = run_on(project, "diabetes").read("deploy.json")["tag"]
    truth, records = _records(project, "diabetes", "progression")
    log = tmp_path / "predictions.jsonl"
    with bentoml_serve(project.store, "diabetes_model", log, tmp_path) as url:
        r = httpx.post(f"{url}/predict", json={"records": records}, timeout=60)
        bad = httpx.post(f"{url}/predict", json={"records": [{**records[0], "bmi": "heavy"}]}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tag and len(body["predictions"]) == len(records)
    values = [p["value"] for p in body["predictions"]]
    assert all(isinstance(v, float) and 25 <= v <= 346 for v in values)  # within the target's range in the data
    assert np.corrcoef(values, truth)[0, 1] > 0  # and they follow the truth
    assert bad.status_code == 400 and "bmi" in bad.text
    assert len(log.read_text().splitlines()) == len(records)


def test_multiclass_model_answers_with_labels(project, tmp_path):
    tag = run_on(project, "wine").read("deploy.json")["tag"]
    truth, records = _records(project, "wine", "cultivar", n=6)
    with bentoml_serve(project.store, "wine_model", tmp_path / "predictions.jsonl", tmp_path) as url:
        r = httpx.post(f"{url}/predict", json={"records": records}, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tag
    labels = [p["label"] for p in body["predictions"]]
    assert set(labels) <= {"class_0", "class_1", "class_2"} and labels == truth  # the first rows are easy class_0 wines
    assert all(1 / 3 <= p["probability"] <= 1 for p in body["predictions"])

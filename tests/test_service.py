"""The BentoML service over real HTTP: a real model promoted into a temporary store, a real `bentoml serve` process."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_template import deploy

from conftest import bentoml_serve

pytestmark = pytest.mark.slow

NAME = "test_churn_model"


def _contract(X: pd.DataFrame) -> dict:
    return {"version": 1, "target": "churn", "task": "binary", "positive_class": "Yes", "classes": ["No", "Yes"],
            "id_column": "customer_id", "time_column": None, "features": list(X.columns),
            "columns": {"tenure": {"kind": "numeric", "dtype": "int64", "nullable": False, "min": 0, "max": 71},
                        "charges": {"kind": "numeric", "dtype": "float64", "nullable": True},
                        "contract": {"kind": "categorical", "dtype": "object", "nullable": False,
                                     "categories": ["month-to-month", "one-year", "two-year"]}}}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A tiny classifier promoted into a temporary store and served by a real `bentoml serve`"
    tmp = tmp_path_factory.mktemp("service")
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"tenure": rng.integers(0, 72, 120), "charges": rng.normal(70, 20, 120),
                      "contract": rng.choice(["month-to-month", "one-year", "two-year"], 120)})
    X.loc[::9, "charges"] = np.nan  # the nullable column
    y = np.where((X.tenure < 24) & (X.contract == "month-to-month"), "Yes", "No")
    prep = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["tenure", "charges"]),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), ["contract"])])
    model = Pipeline([("prep", prep), ("model", LogisticRegression())]).fit(X, y)
    contract = _contract(X)
    home = tmp / "bentoml_home"
    with deploy.use_store(home):
        tag = deploy.save_model(model, name=NAME, contract=contract, metrics={"roc_auc": 0.9},
                                metadata={"run_id": "test"})

    log = tmp / "logs" / "predictions.jsonl"
    with bentoml_serve(home, NAME, log, tmp) as url:
        yield SimpleNamespace(url=url, tag=tag, log=log, model=model, contract=contract, classes=["No", "Yes"], home=home)


RECORDS = [{"customer_id": "c1", "tenure": 2, "charges": 95.5, "contract": "month-to-month"},
           {"customer_id": 42, "tenure": 60, "charges": None, "contract": "two-year"},  # a numeric id comes back as text
           {"tenure": 12, "contract": "one-year", "unknown_field": "ignored"}]


def _lines(path: Path) -> list:
    "The log's lines once the service's background writer has flushed (it writes at least every 0.2 s)"
    time.sleep(0.5)
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_health(served):
    assert httpx.get(f"{served.url}/readyz").status_code == 200
    assert httpx.get(f"{served.url}/livez").status_code == 200


def test_predict_three_records(served):
    r = httpx.post(f"{served.url}/predict", json={"records": RECORDS}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == served.tag
    preds = body["predictions"]
    assert [p["id"] for p in preds] == ["c1", "42", None]
    assert all(p["label"] in served.classes for p in preds)
    assert all(0 <= p["probability"] <= 1 for p in preds)
    # the same numbers as the model in this process gives for the same rows
    X = pd.DataFrame([{c: r.get(c) for c in served.contract["features"]} for r in RECORDS]).astype({"charges": float})
    expected = served.model.predict_proba(X)[:, list(served.model.classes_).index("Yes")]
    assert [p["probability"] for p in preds] == pytest.approx(list(expected))
    assert [p["label"] for p in preds] == ["Yes" if p >= 0.5 else "No" for p in expected]


def test_prediction_log_gains_one_line_per_record(served):
    before = len(_lines(served.log))
    assert httpx.post(f"{served.url}/predict", json={"records": RECORDS}, timeout=30).status_code == 200
    new = [json.loads(line) for line in _lines(served.log)[before:]]
    assert len(new) == 3
    assert [n["id"] for n in new] == ["c1", "42", None]
    assert all(n["model"] == served.tag and n["label"] in served.classes and 0 <= n["probability"] <= 1 for n in new)
    assert new[0]["features"] == {"tenure": 2.0, "charges": 95.5, "contract": "month-to-month"}
    assert {"ts", "model", "id", "features", "label", "probability"} <= set(new[0])


@pytest.mark.parametrize("record, field", [
    ({"tenure": "not a number", "contract": "one-year"}, "tenure"),  # wrong type
    ({"tenure": 5, "charges": 10.0}, "contract"),                    # a required field missing
])
def test_bad_record_is_400_naming_the_field(served, record, field):
    before = len(_lines(served.log))
    r = httpx.post(f"{served.url}/predict", json={"records": [RECORDS[0], record]}, timeout=30)
    assert r.status_code == 400, (r.status_code, r.text)
    locs = [d["loc"] for d in r.json()["detail"]]
    assert locs == [["records", 1, field]], r.text
    assert len(_lines(served.log)) == before  # nothing scored, nothing logged


def test_metrics_are_prometheus_text(served):
    r = httpx.get(f"{served.url}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "# TYPE bentoml_service_request_duration_seconds histogram" in r.text


def test_serves_the_promoted_model_from_an_empty_folder_without_a_name(served, tmp_path):
    "The store alone names the model: no MLFLOW_TEMPLATE_MODEL_NAME, no settings.ini or runbooks in the working folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    log = tmp_path / "predictions.jsonl"
    # bentoml_serve always sets MLFLOW_TEMPLATE_MODEL_NAME; an empty value counts as unset (deploy.served_name)
    with bentoml_serve(served.home, "", log, tmp_path, cwd=empty) as url:
        r = httpx.post(f"{url}/predict", json={"records": RECORDS[:1]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == served.tag
    assert list(empty.iterdir()) == []  # and it wrote nothing there (the log goes where the variable says)


def _feedback(served, items):
    return httpx.post(f"{served.url}/feedback", json={"feedback": items}, timeout=30)


def test_feedback_names_answered_predictions_and_is_stored_all_or_none(served):
    "Every answer carries prediction ids; /feedback stores their true labels once, refusing unknown ids, repeats and non-classes by name"
    preds = httpx.post(f"{served.url}/predict", json={"records": RECORDS}, timeout=30).json()["predictions"]
    pids = [p["prediction_id"] for p in preds]
    assert len(set(pids)) == 3
    r = _feedback(served, [{"prediction_id": pids[0], "label": "Yes"}, {"prediction_id": pids[1], "label": "No"}])
    assert (r.status_code, r.json()) == (200, {"stored": 2}), r.text  # at once: the service flushes its log first
    again = _feedback(served, [{"prediction_id": pids[2], "label": "No"}, {"prediction_id": pids[0], "label": "No"}])
    assert again.status_code == 409 and pids[0] in again.json()["error"], again.text
    assert again.json()["detail"][0]["prediction_ids"] == [pids[0]]
    fake = pids[0].rsplit("-", 1)[0] + "-7"
    unknown = _feedback(served, [{"prediction_id": pids[2], "label": "No"}, {"prediction_id": fake, "label": "No"}])
    assert unknown.status_code == 404 and fake in unknown.json()["error"], unknown.text
    wrong = _feedback(served, [{"prediction_id": pids[2], "label": 1}])
    assert wrong.status_code == 400 and "one of the classes" in wrong.json()["error"] and pids[2] in wrong.json()["error"]
    extra = _feedback(served, [{"prediction_id": pids[2], "label": "No", "comment": "x"}])
    assert extra.status_code == 400 and extra.json()["detail"][0]["loc"][-1] == "comment", extra.text
    # nothing of the refused requests was stored: pids[2] still takes its label
    assert _feedback(served, [{"prediction_id": pids[2], "label": "No"}]).json() == {"stored": 1}
    from mlflow_template.feedback import feedback_db_path, feedback_frame
    stored = feedback_frame(feedback_db_path(served.log)).set_index("prediction_id")["truth"]
    assert stored[pids].tolist() == ["Yes", "No", "No"]
    logged = {json.loads(line)["prediction_id"] for line in _lines(served.log)}
    assert set(pids) <= logged

"""The deploy and monitor stages in process (no papermill): the promotion policy, the model the monitor watches,
quarantined rows kept with their reasons, and the service finding its model in the store alone."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_template import deploy, monitor, service
from mlflow_template.contract import learn_contract
from mlflow_template.labels import predict_table
from mlflow_template.metrics import compute_metrics
from mlflow_template.modelfile import dump_model
from mlflow_template.runfolder import RunFolder
from mlflow_template.scope import ProblemSpec
from mlflow_template.synthetic import make_churn

SPEC = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id")
NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["contract", "paperless_billing"]
FEATURES = NUMERIC + CATEGORICAL
NAME = "churn_model"


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return make_churn(2000, seed=3, duplicates=0)


@pytest.fixture
def store(tmp_path):
    "A throwaway BentoML model store for the test"
    with deploy.use_store(tmp_path / "bentoml") as path: yield path


def fit(df: pd.DataFrame, C: float = 1.0):
    prep = make_column_transformer(
        (make_pipeline(SimpleImputer(), StandardScaler()), NUMERIC),
        (make_pipeline(SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore")),
         CATEGORICAL))
    return make_pipeline(prep, LogisticRegression(C=C, max_iter=500)).fit(df[FEATURES], df[SPEC.target])


def make_run(path, model, data: pd.DataFrame, *, passed: bool = True, threshold: float = 0.5) -> RunFolder:
    "A run folder with what scope, prepare, train and evaluate leave behind for `model`"
    run = RunFolder(path, "deploy", root=path)
    train, valid, test = data.iloc[:1200], data.iloc[1200:1600], data.iloc[1600:]
    for name, part in (("train", train), ("valid", valid), ("test", test)): run.write_parquet(f"{name}.parquet", part)
    run.write_json("spec.json", SPEC.to_dict())
    run.write_json("contract.json", learn_contract(train, SPEC, {"numeric": NUMERIC, "categorical": CATEGORICAL,
                                                                 "datetime": []}))
    run.write_json("metrics.json", {"test": compute_metrics(SPEC, test.churn, model, test[FEATURES], threshold=threshold),
                                    "threshold": threshold})
    run.write_json("gate.json", {"passed": passed, "reason": "All thresholds met." if passed else "Failed 1 of 1 thresholds."})
    run.write_json("provenance.json", {"content_sha256": "abc", "source": "synthetic://churn"})
    dump_model(model, run.file("model.skops"))
    return run


def versions() -> list:
    return deploy.promoted_models(NAME).tag.tolist()


# deploy: the promotion policy and the stage function

@pytest.mark.parametrize("passed, better, require, promote", [
    (False, True, True, False), (False, True, False, False),   # a failed gate never promotes
    (True, False, True, False),                                 # no better than the champion: kept out
    (True, False, False, True),                                 # ... unless improvement is not required
    (True, True, True, True)])
def test_promotion_policy(passed, better, require, promote):
    gate = {"passed": passed, "reason": "gate says so."}
    versus = {"promote": better, "reason": "the challenger is " + ("better" if better else "not better")}
    decision = deploy.promotion_decision(gate, versus, require_improvement=require)
    assert decision["promote"] is promote
    if not passed: assert decision["reason"].startswith("the gate failed")


def test_promote_saves_only_a_passing_better_model(tmp_path, store, data):
    model = fit(data.iloc[:1200])
    first = deploy.promote(make_run(tmp_path / "r1", model, data), NAME)
    assert first["promoted"] and first["tag"].startswith(f"{NAME}:") and set(first) == {"promoted", "tag", "reason", "champion", "fitted_on"}
    tie = deploy.promote(make_run(tmp_path / "r2", model, data), NAME)
    assert (tie["promoted"], tie["tag"]) == (False, None) and "not better than the champion" in tie["reason"]
    failed = deploy.promote(make_run(tmp_path / "r3", model, data, passed=False), NAME, require_improvement=False)
    assert not failed["promoted"] and "the gate failed" in failed["reason"]
    assert versions() == [first["tag"]]
    info = deploy.load_model(NAME)[2]
    assert info["metadata"]["run_id"] == "r1" and info["labels"] == {"run_id": "r1", "stage": "promoted"}


# monitor

def _batch(data: pd.DataFrame) -> pd.DataFrame:
    "A later batch with three rows that break the contract"
    batch = make_churn(800, seed=11, duplicates=0, shift={"monthly_charges": 25}).astype({"tenure_months": object})
    batch.loc[0, "tenure_months"] = "long"  # not a number
    batch.loc[[1, 2], "contract"] = None    # a required column missing
    return batch


def test_monitor_watches_the_served_champion_not_this_runs_model(tmp_path, store, data):
    """Slip: the monitor scored the model of the run it belongs to (model.skops) even when that model was never
    promoted; it must watch the model being served, with its contract, its deployed threshold and the reference
    promoted with it, even when the run that trained it is gone."""
    champion, first = fit(data.iloc[:1200]), make_run(tmp_path / "r1", fit(data.iloc[:1200]), data, threshold=0.35)
    snapshot = monitor.reference_data(first)
    served = deploy.promote(first, NAME)
    assert served["promoted"]
    shutil.rmtree(first.path)  # the champion's run folder is gone: what the monitor needs travels with the model
    weak = fit(data.iloc[:150], C=0.001)  # this run's model: worse, so not promoted
    run = make_run(tmp_path / "r2", weak, data.iloc[::-1].reset_index(drop=True), threshold=0.8)
    assert not deploy.promote(run, NAME)["promoted"]

    w = monitor.watched_model(NAME, run)
    assert (w.info["model"], w.info["tag"], w.info["threshold"]) == (served["tag"], served["tag"], 0.35)
    assert w.reference.customer_id.tolist() == snapshot.customer_id.tolist()  # r1's splits, not r2's (another order)
    test = data.iloc[1600:]  # r1's test split, scored by the model as evaluated (before the refit)
    assert list(w.held_out[1]) == pytest.approx(list(champion.predict_proba(test[FEATURES])[:, 1]))
    check = monitor.check_batch(w.reference, _batch(data), w.model, w.contract, w.spec, threshold=w.info["threshold"],
                                held_out=w.held_out)
    monitor.write_check(run, check, "synthetic://later", w.info["model"])
    assert run.read_json("drift.json")["model"] == served["tag"]

    def pred_drift(m):
        scores = lambda df: predict_table(m, df[FEATURES], "binary", "Yes").probability
        return monitor.prediction_drift(scores(snapshot), scores(check.accepted))
    in_store = deploy.load_model(NAME)[0]  # the champion as served: refitted on every row of its run at promotion
    assert served["fitted_on"]["refitted"]
    assert check.prediction == pred_drift(in_store)
    assert check.prediction != pred_drift(weak)
    current = check.performance.set_index("data").loc["current", "roc_auc"]
    accepted = check.accepted
    assert current == pytest.approx(compute_metrics(SPEC, accepted.churn, in_store, accepted[FEATURES])["roc_auc"])


def test_monitor_falls_back_to_this_runs_model_and_says_so(tmp_path, store, data):
    run = make_run(tmp_path / "r", fit(data.iloc[:1200]), data, threshold=0.4)
    w = monitor.watched_model(NAME, run)
    assert (w.info["model"], w.info["tag"], w.info["threshold"]) == ("this run's model (not promoted)", None, 0.4)
    assert f"no model is served as {NAME!r}" in w.info["note"]
    assert w.contract == run.read_json("contract.json") and len(w.reference) == len(data)
    check = monitor.check_batch(w.reference, _batch(data), w.model, w.contract, SPEC, threshold=0.4)
    monitor.write_check(run, check, "synthetic://later", w.info["model"])
    assert run.read_json("drift.json")["model"] == "this run's model (not promoted)"


def test_monitor_keeps_quarantined_rows_with_their_reasons(tmp_path, data):
    """Slip: rows that broke the data contract were counted in drift.json but thrown away; the monitor stage must
    keep them, with the reason for each, in quarantine.parquet."""
    run = make_run(tmp_path / "r", fit(data.iloc[:1200]), data)
    model, contract = fit(data.iloc[:1200]), run.read_json("contract.json")
    batch = _batch(data)
    check = monitor.check_batch(monitor.reference_data(run), batch, model, contract, SPEC)
    monitor.write_check(run, check, "synthetic://later", monitor.NOT_PROMOTED)
    kept = pd.read_parquet(run.file("quarantine.parquet"))
    assert kept.customer_id.tolist() == batch.customer_id[:3].tolist()
    assert kept.quarantine_reason.tolist() == ["tenure_months is not a number", "contract is missing", "contract is missing"]
    assert kept.tenure_months[0] == "long"
    drift = run.read_json("drift.json")
    assert (drift["rows"], drift["accepted"], drift["quarantined"]) == (800, 797, 3)
    assert set(drift) == {"source", "model", "rows", "accepted", "quarantined", "features", "prediction", "performance", "concept"}
    assert "monthly_charges" in {a["feature"] for a in run.read_json("alerts.json")}  # the injected drift is caught


def test_drift_tests_follow_column_kinds():
    ref = pd.DataFrame({"n": np.arange(200.0), "b": [True, False] * 100, "c": ["x", "y"] * 100,
                        "d": pd.date_range("2024-01-01", periods=200)})
    table = monitor.feature_drift(ref, ref).set_index("feature")
    assert table.kind.to_dict() == {"n": "numeric", "b": "boolean", "c": "categorical", "d": "datetime"}
    assert table.test.to_dict() == {"n": "ks", "b": "chi2", "c": "chi2", "d": "ks"}


# the service: the model store alone names the model

def _contract(data: pd.DataFrame) -> dict:
    return learn_contract(data.iloc[:1200], SPEC, {"numeric": NUMERIC, "categorical": CATEGORICAL, "datetime": []})


def test_service_names_its_model_from_the_store(store, data, monkeypatch):
    monkeypatch.delenv("MLFLOW_TEMPLATE_MODEL_NAME", raising=False)
    with pytest.raises(LookupError, match="run the pipeline"): deploy.served_name()
    model, contract = fit(data.iloc[:1200]), _contract(data)
    deploy.save_model(model, name="served_one", contract=contract, metrics={})
    assert deploy.served_name() == "served_one"
    monkeypatch.chdir(store)  # no settings.ini anywhere up from here: the store alone decides
    assert deploy.served_name() == "served_one"
    assert service.make_service()().info["tag"].startswith("served_one:")
    deploy.save_model(model, name="served_two", contract=contract, metrics={})
    with pytest.raises(LookupError, match="served_one, served_two.*MLFLOW_TEMPLATE_MODEL_NAME"): deploy.served_name()
    monkeypatch.setenv("MLFLOW_TEMPLATE_MODEL_NAME", "served_two")
    assert deploy.served_name() == "served_two"


def test_service_and_monitor_watch_the_same_model(tmp_path, store, data, monkeypatch):
    """Slip: the service served MLFLOW_TEMPLATE_MODEL_NAME while the monitor watched the settings' model_name, so
    with two promoted models they watched different ones; both now ask `deploy.served_name`."""
    model, contract = fit(data.iloc[:1200]), _contract(data)
    run = make_run(tmp_path / "r", model, data)
    deploy.save_model(model, name=NAME, contract=contract, metrics={})
    other = deploy.save_model(fit(data.iloc[:600], C=0.1), name="served_other", contract=contract, metrics={},
                              metadata={"threshold": 0.3})
    monkeypatch.setenv("MLFLOW_TEMPLATE_MODEL_NAME", "served_other")
    served = service.make_service()().info["tag"]
    watched = monitor.watched_model(NAME, run).info  # the settings name the other model
    assert served == watched["tag"] == other and watched["threshold"] == 0.3
    monkeypatch.delenv("MLFLOW_TEMPLATE_MODEL_NAME")
    assert monitor.watched_model(NAME, run).info["tag"].startswith(f"{NAME}:")  # unset: the settings' name


def test_champion_is_scored_at_its_threshold_and_only_when_its_contract_fits(tmp_path, store, data):
    "deploy and the monitor share `contract.mismatch`: a champion with another positive class is not compared"
    champion, contract = fit(data.iloc[:1200]), _contract(data)
    deploy.save_model(champion, name=NAME, contract=contract, metrics={}, metadata={"threshold": 0.2})
    test = data.iloc[1600:]
    spec = ProblemSpec(target="churn", positive_class="Yes", primary_metric="recall")
    versus = deploy.compare_with_champion(NAME, spec, {"recall": 0.1}, test)
    assert versus["champion"] == compute_metrics(spec, test.churn, champion, test[FEATURES], threshold=0.2)["recall"]
    flipped = deploy.compare_with_champion(NAME, ProblemSpec(target="churn", positive_class="No"), {"roc_auc": 0.5}, test)
    assert flipped["promote"] and flipped["champion"] is None
    assert "has positive_class 'Yes' where this run has 'No'" in flipped["reason"]
    run = make_run(tmp_path / "r", champion, data)
    run.write_json("contract.json", {**contract, "positive_class": "No"})
    assert "has positive_class 'Yes' where this run has 'No'" in monitor.watched_model(NAME, run).info["note"]


def test_service_answers_with_the_deployed_threshold(data):
    model = fit(data.iloc[:1200])
    contract = learn_contract(data.iloc[:1200], SPEC, {"numeric": NUMERIC, "categorical": CATEGORICAL, "datetime": []})
    records = data.iloc[1600:1610].to_dict(orient="records")
    out = service.predict_records(model, contract, records, "m:1", threshold=0.3)
    p = model.predict_proba(data.iloc[1600:1610][FEATURES])[:, 1]
    assert [r["id"] for r in out["predictions"]] == data.customer_id[1600:1610].tolist()
    assert [r["probability"] for r in out["predictions"]] == pytest.approx(list(p))
    assert [r["label"] for r in out["predictions"]] == ["Yes" if q >= 0.3 else "No" for q in p]
    default = service.predict_records(model, contract, records, "m:1")  # promoted without a threshold: 0.5
    assert [r["label"] for r in default["predictions"]] == ["Yes" if q >= 0.5 else "No" for q in p]

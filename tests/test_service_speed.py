"""The service's fast path answers as the pipeline does, its prediction log survives a stop, and its batch endpoint.

The parity test runs in process: every bundled data set (breast_cancer, wine, diabetes as tests/settings describe
them, and the default churn data) through the project's preprocessor with every model family the train stage can
produce (plus its voting ensemble and, for regression, its target transforms), 2,000 records each, as the request
schema hands them to the service. The others serve a real model with `bentoml serve`.
"""
from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pydantic
import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st
from sklearn import datasets
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from mlflow_template import deploy
from mlflow_template.contract import records_frame
from mlflow_template.core import plain
from mlflow_template.labels import predict_table
from mlflow_template.prepare import prepare_data
from mlflow_template.scope import ProblemSpec
from mlflow_template.fastpath import FastModel, compile_model
from mlflow_template.guard import surprises
from mlflow_template.service import predict_records, request_dicts, request_model
from mlflow_template.synthetic import make_churn
from mlflow_template.train import candidates, ensemble_of, with_target_transform

from conftest import bentoml_serve

N_RECORDS = 2_000


def _data(name: str):
    "A bundled data set as (DataFrame, ProblemSpec), shaped as tests/settings/<name>.ini and the default settings describe it"
    if name == "breast_cancer":
        df = datasets.load_breast_cancer(as_frame=True).frame
        df.insert(0, "sample_id", [f"S{i:04d}" for i in range(len(df))])
        df["size_group"] = pd.qcut(df["mean radius"], 3, labels=["small", "medium", "large"]).astype(str)
        return df, ProblemSpec(target="target", task="binary", positive_class="0", id_column="sample_id")
    if name == "wine":
        b = datasets.load_wine(as_frame=True)
        df = b.frame.rename(columns={"target": "cultivar"})
        df["cultivar"] = np.asarray(b.target_names)[df["cultivar"]]
        return df, ProblemSpec(target="cultivar", task="multiclass")
    if name == "diabetes":
        df = datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})
        return df, ProblemSpec(target="progression", task="regression")
    return make_churn(3_000, seed=42), ProblemSpec(target="churn", task="binary", positive_class="Yes", id_column="customer_id")


def _records(prep, contract: dict, n: int, seed: int = 0) -> list:
    "n records drawn from all splits (numbers jittered, some gaps and unseen categories), as the request schema passes them"
    rows = pd.concat([prep.train, prep.valid, prep.test]).sample(n, replace=True, random_state=seed).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    for c in contract["features"]:
        spec = contract["columns"][c]
        if spec["kind"] == "numeric": rows[c] = rows[c] * rng.uniform(0.8, 1.25, n)  # beyond the training range too
        if spec["kind"] == "categorical": rows[c] = rows[c].astype(object).where(rng.random(n) > 0.03, "never seen")
        if spec.get("nullable", True): rows[c] = rows[c].astype(object).where(rng.random(n) > 0.05, None)
    Record = request_model(contract)
    out = []
    for r in rows.to_dict(orient="records"):
        r = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in r.items()}
        out.append(Record.model_validate(r).model_dump(by_alias=True))
    return out


def _models(spec: ProblemSpec, prep) -> dict:
    "Every model the train stage can produce here: each family, a voting ensemble of two, and target transforms"
    fams = candidates(spec.task, ["linear", "tree", "forest", "neural"], n_rows=len(prep.train))
    pipes = {f: Pipeline([("prep", clone(prep.preprocessor)), ("model", est)]) for f, (est, _) in fams.items()}
    for p in pipes.values():
        if "n_estimators" in p[-1].get_params(): p[-1].set_params(n_estimators=20)
        if "max_iter" in p[-1].get_params() and not hasattr(p[-1], "C"): p[-1].set_params(max_iter=50)
    pipes["ensemble"] = ensemble_of(spec, {f: pipes[f] for f in ("linear", "tree")})
    if spec.task == "regression":
        for how in ("log", "yeo-johnson"):
            pipes[f"linear+{how}"] = Pipeline([("prep", clone(prep.preprocessor)), ("model", with_target_transform(fams["linear"][0], how))])
    return pipes


@pytest.mark.parametrize("name", ["churn", "breast_cancer", "wine", "diabetes"])
def test_fast_path_answers_as_the_pipeline_for_every_data_set_and_family(name):
    df, spec = _data(name)
    prep = prepare_data(df, spec)
    contract = prep.contract
    feats, y = contract["features"], prep.train[spec.target]
    records = _records(prep, contract, N_RECORDS)
    used = []
    for family, model in _models(spec, prep).items():
        model.fit(prep.train[feats], y)
        fast = compile_model(model, contract)
        if family.startswith("linear"): assert isinstance(fast, FastModel), f"{name}/{family}: no fast path"
        if fast is not None: used.append(family)
        t = 0.3 if spec.task == "binary" else None
        slow = predict_records(model, contract, records, "m:1", threshold=t)["predictions"]
        quick = predict_records(model, contract, records, "m:1", threshold=t, fast=fast)["predictions"]
        assert len(quick) == len(slow) == N_RECORDS
        expect = plain(predict_table(model, records_frame(records, contract), spec.task, contract.get("positive_class"), t).to_dict(orient="records"))
        assert [{k: v for k, v in p.items() if k != "id"} for p in slow] == expect, f"{name}/{family}: not predict_table's answers"
        if fast is not None:  # blocks of other sizes, record by record included: the same answers
            for size in (1, 7, 300):
                part = predict_records(model, contract, records[:size], "m:1", threshold=t, fast=fast)["predictions"]
                assert [p.get("label") for p in part] == [p.get("label") for p in slow[:size]], f"{name}/{family}/{size}"
                key = "value" if spec.task == "regression" else "probability"
                np.testing.assert_allclose([p[key] for p in part], [p[key] for p in slow[:size]], rtol=0, atol=1e-9, err_msg=f"{name}/{family}/{size}")
        if spec.task == "regression":
            np.testing.assert_allclose([p["value"] for p in quick], [p["value"] for p in slow], rtol=0, atol=1e-9, err_msg=f"{name}/{family}")
        else:
            assert [p["label"] for p in quick] == [p["label"] for p in slow], f"{name}/{family}"
            np.testing.assert_allclose([p["probability"] for p in quick], [p["probability"] for p in slow], rtol=0, atol=1e-9,
                                       err_msg=f"{name}/{family}")
    assert "ensemble" not in used  # a voting ensemble of pipelines is left to scikit-learn
    print(name, "fast path for:", used)


# ---- the fast route's validator accepts exactly what the request model accepts ----

_ODD_CONTRACT = {  # every kind, required and nullable, names that are not identifiers or clash with BaseModel, an id column
    "features": ["tenure", "monthly charges", "json", "contract", "paperless", "when", "since"], "id_column": "customer_id",
    "columns": {"tenure": {"kind": "numeric", "nullable": False}, "monthly charges": {"kind": "numeric"},
                "json": {"kind": "categorical"}, "contract": {"kind": "categorical", "nullable": False, "categories": ["m", "y"]},
                "paperless": {"kind": "boolean"}, "when": {"kind": "datetime"}, "since": {"kind": "datetime", "nullable": False}}}
_KEYS = [*_ODD_CONTRACT["features"], "customer_id", "extra", "monthly_charges", "field_1"]
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
    st.sampled_from(["3", "-2.5", "1e309", "Infinity", "NaN", "true", "no", "0", "2024-01-02", "2024-01-02T03:04:05+05:30",
                     "1677-01-01", "2262-01-01T00:00:00", "2261-12-31T23:00:00-00:30", "0001-01-01", "12:30", "1700000000"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
_RECORD = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=len(_KEYS)) | st.fixed_dictionaries(
    {"tenure": st.floats(-1e6, 1e6) | st.integers(), "contract": st.text(max_size=4), "since": st.sampled_from(["2024-05-06", "2030-01-01T10:00:00"])},
    optional={k: _VALUES for k in _KEYS if k not in ("tenure", "contract", "since")})
_BODY = st.one_of(st.fixed_dictionaries({"records": st.lists(_RECORD, max_size=4)}, optional={"other": _VALUES}),
                  st.lists(_RECORD, max_size=2), _VALUES)


def _model_route(Request, raw: bytes):
    "What BentoML's /predict hands the service: the records as the request model validates and dumps them, or 'refused'"
    try: return [r.model_dump(by_alias=True) for r in Request.model_validate_json(raw or b"{}").records]
    except pydantic.ValidationError: return "refused"


_ODD_REQUEST = pydantic.create_model("PredictRequest", records=(list[request_model(_ODD_CONTRACT)], pydantic.Field(..., min_length=1)))
_ODD_DICTS = request_dicts(_ODD_CONTRACT)


@hyp_settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODY, nan=st.booleans())
def test_the_fast_routes_validator_accepts_and_reads_what_the_request_model_does(body, nan):
    Request, quick = _ODD_REQUEST, _ODD_DICTS
    raw = json.dumps(body, allow_nan=True).encode() if nan else json.dumps(body, default=str).encode()
    try: mine = quick.validate_json(raw or b"{}")["records"]
    except pydantic.ValidationError: mine = "refused"
    assert mine == _model_route(Request, raw), raw[:300]


def test_the_fast_routes_validator_caps_the_records():
    quick, rec = request_dicts(_ODD_CONTRACT, max_records=3), {"tenure": 1, "contract": "m", "since": "2024-01-01"}
    assert len(quick.validate_python({"records": [rec] * 3})["records"]) == 3
    with pytest.raises(pydantic.ValidationError): quick.validate_python({"records": [rec] * 4})
    with pytest.raises(pydantic.ValidationError): quick.validate_python({"records": []})


# ---- over HTTP ----

NAME = "speed_model"


@pytest.fixture(scope="module")
def churn_model(tmp_path_factory):
    "The default-like model (project preprocessor + LogisticRegression on make_churn) promoted into a temporary store"
    tmp = tmp_path_factory.mktemp("speed")
    df, spec = _data("churn")
    prep = prepare_data(df, spec)
    feats = prep.contract["features"]
    model = Pipeline([("prep", clone(prep.preprocessor)), ("model", candidates("binary", ["linear"])["linear"][0])])
    model.fit(prep.train[feats], prep.train[spec.target])
    home = tmp / "bentoml_home"
    with deploy.use_store(home):
        tag = deploy.save_model(model, name=NAME, contract=prep.contract, metrics={})
    return SimpleNamespace(tmp=tmp, home=home, tag=tag, contract=prep.contract, records=_jsonable(_records(prep, prep.contract, 400, seed=1)))


def _jsonable(records: list) -> list:
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()} for r in records]


def _typed(records: list) -> list:
    "Numbers as the schema types them (floats), for `surprises`"
    return [{k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in r.items()} for r in records]


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
def test_batch_endpoint_answers_as_predict_and_counts_surprises(churn_model, tmp_path):
    log = tmp_path / "p.jsonl"
    recs = churn_model.records[:40]
    odd = {**recs[0], "contract": "weekly", "tenure_months": 10_000}
    with bentoml_serve(churn_model.home, NAME, log, tmp_path) as url:
        single = httpx.post(f"{url}/predict", json={"records": recs + [odd]}, timeout=30).json()["predictions"]
        with ThreadPoolExecutor(8) as pool:  # many small concurrent requests: the adaptive batcher groups them
            answers = list(pool.map(lambda r: httpx.post(f"{url}/predict_batch", json={"records": [r]}, timeout=30), recs + [odd]))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:2]
        batched = [a.json()[0] for a in answers]
        assert [(b["id"], b["label"]) for b in batched] == [(s["id"], s["label"]) for s in single]
        # BLAS may round the last bit differently for batches of other sizes
        np.testing.assert_allclose([b["probability"] for b in batched], [s["probability"] for s in single], rtol=0, atol=1e-9)
        assert {b["model"] for b in batched} == {churn_model.tag}
        bad = httpx.post(f"{url}/predict_batch", json={"records": [{"tenure_months": "x"}]}, timeout=30)
        assert bad.status_code == 400 and bad.json()["detail"][0]["loc"][:2] == ["records", 0]
        assert httpx.post(f"{url}/predict_batch", content=b"a=b", headers={"content-type": "text/csv"}).status_code == 415
        many = httpx.post(f"{url}/predict_batch", json={"records": churn_model.records * 3}, timeout=30)  # 1,200: over the limit
        assert many.status_code == 413 and many.json()["error"] == "1,200 records is over the limit of 1,000"
        metrics = httpx.get(f"{url}/metrics").text
    assert 'mlflow_template_unseen_category_total{feature="contract"} 2.0' in metrics
    above = 2 * surprises(_typed(recs + [odd]), churn_model.contract)[("tenure_months", "above")]  # the jittered records too
    assert f'mlflow_template_out_of_range_total{{feature="tenure_months",side="above"}} {above:.1f}' in metrics
    assert _count(log) == 2 * (len(recs) + 1)  # the clean stop flushed every answered prediction


@pytest.mark.slow
def test_after_a_kill_at_most_the_last_fraction_of_a_second_is_missing(churn_model, tmp_path):
    log = tmp_path / "p.jsonl"
    answered = []  # (time answered, records)
    with bentoml_serve(churn_model.home, NAME, log, tmp_path) as url:
        server = [p for p in psutil.Process().children() if "bentoml" in " ".join(p.cmdline())][-1]
        with httpx.Client(timeout=10) as c:
            for i in range(300):
                r = c.post(f"{url}/predict", json={"records": [churn_model.records[i]]})
                assert r.status_code == 200
                answered.append(time.monotonic())
        killed_at = time.monotonic()
        for p in [server, *server.children(recursive=True)]: p.send_signal(signal.SIGKILL)
        psutil.wait_procs([server], timeout=10)
    lost = len(answered) - _count(log)
    window = killed_at - answered[len(answered) - lost] if lost else 0.0
    print(f"SIGKILL after {len(answered)} answered: {lost} missing from the log, answered in the last {window:.3f} s")
    assert 0 <= lost and window <= 0.5, (lost, window)

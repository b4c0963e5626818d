"""The served model refuses bad and oversized input with the 4xx its OpenAPI document declares, and keeps /metrics bounded.

All tests share one real `bentoml serve` of a small promoted model (a module-scoped fixture), with small limits
set through the environment so oversized requests stay cheap to send.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import httpx
import hypothesis
import numpy as np
import pandas as pd
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_schema_conformance,
                                 status_code_conformance)
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_template import deploy

from conftest import bentoml_serve

pytestmark = pytest.mark.slow

NAME = "hardening_model"
MAX_BYTES, MAX_RECORDS = 20_000, 50
OK = {"customer_id": "c1", "tenure": 2, "charges": 95.5, "contract": "month-to-month", "signup": "2021-03-04"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "A classifier over numeric, categorical and date features, promoted into a temporary store and served for real"
    tmp = tmp_path_factory.mktemp("hardening")
    rng = np.random.default_rng(1)
    n = 120
    X = pd.DataFrame({"tenure": rng.integers(0, 72, n), "charges": rng.normal(70, 20, n),
                      "contract": rng.choice(["month-to-month", "one-year", "two-year"], n),
                      "signup": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 1500, n), unit="D")})
    X.loc[::9, "charges"] = np.nan
    y = np.where((X.tenure < 24) & (X.contract == "month-to-month"), "Yes", "No")
    prep = ColumnTransformer([("num", make_pipeline(SimpleImputer(), StandardScaler()), ["tenure", "charges"]),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), ["contract"])])  # the date is checked, not used
    model = Pipeline([("prep", prep), ("model", LogisticRegression())]).fit(X, y)
    contract = {"version": 1, "target": "churn", "task": "binary", "positive_class": "Yes", "classes": ["No", "Yes"],
                "id_column": "customer_id", "time_column": None, "features": list(X.columns),
                "columns": {"tenure": {"kind": "numeric", "dtype": "int64", "nullable": False, "min": 0, "max": 71},
                            "charges": {"kind": "numeric", "dtype": "float64", "nullable": True},
                            "contract": {"kind": "categorical", "dtype": "object", "nullable": False,
                                         "categories": ["month-to-month", "one-year", "two-year"]},
                            "signup": {"kind": "datetime", "dtype": "datetime64[ns]", "nullable": False,
                                       "min": "2020-01-01T00:00:00", "max": "2024-02-08T00:00:00"}}}
    home = tmp / "bentoml_home"
    with deploy.use_store(home):
        tag = deploy.save_model(model, name=NAME, contract=contract, metrics={"roc_auc": 0.9}, metadata={"run_id": "test"})
    log = tmp / "logs" / "predictions.jsonl"
    mp = pytest.MonkeyPatch()  # the limits come from the environment here (they win over the model's metadata)
    mp.setenv("MLFLOW_TEMPLATE_MAX_REQUEST_BYTES", str(MAX_BYTES))
    mp.setenv("MLFLOW_TEMPLATE_MAX_RECORDS", str(MAX_RECORDS))
    try:
        with bentoml_serve(home, NAME, log, tmp) as url:
            yield SimpleNamespace(url=url, tag=tag, log=log)
    finally:
        mp.undo()


def _lines(path: Path) -> list:
    "The log's lines once the service's background writer has flushed (it writes at least every 0.2 s)"
    time.sleep(0.5)
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _post(served, content: bytes | str, content_type: str = "application/json", **kw) -> httpx.Response:
    return httpx.post(f"{served.url}/predict", content=content, headers={"content-type": content_type}, timeout=60, **kw)


def test_a_good_request_still_scores_and_logs(served):
    before = len(_lines(served.log))
    r = httpx.post(f"{served.url}/predict", json={"records": [OK]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["id"] == "c1"
    new = _lines(served.log)[before:]
    assert len(new) == 1 and json.loads(new[0])["features"]["signup"].startswith("2021-03-04")


@pytest.mark.parametrize("field, raw", [
    ("tenure", "Infinity"), ("tenure", "-Infinity"), ("tenure", "NaN"), ("tenure", "1e309"), ("tenure", "-1e309"),
    ("tenure", '"Infinity"'), ("tenure", '"-Infinity"'), ("tenure", '"1e309"'), ("tenure", '"nan"'),
    ("tenure", str(10**400)), ("tenure", f'"{10**400}"'),
    ("charges", "NaN"), ("charges", "Infinity"),  # nullable: null means missing, NaN is refused all the same
    ("signup", '"0001-01-01"'), ("signup", '"9999-12-31"'), ("signup", '"1600-06-01T00:00:00Z"'),
])
def test_values_the_model_cannot_take_are_400_naming_the_field(served, field, raw):
    before = len(_lines(served.log))
    rec = json.dumps({**OK, field: "__RAW__"}).replace('"__RAW__"', raw)
    r = _post(served, '{"records": [%s, %s]}' % (json.dumps(OK), rec))
    assert r.status_code == 400, (raw, r.status_code, r.text)
    body = r.json()
    assert body["error"] and [d["loc"] for d in body["detail"]] == [["records", 1, field]], r.text
    assert len(_lines(served.log)) == before  # nothing scored, nothing logged


def test_prediction_log_lines_are_json(served):
    "A raw NaN in a required number used to be scored and logged as a bare NaN token; every line must be strict JSON"
    for rec in ({**OK, "tenure": "__NaN__"}, {**OK, "charges": None}):
        _post(served, '{"records": [%s]}' % json.dumps(rec).replace('"__NaN__"', "NaN"))
    assert _lines(served.log)
    for line in _lines(served.log):
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON token {c} in the prediction log"))


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=xyz",
                                          "application/x-www-form-urlencoded", "text/csv"])
def test_bodies_that_are_not_json_are_415(served, content_type):
    r = _post(served, b"--xyz\r\nContent-Disposition: form-data; name=\"records\"\r\n\r\n[]\r\n--xyz--\r\n", content_type)
    assert r.status_code == 415, r.text
    assert content_type.split(";")[0] in r.json()["error"]


def test_a_body_over_the_byte_limit_is_413_and_not_logged(served):
    before = len(_lines(served.log))
    records = [{**OK, "customer_id": "x" * 500} for _ in range(MAX_BYTES // 500 + 5)][:MAX_RECORDS]
    body = json.dumps({"records": records}).encode()
    assert len(body) > MAX_BYTES and len(records) <= MAX_RECORDS
    r = _post(served, body)
    assert r.status_code == 413, r.text
    assert f"{MAX_BYTES:,} bytes" in r.json()["error"]
    # without Content-Length (chunked): the bytes actually read count
    r = _post(served, iter([body[i:i + 4096] for i in range(0, len(body), 4096)]))
    assert r.status_code == 413, r.text
    assert len(_lines(served.log)) == before


def test_more_records_than_the_limit_is_413(served):
    before = len(_lines(served.log))
    r = httpx.post(f"{served.url}/predict", json={"records": [OK] * (MAX_RECORDS + 1)}, timeout=30)
    assert r.status_code == 413, r.text
    assert f"{MAX_RECORDS + 1:,} records" in r.json()["error"]
    assert httpx.post(f"{served.url}/predict", json={"records": [OK] * MAX_RECORDS}, timeout=30).status_code == 200
    assert len(_lines(served.log)) == before + MAX_RECORDS


def _series(text: str) -> set:
    "The metric series in Prometheus text: name and labels, without values"
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_unknown_paths_are_404_and_add_no_metric_series(served):
    get = lambda path: httpx.get(f"{served.url}{path}", timeout=10)
    get("/no-such-path-warmup")  # the first unknown path creates the one 'unknown' series set
    before = get("/metrics").text
    for _ in range(200):
        r = get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex[:8]}")
        assert r.status_code == 404 and r.json()["detail"][0]["type"] == "not_found"
    after = get("/metrics")
    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    assert _series(after.text) == _series(before), sorted(_series(after.text) ^ _series(before))[:10]
    assert abs(len(after.text) - len(before)) < 2_000
    assert re.search(r'bentoml_service_request_total\{endpoint="unknown",http_response_code="404"\} 2\d\d', after.text)
    assert "# TYPE bentoml_service_request_duration_seconds histogram" in after.text
    assert 'endpoint="/predict"' in after.text


def test_openapi_declares_the_statuses_and_bodies_it_answers(served):
    doc = httpx.get(f"{served.url}/docs.json", timeout=10).json()
    responses = doc["paths"]["/predict"]["post"]["responses"]
    assert set(responses) == {"200", "400", "413", "415", "500", "503", "504"}
    err = doc["components"]["schemas"]["ErrorResponse"]
    assert err["properties"]["detail"]["type"] == "array"
    for code in ("400", "413", "415", "500", "503", "504"):
        assert responses[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}


def test_the_docs_page_and_its_files_still_load(served):
    page = httpx.get(f"{served.url}/", timeout=10)
    assert page.status_code == 200
    files = re.findall(r'(?:src|href)="\.?(/(?:static_content|assets)/[^"]+)"', page.text)
    assert files
    for f in files:
        assert httpx.get(f"{served.url}{f}", timeout=10).status_code == 200, f


FUZZ_SECONDS, FUZZ_EXAMPLES = 75, 150


def test_schema_fuzz_finds_no_server_error_and_no_undeclared_answer(served):
    "Schemathesis against the served /docs.json: valid and invalid requests, bounded in examples and wall-clock time"
    schema = schemathesis.openapi.from_url(f"{served.url}/docs.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    ops = [op.ok() for op in schema.get_all_operations()]
    predict = [op for op in ops if op.path == "/predict"]
    assert predict, [op.path for op in ops]
    deadline, seen, failures = time.monotonic() + FUZZ_SECONDS, [], []
    for op in predict + [op for op in ops if op.path != "/predict"]:
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if op.path == "/predict" else (GenerationMode.POSITIVE,)
        for mode in modes:  # the other operations take no input, so nothing about them can be invalid
            examples = FUZZ_EXAMPLES // 2 if op.path == "/predict" else 3

            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck),
                                 phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
            @hypothesis.given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                if time.monotonic() > deadline: return
                response = case.call(base_url=served.url, timeout=30)
                seen.append(response.status_code)
                try: case.validate_response(response, checks=checks)
                except Exception as e: failures.append(f"{op.method.upper()} {op.path} -> {response.status_code}: {e}"[:800])

            run()
    assert not failures, "\n\n".join(failures[:5])
    assert seen and not [s for s in seen if s >= 500]
    assert {200, 400} <= set(seen), sorted(set(seen))  # it did reach the model and the schema's refusals

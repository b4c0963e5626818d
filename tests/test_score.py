"Batch scoring (`mlflow-template score`): real files and a real SQLite database, a real temporary BentoML store."
from __future__ import annotations

import os
import sqlite3
import subprocess

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from conftest import BIN
from mlflow_template.contract import validate_rows
from mlflow_template.deploy import save_model, use_store
from mlflow_template.labels import predict_table
from mlflow_template.prepare import prepare_data
from mlflow_template.scope import ProblemSpec
from mlflow_template.score import score_source
from mlflow_template.synthetic import make_churn

THRESHOLD = 0.4
BAD = {3: "tenure_months is not a number", 50: "contract is missing", 777: "tenure_months is missing"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    "A BentoML home with one promoted churn model (the project's preprocessor + LogisticRegression): (home, tag, model, contract)"
    home = tmp_path_factory.mktemp("bentoml")
    spec = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id")
    prep = prepare_data(make_churn(2000, seed=1), spec)
    feats = prep.contract["features"]
    model = Pipeline([("prep", clone(prep.preprocessor)), ("model", LogisticRegression(max_iter=1000))])
    model.fit(prep.train[feats], prep.train["churn"])
    with use_store(home):
        tag = save_model(model, name="churn_model", contract=prep.contract, metrics={}, metadata={"threshold": THRESHOLD})
    return home, tag, model, prep.contract


@pytest.fixture(scope="module")
def table():
    "1,000 rows of churn data to score, with three planted bad rows (text in a number, a missing required value)"
    df = make_churn(1000, seed=9, duplicates=0).drop(columns="churn").reset_index(drop=True).astype({"tenure_months": object})
    df.loc[3, "tenure_months"] = "lots"
    df.loc[50, "contract"] = None
    df.loc[777, "tenure_months"] = None
    return df


def expected(model, contract, rows: pd.DataFrame) -> pd.DataFrame:
    "The model's own predictions for the rows that meet the contract"
    ok, _ = validate_rows(rows, contract)
    return predict_table(model, ok[contract["features"]], "binary", "Yes", THRESHOLD)


def check_outputs(out: pd.DataFrame, bad: pd.DataFrame, rows: pd.DataFrame, store) -> None:
    "Every row is scored or quarantined (once), with its reason; predictions are the model's own; the tag is there"
    _, tag, model, contract = store
    assert len(out) + len(bad) == len(rows)
    assert sorted(out.source_row.tolist() + bad.source_row.tolist()) == list(range(len(rows)))
    assert dict(zip(bad.source_row, bad.quarantine_reason)) == BAD
    assert bad.set_index("source_row").tenure_months[3] == "lots"  # kept as read
    want = expected(model, contract, rows)
    assert out.label.tolist() == want.label.tolist()
    np.testing.assert_allclose(out.probability.to_numpy(), want.probability.to_numpy(), rtol=0, atol=1e-12)
    assert out.customer_id.tolist() == rows.drop(index=list(BAD)).customer_id.tolist()
    assert set(out.model) == {tag}


def test_parquet_in_chunks(store, table, tmp_path):
    table.astype({"tenure_months": str}).replace({"None": None}).to_parquet(tmp_path / "in.parquet")
    with use_store(store[0]):
        res = score_source(str(tmp_path / "in.parquet"), tmp_path / "scores.parquet", chunk_rows=128, progress=False)
    assert (res["rows"], res["scored"], res["quarantined"], res["model"]) == (1000, 997, 3, store[1])
    out = pd.read_parquet(tmp_path / "scores.parquet")
    check_outputs(out, pd.read_parquet(tmp_path / "scores.quarantine.parquet"), table, store)
    assert pq.read_schema(tmp_path / "scores.parquet").metadata[b"model"].decode() == store[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "scores.parquet", "scores.quarantine.parquet"]


def test_csv_glob_to_csv(store, table, tmp_path):
    table.iloc[:400].to_csv(tmp_path / "part-1.csv", index=False)
    table.iloc[400:].to_csv(tmp_path / "part-2.csv.gz", index=False)
    with use_store(store[0]):
        res = score_source(f"{tmp_path}/part-*", tmp_path / "scores.csv", format="csv", chunk_rows=300, progress=False)
    assert res["reasons"] == {"tenure_months is not a number": 1, "contract is missing": 1, "tenure_months is missing": 1}
    out = pd.read_csv(tmp_path / "scores.csv")
    rows = pd.concat([pd.read_csv(tmp_path / "part-1.csv"), pd.read_csv(tmp_path / "part-2.csv.gz")], ignore_index=True)
    check_outputs(out, pd.read_csv(tmp_path / "scores.quarantine.csv", dtype={"tenure_months": object}), rows, store)


def test_sqlite_table_and_query(store, table, tmp_path):
    with sqlite3.connect(tmp_path / "shop.db") as con:
        table.astype({"signup_date": str}).to_sql("customers", con, index=False)
    with use_store(store[0]):
        res = score_source(f"sqlite:///{tmp_path}/shop.db", tmp_path / "scores.parquet", table="customers",
                           chunk_rows=250, progress=False)
        few = score_source(f"sqlite:///{tmp_path}/shop.db", tmp_path / "few.parquet",
                           query="select * from customers where region = 'west'", progress=False)
    rows = pd.read_sql("select * from customers", sqlite3.connect(tmp_path / "shop.db"))
    check_outputs(pd.read_parquet(tmp_path / "scores.parquet"), pd.read_parquet(tmp_path / "scores.quarantine.parquet"),
                  rows, store)
    assert res["rows"] == 1000 and few["rows"] == int((table.region == "west").sum())


def cli(tmp_path, home, *args):
    env = {**os.environ, "BENTOML_HOME": str(home)}
    env.pop("MLFLOW_TEMPLATE_MODEL_NAME", None)
    return subprocess.run([str(BIN / "mlflow-template"), "score", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_scores_and_counts(store, table, tmp_path):
    table.astype({"tenure_months": str}).replace({"None": None}).to_parquet(tmp_path / "in.parquet")
    r = cli(tmp_path, store[0], "--source", "in.parquet", "--output", "out/scores.parquet", "--model", store[1],
            "--chunk-rows", "400")
    assert r.returncode == 0, r.stderr
    assert f"scored 997 of 1,000 rows with {store[1]}" in r.stdout
    assert "quarantined 3 rows into out/scores.quarantine.parquet" in r.stdout and "1 rows: contract is missing" in r.stdout
    check_outputs(pd.read_parquet(tmp_path / "out/scores.parquet"),
                  pd.read_parquet(tmp_path / "out/scores.quarantine.parquet"), table, store)


def test_cli_cannot_run(store, tmp_path):
    r = cli(tmp_path, store[0], "--source", "missing.parquet", "--output", "scores.parquet")
    assert r.returncode == 2 and "error: source missing.parquet: no such file" in r.stderr, r.stderr
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "in.csv", index=False)
    r = cli(tmp_path, tmp_path / "empty_home", "--source", "in.csv", "--output", "scores.parquet")
    assert r.returncode == 2 and "no promoted model in the BentoML model store" in r.stderr, r.stderr
    r = cli(tmp_path, store[0], "--source", "in.csv", "--output", "scores.parquet")
    assert r.returncode == 2 and "in.csv: the data lacks contract columns" in r.stderr, r.stderr
    assert not list(tmp_path.glob("scores*")) and not list(tmp_path.glob(".scores*"))  # nothing written, no temporary left

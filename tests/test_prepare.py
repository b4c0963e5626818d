"""The prepare stage on a messy table such as a user brings as a CSV: numbers and dates written as text, labels spelled
several ways, rows and ids repeated, a constant, an id-like and a leaky column. What comes out, what the reports
count, and how the data contract treats new rows; and the prepare runbook itself on that table."""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import nbformat
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlflow_template.contract import contract_report, learn_contract, validate_rows
from mlflow_template.core import write_json, write_parquet
from mlflow_template.features import build_preprocessor, clip_report, drop_columns, feature_roles, leakage_check
from mlflow_template.modelfile import dump_model, load_model_file
from mlflow_template.prepare import clean_target, deduplicate, repair_types
from mlflow_template.splits import split_data
from mlflow_template.scope import ProblemSpec
from mlflow_template.synthetic import make_churn

from conftest import BIN, ROOT

SPEC = ProblemSpec(target="Churn?", positive_class="Yes", id_column="account")
RATIOS = {"charge_per_month": ["total", "tenure"]}


def messy(n: int = 400, seed: int = 0) -> pd.DataFrame:
    "A CSV-like frame: every value as text, with the usual faults; 5 exact duplicate rows and 4 repeated accounts on top"
    base = make_churn(n, seed=seed, duplicates=0)
    rng = np.random.default_rng(seed)
    churn = base.churn.eq("Yes")
    df = pd.DataFrame({
        "account": base.customer_id,
        "signup": base.signup_date.dt.strftime("%Y-%m-%d"),
        "tenure": base.tenure_months.map(lambda v: f" {v} "),
        "monthly": base.monthly_charges.map(lambda v: f"${v:,.2f}"),
        "total": base.total_charges.map(lambda v: "NA" if pd.isna(v) else f"{v:,.2f}"),
        "contract": base.contract,
        "paperless": base.paperless_billing,
        "source": "crm",                                                    # constant
        "email": base.customer_id.str.lower() + "@example.org",            # id-like
        "cancel_fee": np.where(churn, rng.uniform(10, 50, n), 0.0).round(2),  # only churners pay one: leaks the target
        "Churn?": np.where(churn, rng.choice(["Yes", " YES ", "yes"], n), rng.choice(["No", "no "], n)).astype(object),
    })
    df.loc[[3, 7], "tenure"] = "unknown"
    df.loc[50:59, "monthly"] = "$9,999.00"                                  # absurd charges
    df.loc[[5, 11, 13], "Churn?"] = [None, "NA", ""]
    again = df.iloc[20:24].assign(monthly="$99.00")                       # the same accounts, other values
    return pd.concat([df, df.iloc[30:35], again], ignore_index=True)


@pytest.fixture(scope="module")
def cleaned():
    raw = messy()
    df, conversions = repair_types(raw, SPEC)
    df, target = clean_target(df, SPEC)
    df, dups = deduplicate(df, SPEC, keep="last")
    return raw, df, conversions.set_index("column"), target, dups


def test_text_becomes_numbers_and_dates_and_every_failure_is_counted(cleaned):
    raw, df, conv, _, _ = cleaned
    assert str(df.signup.dtype) == "datetime64[ns]" and df.monthly.dtype == float and df.total.dtype == float
    assert df.tenure.dtype == float and df.tenure.isna().sum() == 2          # "unknown" twice: missing, not a crash
    assert conv.loc["tenure", "not parsed (now missing)"] == 2
    assert conv.loc["total", "missing tokens"] == raw.total.eq("NA").sum() > 0
    assert conv.loc["monthly", "not parsed (now missing)"] == 0
    assert df.loc[df.account == raw.account[0], "monthly"].iloc[0] == float(raw.monthly[0].strip("$").replace(",", ""))
    assert set(conv.index) == {"signup", "tenure", "monthly", "total"}        # yes/no, e-mails and the constant stay text
    assert df.paperless.isin(["yes", "no"]).all()


def test_labels_are_normalised_and_rows_without_one_counted(cleaned):
    raw, df, _, target, _ = cleaned
    assert target["target_missing_dropped"] == 3                             # None, "NA" and ""
    assert set(df["Churn?"]) == {"Yes", "No"}
    assert target["label_map"][" YES "] == "Yes" and target["label_map"]["no "] == "No"
    with pytest.raises(ValueError, match=r"'Churned' is not a label .*\['No', 'Yes'\]"):
        clean_target(raw, ProblemSpec(target="Churn?", positive_class="Churned"))
    with pytest.raises(ValueError, match="one class only"):
        clean_target(raw.assign(**{"Churn?": " no"}), SPEC)
    zero_one, _ = clean_target(pd.DataFrame({"y": [1.0, 0.0, 0.0, np.nan]}), ProblemSpec(target="y", positive_class="1"))
    assert zero_one.y.tolist() == ["1", "0", "0"]


def test_duplicates_are_counted_and_the_keep_rule_applies(cleaned):
    raw, df, _, target, dups = cleaned
    assert (dups["exact_duplicates_dropped"], dups["duplicate_ids_dropped"], dups["repeated_ids"]) == (5, 4, 4)
    assert df.account.is_unique and len(df) == 400 - target["target_missing_dropped"]
    assert (df.loc[df.account.isin(raw.account[20:24]), "monthly"] == 99.0).all()   # keep="last"
    first, _ = deduplicate(clean_target(repair_types(raw, SPEC)[0], SPEC)[0], SPEC, keep="first")
    assert (first.loc[first.account.isin(raw.account[20:24]), "monthly"] != 99.0).all()
    events, rep = deduplicate(raw, SPEC, keep="keep_all")
    assert len(events) == len(raw) - 5 and rep["rows_with_repeated_ids"] == 8 and rep["duplicate_ids_dropped"] == 0


def test_constant_id_like_and_leaky_columns_are_dropped_with_reasons(cleaned):
    _, df, _, _, _ = cleaned
    roles = feature_roles(df, SPEC)
    assert roles["dropped"]["source"].startswith("constant") and roles["dropped"]["email"].startswith("id-like")
    assert {"monthly", "total", "tenure", "cancel_fee"} <= set(roles["numeric"])   # unique floats are not ids
    assert "account" not in sum((roles[k] for k in ("numeric", "categorical", "datetime")), [])
    leaks = leakage_check(df, SPEC, roles)
    assert leaks.column[leaks.leaky].tolist() == ["cancel_fee"]
    assert leaks.set_index("column").score["monthly"] < 0.9
    kept = drop_columns(roles, {"cancel_fee": "leaky"})
    assert "cancel_fee" not in kept["numeric"] and kept["dropped"]["cancel_fee"] == "leaky"


def _disjoint(parts, col="account"):
    ids = [set(p[col]) for p in parts]
    return not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_no_id_appears_in_two_splits_when_ids_repeat(cleaned):
    raw = cleaned[0]
    events, _ = deduplicate(clean_target(repair_types(raw, SPEC)[0], SPEC)[0], SPEC, keep="keep_all")
    many = pd.concat([events, events.sample(300, random_state=1).assign(monthly=1.0)], ignore_index=True)  # busy accounts
    assert not many.account.is_unique
    for spec in (SPEC, ProblemSpec(target="Churn?", positive_class="Yes", id_column="account", time_column="signup"),
                 ProblemSpec(target="monthly", task="regression", id_column="account")):
        parts = split_data(many, spec)
        assert sum(map(len, parts)) == len(many) and _disjoint(parts), spec
    train, _, test = split_data(many, SPEC)
    assert abs(train["Churn?"].eq("Yes").mean() - test["Churn?"].eq("Yes").mean()) < 0.05


@pytest.fixture(scope="module")
def fitted(cleaned):
    _, df, _, _, _ = cleaned
    roles = drop_columns(feature_roles(df, SPEC), {"cancel_fee": "leaky"})
    train, valid, test = split_data(df, SPEC)
    contract = learn_contract(train, SPEC, roles, engineered=RATIOS)
    pre = build_preprocessor(roles, clip_method="iqr", ratios=RATIOS)
    model = Pipeline([("prep", pre), ("model", LogisticRegression(max_iter=1000))])
    model.fit(train[contract["features"]], train["Churn?"])
    return SimpleNamespace(train=train, valid=valid, test=test, contract=contract, model=model)


def test_the_model_takes_raw_columns_and_computes_its_own_features(fitted, tmp_path):
    c = fitted.contract
    assert c["features"] == ["signup", "tenure", "monthly", "total", "contract", "paperless"]
    assert {c["columns"][f]["kind"] for f in c["features"]} == {"datetime", "numeric", "categorical"}
    assert c["dropped"]["cancel_fee"] == "leaky" and c["engineered"]["charge_per_month"]["numerator"] == "total"
    names = set(fitted.model[0].get_feature_names_out())
    assert {"ratios__charge_per_month", "numeric__missingindicator_tenure", "datetime__signup_year"} <= names
    assert "charge_per_month" not in fitted.train.columns                   # computed in the model, not stored
    clipped = clip_report(fitted.model[0], fitted.train[c["features"]]).set_index("column")
    upper = clipped.loc["monthly", "upper bound"]
    assert clipped.loc["monthly", "above"] == (fitted.train.monthly > upper).sum() >= 5 and upper < 9999
    back = load_model_file(dump_model(fitted.model, tmp_path / "model.skops"))
    X = fitted.test[c["features"]]
    np.testing.assert_allclose(back.predict_proba(X), fitted.model.predict_proba(X))
    assert list(back.classes_) == ["No", "Yes"]


def test_new_rows_are_checked_against_the_contract(fitted):
    c = fitted.contract
    batch = fitted.test.head(6).astype(object).copy()
    batch.loc[batch.index[0], "tenure"] = "lots"                              # wrong type
    batch.loc[batch.index[1], "contract"] = None                              # required and missing
    batch.loc[batch.index[2], "monthly"] = " $12,020.50 "                     # text, but a number: accepted, converted
    batch.loc[batch.index[3], "contract"] = "lifetime"                        # unseen: a warning, the model copes
    batch.loc[batch.index[4], "signup"] = "2031-01-01"                        # out of range: a warning
    batch["note"] = "from the CRM"                                            # unknown: ignored
    accepted, quarantined = validate_rows(batch, c)
    assert len(accepted) + len(quarantined) == len(batch)                   # nothing dropped silently
    assert quarantined.quarantine_reason.tolist() == ["tenure is not a number", "contract is missing"]
    assert accepted.monthly.dtype == float and accepted.monthly.iloc[0] == 12020.5
    assert accepted.note.tolist() == ["from the CRM"] * 4
    probs = fitted.model.predict_proba(accepted[c["features"]])
    assert probs.shape == (4, 2) and np.isfinite(probs).all()
    report = contract_report(batch, c).set_index("column")
    assert report.loc["contract", ["missing (required)", "unseen category"]].tolist() == [1, 1]
    assert report.loc["tenure", ["wrong type", "status"]].tolist() == [1, "quarantined rows"]
    assert report.loc["signup", ["above max", "status"]].tolist() == [1, "warning"]
    assert report.loc["monthly", "above max"] >= 1 and report.loc["note", "status"] == "ignored"
    with pytest.raises(KeyError, match="paperless"):
        validate_rows(batch.drop(columns="paperless"), c)


def test_runbook_reports_what_it_cleaned(tmp_path):
    "The prepare runbook, run by papermill on the messy table, writes its artifacts and shows the counts"
    run = tmp_path / "run"
    write_json(run / "spec.json", ProblemSpec(target="Churn?", positive_class="Yes", id_column="account").to_dict())
    write_parquet(run / "raw.parquet", messy(300, seed=3))
    r = subprocess.run([str(BIN / "papermill"), "nbs/pipeline/03_prepare.ipynb", str(run / "03_prepare.ipynb"),
                        "-p", "run_dir", str(run), "-p", "clip_method", "iqr", "-y", json.dumps({"ratios": RATIOS}),
                        "-k", "python3"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((run / "prepare.json").read_text())
    assert (rep["exact_duplicates_dropped"], rep["duplicate_ids_dropped"], rep["target_missing_dropped"]) == (5, 4, 3)
    assert {c["column"] for c in rep["conversions"]} == {"signup", "tenure", "monthly", "total"}
    assert rep["leakage"]["flagged"] == ["cancel_fee"] and rep["dropped"]["cancel_fee"].startswith("leaky")
    assert rep["dropped"]["source"].startswith("constant") and rep["dropped"]["email"].startswith("id-like")
    assert sum(s["rows"] for s in rep["splits"].values()) == rep["rows_out"] == 300 - 3
    contract = json.loads((run / "contract.json").read_text())
    assert "cancel_fee" not in contract["features"] and "charge_per_month" in contract["engineered"]
    train = pd.read_parquet(run / "train.parquet")
    assert str(train.signup.dtype) == "datetime64[ns]" and "charge_per_month" not in train.columns
    assert load_model_file(run / "preprocessor.skops").get_feature_names_out().size > len(contract["features"])
    text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
                     for c in nbformat.read(run / "03_prepare.ipynb", as_version=4).cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    for caption in ("cleaning steps in order; counts in rows", "text columns converted", "flagged as leaky",
                    "missing values per column", "clipping (iqr)", "engineered ratios", "rows per split"):
        assert caption in text, caption

"""Evaluation on real-world scenarios (issue 8): slices cover every row and reproduce the overall metric, stress tests
hurt only through the columns a model uses and never crash on unseen categories, the backtest never trains on the
future, and local explanations add up to the prediction for every task and model family."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlflow_template.features import build_preprocessor
from mlflow_template.metrics import compute_metrics
from mlflow_template.scenarios import backtest, explain_rows, slice_metrics, stress_tests
from mlflow_template.scope import ProblemSpec
from mlflow_template.synthetic import make_churn

NUMERIC = ["tenure_months", "monthly_charges", "total_charges", "support_calls", "senior_citizen"]
CATEGORICAL = ["contract", "internet_service", "payment_method", "gender", "region"]
DATES = ["signup_date"]
FEATURES = NUMERIC + CATEGORICAL + DATES
BINARY = ProblemSpec(target="churn", positive_class="Yes", seed=1)
CONTRACT = {"columns": {**{c: {"kind": "numeric"} for c in NUMERIC}, **{c: {"kind": "datetime"} for c in DATES},
                        **{c: {"kind": "categorical", "categories": []} for c in CATEGORICAL}}}


def _pipe(estimator, numeric=NUMERIC, categorical=CATEGORICAL, dates=DATES):
    "The project's preprocessing over raw columns, then `estimator`: the shape of every saved model"
    roles = {"numeric": numeric, "categorical": categorical, "datetime": dates}
    return Pipeline([("prep", build_preprocessor(roles)), ("model", estimator)])


@pytest.fixture(scope="module")
def data():
    df = make_churn(1200, seed=3, duplicates=0)
    return df.iloc[:800].reset_index(drop=True), df.iloc[800:].reset_index(drop=True)


@pytest.fixture(scope="module")
def model(data):
    train, _ = data
    return _pipe(LogisticRegression(max_iter=1000)).fit(train[FEATURES], train.churn)


def test_slices_cover_every_row_and_reproduce_the_overall_metric(data, model):
    _, test = data
    spec = ProblemSpec(target="churn", positive_class="Yes", time_column="signup_date")
    table = slice_metrics(spec, model, test, FEATURES, ["contract", "monthly_charges", "region"], threshold=0.3)
    overall = compute_metrics(spec, test.churn, model, test[FEATURES], threshold=0.3)
    assert table.iloc[0][["roc_auc", "f1", "log_loss"]].tolist() == pytest.approx([overall[k] for k in ("roc_auc", "f1", "log_loss")])
    assert table.column.unique().tolist() == ["(all rows)", "contract", "monthly_charges", "region", "signup_date"]
    per_column = table[table.column != "(all rows)"].groupby("column").rows.sum()
    assert (per_column == len(test)).all(), per_column
    assert table.query("column == 'monthly_charges'").shape[0] == 5  # quantile bins
    fiber = test.internet_service.eq("fiber").to_numpy()
    by_service = slice_metrics(spec, model, test, FEATURES, ["internet_service"], min_rows=1)
    assert by_service.query("slice == 'fiber'").roc_auc.item() == pytest.approx(
        compute_metrics(spec, test.churn[fiber], model, test[FEATURES][fiber])["roc_auc"])
    assert by_service.query("slice == 'missing'").rows.item() == test.internet_service.isna().sum()
    assert (table["difference from all rows"] == table.roc_auc - overall["roc_auc"]).all()


def test_a_fault_in_a_column_the_model_ignores_changes_nothing(data):
    train, test = data
    used = _pipe(LogisticRegression(max_iter=1000), numeric=["tenure_months", "monthly_charges"], categorical=["contract"], dates=[])
    used.fit(train[FEATURES], train.churn)
    table = stress_tests(BINARY, used, test, FEATURES, CONTRACT, share=0.3, noise=1.0)
    ignored = table[table.column.isin(["gender", "region", "total_charges", "signup_date"])]
    assert len(ignored) == 7 and (ignored.change == 0).all(), ignored  # missing in all four, noise in one, unseen in two
    seen = table[table.column.isin(["contract", "tenure_months"])]
    assert len(seen) == 4 and (seen.change != 0).all(), seen  # the columns it uses: every fault shows
    assert table.roc_auc[0] == pytest.approx(compute_metrics(BINARY, test.churn, used, test[FEATURES])["roc_auc"])


def test_unseen_categories_do_not_crash(data, model):
    train, test = data
    table = stress_tests(BINARY, model, test, FEATURES, CONTRACT)
    unseen = table[table.scenario == "unseen categories"]
    assert len(unseen) == len(CATEGORICAL) + 1 and unseen.roc_auc.notna().all(), unseen
    strict = Pipeline([("prep", ColumnTransformer([("c", OneHotEncoder(handle_unknown="error"), ["contract"])])),
                       ("model", LogisticRegression())]).fit(train[FEATURES], train.churn)
    failed = stress_tests(BINARY, strict, test, FEATURES, CONTRACT).query("scenario == 'unseen categories' and column == 'contract'")
    assert failed.roc_auc.isna().all() and "the model failed: ValueError" in failed["what was done"].item()


@pytest.mark.parametrize("task, estimator", [
    ("binary", LogisticRegression(max_iter=1000)),
    ("binary", HistGradientBoostingClassifier(max_iter=40, random_state=0)),
    ("binary", RandomForestClassifier(n_estimators=30, random_state=0)),
    ("binary", MLPClassifier((16,), early_stopping=True, random_state=0)),
    ("multiclass", LogisticRegression(max_iter=1000)),
    ("regression", TransformedTargetRegressor(Ridge(), func=np.log1p, inverse_func=np.expm1)),
    ("regression", RandomForestRegressor(n_estimators=30, random_state=0)),
], ids=["logistic", "boosting", "forest", "mlp", "multiclass", "log-target-ridge", "forest-regressor"])
def test_explanations_add_up_to_the_prediction(data, task, estimator):
    train, test = data
    target = {"binary": "churn", "multiclass": "payment_method", "regression": "monthly_charges"}[task]
    spec = ProblemSpec(target=target, task=task, positive_class="Yes" if task == "binary" else None, seed=2)
    features = [c for c in FEATURES if c != target] + (["churn"] if task != "binary" else [])
    tr, te = train.dropna(subset=[target]), test.dropna(subset=[target])
    model = _pipe(estimator, numeric=[c for c in NUMERIC if c != target],
                  categorical=[c for c in CATEGORICAL if c != target] + (["churn"] if task != "binary" else [])).fit(tr[features], tr[target])
    table = explain_rows(spec, model, tr, te, features, n=3, background_rows=40, permutations=6)
    info = pd.DataFrame(table.attrs["rows"])
    assert len(info) == 3 and len(table) == 3 * len(features)
    total = table.groupby("row", sort=False).contribution.sum().to_numpy()
    assert total + info.base.to_numpy() == pytest.approx(info.prediction.to_numpy(), abs=1e-9)
    rows = te.loc[info.row, features]
    if task == "binary": expected = model.predict_proba(rows)[:, list(model.classes_).index("Yes")]
    elif task == "multiclass": expected = model.predict_proba(rows).max(axis=1)
    else: expected = model.predict(rows)
    assert info.prediction.to_numpy() == pytest.approx(expected, abs=1e-9)
    assert info.prediction.is_monotonic_increasing  # the lowest, the middle and the highest prediction
    assert set(table.feature) == set(features) and table.value.map(type).eq(str).all()


class _TrainingTimes(TransformerMixin, BaseEstimator):
    "Passes rows through, and records the latest time it was fitted on (class-wide, as the backtest fits clones)"
    seen: list = []

    def fit(self, X, y=None):
        _TrainingTimes.seen.append(pd.Timestamp(X["signup_date"].max()))
        return self

    def transform(self, X): return X


def test_backtest_windows_are_in_time_order_and_never_train_on_the_future(data):
    frame = pd.concat(data, ignore_index=True)
    spec = ProblemSpec(target="churn", positive_class="Yes", time_column="signup_date", seed=0)
    spy = Pipeline([("spy", _TrainingTimes()), ("prep", build_preprocessor({"numeric": NUMERIC, "categorical": CATEGORICAL,
                                                                           "datetime": DATES})), ("model", LogisticRegression(max_iter=500))])
    _TrainingTimes.seen.clear()
    table = backtest(spec, spy, frame, FEATURES, windows=4)
    assert table.window.tolist() == [1, 2, 3, 4]
    assert table["test from"].is_monotonic_increasing and (table["train to"] < table["test from"]).all()
    assert (table["test from"].to_numpy()[1:] > table["test to"].to_numpy()[:-1]).all()
    assert [t for t in _TrainingTimes.seen] == table["train to"].tolist()  # one refit per window, on the past only
    assert table["train rows"].is_monotonic_increasing and table["test rows"].sum() + table["train rows"][0] == len(frame)
    assert table.roc_auc.between(0.5, 1).all(), table


def test_backtest_without_a_time_column_says_why(data, model):
    table = backtest(BINARY, model, data[1], FEATURES)
    assert table.empty and "no time column" in table.attrs["reason"]


@pytest.mark.parametrize("task", ["multiclass", "regression"])
def test_other_tasks_slice_and_stress(data, task):
    train, test = data
    target = "payment_method" if task == "multiclass" else "monthly_charges"
    spec = ProblemSpec(target=target, task=task)
    features = [c for c in FEATURES if c != target]
    estimator = LogisticRegression(max_iter=1000) if task == "multiclass" else Ridge()
    tr, te = train.dropna(subset=[target]), test.dropna(subset=[target])
    model = _pipe(estimator, numeric=[c for c in NUMERIC if c != target], categorical=[c for c in CATEGORICAL if c != target])
    model.fit(tr[features], tr[target])
    slices = slice_metrics(spec, model, te, features, ["contract", "tenure_months"])
    metric = spec.primary_metric
    assert slices[metric][0] == pytest.approx(compute_metrics(spec, te[target], model, te[features])[metric])
    assert (slices[slices.column != "(all rows)"].groupby("column").rows.sum() == len(te)).all()
    stress = stress_tests(spec, model, te, features, CONTRACT)
    assert stress[metric].notna().all() and stress[metric][0] == slices[metric][0]

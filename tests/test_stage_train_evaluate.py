"""The scope, train and evaluate stages in process (no papermill): the spec checked against the metric registry,
the search scored by the registry, the threshold decision, fairness groups, the model card, and thin runbooks."""
from __future__ import annotations

import ast
import json

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import make_column_transformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_template import card, evaluate, metrics, plots, scope, train
from mlflow_template.labels import predict_table, positive_scores
from mlflow_template.report import fmt_value
from mlflow_template.scope import ProblemSpec
from mlflow_template.settings import load_parameters
from mlflow_template.synthetic import make_churn

from conftest import ROOT

SPEC = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id", sensitive_features=["gender", "age"],
                   success_thresholds={"min_roc_auc": 0.7, "min_recall": 0.5}, cost_false_negative=5.0)
NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["contract", "internet_service", "gender"]
FEATURES = NUMERIC + CATEGORICAL


def _preprocessor():
    return make_column_transformer(
        (make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
        (make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), CATEGORICAL))


@pytest.fixture(scope="module")
def splits():
    "Train, valid and test splits of synthetic churn data, with an age of 60 distinct values (some missing)"
    df = make_churn(2000, seed=5, duplicates=0)
    df = df[df.churn.notna()].reset_index(drop=True)
    age = pd.Series(np.random.default_rng(1).integers(18, 78, len(df)), dtype=float)
    age[np.random.default_rng(2).random(len(df)) < 0.03] = np.nan
    df["age"] = age
    return df.iloc[:1200], df.iloc[1200:1600], df.iloc[1600:]


@pytest.fixture(scope="module")
def trained(splits):
    tr, va, _ = splits
    return train.train_candidates(SPEC, _preprocessor(), tr, va, FEATURES, ["linear", "tree"], n_iter=1, cv=2,
                                  progress=None)


def _code_cells(name: str) -> list:
    nb = json.loads((ROOT / "nbs" / "pipeline" / name).read_text())
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell) -> str:
    return "".join(cell["source"])


# scope: one metric registry

def test_scope_uses_the_metric_registry():
    for old in ("TASKS", "METRICS", "LOWER_IS_BETTER", "DEFAULT_METRIC"):
        assert old not in scope.__all__
    for task in metrics.TASKS:
        spec = ProblemSpec(target="y", task=task, positive_class="a" if task == "binary" else None)
        assert spec.primary_metric == metrics.DEFAULT_METRIC[task]
        for m in metrics.metrics_for(task):  # every metric of the registry is a valid primary metric and threshold
            ProblemSpec(target="y", task=task, positive_class="a" if task == "binary" else None, primary_metric=m,
                        success_thresholds={f"min_{m}": 0.1})
    with pytest.raises(ValueError, match="primary_metric: 'rmse' does not fit a binary task"):
        ProblemSpec(target="y", positive_class="a", primary_metric="rmse")


# train: the registry's scorer

def test_train_scores_with_the_registry(splits, trained):
    assert not hasattr(train, "SCORERS") and "scorer" not in train.__all__ and train.scorer is metrics.scorer
    _, va, _ = splits
    tr, _, _ = splits
    board = trained.board
    singles = board[board.family != "ensemble"]
    assert singles["cv roc_auc"].is_monotonic_decreasing  # ranked by the cross-validated score: the top row is selected
    # the out-of-fold predictions the threshold is chosen on: every development row once, scored by the registry
    oof = trained.oof
    assert len(oof) == len(tr) + len(va) == trained.rows["fitted"] and oof.prediction.between(0, 1).all()
    assert 0.6 < metrics.compute_metrics(SPEC, oof.churn, scores=oof.prediction.to_numpy())["roc_auc"] < 1
    assert all(type(v) in (int, float, str, bool, list) for p in board["best params"] for v in p.values())


def test_train_lower_is_better_metric_shown_as_itself(splits):
    tr, va, _ = splits
    spec = ProblemSpec(target="churn", positive_class="Yes", primary_metric="log_loss")
    board = train.train_candidates(spec, _preprocessor(), tr.head(600), va.head(200), FEATURES, ["linear", "tree"], n_iter=1,
                                   cv=2, progress=None, ensemble=False).board
    assert (board["cv log_loss"] > 0).all() and (board["cv log_loss std"] >= 0).all()
    assert board[board.family != "ensemble"]["cv log_loss"].is_monotonic_increasing  # smallest loss first: it is the one selected


def test_plot_leaderboard(trained):
    fig = plots.plot_leaderboard(trained.board, SPEC, trained.trials)
    assert fig.axes[0].get_xlabel() == "cross-validated roc_auc (unitless)"


# evaluate: threshold, cross-validation, fairness, gate, card

def test_choose_threshold_checks_the_strategy_first(splits, trained):
    "slip c: the strategy is validated before it is used (and before any data is looked at)"
    _, va, _ = splits
    for task, spec in (("binary", SPEC), ("regression", ProblemSpec(target="y", task="regression"))):
        with pytest.raises(ValueError, match=r"threshold_strategy: 'best' is not one of cost, fixed"):
            evaluate.choose_threshold(spec, "best", 0.5, None, None)
    scores = positive_scores(trained.model, va[FEATURES], "Yes")
    cost = evaluate.choose_threshold(SPEC, "cost", 0.5, va.churn, scores)
    assert cost["threshold"] == evaluate.cost_threshold(SPEC, va.churn, scores)["threshold"]
    fixed = evaluate.choose_threshold(SPEC, "fixed", 0.3, va.churn, scores)
    assert fixed["threshold"] == 0.3 and fixed["table"]["threshold chosen"].iloc[0] == 0.3
    assert fixed["cost"] == evaluate.cost_curve(SPEC, va.churn, scores, [0.3]).cost.iloc[0]  # the cost of the threshold used
    with pytest.raises(ValueError, match="fixed_threshold"):
        evaluate.choose_threshold(SPEC, "fixed", 2, va.churn, scores)


def test_evaluate_runbook_validates_the_strategy_before_using_it():
    "slip c: outside the parameters cell, the first use of threshold_strategy is the call that checks it"
    code = "\n".join(_source(c) for c in _code_cells("06_evaluate.ipynb") if "parameters" not in c["metadata"].get("tags", []))
    first = next(line for line in code.splitlines() if "threshold_strategy" in line and "import" not in line)
    assert "choose_threshold(spec, threshold_strategy" in first, first


def test_cross_validation_shows_the_registry_summary_metrics(splits, trained):
    tr, _, _ = splits
    cv = evaluate.cross_validate_model(trained.model, tr[FEATURES], tr.churn, SPEC, folds=2)
    assert list(cv.metric) == ["roc_auc", "pr_auc", "f1", "log_loss"] == list(metrics.metrics_for("binary", summary=True))
    assert (cv.ci_lower <= cv["mean"]).all() and (cv["mean"] <= cv.ci_upper).all()


def test_group_metrics_bins_a_continuous_sensitive_feature(splits, trained):
    "slip a: an age with 60 values is a few age bands (as in explore), not 60 groups; missing ages are one group"
    _, _, te = splits
    assert te.age.nunique() > 50
    scores = positive_scores(trained.model, te[FEATURES], "Yes")
    t = evaluate.group_metrics(SPEC, te, te.churn, scores, "age", threshold=0.3)
    assert len(t) == 6 and t.group.iloc[-1] == "missing", t
    assert t.rows.iloc[-1] == te.age.isna().sum() and t.rows.sum() == len(te)
    assert t.rows.iloc[:-1].min() >= 50  # every band large enough to compare
    tables = evaluate.fairness_tables(SPEC, te, te.churn, scores, 0.3)
    assert list(tables) == ["gender", "age"] and len(tables["gender"]) <= 3
    assert "largest gaps: demographic_parity_difference = " in evaluate.group_caption(SPEC, tables["age"])


class _PredictDisagrees(LogisticRegression):
    "A classifier whose `predict` is not the argmax of its probabilities (as with SVC(probability=True))"
    def predict(self, X): return self.classes_[np.argmin(self.predict_proba(X), axis=1)]


def test_predictions_are_what_the_service_answers(splits, trained):
    """Slip: evaluate took multiclass labels from `model.predict` while the service (`labels.predict_table`) takes
    the most probable class; for a model where the two differ the evaluate stage reported other labels."""
    tr, _, te = splits
    mc = ProblemSpec(target="contract", task="multiclass")
    feats = ["tenure_months", "monthly_charges", "support_calls"]
    model = make_pipeline(SimpleImputer(), StandardScaler(), _PredictDisagrees(max_iter=500)).fit(tr[feats], tr.contract)
    labels = evaluate.predictions(mc, model, te[feats])
    assert labels.tolist() == predict_table(model, te[feats], "multiclass").label.tolist()
    assert (labels != model.predict(te[feats])).any()
    best = trained.model
    assert evaluate.predictions(SPEC, best, te[FEATURES]).tolist() == positive_scores(best, te[FEATURES], "Yes").tolist()
    assert metrics.compute_metrics(mc, te.contract, scores=labels)["accuracy"] == (labels == te.contract.to_numpy()).mean()


def test_group_metrics_are_the_registrys_per_group(splits, trained):
    "Each group's numbers are `compute_metrics` on its rows; only selection and false-positive rates are added"
    _, _, te = splits
    scores = positive_scores(trained.model, te[FEATURES], "Yes")
    t = evaluate.group_metrics(SPEC, te, te.churn, scores, "gender", threshold=0.3)
    assert list(t.columns) == ["group", "rows", "positive_rate", "selection_rate", "recall", "false_positive_rate",
                               "precision", "roc_auc"]
    g = t.group.iloc[0]
    rows = (te.gender == g).to_numpy()
    m = metrics.compute_metrics(SPEC, te.churn[rows], scores=scores[rows], threshold=0.3)
    row = t.set_index("group").loc[g]
    assert [row[k] for k in ("positive_rate", "recall", "precision", "roc_auc")] == [m[k] for k in ("positive_rate", "recall", "precision", "roc_auc")]
    assert row.selection_rate == (scores[rows] >= 0.3).mean()
    assert t.attrs["demographic_parity_difference"] == t.selection_rate.max() - t.selection_rate.min()
    # no threshold chosen means 0.5, as everywhere else
    default = evaluate.fairness_tables(SPEC, te, te.churn, scores)["gender"]
    assert default.attrs["threshold"] == 0.5 and default.equals(evaluate.group_metrics(SPEC, te, te.churn, scores, "gender", threshold=0.5))
    cap = evaluate.group_caption(SPEC, t)
    assert f"demographic_parity_difference = {fmt_value(t.attrs['demographic_parity_difference'])}" in cap


def test_evaluate_runbook_computes_test_metrics_with_one_call(splits, trained):
    "The runbook no longer chooses between scores and model by task: one call, the same numbers as before"
    _, va, te = splits
    code = "\n".join(_source(c) for c in _code_cells("06_evaluate.ipynb"))
    assert "metrics = compute_metrics(spec, test[spec.target], model, test[features], threshold=threshold)" in code
    assert "if binary: metrics" not in code and ":.2f}" not in code
    best = trained.model
    t = evaluate.choose_threshold(SPEC, "cost", 0.5, va.churn, evaluate.predictions(SPEC, best, va[FEATURES]))["threshold"]
    before = metrics.compute_metrics(SPEC, te.churn, scores=evaluate.predictions(SPEC, best, te[FEATURES]), threshold=t)
    assert metrics.compute_metrics(SPEC, te.churn, best, te[FEATURES], threshold=t) == before


def test_train_leaderboard_shows_the_registrys_numbers(splits):
    "The cv column is the mean fold score of the search turned back into the metric (`metrics.metric_from_score`)"
    tr, va, _ = splits
    spec = ProblemSpec(target="churn", positive_class="Yes", primary_metric="log_loss")
    est, space = train.candidates("binary", ["linear"], spec.seed)["linear"]
    dev = pd.concat([tr, va], ignore_index=True)  # the development rows the search scores settings on
    s = train.search(est, space, _preprocessor(), dev[FEATURES], dev.churn, spec, n_iter=1, cv=2)
    assert metrics.metric_from_score("log_loss", s.best["score"]) == -s.best["score"] > 0
    board = train.train_candidates(spec, _preprocessor(), tr, va, FEATURES, ["linear"], n_iter=1, cv=2, progress=None).board
    assert board["cv log_loss"].iloc[0] == -s.best["score"]


def _card(splits, trained, **kw):
    _, _, te = splits
    best = trained.model
    scores = positive_scores(best, te[FEATURES], "Yes")
    m = metrics.compute_metrics(SPEC, te.churn, scores=scores, threshold=0.3)
    groups = {c: evaluate.group_metrics(SPEC, te, te.churn, scores, c, threshold=0.3) for c in SPEC.sensitive_features}
    return card.model_card(SPEC, metrics=m, gate_result=evaluate.gate(SPEC, m), groups=groups, **kw)


def test_model_card_names_the_served_model_and_says_what_monitoring_does(splits, trained):
    "slip b: titled by the served name with the family as a field; no claim that monitoring retrains"
    text = _card(splits, trained, model_name="churn_model")
    assert text.startswith("# Model card: churn_model\n")
    assert "watches for drift and retrains" not in text
    assert "compares new data with the training data and raises alerts" in text and "Retraining is started by a person" in text
    family = trained.board.family.iloc[0]
    text = _card(splits, trained, model_name="churn_model", family=family)
    assert text.startswith("# Model card: churn_model\n") and f"- **family**: {family}" in text
    assert "### `age`" in text and "| missing |" in text
    with pytest.raises(ValueError, match="model_name"):
        _card(splits, trained, model_name="")


def test_evaluate_runbook_titles_the_card_with_the_served_name():
    "slip b: the runbook has a model_name parameter (from settings' [DEFAULT]) and passes it, not the family, as the name"
    cells = _code_cells("06_evaluate.ipynb")
    params = ast.parse(_source(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))))
    names = {n.target.id for n in params.body if isinstance(n, ast.AnnAssign)}
    assert "model_name" in names and load_parameters()["evaluate"]["model_name"] == "churn_model"
    code = "\n".join(_source(c) for c in cells)
    assert "model_name=model_name" in code and 'model_name=run.read_json("train.json")' not in code


def test_gate_and_metrics_on_the_test_split(splits, trained):
    _, va, te = splits
    best = trained.model
    chosen = evaluate.choose_threshold(SPEC, "cost", 0.5, va.churn, evaluate.predictions(SPEC, best, va[FEATURES]))
    m = metrics.compute_metrics(SPEC, te.churn, scores=evaluate.predictions(SPEC, best, te[FEATURES]),
                                threshold=chosen["threshold"])
    g = evaluate.gate(SPEC, m)
    assert [c["metric"] for c in g["checks"]] == ["roc_auc", "recall"]
    assert g["passed"] == all(c["passed"] for c in g["checks"]) and g["primary_value"] == m["roc_auc"]


# runbooks stay thin

@pytest.mark.parametrize("name", ["01_scope.ipynb", "05_train.ipynb", "06_evaluate.ipynb"])
def test_runbook_cells_are_short(name):
    long = [(i, len(_source(c).splitlines())) for i, c in enumerate(_code_cells(name))
            if "parameters" not in c["metadata"].get("tags", []) and len(_source(c).splitlines()) > 15]
    assert not long, f"{name}: code cells over 15 lines (index, lines): {long}"


def test_confusion_matrix_labels_come_from_threshold_labels():
    code = "\n".join(_source(c) for c in _code_cells("06_evaluate.ipynb"))
    assert "threshold_labels(test_pred, model.classes_, spec.positive_class, threshold)" in code
    assert "for s in test_scores" not in code and "import seaborn" not in "\n".join(
        _source(c) for c in _code_cells("05_train.ipynb"))


def test_modules_stay_short():
    for mod in ("scope", "train", "evaluate", "plots", "card"):
        lines = (ROOT / "mlflow_template" / f"{mod}.py").read_text().count("\n")
        assert lines < 450, f"{mod}.py has {lines} lines"


def test_train_runbook_records_every_trial_and_passes_the_cap():
    "issue 8: train.json lists every setting tried (not only each family's best); the seconds cap reaches the search"
    cells = _code_cells("05_train.ipynb")
    params = ast.parse(_source(next(c for c in cells if "parameters" in c["metadata"].get("tags", []))))
    assert {n.target.id for n in params.body if isinstance(n, ast.AnnAssign)} >= {"strategy", "n_iter", "timeout"}
    code = "\n".join(_source(c) for c in cells)
    assert "timeout=timeout" in code and '"trials": trials.to_dict(orient="records")' in code
    assert "top_trials(trials, spec.primary_metric, n=10)" in code


def test_leaderboard_trials_hold_each_familys_defaults_first(trained):
    board, trials = trained.board, trained.trials
    assert set(trials.family) == set(board.family) == {"linear", "tree", "ensemble"}
    for fam, g in trials[trials.family != "ensemble"].groupby("family"):
        assert g.defaults.iloc[0] and g.trial.iloc[0] == 0 and len(g) == 2  # n_iter=1: the defaults plus one
        chosen = board.set_index("family").loc[fam]  # one of its trials: the defaults unless one is clearly better
        assert g[g["cv roc_auc"] == chosen["cv roc_auc"]].params.iloc[0] == chosen["best params"]

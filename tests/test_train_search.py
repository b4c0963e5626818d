"""Hyperparameter search (issue 8): Bayesian search with Optuna is reproducible and counts its trials, every family's
defaults are a candidate (so tuning can only add), and gradient boosting searches its iteration count with early stopping."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlflow_template import train
from mlflow_template.features import build_preprocessor
from mlflow_template.modelfile import dump_model, load_model_file
from mlflow_template.scope import ProblemSpec
from mlflow_template.synthetic import make_churn

SPEC = ProblemSpec(target="churn", positive_class="Yes", id_column="customer_id")
NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["contract", "internet_service"]
FEATURES = NUMERIC + CATEGORICAL


def _pre():
    "The project's own preprocessing for these columns, unfitted"
    return build_preprocessor({"numeric": NUMERIC, "categorical": CATEGORICAL, "datetime": []})


@pytest.fixture(scope="module")
def data():
    df = make_churn(900, seed=7, duplicates=0)
    df = df[df.churn.notna()].reset_index(drop=True)
    return df.iloc[:600], df.iloc[600:]


def _bayes(data, family="linear", n_iter=4, spec=SPEC, space=None):
    tr, _ = data
    est, default_space = train.candidates("binary", [family], spec.seed)[family]
    return train.search(est, space or default_space, _pre(), tr[FEATURES], tr.churn, spec, "bayes", n_iter=n_iter, cv=2)


def test_bayes_is_reproducible(data):
    "Same seed, same settings proposed, same scores, same winner"
    a, b = _bayes(data), _bayes(data)
    assert [r["params"] for r in a.rows] == [r["params"] for r in b.rows]
    assert [r["score"] for r in a.rows] == [r["score"] for r in b.rows]
    assert a.best["params"] == b.best["params"] and a.best["score"] == b.best["score"]
    other = _bayes(data, spec=ProblemSpec(target="churn", positive_class="Yes", seed=1))
    assert [r["params"] for r in other.rows][1:] != [r["params"] for r in a.rows][1:]  # the seed is what fixes them


def test_bayes_counts_its_trials(data):
    "n_iter settings proposed by Optuna, plus the defaults first; the trial table shows each with its time"
    s = _bayes(data, n_iter=3)
    assert len(s.rows) == 4 and s.rows[0]["params"] == {"C": 1.0}
    t = train.trial_table(s, "linear", SPEC)
    assert list(t.trial) == [0, 1, 2, 3] and t.defaults.tolist() == [True, False, False, False]
    assert (t.seconds > 0).all() and (t["cv roc_auc"] <= 1).all() and s.best["score"] in t["cv roc_auc"].tolist()


def test_timeout_caps_the_bayes_search(data):
    "A cap of a few milliseconds: the defaults are still scored, then no new setting starts"
    tr, _ = data
    est, space = train.candidates("binary", ["linear"])["linear"]
    s = train.search(est, space, _pre(), tr[FEATURES], tr.churn, SPEC, "bayes", n_iter=50, cv=2, timeout=0.001)
    assert 1 <= len(s.rows) < 10 and s.rows[0]["params"] == {"C": 1.0}
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        train.search(est, space, _pre(), tr[FEATURES], tr.churn, SPEC, "bayes", timeout=-1)


@pytest.mark.parametrize("strategy", ["random", "grid", "bayes"])
def test_defaults_win_over_a_bad_space(data, strategy):
    "A space of absurdly strong regularisation: every tuned setting predicts the base rate, the defaults win"
    tr, _ = data
    spec = ProblemSpec(target="churn", positive_class="Yes", primary_metric="log_loss")
    est, _ = train.candidates("binary", ["linear"])["linear"]
    s = train.search(est, {"C": stats.loguniform(1e-7, 1e-6)}, _pre(), tr[FEATURES], tr.churn, spec, strategy, n_iter=3, cv=2)
    assert s.rows[0]["params"] == {"C": 1.0}
    assert s.best["params"] == {"C": 1.0}, s.best
    assert s.pipeline.named_steps["model"].C == 1.0


def test_boosting_searches_its_iteration_count_with_early_stopping(data):
    "max_iter is searched (log scale) with the learning rate; early stopping ends each fit; the model file loads"
    est, space = train.candidates("binary", ["tree"])["tree"]
    assert est.early_stopping is True and isinstance(space["max_iter"], train.LogInt)
    assert train.default_params(est, space)["max_iter"] == 100
    s = _bayes(data, family="tree", n_iter=3)
    tried = [r["params"]["max_iter"] for r in s.rows]
    assert tried[0] == 100 and len(set(tried)) == 4 and all(100 <= m <= 1000 for m in tried), tried
    tr, _ = data
    model = s.pipeline.fit(tr[FEATURES], tr.churn).named_steps["model"]
    assert model.n_iter_ <= model.max_iter


def test_bayes_model_loads_under_the_reviewed_types(data, tmp_path):
    "Optuna objects never enter the pipeline: the winner saves and loads with the trusted type list"
    tr, va = data
    fitted = _bayes(data, n_iter=2).pipeline.fit(tr[FEATURES], tr.churn)
    back = load_model_file(dump_model(fitted, tmp_path / "model.skops"))
    assert np.allclose(back.predict_proba(va[FEATURES]), fitted.predict_proba(va[FEATURES]))


def test_every_space_entry_has_an_optuna_translation():
    "loguniform, randint, uniform, LogInt and lists of choices (tuples included) for every family and task"
    import optuna
    for task in ("binary", "regression"):
        for fam, (est, space) in train.candidates(task, list(train.FAMILIES)).items():
            trial = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0)).ask()
            values = {k: train._suggest(trial, k, d) for k, d in space.items()}
            est.set_params(**values)  # each a valid value for the estimator
            if fam == "neural": assert isinstance(values["hidden_layer_sizes"], tuple)
    with pytest.raises(ValueError, match="no Optuna translation for a scipy 'norm'"):
        train._suggest(optuna.create_study().ask(), "x", stats.norm(0, 1))

"""How often the monitor's alerts fire, measured: false alarms on unchanged batches, detection of real changes.

Batches of 5,000 rows of the default data (`make_churn`, as `synthetic://churn` makes it) against the default
reference (the default settings' 20,000 rows, prepared as the prepare stage does, with a default-like model fitted
on the training and validation splits; its test split is the held-out reference of concept drift):

- 20 unchanged batches: at most 1 raises any alert;
- 20 batches with `monthly_charges` shifted by half its standard deviation: at least 19 name it in a drift alert;
- 20 labelled batches drawn with `concept=0.8`: at least 19 raise the concept-drift alert;
- 20 unchanged labelled batches: at most 1 raises it.

The test prints the four rates.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlflow_template.concept import scored_rows
from mlflow_template.monitor import check_batch
from mlflow_template.synthetic import make_churn

from conftest import default_prepared

BATCHES, ROWS = 20, 5_000


@pytest.fixture(scope="module")
def default():
    "The default reference, held-out rows, a default-like model fitted on the development rows, its contract and spec"
    spec, prep = default_prepared()
    feats = prep.contract["features"]
    dev = pd.concat([prep.train, prep.valid])
    model = Pipeline([("prep", clone(prep.preprocessor)), ("model", LogisticRegression(max_iter=1000))])
    model.fit(dev[feats], dev[spec.target])
    reference = pd.concat([prep.train, prep.valid, prep.test], ignore_index=True)
    return reference, scored_rows(model, spec, prep.test, feats), model, prep.contract, spec


def _check(default, batch: pd.DataFrame):
    reference, held_out, model, contract, spec = default
    return check_batch(reference, batch, model, contract, spec, held_out=held_out)


@pytest.mark.slow
def test_alert_rates_on_unchanged_shifted_and_concept_drifted_batches(default):
    sd = default[0]["monthly_charges"].std()
    unchanged = [_check(default, make_churn(ROWS, seed=100 + i).drop(columns="churn")) for i in range(BATCHES)]
    shifted = [_check(default, make_churn(ROWS, seed=200 + i, shift={"monthly_charges": 0.5 * sd}).drop(columns="churn"))
               for i in range(BATCHES)]
    concept = [_check(default, make_churn(ROWS, seed=300 + i, concept=0.8)) for i in range(BATCHES)]
    labelled = [_check(default, make_churn(ROWS, seed=400 + i)) for i in range(BATCHES)]
    kinds = lambda c: {a["kind"] for a in c.alerts}
    false_any = sum(bool(c.alerts) for c in unchanged)
    named = sum(any(a["kind"] == "feature_drift" and a["feature"] == "monthly_charges" for a in c.alerts) for c in shifted)
    caught = sum("concept_drift" in kinds(c) for c in concept)
    false_concept = sum("concept_drift" in kinds(c) for c in labelled)
    drops = [c.concept["difference"] for c in concept]
    print(f"\nunchanged batches raising any alert: {false_any}/{BATCHES}"
          f"\nmonthly_charges shifted by 0.5 sd ({0.5 * sd:.1f}), named in a drift alert: {named}/{BATCHES}"
          f"\nconcept=0.8, concept-drift alert: {caught}/{BATCHES} (median {default[4].primary_metric} change {np.median(drops):+.3f})"
          f"\nunchanged labelled batches, concept-drift alert: {false_concept}/{BATCHES}")
    for c in unchanged + labelled:
        if c.alerts: print("  unexpected:", [a["message"] for a in c.alerts])
    assert false_any <= 1 and named >= BATCHES - 1 and caught >= BATCHES - 1 and false_concept <= 1

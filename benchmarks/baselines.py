"""Does the template beat the default scikit-learn pipeline a data scientist would write by hand? (issue 8)

For each public data set that a package ships offline (nothing is downloaded) and each of several seeded 80/20 splits
(stratified for classification), three models are fitted on the same 80% and scored on the same held-out 20%:

- linear baseline: impute the median and scale numbers, impute the most frequent value and one-hot encode categories,
  then `LogisticRegression()` (classification) or `Ridge()` (regression), all with default settings;
- tree baseline: the same preprocessing, then `HistGradientBoostingClassifier()` / `HistGradientBoostingRegressor()`;
- the template, given only the target and the task: `prepare.prepare_data` on the 80% with the prepare runbook's
  options (its parameters cell, overlaid with settings.ini's [prepare] values, except `ratios`, which names the
  default data's columns), then `train.train_candidates` with the train runbook's options from settings.ini
  (families, strategy, n_iter, cv_folds, n_jobs, timeout, search_rows), then `train.refit_all_rows` with the deploy
  runbook's `refit_max_rows`, in this process, as the runbooks call them. The template splits the 80% into its own
  train/valid/test, searches and selects on train + valid by cross-validation, and the model it would serve is the
  refitted one (the gate, which needs the scope's thresholds, is not applied here); it never sees the held-out 20%.

Every score is `metrics.compute_metrics` on the held-out 20% with the task's primary metric (binary: roc_auc,
multiclass: f1_macro, regression: rmse), so the numbers mean what the template's reports mean. Class labels are
given as text (the names the data set ships), as a user's table would hold them. Prints a markdown table with each
score's mean ± standard deviation over the splits, the template minus the best baseline (positive is better for the
template, whatever the metric's direction), the template's seconds per split (prepare + train), and the machine.

    .venv/bin/python benchmarks/baselines.py [--datasets breast_cancer,wine] [--seeds 0,1,2,3,4]
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this script is started
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlflow_template.metrics import LOWER_IS_BETTER, compute_metrics  # noqa: E402
from mlflow_template.prepare import prepare_data  # noqa: E402
from mlflow_template.scope import ProblemSpec  # noqa: E402
from mlflow_template.settings import load_parameters  # noqa: E402
from mlflow_template.train import refit_all_rows, train_candidates  # noqa: E402

DATA_SPECIFIC = ("ratios",)  # prepare options in settings.ini that name the default data's columns


# ---- the data sets: each returns (frame, target, task, positive class or None) --------------------------------------
def _sklearn(loader, target: str, names: bool):
    b = loader(as_frame=True)
    df = b.frame.copy()
    if names: df[target] = np.asarray(b.target_names)[b.target.to_numpy()]
    return df


def breast_cancer():
    from sklearn.datasets import load_breast_cancer
    return _sklearn(load_breast_cancer, "target", True).rename(columns={"target": "diagnosis"}), "diagnosis", "binary", "malignant"


def wine():
    from sklearn.datasets import load_wine
    return _sklearn(load_wine, "target", True).rename(columns={"target": "cultivar"}), "cultivar", "multiclass", None


def digits():
    from sklearn.datasets import load_digits
    df = _sklearn(load_digits, "target", False).rename(columns={"target": "digit"})
    df["digit"] = df["digit"].astype(str)
    return df, "digit", "multiclass", None


def diabetes():
    from sklearn.datasets import load_diabetes
    return _sklearn(load_diabetes, "target", False).rename(columns={"target": "progression"}), "progression", "regression", None


def fair():
    from statsmodels.datasets import fair as fair_data
    df = fair_data.load_pandas().data.copy()
    df["had_affair"] = np.where(df.pop("affairs") > 0, "yes", "no")
    return df, "had_affair", "binary", "yes"


def randhie():
    from statsmodels.datasets import randhie as randhie_data
    return randhie_data.load_pandas().data.copy(), "mdvis", "regression", None


def penguins():
    try: from palmerpenguins import load_penguins
    except ModuleNotFoundError:
        raise ModuleNotFoundError("penguins needs the palmerpenguins package: .venv/bin/pip install palmerpenguins") from None
    return load_penguins(), "species", "multiclass", None


DATASETS = {f.__name__: f for f in (breast_cancer, wine, digits, diabetes, fair, randhie, penguins)}


# ---- the hand-written baselines -------------------------------------------------------------------------------------
def baseline(X: pd.DataFrame, task: str, kind: str) -> Pipeline:
    "The default pipeline a data scientist would write: impute + scale numbers, impute + one-hot categories, a default model"
    numbers = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c]) and not pd.api.types.is_bool_dtype(X[c])]
    categories = [c for c in X.columns if c not in numbers]
    prep = ColumnTransformer([("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numbers),
                              ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                                    OneHotEncoder(handle_unknown="ignore")), categories)],
                             sparse_threshold=0)  # dense: HistGradientBoosting refuses a sparse matrix
    clf = task != "regression"
    model = {"linear": LogisticRegression() if clf else Ridge(),
             "tree": HistGradientBoostingClassifier() if clf else HistGradientBoostingRegressor()}[kind]
    return Pipeline([("prep", prep), ("model", model)])


# ---- the template, in process ---------------------------------------------------------------------------------------
def template_options() -> tuple[dict, dict]:
    "The prepare and train (+ refit) options a default run uses: runbook defaults overlaid with settings.ini (data-specific ones reset)"
    params = load_parameters()
    prep = {k: v for k, v in params["prepare"].items() if k not in ("run_dir", "cluster", "sample_rows")}
    for k in DATA_SPECIFIC:
        if k in prep: prep[k] = {}
    t = params["train"]
    train = {"families": t["families"], "strategy": t["strategy"], "n_iter": t["n_iter"], "cv": t["cv_folds"],
             "n_jobs": t["n_jobs"], "timeout": t["timeout"], "search_rows": t["search_rows"], "ensemble": t["ensemble"],
             "refit_max_rows": params["deploy"]["refit_max_rows"]}
    return prep, train


def run_template(train80: pd.DataFrame, spec: ProblemSpec, prep_opts: dict, train_opts: dict):
    "prepare_data, train_candidates, refit_all_rows on the 80%, as the runbooks call them; the model to serve and the leaderboard"
    prep = prepare_data(train80.copy(), spec, **prep_opts)
    features = prep.contract["features"]
    opts = {k: v for k, v in train_opts.items() if k != "refit_max_rows"}
    out = train_candidates(spec, prep.preprocessor, prep.train, prep.valid, features, progress=None, **opts)
    served, _ = refit_all_rows(out.model, spec, prep.splits, features, max_rows=train_opts["refit_max_rows"])
    return served, out.board, features


# ---- one data set --------------------------------------------------------------------------------------------------
def score(spec: ProblemSpec, model, X: pd.DataFrame, y: pd.Series) -> float:
    v = compute_metrics(spec, y, model, X)[spec.primary_metric]
    return np.nan if v is None else v


def bench(name: str, seeds: list, prep_opts: dict, train_opts: dict, log=print) -> dict:
    df, target, task, pos = DATASETS[name]()
    spec = ProblemSpec(target=target, task=task, positive_class=pos)  # only target and task (and binary's positive label)
    metric = spec.primary_metric
    out = {"data set": name, "rows": len(df), "task": task, "metric": metric, "linear": [], "tree": [], "template": [],
           "seconds": [], "error": None, "families": []}
    for seed in seeds:
        strat = df[target] if task != "regression" else None
        tr, te = train_test_split(df, test_size=0.2, random_state=seed, stratify=strat)
        Xtr, ytr, Xte, yte = tr.drop(columns=target), tr[target], te.drop(columns=target), te[target]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LogisticRegression() at its default max_iter may not converge: that is the baseline
            for kind in ("linear", "tree"):
                out[kind].append(score(spec, baseline(Xtr, task, kind).fit(Xtr, ytr), Xte, yte))
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, board, features = run_template(tr, spec, prep_opts, train_opts)
        except Exception as e:  # a failure of the template is a finding: report it, go on with the next data set
            out["error"] = f"split seed {seed}: {type(e).__name__}: {e}"
            log(f"  {name} seed {seed}: template FAILED: {out['error']}\n{traceback.format_exc()}")
            break
        out["seconds"].append(time.perf_counter() - t0)
        out["template"].append(score(spec, model, te[features], yte))
        out["families"].append(board.family.iloc[0])
        log(f"  {name} seed {seed}: linear {out['linear'][-1]:.4f}, tree {out['tree'][-1]:.4f}, "
            f"template {out['template'][-1]:.4f} ({board.family.iloc[0]}, {out['seconds'][-1]:.1f} s)")
    return out


# ---- the table ------------------------------------------------------------------------------------------------------
def _ms(xs: list) -> str:
    if not xs: return "-"
    return f"{np.mean(xs):.4f} ± {np.std(xs, ddof=1) if len(xs) > 1 else 0.0:.4f}"


def verdict(diffs: list) -> tuple[float, float, str]:
    "Mean and standard error of the paired per-split differences (positive: the template is better), and what they say"
    d = np.asarray(diffs, float)
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se, "beats" if d.mean() > se else "loses" if d.mean() < -se else "matches"


def table(results: list) -> str:
    head = ("| data set | rows | task | metric | linear baseline | tree baseline | template | template − best baseline "
            "(± se) | verdict | template s/split | template picked |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        lower = r["metric"] in LOWER_IS_BETTER
        n = len(r["template"])
        if n:  # compare on the splits the template finished, with the baseline that is better on average, split by split
            kind = min if lower else max
            best_kind = kind(("linear", "tree"), key=lambda k: np.mean(r[k][:n]))
            best = np.mean(r[best_kind][:n])
            diff, se, says = verdict([(b - t) if lower else (t - b) for t, b in zip(r["template"], r[best_kind][:n])])
            d = f"{diff:+.4f} ± {se:.4f}" + (f" ({diff / best:+.1%})" if lower else "") + f" | {says}"
        else: d = "- | -"
        tmpl = _ms(r["template"]) if not r["error"] else (f"{_ms(r['template'])} (failed: see below)" if n else "failed")
        picked = ", ".join(f"{f} {r['families'].count(f)}" for f in sorted(set(r["families"]))) or "-"
        lines.append(f"| {r['data set']} | {r['rows']:,} | {r['task']} | {r['metric']}{' (lower is better)' if lower else ''} "
                     f"| {_ms(r['linear'])} | {_ms(r['tree'])} | {tmpl} | {d} "
                     f"| {np.mean(r['seconds']):.1f} | {picked} |" if n else
                     f"| {r['data set']} | {r['rows']:,} | {r['task']} | {r['metric']} | {_ms(r['linear'])} | {_ms(r['tree'])} "
                     f"| {tmpl} | - | - | - | - |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DATASETS),
                    help=f"comma-separated, from: {', '.join(DATASETS)} (default: all)")
    ap.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds of the 80/20 splits (default: 0,1,2,3,4)")
    args = ap.parse_args()
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown: ap.error(f"unknown data set(s) {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    try: seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError: ap.error(f"--seeds takes whole numbers separated by commas, got {args.seeds!r}")
    if not seeds: ap.error("--seeds: give at least one seed")
    prep_opts, train_opts = template_options()
    print(f"template options: prepare {prep_opts}; train {train_opts}", flush=True)
    results = []
    for name in names:
        print(f"{name}:", flush=True)
        results.append(bench(name, seeds, prep_opts, train_opts, log=lambda s: print(s, flush=True)))
    print()
    print(f"Held-out 20% of each data set, mean ± sd over {len(seeds)} seeded 80/20 split(s) (seeds {args.seeds}); "
          "template − best baseline: the mean of the paired per-split differences (positive means the template is better) "
          "± its standard error; verdict: beats or loses when the mean is more than one standard error from 0, else matches.\n")
    print(table(results))
    failures = [r for r in results if r["error"]]
    if failures:
        print("\nTemplate failures:")
        for r in failures: print(f"- {r['data set']}: {r['error']}")
    print(f"\nMachine: {machine()}")
    print(f"Command: .venv/bin/python benchmarks/baselines.py --datasets {','.join(names)} --seeds {args.seeds}")


if __name__ == "__main__":
    main()

"""How long the train stage takes on a large table: 100,000 rows of the default (synthetic churn) data.

Prepares `rows` rows of the default data with the prepare options of settings.ini, then times what the train runbook
does (`train.train_candidates` with settings.ini's [train] options, then writing `model.skops`) several times in this
process, and prints the median with the spread. As a yardstick for the machine's speed at that moment, each repeat
also times one hand-written `HistGradientBoostingClassifier()` fit on the same development rows (impute, one-hot,
defaults; the date column left out), and the report gives the train stage's time as a multiple of it: a shared, noisy machine moves both.

    .venv/bin/python benchmarks/train_time.py [--rows 100000] [--repeats 3] [--set n_iter=4 ...]
"""
from __future__ import annotations

import argparse
import ast
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this script is started
from _common import machine  # noqa: E402
from baselines import baseline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlflow_template.modelfile import dump_model  # noqa: E402
from mlflow_template.prepare import prepare_data  # noqa: E402
from mlflow_template.scope import ProblemSpec  # noqa: E402
from mlflow_template.settings import load_parameters  # noqa: E402
from mlflow_template.synthetic import make_churn  # noqa: E402
from mlflow_template.train import train_candidates  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the default data (default: 100,000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default: 3)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [train] setting for this benchmark, e.g. --set n_iter=4")
    args = ap.parse_args()
    params = load_parameters()
    t = dict(params["train"])
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in t: ap.error(f"--set {kv}: [train] has no {k!r} (it has {', '.join(sorted(t))})")
        try: t[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError): t[k] = v
    opts = {"families": t["families"], "strategy": t["strategy"], "n_iter": t["n_iter"], "cv": t["cv_folds"],
            "n_jobs": t["n_jobs"], "timeout": t["timeout"], "search_rows": t["search_rows"], "ensemble": t["ensemble"]}
    sc = params["scope"]  # the default data's problem, as settings.ini states it
    spec = ProblemSpec(target=sc["target"], task=sc["task"], positive_class=sc["positive_class"], id_column=sc["id_column"],
                       seed=sc["seed"], primary_metric=sc["primary_metric"])
    prep_opts = {k: v for k, v in params["prepare"].items() if k not in ("run_dir", "cluster", "sample_rows")}
    print(f"train options: {opts}", flush=True)
    prep = prepare_data(make_churn(args.rows, seed=42), spec, **prep_opts)
    features = prep.contract["features"]
    dev = pd.concat([prep.train, prep.valid], ignore_index=True)
    stage, yard, families = [], [], []
    for i in range(args.repeats):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            X = dev[features].select_dtypes(exclude="datetime")  # a hand-written pipeline would one-hot every date
            base = baseline(X, "binary", "tree").fit(X, dev[spec.target])
            yard.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = train_candidates(spec, prep.preprocessor, prep.train, prep.valid, features, progress=None, **opts)
            with tempfile.TemporaryDirectory() as tmp: dump_model(out.model, Path(tmp) / "model.skops")
            stage.append(time.perf_counter() - t0)
        families.append(out.family)
        print(f"  repeat {i + 1}: train stage {stage[-1]:.1f} s ({out.family}; search on {out.rows['search']:,} rows, "
              f"fitted on {out.rows['fitted']:,}); one default HistGradientBoosting fit {yard[-1]:.1f} s", flush=True)
        del base
    med, ymed = statistics.median(stage), statistics.median(yard)
    print(f"\nTrain stage on {args.rows:,} rows of the default data ({len(dev):,} development rows): median {med:.1f} s "
          f"(min {min(stage):.1f}, max {max(stage):.1f}) over {args.repeats} repeat(s); "
          f"{med / ymed:.1f}x one default HistGradientBoosting fit ({ymed:.1f} s) in the same process")
    print(f"Machine: {machine()}")
    print(f"Command: .venv/bin/python benchmarks/train_time.py --rows {args.rows} --repeats {args.repeats}"
          + "".join(f" --set {kv}" for kv in args.set))


if __name__ == "__main__":
    main()

"""How long the monitor stage takes, and how much memory, on a large current batch against a large reference.

Builds (in a temporary folder) a run folder as the pipeline leaves it, from `--rows` rows of the default data
prepared as the prepare stage does (train, valid and test splits together are the reference), with a default-like
model (the project's preprocessor and LogisticRegression, fitted on 100,000 training rows) promoted into a
temporary BentoML store with the whole reference stored with it (as deploy stores its sample of `reference_rows`,
here every row) and its held-out test scores, and a current batch of `--rows` labelled rows drawn with `concept=0.8` and
`monthly_charges` shifted, written to Parquet. Then runs the real `mlflow-template monitor --run-dir ...` as a
subprocess (papermill, its kernel, the HTML report: the whole stage) and measures its wall time and peak memory
(the resident memory of the process tree, polled every 20 ms), the median of `--repeats` runs. The command exits 1
(alerts fired), which is checked.

    .venv/bin/python benchmarks/monitor_time.py [--rows 1000000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from score_time import run_once  # noqa: E402  (wall time and peak memory of a command's process tree)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import default_prepared  # noqa: E402

CLI = str(Path(sys.executable).parent / "mlflow-template")


def build_run(d: Path, rows: int) -> tuple[Path, Path, dict]:
    "A run folder of `rows` prepared rows with a promoted model, and a labelled drifted batch of `rows` rows; (run, batch, env)"
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from mlflow_template.concept import scored_rows, scores_frame
    from mlflow_template.deploy import save_model, use_store
    from mlflow_template.modelfile import dump_model
    from mlflow_template.runfolder import RunFolder
    from mlflow_template.synthetic import make_churn
    spec, prep = default_prepared(rows=rows)
    feats = prep.contract["features"]
    fit_rows = prep.train.head(100_000)
    model = Pipeline([("prep", clone(prep.preprocessor)), ("model", LogisticRegression(max_iter=1000))])
    model.fit(fit_rows[feats], fit_rows[spec.target])
    run = RunFolder(d / "run", "monitor", root=ROOT)
    run.path.mkdir(parents=True)
    for name, frame in (("train", prep.train), ("valid", prep.valid), ("test", prep.test)): run.write_parquet(f"{name}.parquet", frame)
    run.write_json("spec.json", spec.to_dict())
    run.write_json("contract.json", prep.contract)
    run.write_json("metrics.json", {"threshold": 0.5})
    dump_model(model, run.file("model.skops"))
    with use_store(d / "bentoml"):
        reference = pd.concat([prep.train, prep.valid, prep.test], ignore_index=True)
        save_model(model, name="churn_model", contract=prep.contract, metrics={}, reference=reference,
                   heldout=scores_frame(scored_rows(model, spec, prep.test, feats)),
                   metadata={"run_id": "run", "spec": spec.to_dict(), "threshold": 0.5})
    batch = d / "batch.parquet"
    sd = prep.train["monthly_charges"].std()
    make_churn(rows, seed=7, concept=0.8, shift={"monthly_charges": 0.5 * sd}).to_parquet(batch)
    env = {**os.environ, "BENTOML_HOME": str(d / "bentoml"), "BENTOML_DO_NOT_TRACK": "True"}
    return run.path, batch, env


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the reference and of the batch (default: 1,000,000)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs (default: 3)")
    args = ap.parse_args()
    print(f"machine: {machine()}\ncommand: .venv/bin/python benchmarks/monitor_time.py --rows {args.rows} --repeats {args.repeats}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="mlflow_template-monitor-bench-") as d:
        run, batch, env = build_run(Path(d), args.rows)
        cmd = [CLI, "monitor", "--run-dir", str(run), "--set", f"monitor.current_source={batch}"]
        runs = []
        for i in range(args.repeats):
            runs.append(run_once(cmd, env, ok=(1,)))  # 1: alerts fired, as they must on this batch
            print(f"run {i + 1}: {runs[-1][0]:.1f} s, peak {runs[-1][1]:,.0f} MiB", flush=True)
        alerts, report = (run / "alerts.json").read_text(), (run / "08_monitor.html").read_text()
    wall, peak = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    print(f"\n{args.rows:,} current rows against {args.rows:,} reference rows: {wall:.1f} s, peak {peak:,.0f} MiB "
          f"(median of {args.repeats}); targets for 1,000,000: < 60 s, < 3 GB")
    assert "concept_drift" in alerts and "monthly_charges" in alerts, alerts[:2000]
    assert "rows of its training snapshot, stored with it" in report  # the reference came from the store


if __name__ == "__main__":
    main()

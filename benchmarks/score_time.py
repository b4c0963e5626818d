"""How fast `mlflow-template score` scores large Parquet tables, and whether its memory grows with the table.

Writes (in a temporary folder) Parquet tables of the default data's shape, 1,000,000 and 5,000,000 rows by default:
one `synthetic.make_churn` chunk tiled and perturbed (unique ids, jittered numbers), written in row groups of
`--row-group` rows, with bad rows planted (a missing tenure_months, which the contract requires). Promotes a
default-like model (the project's preprocessor from `prepare.prepare_data` with settings.ini's prepare options, then
LogisticRegression) into a temporary BentoML store, runs the real `mlflow-template score` CLI as a subprocess on each
table, and measures its wall time and peak memory (the resident memory of the process tree, polled by psutil every
20 ms), the median of `--repeats` runs. Checks that the planted rows, and only they, were quarantined.

    .venv/bin/python benchmarks/score_time.py [--rows 1000000 5000000] [--repeats 3] [--chunk-rows 100000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this script is started
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import default_prepared  # noqa: E402  (the default settings' problem and data, prepared)
from mlflow_template.synthetic import make_churn  # noqa: E402

BAD_EVERY = 10_007  # one planted bad row per this many rows
CLI = str(Path(sys.executable).parent / "mlflow-template")


def promote_model(home: Path) -> str:
    "Train a default-like pipeline on make_churn rows and promote it into the store under `home`; its tag"
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from mlflow_template.deploy import save_model, use_store
    spec, prep = default_prepared()
    feats = prep.contract["features"]
    model = Pipeline([("prep", clone(prep.preprocessor)), ("model", LogisticRegression(max_iter=1000))])
    model.fit(prep.train[feats], prep.train[spec.target])
    with use_store(home):
        return save_model(model, name="bench_churn", contract=prep.contract, metrics={}, metadata={"threshold": 0.3})


def write_table(path: Path, rows: int, row_group: int) -> int:
    "Write `rows` rows shaped like the default data to `path`, in row groups; the number of planted bad rows"
    base = make_churn(row_group, seed=7, duplicates=0).drop(columns="churn").reset_index(drop=True)
    rng, writer, planted = np.random.default_rng(0), None, 0
    for start in range(0, rows, row_group):
        part = base.head(min(row_group, rows - start)).copy()
        part["customer_id"] = [f"C{i:09d}" for i in range(start, start + len(part))]
        for c in ("monthly_charges", "total_charges", "data_usage_gb"):
            part[c] = part[c] * rng.uniform(0.95, 1.05, len(part))
        pos = np.arange(start, start + len(part))
        bad = (pos % BAD_EVERY) == 0
        part["tenure_months"] = part["tenure_months"].astype(float).where(~bad)  # required by the contract: quarantined
        planted += int(bad.sum())
        table = pa.Table.from_pandas(part, preserve_index=False)
        if writer is None: writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return planted


def run_once(cmd: list, env: dict, ok: tuple = (0,)) -> tuple[float, float]:
    "Run `cmd` (its exit code one of `ok`); its wall time in seconds and the peak resident memory of its process tree in MiB"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try: peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.NoSuchProcess: pass
        time.sleep(0.02)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode not in ok: raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000], help="table sizes (default: 1M and 5M)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per table (default: 3)")
    ap.add_argument("--chunk-rows", type=int, default=100_000, help="the CLI's --chunk-rows (default: 100,000)")
    ap.add_argument("--row-group", type=int, default=250_000, help="rows per Parquet row group of the tables (default: 250,000)")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="mlflow_template-score-bench-") as d:
        d = Path(d)
        tag = promote_model(d / "bentoml")
        env = {**os.environ, "BENTOML_HOME": str(d / "bentoml")}
        env.pop("MLFLOW_TEMPLATE_MODEL_NAME", None)
        results = []
        for rows in args.rows:
            src, out = d / f"churn_{rows}.parquet", d / f"scores_{rows}.parquet"
            planted = write_table(src, rows, args.row_group)
            cmd = [CLI, "score", "--source", str(src), "--output", str(out), "--model", "bench_churn",
                   "--chunk-rows", str(args.chunk_rows), "--no-progress"]
            runs = [run_once(cmd, env) for _ in range(args.repeats)]
            scored = pq.ParquetFile(out).metadata.num_rows
            quarantined = pd.read_parquet(out.with_name(f"{out.stem}.quarantine.parquet"))
            ok = (scored + len(quarantined) == rows and len(quarantined) == planted
                  and set(quarantined.quarantine_reason) == {"tenure_months is missing"})
            results.append({"rows": rows, "file MiB": src.stat().st_size / 2**20, "seconds": statistics.median(r[0] for r in runs),
                            "min s": min(r[0] for r in runs), "max s": max(r[0] for r in runs),
                            "peak MiB": statistics.median(r[1] for r in runs), "max peak MiB": max(r[1] for r in runs),
                            "quarantined": len(quarantined), "planted": planted, "all rows accounted": ok})
            print(f"{rows:,} rows: {results[-1]['seconds']:.1f} s, peak {results[-1]['peak MiB']:.0f} MiB", flush=True)
            src.unlink(); out.unlink()
    table = pd.DataFrame(results)
    print(f"\nmodel: {tag} (default-like: the project's preprocessor + LogisticRegression), median of {args.repeats} runs")
    print(f"command: mlflow-template score --source <table>.parquet --output <scores>.parquet --model bench_churn "
          f"--chunk-rows {args.chunk_rows} --no-progress")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    if len(table) > 1:
        growth = table["peak MiB"].iloc[-1] / table["peak MiB"].iloc[0] - 1
        print(f"peak memory, largest vs smallest table: {growth:+.0%}")
    if not table["all rows accounted"].all(): raise SystemExit("some rows were neither scored nor quarantined as planted")


if __name__ == "__main__":
    main()

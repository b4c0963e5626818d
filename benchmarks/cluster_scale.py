"""Tables larger than one process's memory on a Dask LocalCluster: time and memory of each stage that runs there.

Writes a Parquet table of `--rows` rows by 30 columns (the default data's 16 columns, `synthetic.make_churn` tiled with
unique ids and jittered numbers, plus 14 numeric columns of noise) in row groups of `--row-group` rows. Then runs, each
in a child process whose whole process tree (the client and the cluster's workers) is polled with psutil every 50 ms:

- acquire: `acquire_dask.acquire_partitioned` with `cluster = local?workers=W&threads=1&memory=M` (the workers read
  the row groups; the snapshot streams into one Parquet file), or `acquire.acquire` in process;
- prepare: `prepare_dask.prepare_partitioned` on the snapshot (splits larger than `sample_rows`, 250,000 by default,
  written whole and sampled), or `prepare.prepare_data` in process;
- batch scoring: the real `mlflow-template score` CLI, with `--cluster local?...` or in process, with a default-like
  model (benchmarks/score_time.py's: the project's preprocessor + LogisticRegression) promoted into a temporary store;
- monitor: the check of the whole table (labelled) with that model against the prepared training rows:
  `monitor_dask.check_partitioned` on the cluster, `monitor.check_batch` in process.

Prints, per stage and mode: seconds, the client process's peak resident memory and the peak of the whole tree at one
moment (MiB).

    .venv/bin/python benchmarks/cluster_scale.py [--rows 10000000] [--baseline-rows 1000000] [--workers 2] [--memory 5GiB]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402

ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
from mlflow_template.synthetic import make_churn  # noqa: E402

CLI = str(Path(sys.executable).parent / "mlflow-template")
NOISE = 14  # numeric columns added to make_churn's 16


def write_table(path: Path, rows: int, row_group: int) -> None:
    "`rows` rows by 30 columns in row groups of `row_group` rows"
    base = make_churn(row_group, seed=7, duplicates=0).reset_index(drop=True)
    rng, writer = np.random.default_rng(0), None
    for start in range(0, rows, row_group):
        part = base.head(min(row_group, rows - start)).copy()
        part["customer_id"] = [f"C{i:09d}" for i in range(start, start + len(part))]
        for c in ("monthly_charges", "total_charges", "data_usage_gb"):
            part[c] = part[c] * rng.uniform(0.95, 1.05, len(part))
        for i in range(NOISE): part[f"x{i:02d}"] = rng.normal(size=len(part))
        table = pa.Table.from_pandas(part, preserve_index=False)
        if writer is None: writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def measure(cmd: list, env: dict) -> dict:
    "Run `cmd`; its seconds, the peak of its own resident memory and of its whole process tree at one moment (MiB), its output"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root, own, tree = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            mine = root.memory_info().rss
            own, tree = max(own, mine), max(tree, mine + sum(p.memory_info().rss for p in root.children(recursive=True)))
        except psutil.NoSuchProcess: pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode: raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": time.perf_counter() - start, "client MiB": own / 2**20, "tree MiB": tree / 2**20, "out": out}


def child_acquire(src: str, raw: str, cluster: str) -> None:
    "The acquire stage on `src` into `raw`, on the cluster or in this process; prints its provenance as JSON"
    from mlflow_template.acquire import acquire
    from mlflow_template.acquire_dask import acquire_partitioned
    from mlflow_template.cluster import connect
    from mlflow_template.scope import ProblemSpec
    spec = ProblemSpec(target="churn", task="binary", positive_class="Yes", id_column="customer_id")
    with connect(cluster) as client:
        prov = acquire_partitioned(src, spec, raw, client)[1] if client else acquire(src, spec, raw)[1]
    print(json.dumps({k: prov[k] for k in ("rows", "content_sha256")} | {"partitions": prov.get("partitions", 1)}))


def child_prepare(raw: str, out: str, cluster: str) -> None:
    "The prepare stage on the snapshot `raw` (splits into `out`), on the cluster or in this process; prints its split rows as JSON"
    from mlflow_template.cluster import connect
    from mlflow_template.prepare import prepare_data
    from mlflow_template.prepare_dask import prepare_partitioned
    from mlflow_template.scope import ProblemSpec
    spec = ProblemSpec(target="churn", task="binary", positive_class="Yes", id_column="customer_id")
    with connect(cluster) as client:
        prep = (prepare_partitioned(raw, spec, client, out) if client else prepare_data(pd.read_parquet(raw), spec))
    for name, part in prep.splits.items(): part.to_parquet(Path(out) / f"{name}.parquet")
    print(json.dumps({n: s["rows"] for n, s in prep.report["splits"].items()} | {"held": len(prep.train)}))


def child_monitor(src: str, prepared: str, cluster: str) -> None:
    "The monitor's check of the table `src` with the promoted model (reference: the prepared training rows held), on the cluster or here"
    from mlflow_template.cluster import connect
    from mlflow_template.deploy import load_model
    from mlflow_template.monitor import check_batch
    from mlflow_template.monitor_dask import check_partitioned
    from mlflow_template.scope import ProblemSpec
    spec = ProblemSpec(target="churn", task="binary", positive_class="Yes", id_column="customer_id")
    model, contract, _ = load_model("bench_churn")
    reference = pd.read_parquet(Path(prepared) / "train.parquet")
    with connect(cluster) as client:
        check = (check_partitioned(reference, src, client, model, contract, spec, Path(prepared) / "quarantine.parquet", threshold=0.3)
                 if client else check_batch(reference, pd.read_parquet(src), model, contract, spec, threshold=0.3))
    print(json.dumps({"rows": check.rows, "accepted": check.n_accepted, "alerts": len(check.alerts)}))


def run_stages(src: Path, d: Path, n: int, where: str, mode: str, env: dict) -> list:
    "acquire, prepare, score and monitor of `src` once, each measured"
    rows = []
    raw, out = d / f"raw_{n}.parquet", d / f"prepared_{n}"
    got = measure([sys.executable, __file__, "--child", "acquire", str(src), str(raw), where], env)
    prov = json.loads(got.pop("out").strip().splitlines()[-1])
    assert prov["rows"] == n, prov
    rows.append({"stage": "acquire", "rows": n, "mode": mode, **got, "partitions": prov["partitions"]})
    print(rows[-1], flush=True)
    out.mkdir()
    got = measure([sys.executable, __file__, "--child", "prepare", str(raw), str(out), where], env)
    split = json.loads(got.pop("out").strip().splitlines()[-1])
    assert split["train"] + split["valid"] + split["test"] == n, split
    rows.append({"stage": "prepare", "rows": n, "mode": mode, **got, "partitions": prov["partitions"]})
    print(rows[-1], split, flush=True)
    raw.chmod(0o644)
    raw.unlink()
    cmd = [CLI, "score", "--source", str(src), "--output", str(d / "scores.parquet"), "--model", "bench_churn",
           "--no-progress", *(["--cluster", where] if where else [])]
    got = measure(cmd, env)
    got.pop("out")
    assert pq.ParquetFile(d / "scores.parquet").metadata.num_rows == n
    rows.append({"stage": "score", "rows": n, "mode": mode, **got, "partitions": None})
    print(rows[-1], flush=True)
    (d / "scores.parquet").unlink()
    got = measure([sys.executable, __file__, "--child", "monitor", str(src), str(out), where], env)
    check = json.loads(got.pop("out").strip().splitlines()[-1])
    assert check["rows"] == n, check
    rows.append({"stage": "monitor", "rows": n, "mode": mode, **got, "partitions": prov["partitions"]})
    print(rows[-1], check, flush=True)
    shutil.rmtree(out)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the table run on the cluster (default: 10,000,000)")
    ap.add_argument("--baseline-rows", type=int, default=1_000_000, help="rows of the table run in process (default: 1,000,000)")
    ap.add_argument("--row-group", type=int, default=250_000, help="rows per Parquet row group (default: 250,000)")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default: 2)")
    ap.add_argument("--memory", default="5GiB", help="each worker's memory limit (default: 5GiB)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of every stage; the table shows medians (default: 3)")
    ap.add_argument("--child", nargs=4, metavar=("STAGE", "IN", "OUT", "CLUSTER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child: return {"acquire": child_acquire, "prepare": child_prepare, "monitor": child_monitor}[args.child[0]](*args.child[1:])
    print(f"machine: {machine()}", flush=True)
    cluster = f"local?workers={args.workers}&threads=1&memory={args.memory}"
    sys.path.insert(0, str(HERE))
    from score_time import promote_model
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlflow_template-cluster-bench-") as d:
        d = Path(d)
        promote_model(d / "bentoml")
        env = {**os.environ, "BENTOML_HOME": str(d / "bentoml")}
        env.pop("MLFLOW_TEMPLATE_MODEL_NAME", None)
        for n, where in ((args.baseline_rows, ""), (args.rows, cluster)):
            src = d / f"table_{n}.parquet"
            t = time.perf_counter()
            write_table(src, n, args.row_group)
            print(f"{n:,} rows x 30 columns written in {time.perf_counter() - t:.0f} s ({src.stat().st_size / 2**20:,.0f} MiB)", flush=True)
            mode = f"cluster ({args.workers} workers, {args.memory} each)" if where else "in process"
            for _ in range(args.repeats): rows += run_stages(src, d, n, where, mode, env)
            src.unlink()
    print(f"\ncluster: {cluster}; the table: {args.row_group:,}-row row groups")
    table = pd.DataFrame(rows).groupby(["rows", "mode", "stage"], sort=False)[["seconds", "client MiB", "tree MiB"]].median()
    print(f"medians of {args.repeats} run(s)")
    print(table.reset_index().to_string(index=False, float_format=lambda v: f"{v:,.1f}"))


if __name__ == "__main__":
    main()

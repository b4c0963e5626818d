"""How long acquire and prepare take on a large table, and how much memory their kernels need.

Writes a seeded 1,000,000-row, 30-column table (numbers, categories, a date, an id, some missing values and a binary
target) once as Parquet into a temporary copy of the project (generation is not timed), then runs the real stages
as the product does, several times:

    mlflow-template run --stages scope,acquire,prepare --settings bench.ini

Each stage's seconds come from the run's run.json; the wall clock is the whole command. Memory is measured two ways:
`resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` of a wrapper process that runs only that command (the largest
resident set of any process it waited for, directly or through the CLI: the kernels), and a psutil poll of the process
tree every 50 ms (the largest process, and the sum over the tree at one moment). The two agree when the rusage figure
really covers the kernels. Prints medians, the machine and the command as a markdown table.

    .venv/bin/python benchmarks/acquire_prepare.py [--repeats 3] [--rows 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this script is started
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TARGETS = {"seconds": 120.0, "gib": 4.0}  # issue 3: under two minutes, peak memory under 4 GB

SETTINGS = """[DEFAULT]
target = churn
task = binary
positive_class = Yes
id_column = customer_id
time_column =
sensitive_features = ["region"]
model_name = bench_model
seed = 42

[scope]
primary_metric = roc_auc
success_thresholds = {{"min_roc_auc": 0.6}}
cost_false_positive = 1.0
cost_false_negative = 5.0

[acquire]
source = {source}
format =
"""

# Runs one command and reports the largest resident set of any process it waited for (the CLI, and through it the
# kernels, which the CLI waits for when it shuts them down). ru_maxrss is in KiB on Linux.
WRAPPER = """import json, resource, subprocess, sys
rc = subprocess.run(sys.argv[2:]).returncode
json.dump({"returncode": rc, "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, open(sys.argv[1], "w"))
"""


def make_table(rows: int, seed: int = 0) -> pd.DataFrame:
    "A seeded table of `rows` rows and 30 columns: id, date, 18 numbers, 8 categories, a 0/1 flag and a Yes/No target"
    rng = np.random.default_rng(seed)
    cols = {"customer_id": np.char.add("C", np.char.zfill(np.arange(rows).astype(str), 8)),
            "signup_date": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 4 * 365, rows), unit="D")}
    for i in range(18):
        kind = i % 3
        x = (rng.normal(50, 15, rows) if kind == 0 else rng.lognormal(3, 0.8, rows) if kind == 1
             else rng.poisson(3 + i, rows).astype(float))
        x[rng.random(rows) < 0.02] = np.nan  # 2% missing in every numeric column
        cols[f"num_{i:02d}"] = x
    for i in range(8):
        levels = np.array([f"level_{j}" for j in range(3 + 5 * i)], dtype=object)  # 3 to 38 categories
        c = levels[rng.integers(0, len(levels), rows)]
        c[rng.random(rows) < 0.01] = None
        cols[["region", "plan", "channel", "device", "segment", "payment", "language", "city"][i]] = c
    cols["flag"] = rng.integers(0, 2, rows)
    logit = (-1.5 + 0.04 * (np.nan_to_num(cols["num_00"], nan=50) - 50) - 0.3 * np.log1p(np.nan_to_num(cols["num_01"], nan=20))
             + 0.8 * (cols["plan"] == "level_0") + 0.5 * cols["flag"])
    cols["churn"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "Yes", "No")
    df = pd.DataFrame(cols)
    assert df.shape[1] == 30
    return df


class TreePoll(threading.Thread):
    "Poll the resident memory of a process's descendants (not the process itself) until it exits"
    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.every = psutil.Process(pid), every
        self.max_sum = self.max_one = 0
        self.max_by_name: dict = {}

    def run(self):
        while True:
            try:
                if self.root.status() == psutil.STATUS_ZOMBIE: break
                kids = self.root.children(recursive=True)
            except psutil.NoSuchProcess: break
            total = 0
            for p in kids:
                try: rss, name = p.memory_info().rss, " ".join(p.cmdline()[1:3])
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess): continue
                total += rss
                self.max_one = max(self.max_one, rss)
                kind = "kernel" if "ipykernel" in name else "cli" if "mlflow-template" in name else "other"
                self.max_by_name[kind] = max(self.max_by_name.get(kind, 0), rss)
            self.max_sum = max(self.max_sum, total)
            time.sleep(self.every)


def one_run(work: Path) -> dict:
    "Run scope, acquire and prepare once; seconds per stage, wall clock and memory"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    out = work / "rusage.json"
    cmd = [str(BIN / "mlflow-template"), "run", "--stages", "scope,acquire,prepare", "--settings", "bench.ini"]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(out), *cmd], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    poll = TreePoll(proc.pid)
    poll.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    poll.join()
    usage = json.loads(out.read_text())
    if usage["returncode"]: raise SystemExit(f"run failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    record = json.loads((work / stdout.strip().splitlines()[-1] / "run.json").read_text())
    return {"wall": wall, **{s["stage"]: s["seconds"] for s in record["stages"]},
            "ru_maxrss": usage["ru_maxrss_kib"] * 1024, "psutil_max_one": poll.max_one, "psutil_max_sum": poll.max_sum,
            "psutil_kernel": poll.max_by_name.get("kernel", 0), "psutil_cli": poll.max_by_name.get("cli", 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the temporary project (printed) to look at the runs")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-acquire-prepare-")
    try:
        work = Path(d)
        for f in ("pyproject.toml", "settings.ini"): shutil.copy(ROOT / f, work / f)
        shutil.copytree(ROOT / "nbs" / "pipeline", work / "nbs" / "pipeline", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        (work / "reports").mkdir()
        source = work / "data" / "raw" / "table.parquet"
        source.parent.mkdir(parents=True)
        t0 = time.perf_counter()
        table = make_table(args.rows)
        table.to_parquet(source, index=False)
        shape, missing = table.shape, float(table.isna().mean().mean())
        del table
        print(f"table: {shape[0]:,} rows x {shape[1]} columns, {missing:.1%} of cells missing, "
              f"{source.stat().st_size / 2**20:.0f} MiB Parquet, written in {time.perf_counter() - t0:.1f} s (not timed)",
              flush=True)
        (work / "bench.ini").write_text(SETTINGS.format(source=source.relative_to(work).as_posix()))
        runs = []
        for i in range(args.repeats):
            runs.append(one_run(work))
            r = runs[-1]
            print(f"run {i + 1}/{args.repeats}: {r['wall']:.1f} s wall, acquire {r['acquire']:.1f} s, prepare "
                  f"{r['prepare']:.1f} s, peak kernel {r['ru_maxrss'] / 2**30:.2f} GiB", flush=True)
    finally:
        if args.keep: print(f"kept: {d}")
        else: shutil.rmtree(d, ignore_errors=True)
    med = lambda k: statistics.median(r[k] for r in runs)
    gib = 2**30
    print(f"\nmachine: {machine()}")
    print(f"command (in a temporary copy of the project, {args.rows:,} rows x 30 columns as Parquet): "
          "mlflow-template run --stages scope,acquire,prepare --settings bench.ini")
    print(f"benchmark: .venv/bin/python benchmarks/acquire_prepare.py --repeats {args.repeats}"
          + (f" --rows {args.rows}" if args.rows != 1_000_000 else "") + "\n")
    print(f"| measure | median of {args.repeats} | min | max |\n|---|---|---|---|")
    rows = [("scope (s)", "scope", 1), ("acquire (s)", "acquire", 1), ("prepare (s)", "prepare", 1),
            ("whole command, wall clock (s)", "wall", 1),
            ("peak memory of one process: ru_maxrss of the waited-for children (GiB)", "ru_maxrss", gib),
            ("peak memory of a kernel, psutil poll (GiB)", "psutil_kernel", gib),
            ("peak memory of the CLI process, psutil poll (GiB)", "psutil_cli", gib),
            ("peak memory of the process tree at one moment, psutil poll (GiB)", "psutil_max_sum", gib)]
    for label, key, div in rows:
        vals = [r[key] / div for r in runs]
        fmt = "{:.2f}" if div > 1 else "{:.1f}"
        print(f"| {label} | {fmt.format(med(key) / div)} | {fmt.format(min(vals))} | {fmt.format(max(vals))} |")
    stages = med("acquire") + med("prepare")
    print(f"\nacquire + prepare: {stages:.1f} s (target < {TARGETS['seconds']:.0f} s: "
          f"{'met' if stages < TARGETS['seconds'] else 'MISSED'}); whole command {med('wall'):.1f} s; "
          f"peak memory {med('psutil_max_sum') / gib:.2f} GiB for the tree, {med('ru_maxrss') / gib:.2f} GiB for one process "
          f"(target < {TARGETS['gib']:.0f} GB = {TARGETS['gib'] * 1e9 / gib:.2f} GiB: "
          f"{'met' if max(med('psutil_max_sum'), med('ru_maxrss')) < TARGETS['gib'] * 1e9 else 'MISSED'})")


if __name__ == "__main__":
    main()

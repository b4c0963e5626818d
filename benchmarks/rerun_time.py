"""How long `make run` takes again: nothing changed, one training setting changed, the source data changed.

In a fresh temporary copy of the project (its own reports/ and BentoML store) for each repeat: the first run of the
default pipeline (`mlflow-template run`, settings.ini as committed), then the same command again (every stage reused
from the first run), then with `train.n_iter` changed (train and the stages after it run again), then with another
source (`acquire.source` drawn with another seed: everything from acquire runs again). Prints the median wall time of
each and its ratio to the first run, which stages ran, and the machine.

    .venv/bin/python benchmarks/rerun_time.py [--repeats 3]
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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = {"first run": [], "again, nothing changed": [], "train.n_iter changed": ["--set", "train.n_iter=6"],
         "source data changed": ["--set", "acquire.source=synthetic://churn?rows=20000&seed=43"]}


def one_run(work: Path, args: list) -> tuple[float, list]:
    "(wall seconds, the stages that ran rather than being reused)"
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "mlflow-template"), "run", *args], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: raise SystemExit(f"run failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    record = json.loads((work / r.stdout.strip().splitlines()[-1] / "run.json").read_text())
    return wall, [s["stage"] for s in record["stages"] if not s.get("reused_from")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times, ran = {k: [] for k in STEPS}, {}
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            for f in ("pyproject.toml", "settings.ini"): shutil.copy(ROOT / f, work / f)
            shutil.copytree(ROOT / "nbs" / "pipeline", work / "nbs" / "pipeline")
            (work / "reports").mkdir()
            for step, extra in STEPS.items():
                wall, ran[step] = one_run(work, extra)
                times[step].append(wall)
                print(f"repeat {i + 1}/{args.repeats}, {step}: {wall:.1f} s, ran {', '.join(ran[step]) or 'nothing'}", flush=True)
    first = statistics.median(times["first run"])
    print(f"\nmachine: {machine()}")
    print(f"command: .venv/bin/python benchmarks/rerun_time.py --repeats {args.repeats}\n")
    print("| run | median (seconds) | of the first run | stages that ran (the others reused) |\n|---|---|---|---|")
    for step, vals in times.items():
        print(f"| {step} | {statistics.median(vals):.1f} | {statistics.median(vals) / first:.1%} | {', '.join(ran[step]) or 'none'} |")


if __name__ == "__main__":
    main()

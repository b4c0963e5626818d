"""How long `make run` takes on the default data, after the first install.

Runs the real `mlflow-template run --force` (every runbook with papermill, settings.ini as committed; `--force`: no
stage is reused from the run before) several times in a temporary copy of the project with its own BentoML store, so
it touches neither reports/ nor your model store, and prints the median wall time of the whole run and of each
stage, with the machine it ran on. `benchmarks/rerun_time.py` measures runs that reuse stages.

    .venv/bin/python benchmarks/pipeline_time.py [--repeats 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, however this script is started
from _common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def one_run(work: Path) -> dict:
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    t0 = time.perf_counter()
    r = subprocess.run([str(BIN / "mlflow-template"), "run", "--force"], cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: raise SystemExit(f"run failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    record = json.loads((work / r.stdout.strip().splitlines()[-1] / "run.json").read_text())
    return {"wall": wall, **{s["stage"]: s["seconds"] for s in record["stages"]}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for f in ("pyproject.toml", "settings.ini"): shutil.copy(ROOT / f, work / f)
        shutil.copytree(ROOT / "nbs" / "pipeline", work / "nbs" / "pipeline")
        (work / "reports").mkdir()
        runs = []
        for i in range(args.repeats):
            runs.append(one_run(work))
            print(f"run {i + 1}/{args.repeats}: {runs[-1]['wall']:.1f} s", flush=True)
    print(f"\nmachine: {machine()}")
    print(f"command: .venv/bin/python benchmarks/pipeline_time.py --repeats {args.repeats}\n")
    print("| step | median (seconds) | min | max |\n|---|---|---|---|")
    for key in runs[0]:
        vals = [r[key] for r in runs]
        print(f"| {'whole run (wall clock)' if key == 'wall' else key} | {statistics.median(vals):.1f} | {min(vals):.1f} | {max(vals):.1f} |")


if __name__ == "__main__":
    main()

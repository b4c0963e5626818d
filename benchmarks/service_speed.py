"""How fast the project's service answers, next to a naive one-worker BentoML service of the same model and in-process calls.

Promotes a default-like model (the project's preprocessor from `prepare.prepare_data` with settings.ini's prepare
options, then LogisticRegression, on `make_churn(20000)`) into a temporary BentoML store, serves it with
`bentoml serve mlflow_template.service:ModelService` and, in the same run, with a naive service written to a temporary
folder (records to a DataFrame, `predict_proba`, one worker), and measures over HTTP on this machine: one record at
1 client (p50, p99), single-record requests per second at 16 client threads, and records per second in
1,000-record requests: from 2 client threads, each encoding its body with httpx every time (the service's
throughput: while one client encodes its next body, about 5 ms for 1,000 records here, the service scores the
other's), from 1 client (every round trip waits for the client's encoding too), and from 1 client with the body
encoded once (the client's encoding left out); in process: one-row `predict_proba` on a DataFrame and a 1,000-row
batch on a DataFrame.

    .venv/bin/python benchmarks/service_speed.py [--seconds 8] [--repeats 3]

Every figure is the median of `--repeats` rounds; the in-process figures are taken again in every round, between the
services' rounds, so a ratio compares figures taken on the same machine at nearly the same time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from score_time import promote_model  # noqa: E402  (the same default-like model)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port, stop_group  # noqa: E402
from mlflow_template.deploy import load_model, use_store  # noqa: E402
from mlflow_template.synthetic import make_churn  # noqa: E402

NAIVE = '''
import bentoml, pandas as pd
from mlflow_template.deploy import load_model, served_name
MODEL, CONTRACT, INFO = load_model(served_name())

@bentoml.service(workers=1)
class Naive:
    @bentoml.api(route="/predict")
    def predict(self, records: list[dict]) -> dict:
        X = pd.DataFrame(records)[CONTRACT["features"]]
        p = MODEL.predict_proba(X)[:, list(MODEL.classes_).index(CONTRACT["positive_class"])]
        return {"predictions": [{"probability": float(v)} for v in p]}
'''


def serve(target: str, cwd: Path, env: dict, log: Path) -> tuple:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "bentoml"), "serve", target, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=cwd, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200: return proc, url
        except httpx.TransportError: pass
        time.sleep(0.3)
    stop_group(proc)
    raise RuntimeError(f"{target} was not ready:\n{log.read_text()[-2000:]}")


def one_client(url: str, rec: dict, seconds: float) -> list:
    times, end = [], time.monotonic() + seconds
    with httpx.Client(timeout=30) as c:
        for _ in range(20): c.post(f"{url}/predict", json={"records": [rec]})  # warm up
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = c.post(f"{url}/predict", json={"records": [rec]})
            times.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return times


def many_clients(url: str, rec: dict, seconds: float, clients: int = 16) -> float:
    end, counts = time.monotonic() + seconds, [0] * clients
    def run(i):
        with httpx.Client(timeout=60) as c:
            while time.monotonic() < end:
                assert c.post(f"{url}/predict", json={"records": [rec]}).status_code == 200
                counts[i] += 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool: list(pool.map(run, range(clients)))
    return sum(counts) / (time.perf_counter() - t0)


def big_requests(url: str, recs: list, seconds: float, encoded: bool = False, clients: int = 1) -> float:
    "Records per second in requests of `recs` from `clients` client threads; `encoded`: the body JSON-encoded once, so the client's encoding is not timed"
    body = {"content": json.dumps({"records": recs}).encode(), "headers": {"content-type": "application/json"}} if encoded \
        else {"json": {"records": recs}}
    counts = [0] * clients
    def run(i, end):
        with httpx.Client(timeout=60) as c:
            while time.monotonic() < end:
                assert c.post(f"{url}/predict", **body).status_code == 200
                counts[i] += len(recs)
    with httpx.Client(timeout=60) as c: c.post(f"{url}/predict", **body)  # warm up
    t0, end = time.perf_counter(), time.monotonic() + seconds
    with ThreadPoolExecutor(clients) as pool: list(pool.map(run, range(clients), [end] * clients))
    return sum(counts) / (time.perf_counter() - t0)


def timed(f, n: int) -> float:
    "Seconds per call of `f`: the median of 5 rounds of `n` calls"
    f()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n): f()
        rounds.append((time.perf_counter() - t0) / n)
    return statistics.median(rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per HTTP measurement")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every measurement; the medians are reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        tag = promote_model(d / "home")
        with use_store(d / "home"): model, contract, _ = load_model(tag)
        rows = make_churn(2_000, seed=7).drop(columns="churn").dropna(subset=[c for c in contract["features"]
                                                                       if not contract["columns"][c].get("nullable", True)])
        recs = [{k: (None if isinstance(v, float) and np.isnan(v) else v.isoformat() if hasattr(v, "isoformat") else v)
                 for k, v in r.items()} for r in rows.head(1000).to_dict(orient="records")]
        X1, X1000 = pd.DataFrame(recs[:1])[contract["features"]], pd.DataFrame(recs)[contract["features"]]
        X1["signup_date"], X1000["signup_date"] = pd.to_datetime(X1["signup_date"]), pd.to_datetime(X1000["signup_date"])
        inproc = {"one": [], "batch": []}
        def in_process():
            inproc["one"].append(timed(lambda: model.predict_proba(X1), 100))
            inproc["batch"].append(1000 / timed(lambda: model.predict_proba(X1000), 20))
        (d / "naive").mkdir()
        (d / "naive" / "naive_service.py").write_text(textwrap.dedent(NAIVE))
        env = {**os.environ, "BENTOML_HOME": str(d / "home"), "MLFLOW_TEMPLATE_MODEL_NAME": "bench_churn",
               "MLFLOW_TEMPLATE_PREDICTION_LOG": str(d / "predictions.jsonl"), "BENTOML_DO_NOT_TRACK": "True"}
        rounds = {"naive service": [], "this service": []}
        for r in range(args.repeats):
            for label, target, cwd in (("naive service", "naive_service:Naive", d / "naive"),
                                       ("this service", "mlflow_template.service:ModelService", d)):
                in_process()
                print(f"round {r + 1}/{args.repeats}: {label}", file=sys.stderr, flush=True)
                proc, url = serve(target, cwd, env, d / f"{label}.log")
                try:
                    t = sorted(one_client(url, recs[0], args.seconds))
                    rounds[label].append({"p50": statistics.median(t), "p99": t[int(0.99 * (len(t) - 1))],
                                          "rps16": many_clients(url, recs[0], args.seconds),
                                          "big": big_requests(url, recs, args.seconds, clients=2),
                                          "big1": big_requests(url, recs, args.seconds),
                                          "big_encoded": big_requests(url, recs, args.seconds, encoded=True)})
                finally: stop_group(proc)
        in_process()
    inproc_one, inproc_batch = statistics.median(inproc["one"]), statistics.median(inproc["batch"])
    n, s = ({k: statistics.median(r[k] for r in rounds[label]) for k in rounds[label][0]} for label in ("naive service", "this service"))
    ms = lambda v: f"{v * 1000:.2f} ms"
    print(f"machine: {machine()}\ncommand: .venv/bin/python benchmarks/service_speed.py --seconds {args.seconds:g} --repeats {args.repeats}\n"
          f"(medians of {args.repeats} rounds; in-process 1,000-row batches per round: {', '.join(f'{v:,.0f}' for v in inproc['batch'])} records/s)\n")
    print("| measure | in-process | naive service | this service | target |\n|---|---|---|---|---|")
    print(f"| one record at 1 client, p50 | {ms(inproc_one)} (one-row predict_proba) | {ms(n['p50'])} | {ms(s['p50'])} | "
          f"<= in-process: {'met' if s['p50'] <= inproc_one else 'NOT met'} |")
    print(f"| one record at 1 client, p99 | | {ms(n['p99'])} | {ms(s['p99'])} | |")
    print(f"| single-record requests/s at 16 clients | | {n['rps16']:.0f} | {s['rps16']:.0f} ({s['rps16'] / n['rps16']:.1f}x) | "
          f">= 3x naive: {'met' if s['rps16'] >= 3 * n['rps16'] else 'NOT met'} |")
    print(f"| records/s in 1,000-record requests, 2 clients | {inproc_batch:,.0f} | {n['big']:,.0f} | {s['big']:,.0f} "
          f"({s['big'] / inproc_batch:.0%}) | >= 50% in-process: {'met' if s['big'] >= inproc_batch / 2 else 'NOT met'} |")
    print(f"| the same, 1 client | {inproc_batch:,.0f} | {n['big1']:,.0f} | {s['big1']:,.0f} ({s['big1'] / inproc_batch:.0%}) | "
          f"(each round trip waits for the client's encoding) |")
    print(f"| the same, 1 client, body JSON-encoded once | {inproc_batch:,.0f} | {n['big_encoded']:,.0f} | {s['big_encoded']:,.0f} "
          f"({s['big_encoded'] / inproc_batch:.0%}) | (the client's encoding not timed) |")


if __name__ == "__main__":
    main()

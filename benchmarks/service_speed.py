"""How fast the project's service answers, next to a naive one-worker BentoML service of the same model and in-process calls.

Promotes a default-like model (the project's preprocessor from `prepare.prepare_data` with settings.ini's prepare
options, then LogisticRegression, on `make_churn(20000)`) into a temporary BentoML store, serves it with
`bentoml serve mlflow_template.service:ModelService` and, in the same run, with a naive service written to a temporary
folder (records to a DataFrame, `predict_proba`, one worker), and measures over HTTP on this machine: one record at
1 client (p50, p99), single-record requests per second at 16 client threads, and records per second in
1,000-record requests (the body encoded by httpx each time, and once more with the body encoded once, which leaves
the client's JSON encoding out); in process: one-row `predict_proba` on a DataFrame and a 1,000-row batch.

    .venv/bin/python benchmarks/service_speed.py [--seconds 8]
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


def big_requests(url: str, recs: list, seconds: float, encoded: bool = False) -> float:
    "Records per second in requests of `recs`; `encoded`: the body JSON-encoded once, so the client's encoding is not timed"
    n, end = 0, time.monotonic() + seconds
    body = {"content": json.dumps({"records": recs}).encode(), "headers": {"content-type": "application/json"}} if encoded \
        else {"json": {"records": recs}}
    with httpx.Client(timeout=60) as c:
        c.post(f"{url}/predict", **body)
        t0 = time.perf_counter()
        while time.monotonic() < end:
            assert c.post(f"{url}/predict", **body).status_code == 200
            n += len(recs)
    return n / (time.perf_counter() - t0)


def timed(f, n: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds per HTTP measurement")
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
        inproc_one = timed(lambda: model.predict_proba(X1), 300)
        inproc_batch = 1000 / timed(lambda: model.predict_proba(X1000), 50)
        (d / "naive").mkdir()
        (d / "naive" / "naive_service.py").write_text(textwrap.dedent(NAIVE))
        env = {**os.environ, "BENTOML_HOME": str(d / "home"), "MLFLOW_TEMPLATE_MODEL_NAME": "bench_churn",
               "MLFLOW_TEMPLATE_PREDICTION_LOG": str(d / "predictions.jsonl"), "BENTOML_DO_NOT_TRACK": "True"}
        out = {}
        for label, target, cwd in (("naive service", "naive_service:Naive", d / "naive"),
                                   ("this service", "mlflow_template.service:ModelService", d)):
            proc, url = serve(target, cwd, env, d / f"{label}.log")
            try:
                t = sorted(one_client(url, recs[0], args.seconds))
                out[label] = {"p50": statistics.median(t), "p99": t[int(0.99 * (len(t) - 1))],
                              "rps16": many_clients(url, recs[0], args.seconds),
                              "big": big_requests(url, recs, args.seconds),
                              "big_encoded": big_requests(url, recs, args.seconds, encoded=True)}
            finally: stop_group(proc)
    n, s = out["naive service"], out["this service"]
    ms = lambda v: f"{v * 1000:.2f} ms"
    print(f"machine: {machine()}\ncommand: .venv/bin/python benchmarks/service_speed.py --seconds {args.seconds:g}\n")
    print("| measure | in-process | naive service | this service | target |\n|---|---|---|---|---|")
    print(f"| one record at 1 client, p50 | {ms(inproc_one)} (one-row predict_proba) | {ms(n['p50'])} | {ms(s['p50'])} | "
          f"<= in-process: {'met' if s['p50'] <= inproc_one else 'NOT met'} |")
    print(f"| one record at 1 client, p99 | | {ms(n['p99'])} | {ms(s['p99'])} | |")
    print(f"| single-record requests/s at 16 clients | | {n['rps16']:.0f} | {s['rps16']:.0f} ({s['rps16'] / n['rps16']:.1f}x) | "
          f">= 3x naive: {'met' if s['rps16'] >= 3 * n['rps16'] else 'NOT met'} |")
    print(f"| records/s in 1,000-record requests | {inproc_batch:,.0f} | {n['big']:,.0f} | {s['big']:,.0f} "
          f"({s['big'] / inproc_batch:.0%}) | >= 50% in-process: {'met' if s['big'] >= inproc_batch / 2 else 'NOT met'} |")
    print(f"| the same, body JSON-encoded once by the client | {inproc_batch:,.0f} | {n['big_encoded']:,.0f} | {s['big_encoded']:,.0f} "
          f"({s['big_encoded'] / inproc_batch:.0%}) | (the client's encoding not timed) |")


if __name__ == "__main__":
    main()

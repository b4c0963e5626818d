"""The loop closed through real processes: a served model, drifted traffic and its feedback over HTTP, the monitor
command (exit 1, the webhook receives the alerts, concept drift starts retraining), a better challenger promoted and
picked up by the running service without a refused request, then an equally good challenger refused (trained from
the reference stored with the champion, its run folder deleted).

The project is a copy of the shared small run's project (its store holds the served champion), so the shared run is
left as it was for the tests that read it."""
from __future__ import annotations

import json
import re
import shutil
import time
from types import SimpleNamespace

import httpx
import pytest

from conftest import bentoml_serve, cli

pytestmark = pytest.mark.slow

FAST = ["train.n_iter=2", 'train.families=["linear"]', "train.ensemble=False", "evaluate.cv_folds=2",
        "evaluate.importance_repeats=1", "evaluate.dependence_features=1", "evaluate.slice_features=1",
        'scope.success_thresholds={"min_roc_auc": 0.6}']  # a small, quick retraining run; the gate still applies


def _traffic(n: int = 3000):
    "Later customers: monthly_charges shifted and churn drawn under a changed relation (concept=2: the contract's effect reversed)"
    from mlflow_template.synthetic import make_churn
    df = make_churn(n, seed=11, shift={"monthly_charges": 25}, concept=2.0, duplicates=0)
    df["customer_id"] = [f"live-{i}" for i in range(len(df))]  # new customers
    df["signup_date"] = df.signup_date.dt.strftime("%Y-%m-%d")
    truth = df.pop("churn").tolist()
    return json.loads(df.to_json(orient="records")), truth


def _send(url: str, records: list, truth: list) -> str:
    "Score the records in requests of 1,000, then send every true label back; the model's tag"
    pids, tag = [], None
    for i in range(0, len(records), 1000):
        r = httpx.post(f"{url}/predict", json={"records": records[i:i + 1000]}, timeout=60)
        assert r.status_code == 200, r.text[:500]
        tag = r.json()["model"]
        pids += [p["prediction_id"] for p in r.json()["predictions"]]
    for i in range(0, len(pids), 1000):
        fb = [{"prediction_id": p, "label": t} for p, t in zip(pids[i:i + 1000], truth[i:i + 1000])]
        r = httpx.post(f"{url}/feedback", json={"feedback": fb}, timeout=60)
        assert r.status_code == 200, r.text[:500]
    return tag


def test_drift_feedback_alert_retrain_promote_and_refuse(project, good_run, tmp_path, hook, monkeypatch):
    url_hook, received = hook
    proj = tmp_path / "project"
    shutil.copytree(project.path, proj, symlinks=True)  # settings, runbooks, the run and the store with its champion
    env = {**project.env, "BENTOML_HOME": str(proj / "bentoml_home"), "ALERTS_HOOK": url_hook}
    here = SimpleNamespace(path=proj, env=env)
    monkeypatch.setenv("MLFLOW_TEMPLATE_MAX_RECORDS", "1000")  # the small run's model allows 3 records per request
    monkeypatch.setenv("MLFLOW_TEMPLATE_RELOAD_SECONDS", "1")  # each worker checks the store every second
    log = proj / "data" / "logs" / "predictions.jsonl"
    records, truth = _traffic()
    run = proj / "reports" / good_run.dir.name
    sets = [f"monitor.current_source={log}", 'monitor.current_options={"flatten": True}', "monitor.webhook_env=ALERTS_HOOK",
            'monitor.retrain_on=["concept_drift"]', *FAST]
    with bentoml_serve(proj / "bentoml_home", "churn_model", log, tmp_path) as url:
        champion = _send(url, records, truth)
        mon = cli(here, "monitor", "--run-dir", str(run), *[a for s in sets for a in ("--set", s)], timeout=900)
        out = mon.stdout + mon.stderr
        assert mon.returncode == 1, out[-3000:]  # alerts fired
        kinds = {a["kind"]: a for a in received[-1]["alerts"]}
        assert kinds["feature_drift"]["feature"] == "monthly_charges" and "concept_drift" in kinds, received[-1]
        assert "roc_auc" in kinds["concept_drift"]["message"]
        assert "Feedback: 3,000 of 3,000 logged predictions" in (run / "08_monitor.html").read_text()
        assert "retraining: concept_drift fired" in out and "promoted churn_model:" in out, out[-3000:]
        new_tag = re.search(r"promoted (churn_model:\w+)", out).group(1)
        retrain_run = proj / re.search(r"retraining run: (\S+)", out).group(1)
        summary = json.loads((retrain_run / "retrain.json").read_text())
        assert summary["promoted"] and summary["tag"] == new_tag and summary["champion"] == champion, summary
        assert (summary["labelled"], summary["holdout_rows"]) == (3000, 900), summary
        versus = json.loads((retrain_run / "deploy.json").read_text())["champion"]
        assert versus["rows"] == 900 and versus["low"] > 0 and versus["champion_tag"] == champion, versus  # beyond noise
        from mlflow_template import deploy as d
        with d.use_store(proj / "bentoml_home"):
            assert d.load_model("churn_model")[2]["metadata"]["decision"]["low"] == versus["low"]  # the evidence travels

        # the running service picks the new champion up by itself, and answers every request meanwhile
        seen, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1][1] != new_tag):
            r = httpx.post(f"{url}/predict", json={"records": records[:2]}, timeout=30)
            seen.append((r.status_code, r.json().get("model")))
            time.sleep(0.05)
        assert seen[-1] == (200, new_tag) and {s for s, _ in seen} == {200}, seen[-5:]

        shutil.rmtree(retrain_run)  # the champion's run folder is gone: it retrains from the reference stored with it
        # the same labelled rows again, against a champion trained on them: a margin of 0.01 (deploy.min_improvement) keeps a
        # new version from replacing it for a difference of a few thousandths, which a 900-row holdout can call significant
        again = cli(here, "retrain", "--feedback", str(log), *[a for s in FAST + ["deploy.min_improvement=0.01"] for a in ("--set", s)],
                    timeout=900)
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert f"stored with it (its run folder {retrain_run.name} is gone)" in again.stdout, again.stdout[-2000:]
        assert "not promoted" in again.stdout, again.stdout[-2000:]  # retrained on the same rows: not better by the margin
        with d.use_store(proj / "bentoml_home"):
            assert d.load_model("churn_model")[2]["tag"] == new_tag  # the champion stays
        time.sleep(1.5)
        assert httpx.post(f"{url}/predict", json={"records": records[:1]}, timeout=30).json()["model"] == new_tag

"""The pipeline end to end: the real `mlflow-template` command running every runbook with papermill in a copy of
the project, its reports, its failures, and the promoted model served by a real `bentoml serve`."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import httpx
import nbformat
import pandas as pd
import pytest

from mlflow_template.synthetic import make_churn

from conftest import BIN, ROOT, SMALL, RunsTogether, bentoml_serve, cli

pytestmark = pytest.mark.slow

RUNBOOKS = sorted(p.name for p in (ROOT / "nbs" / "pipeline").glob("[0-9]*.ipynb"))
def run_folders(project) -> set:
    return {p.name for p in (project.path / "reports").iterdir() if p.is_dir() and not p.is_symlink()}


def test_run_links_eight_executed_runbooks(project, good_run):
    latest = project.path / "reports" / "latest"
    assert latest.resolve() == good_run.dir.resolve()
    index = (latest / "index.html").read_text()
    links = set(re.findall(r'href="([^"]+)"', index))
    assert len(RUNBOOKS) == 8
    for nb in RUNBOOKS:
        html = nb.replace(".ipynb", ".html")
        assert {nb, html} <= links, f"index.html does not link {nb} and {html}"
        assert (latest / nb).is_file() and (latest / html).is_file()
        executed = nbformat.read(latest / nb, as_version=4)
        assert not [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "error"], f"{nb} has an error output"


def test_run_json_records_every_stage(good_run):
    rec = good_run.record
    assert rec["status"] == "ok"
    assert [s["stage"] for s in rec["stages"]] == ["scope", "acquire", "prepare", "explore", "train", "evaluate",
                                                    "deploy", "monitor"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 for s in rec["stages"])
    assert rec["parameters"]["acquire"]["source"] == "synthetic://churn?rows=3000&seed=42"  # the override was used
    assert rec["parameters"]["train"]["n_iter"] == 2
    provenance = json.loads((good_run.dir / "provenance.json").read_text())
    assert rec["artifacts"]["raw.parquet"]["sha256"] == provenance["snapshot_sha256"]
    assert rec["versions"]["bentoml"] and rec["versions"]["scikit-learn"]


def test_reports_use_project_relative_paths(project, good_run):
    for f in good_run.dir.iterdir():
        if f.suffix in (".ipynb", ".html", ".json"):
            assert str(project.path) not in f.read_text(errors="replace"), f"{f.name} holds an absolute path"


def test_stages_hand_over_real_artifacts(good_run):
    d = good_run.dir
    raw = pd.read_parquet(d / "raw.parquet")
    splits = {n: pd.read_parquet(d / f"{n}.parquet") for n in ("train", "valid", "test")}
    assert len(raw) == 3030  # 3000 customers + 1% exact duplicates
    assert sum(map(len, splits.values())) < len(raw)  # duplicates removed
    ids = [set(s.customer_id) for s in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])  # no id straddles splits
    rates = [(s.churn == "Yes").mean() for s in splits.values()]
    assert max(rates) - min(rates) < 0.02  # stratified: no time column in the default settings
    gate = json.loads((d / "gate.json").read_text())
    metrics = json.loads((d / "metrics.json").read_text())["test"]
    assert gate["passed"] and 0.7 < metrics["roc_auc"] < 0.85
    deploy = json.loads((d / "deploy.json").read_text())
    assert deploy["promoted"] and deploy["tag"].startswith("churn_model:")
    # issue 8: the model trained on train + valid, the served one refitted on every row after the gate, and said so
    assert json.loads((d / "train.json").read_text())["rows"]["fitted"] == len(splits["train"]) + len(splits["valid"])
    assert deploy["fitted_on"] == {"refitted": True, "splits": ["train", "valid", "test"], "rows": sum(map(len, splits.values()))}
    assert "Rows the served model saw" in (d / "07_deploy.html").read_text()
    assert len(pd.read_parquet(d / "oof.parquet")) == len(splits["train"]) + len(splits["valid"])  # the threshold's rows
    alerts = json.loads((d / "alerts.json").read_text())
    assert "monthly_charges" in {a["feature"] for a in alerts}  # the drift injected into the batch is caught
    assert "Gate: PASSED" in (d / "model_card.md").read_text()
    assert "Figure:" in (d / "05_train.html").read_text()
    assert "<html" in (d / "profile.html").read_text()[:2000].lower()


def test_promoted_model_answers_over_http(project, good_run, tmp_path):
    tag = json.loads((good_run.dir / "deploy.json").read_text())["tag"]
    records = make_churn(3, seed=123, duplicates=0, missing=0).drop(columns="churn")
    records["signup_date"] = records.signup_date.dt.strftime("%Y-%m-%d")
    log = tmp_path / "predictions.jsonl"
    with bentoml_serve(project.store, "churn_model", log, tmp_path) as url:
        r = httpx.post(f"{url}/predict", json={"records": records.to_dict(orient="records")}, timeout=60)
        four = records.to_dict(orient="records") + records.head(1).to_dict(orient="records")
        too_many = httpx.post(f"{url}/predict", json={"records": four}, timeout=60)
        pids = [p["prediction_id"] for p in r.json()["predictions"]]
        truth = [{"prediction_id": p, "label": lab} for p, lab in zip(pids[:2], ("Yes", "No"))]  # feedback on two of three
        fed = httpx.post(f"{url}/feedback", json={"feedback": truth}, timeout=60)
    assert (fed.status_code, fed.json()) == (200, {"stored": 2}), fed.text
    assert too_many.status_code == 413 and "3" in too_many.text, too_many.text  # deploy.max_records = 3 in settings
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tag
    assert [p["id"] for p in body["predictions"]] == records.customer_id.tolist()
    assert all(0 <= p["probability"] <= 1 and p["label"] in ("Yes", "No") for p in body["predictions"])
    assert len(log.read_text().splitlines()) == 3
    # the monitoring stage reads the service's own prediction log back as current data
    r = cli(project, "run", "--stages", "monitor", "--run-dir", str(good_run.dir), "--set", f"monitor.current_source={log}",
            "--set", 'monitor.current_options={"flatten": True}', "--set", "monitor.max_p99_ms=0.001")  # any request is slow
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    drift = json.loads((good_run.dir / "drift.json").read_text())
    assert (drift["rows"], drift["accepted"], drift["quarantined"]) == (3, 3, 0)
    current = [p for p in drift["performance"] if p["data"] == "current"]  # the feedback became the current data's labels
    assert len(current) == 1 and current[0]["labelled rows"] == 2, drift["performance"]
    assert "Feedback: 2 of 3 logged predictions have their true churn" in (good_run.dir / "08_monitor.html").read_text()
    latency = [a for a in json.loads((good_run.dir / "alerts.json").read_text()) if a["kind"] == "latency"]
    assert len(latency) == 1 and "(1 request, 3 records)" in latency[0]["message"], latency
    html = (good_run.dir / "08_monitor.html").read_text()
    assert "latency percentiles of answered requests in milliseconds" in html and "prediction requests refused" in html
    from mlflow_template.feedback import feedback_db_path, refused_frame
    refused = refused_frame([feedback_db_path(log)])  # the 413 was counted by the service, not logged as predictions
    assert refused[["route", "status"]].values.tolist() == [["/predict", 413]], refused


def test_unknown_setting_is_named_and_nothing_runs(project):
    before = run_folders(project)
    r = cli(project, "run", "--set", "train.no_such_key=1")
    assert r.returncode != 0
    assert "train.no_such_key" in r.stderr
    assert run_folders(project) == before


def test_wrong_type_is_named(project):
    r = cli(project, "run", "--set", "train.n_iter=many")
    assert r.returncode != 0 and "train.n_iter: expected a int" in r.stderr


def test_failing_stage_keeps_its_notebook_and_exits_nonzero(project):
    r = cli(project, "run", "--set", "acquire.source=data/raw/no_such_file.csv", "--stages", "scope,acquire,prepare")
    assert r.returncode == 1, r.stdout + r.stderr
    d = project.path / r.stdout.strip().splitlines()[-1]
    rec = json.loads((d / "run.json").read_text())
    assert rec["status"] == "failed"
    assert [(s["stage"], s["status"]) for s in rec["stages"]] == [("scope", "ok"), ("acquire", "failed"),
                                                                   ("prepare", "skipped")]
    assert "no_such_file.csv" in rec["stages"][1]["error"]
    executed = nbformat.read(d / "02_acquire.ipynb", as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "FileNotFoundError"
    index = (d / "index.html").read_text()
    assert 'class="failed">failed' in index and "no_such_file.csv" in index and 'href="02_acquire.html"' in index


def test_one_runbook_runs_alone_with_papermill(project, good_run):
    alone = project.path / "reports" / "alone"
    shutil.copytree(good_run.dir, alone)
    (alone / "model.skops").unlink()
    r = subprocess.run([str(BIN / "papermill"), "nbs/pipeline/05_train.ipynb", str(alone / "05_train.ipynb"),
                        "-p", "run_dir", "reports/alone", "-p", "n_iter", "1", "-k", "python3"],
                       cwd=project.path, env=project.env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (alone / "model.skops").is_file()
    board = json.loads((alone / "train.json").read_text())["leaderboard"]
    assert {r["family"]: r["settings tried"] for r in board if r["family"] != "ensemble"} == {"linear": 2, "tree": 2}  # n_iter + the defaults


def _versions(project) -> list:
    return sorted(p.name for p in (project.store / "models" / "churn_model").iterdir() if p.is_dir())


REFUSED = {"not better than the champion": [],  # the same settings again: a tie keeps the served model
           "the gate failed": ["--set", 'scope.success_thresholds={"min_roc_auc": 0.99}']}
_refused_runs = {}


def _refused_run(project, why: str):
    "Both runs start together on first use; the store's versions before either are kept to compare with"
    if not _refused_runs:
        _refused_runs["versions before"] = _versions(project)
        _refused_runs["runs"] = RunsTogether({w: [str(BIN / "mlflow-template"), "run", *SMALL, *extra, "--stages",  # deploy
                                                  "scope,acquire,prepare,train,evaluate,deploy", "--force", "deploy"]  # decides anew
                                              for w, extra in REFUSED.items()},
                                             project.path, project.env)
    return _refused_runs["runs"][why]


@pytest.mark.parametrize("why", list(REFUSED))
def test_failed_or_no_better_model_never_replaces_the_served_one(project, good_run, why):
    served = json.loads((good_run.dir / "deploy.json").read_text())["tag"]
    r = _refused_run(project, why)
    before = _refused_runs["versions before"]
    assert r.returncode == 0, r.stderr[-3000:]
    outcome = json.loads((project.path / r.stdout.strip().splitlines()[-1] / "deploy.json").read_text())
    assert outcome["promoted"] is False and why in outcome["reason"]
    if why.startswith("not better"):  # the champion was refitted on these very test rows: judged by its recorded score
        assert "against its test score recorded at its promotion" in outcome["reason"], outcome["reason"]
    assert _versions(project) == before and served.split(":")[1] in before

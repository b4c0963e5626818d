"""MLflow tracking of real pipeline runs: `mlflow-template run` with MLFLOW_TRACKING_URI at a real `mlflow server` over
HTTP (on a copy of the shared small run's project, so its stages are reused and the run takes seconds), the shared run
itself in the project's embedded SQLite store without a server, and a server that does not answer reported in one
line, quickly, without an exception."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import BIN, SMALL, TRACKED, cli, free_port, serving
from mlflow_template.tracking import PARENT_TAG, RUN_ID_TAG, STAGE_TAG, track_run, tracking_uri

QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true"}  # no usage reports from tests


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    "A real `mlflow server` on loopback with its own SQLite store and artifact folder; its URL"
    tmp = tmp_path_factory.mktemp("mlflow_server")
    env = {**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: starts in half the time
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    with serving(lambda port: [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                               "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], "/health", env, tmp, tmp, "mlflow server") as url:
        print(f"mlflow server ready in {time.monotonic() - started:.1f} s")
        yield url


def _children(client, res) -> dict:
    "The stage runs under the pipeline run: {stage: Run}"
    kids = client.search_runs([res["experiment_id"]], f"tags.`{PARENT_TAG}` = '{res['run_id']}'")
    return {k.data.tags[STAGE_TAG]: k for k in kids}


@pytest.mark.slow
def test_run_is_tracked_on_a_server(project, good_run, mlflow_server, tmp_path, monkeypatch):
    "A pipeline run with MLFLOW_TRACKING_URI at a real server: params, metrics, artifacts and tags read back; tracking it again reuses its run"
    from mlflow import MlflowClient
    proj = tmp_path / "project"
    shutil.copytree(project.path, proj, symlinks=True)  # the shared run is there: this run reuses its stages
    here = type("Here", (), {"path": proj, "env": {**project.env, **QUIET, **TRACKED, "BENTOML_HOME": str(proj / "bentoml_home"),
                                                    "MLFLOW_TRACKING_URI": mlflow_server}})
    r = cli(here, "run", *SMALL)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run_dir = proj / r.stdout.strip().splitlines()[-1]
    record = json.loads((run_dir / "run.json").read_text())
    res = record["tracking"]  # the runner tracked it, and run.json names the MLflow run
    assert res["uri"] == mlflow_server and res["url"].startswith(f"{mlflow_server}/#/experiments/{res['experiment_id']}/runs/")
    assert f"tracked in MLflow: {res['url']}" in r.stdout, r.stdout[-2000:]
    for k, v in {**QUIET, "MLFLOW_TRACKING_URI": mlflow_server}.items(): monkeypatch.setenv(k, v)
    said = []

    client = MlflowClient(mlflow_server)
    run = client.get_run(res["run_id"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    primary = json.loads((run_dir / "spec.json").read_text())["primary_metric"]
    assert run.info.run_name == record["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["train.n_iter"] == str(record["parameters"]["train"]["n_iter"]) == "2"  # conftest's SMALL
    assert run.data.metrics[f"test.{primary}"] == pytest.approx(metrics["test"][primary], rel=1e-12)
    assert run.data.metrics["seconds.total"] == pytest.approx(record["seconds"])
    assert run.data.tags[RUN_ID_TAG] == record["run_id"] and run.data.tags["mlflow_template.status"] == "ok"
    deploy = json.loads((run_dir / "deploy.json").read_text())
    assert run.data.tags["mlflow_template.promoted"] == ("yes" if deploy["promoted"] else "no")
    if deploy["promoted"]: assert run.data.tags["mlflow_template.bentoml_tag"] == deploy["tag"]
    else: assert "mlflow_template.bentoml_tag" not in run.data.tags
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert run.data.tags["mlflow_template.data_sha256"] == provenance["content_sha256"]
    top = {a.path for a in client.list_artifacts(res["run_id"])}
    assert {"run.json", "metrics.json", "gate.json", "deploy.json", "model_card.md"} <= top, top
    assert not any(p.endswith((".parquet", ".skops", ".ipynb")) for p in top), top

    stages = _children(client, res)
    assert set(stages) == {s["stage"] for s in record["stages"]}
    for s in record["stages"]:
        kid = stages[s["stage"]]
        assert kid.info.run_name == s["stage"] and kid.info.status == "FINISHED"
        assert kid.data.metrics[f"seconds.{s['stage']}"] == pytest.approx(s["seconds"])
        assert Path(s["html"]).name in {a.path for a in client.list_artifacts(kid.info.run_id)}, s["stage"]
    assert stages["train"].data.params["n_iter"] == "2"
    assert stages["evaluate"].data.metrics[f"test.{primary}"] == pytest.approx(metrics["test"][primary], rel=1e-12)
    assert "profile.html" in {a.path for a in client.list_artifacts(stages["explore"].info.run_id)}
    train_html = Path(next(s["html"] for s in record["stages"] if s["stage"] == "train")).name
    got = client.download_artifacts(stages["train"].info.run_id, train_html, str(tmp_path))
    assert Path(got).read_bytes() == (run_dir / train_html).read_bytes()

    again = track_run(run_dir, record, echo=said.append)  # the same folder again: the same MLflow runs
    assert again["run_id"] == res["run_id"]
    assert {k: v.info.run_id for k, v in _children(client, again).items()} == {k: v.info.run_id for k, v in stages.items()}


def test_embedded_store_without_a_server(project, good_run, tmp_path, monkeypatch):
    "Without MLFLOW_TRACKING_URI the run goes to the project's own SQLite store under mlruns/, not the working folder"
    from mlflow import MlflowClient
    auto = good_run.record["tracking"]  # the shared run, tracked by the runner with no server
    assert auto["uri"] == "sqlite:///mlruns/mlflow.db" and "url" not in auto, auto  # run.json names it within the project
    logged = MlflowClient(f"sqlite:///{project.path.resolve()}/mlruns/mlflow.db").get_run(auto["run_id"])
    assert logged.data.tags[RUN_ID_TAG] == good_run.record["run_id"] and logged.data.params["train.n_iter"] == "2"
    acme = tmp_path / "acme-churn"  # tracking a run folder by hand, into a project of another name
    (acme / "reports").mkdir(parents=True)
    for f in ("settings.ini", "pyproject.toml"): (acme / f).write_text("")  # what makes a folder a project root
    run_dir = acme / "reports" / good_run.dir.name
    shutil.copytree(good_run.dir, run_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    for k, v in QUIET.items(): monkeypatch.setenv(k, v)
    said, started = [], time.monotonic()
    res = track_run(run_dir, echo=said.append)  # the record read from run.json
    print(f"track_run to a new embedded store: {time.monotonic() - started:.1f} s")
    assert res is not None, said
    assert res["uri"] == f"sqlite:///{acme.resolve()}/mlruns/mlflow.db" == tracking_uri(acme) and "url" not in res
    assert "make ui" in said[0]
    assert (acme / "mlruns" / "mlflow.db").is_file() and list(elsewhere.iterdir()) == []
    client = MlflowClient(res["uri"])
    experiment = client.get_experiment(res["experiment_id"])
    assert experiment.name == f"acme-churn/{good_run.record['parameters']['deploy']['model_name']}"
    assert experiment.artifact_location.startswith((acme / "mlruns" / "artifacts").resolve().as_uri())
    assert client.get_run(res["run_id"]).data.params["train.n_iter"] == "2"
    logged = {p.name for p in (acme / "mlruns" / "artifacts").rglob("*") if p.is_file()}
    assert {"run.json", "metrics.json", "05_train.html", "profile.html"} <= logged, logged
    started = time.monotonic()
    assert track_run(run_dir, echo=said.append)["run_id"] == res["run_id"]
    print(f"track_run to the embedded store again: {time.monotonic() - started:.1f} s")


def test_unreachable_server_is_reported_quickly(good_run, monkeypatch):
    "Nothing listening at MLFLOW_TRACKING_URI: one line naming the URI and the reason, None, within seconds"
    closed = free_port()  # free: nothing listens there
    uri = f"http://127.0.0.1:{closed}"
    for k, v in {**QUIET, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}.items(): monkeypatch.setenv(k, v)
    said, started = [], time.monotonic()
    assert track_run(good_run.dir, good_run.record, echo=said.append) is None
    assert time.monotonic() - started < 15
    assert len(said) == 1 and said[0].startswith(f"not tracked in MLflow at {uri}: "), said
    assert "does not answer" in said[0], said
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"): monkeypatch.delenv(k)
    started = time.monotonic()  # MLflow's own defaults (7 retries, 120 s timeout) are bounded by track_run too
    assert track_run(good_run.dir, good_run.record, echo=said.append) is None and time.monotonic() - started < 15

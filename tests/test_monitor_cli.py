"""`mlflow-template monitor` on a real run: exit codes, the alerts it prints, and the webhook that receives them.

A copy of the shared small run (its served model is in the project's store) is checked three times through the
command, as cron or CI would call it: a drifted, labelled batch (exit 1; a local webhook answers 500 once, then
receives the alerts on the retry), an unchanged batch checked into a folder that is no run (exit 0, nothing sent:
the served model carries its own reference), and a source that cannot be read (exit 2, the reason on stderr).
"""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

from conftest import cli


@pytest.mark.slow
def test_monitor_command_exit_codes_and_webhook(project, good_run, tmp_path, hook):
    url, received = hook
    run = tmp_path / good_run.dir.name  # the same name: the served model was promoted (and refitted) by this run
    shutil.copytree(good_run.dir, run, symlinks=True)
    env = {**project.env, "ALERTS_HOOK": url}
    monitor = lambda *sets, into=run: cli(SimpleNamespace(path=project.path, env=env), "monitor", "--run-dir", str(into),
                                          "--set", "monitor.webhook_env=ALERTS_HOOK", *[a for s in sets for a in ("--set", s)])

    drifted = monitor()  # the small run's batch: monthly_charges shifted, labels drawn with concept=0.8
    assert drifted.returncode == 1, drifted.stderr[-2000:]
    assert "monthly_charges" in drifted.stdout and "alert(s) fired" in drifted.stdout
    assert len(received) == 2  # the first post answered 500, the retry delivered
    body = received[-1]
    assert body["run"] == run.name and body["model"].startswith("churn_model:")
    kinds = {a["kind"]: a for a in body["alerts"]}
    assert kinds["feature_drift"]["feature"] == "monthly_charges" and "concept_drift" in kinds
    report = (run / "08_monitor.html").read_text()
    assert "delivered by ALERTS_HOOK: HTTP 200" in report and "not-in-any-report" not in report

    # the training distribution, checked into a folder that is no run: the served model brings its own reference
    quiet = monitor("monitor.current_source=synthetic://churn?rows=1500&seed=8", into=tmp_path / "elsewhere")
    assert quiet.returncode == 0, quiet.stdout[-2000:] + quiet.stderr[-2000:]
    assert "no alerts" in quiet.stdout and len(received) == 2  # nothing sent
    assert "is not a pipeline run: checking the served churn_model:" in quiet.stdout
    assert "rows of its training snapshot, stored with it" in (tmp_path / "elsewhere" / "08_monitor.html").read_text()

    broken = monitor(f"monitor.current_source={tmp_path / 'no_such_batch.csv'}")
    assert broken.returncode == 2 and "no_such_batch.csv" in broken.stderr, broken.stderr[-2000:]

    # every check that ran is kept with its report, and the history page shows them over time
    from mlflow_template.history import read_history
    history = read_history(tmp_path / "monitoring")
    assert history["alerts"].tolist()[0] >= 2 and history["alerts"].tolist()[1] == 0 and len(history) == 2, history
    assert "concept_drift" in history["kinds"][0] and history["drifted_features"][0] >= 1
    assert all((tmp_path / "monitoring" / f / "08_monitor.html").is_file() for f in history["folder"])
    page = (tmp_path / "monitoring" / "index.html").read_text()
    assert "2 check(s)" in page and page.count("<figcaption>") >= 2

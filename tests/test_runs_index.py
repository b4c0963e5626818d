"""The index of all runs, `reports/index.html`, on fake run folders shaped like real ones (no pipeline run): one row per
run with its kind, changed settings, scores, gate and promotion; every link resolving; the figure with its caption; an
unreadable run.json listed, not fatal."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from mlflow_template.history import keep_check, write_history_page
from mlflow_template.runs import COLUMNS, plot_runs, runs_table, write_runs_index

STAGES = ("scope", "acquire", "prepare", "explore", "train", "evaluate", "deploy", "monitor")
SECRET_SOURCE = "postgresql://reader:s3cret@db.example/churn"


def _parameters(n_iter: int = 8, source: str = "synthetic://churn?rows=20000&seed=42") -> dict:
    "`parameters` as run.json holds them (a few keys of each stage of the default settings)"
    return {"scope": {"target": "churn", "task": "binary", "positive_class": "Yes", "seed": 42, "primary_metric": "roc_auc",
                      "success_thresholds": {"min_roc_auc": 0.72, "min_recall": 0.5}},
            "acquire": {"source": source, "format": "", "timeout": 30.0},
            "prepare": {"test_size": 0.2, "valid_size": 0.2, "clip_quantiles": [0.005, 0.995]},
            "explore": {"profile_rows": 5000, "max_plots": 6},
            "train": {"families": ["linear", "tree"], "strategy": "bayes", "n_iter": n_iter, "cv_folds": 3},
            "evaluate": {"model_name": "churn_model", "threshold_strategy": "cost"},
            "deploy": {"model_name": "churn_model", "max_records": 1000},
            "monitor": {"model_name": "churn_model", "psi_threshold": 0.2}}


def fake_run(reports: Path, run_id: str, started: str, *, stages=STAGES, parameters=None, status="ok", error=None,
             reused=(), leaderboard=None, test=0.7939, gate=True, promoted=None, alerts=("feature_drift",),
             retrain=None, model=True) -> Path:
    "A run folder with run.json, spec.json, train.json, metrics.json, gate.json, deploy.json and alerts.json shaped as the stages write them"
    d = reports / run_id
    d.mkdir(parents=True)
    def w(name, obj): (d / name).write_text(json.dumps(obj, indent=2), encoding="utf-8")
    params = parameters or _parameters()
    w("run.json", {
        "run_id": run_id, "status": status, "started": started, "finished": started, "seconds": 45.92,
        "run_dir": f"reports/{run_id}", "settings_file": "settings.ini", "overrides": [],
        "parameters": {s: params[s] for s in stages},
        "stages": [{"stage": s, "runbook": f"nbs/pipeline/0{i}_{s}.ipynb", "status": "failed" if error and s == stages[-1] else "ok",
                    "seconds": 1.5, "notebook": f"reports/{run_id}/0{i}_{s}.ipynb", "html": f"reports/{run_id}/0{i}_{s}.html",
                    "error": error if s == stages[-1] else None, **({"reused_from": "20261101-090000-a001"} if s in reused else {})}
                   for i, s in enumerate(stages, 1)],
        "versions": {"python": "3.11.7", "mlflow_template": "0.1.0"}, "git_commit": "3fd1051a", "artifacts": {}})
    if model:
        w("spec.json", {"target": "churn", "task": "binary", "positive_class": "Yes", "primary_metric": "roc_auc",
                        "success_thresholds": {"min_roc_auc": 0.72, "min_recall": 0.5}, "cost_false_positive": 1.0,
                        "cost_false_negative": 5.0, "sensitive_features": ["gender"], "id_column": "customer_id",
                        "time_column": "", "seed": 42})
        w("train.json", {"best_family": "linear", "primary_metric": "roc_auc", "strategy": "bayes",
                         "leaderboard": leaderboard or [
                             {"family": "linear", "cv roc_auc": 0.7863, "cv roc_auc std": 0.0085, "settings tried": 9,
                              "seconds": 3.75, "best params": {"C": 1.0}, "clearly better": None},
                             {"family": "tree", "cv roc_auc": 0.7795, "cv roc_auc std": 0.0066, "settings tried": 9,
                              "seconds": 7.76, "best params": {"max_iter": 365}, "clearly better": None}],
                         "trials": [], "features": ["tenure_months"]})
        w("metrics.json", {"test": {"roc_auc": test, "recall": 0.85, "n": 4000}, "threshold": 0.18, "threshold_strategy": "cost",
                           "cv": [{"metric": "roc_auc", "mean": 0.786, "std": 0.012, "ci_lower": 0.771, "ci_upper": 0.801, "folds": 5}]})
        w("gate.json", {"passed": gate, "checks": [], "primary_metric": "roc_auc", "primary_value": test,
                        "reason": "All 2 thresholds met" if gate else "roc_auc = 0.70 < 0.72"})
        w("deploy.json", {"promoted": bool(promoted), "tag": promoted, "reason": "better than the champion" if promoted else
                          "not better than the champion", "champion": {"metric": "roc_auc", "challenger": test}})
    if retrain is not None: w("retrain.json", retrain)
    w("alerts.json", [{"level": "warning", "kind": k, "feature": "monthly_charges", "message": f"{k} fired"} for k in alerts])
    (d / "index.html").write_text(f"<!doctype html><title>Run {run_id}</title>", encoding="utf-8")
    return d


@pytest.fixture
def reports(tmp_path) -> Path:
    "A reports folder: two pipeline runs, a retraining run, a monitor-only run, an unreadable run, a monitoring history, and folders that are no runs"
    r = tmp_path / "reports"
    fake_run(r, "20261101-090000-a001", "2026-11-01T09:00:00+00:00", promoted="churn_model:v1",
             leaderboard=[{"family": "linear", "cv roc_auc": 0.7858, "valid roc_auc": 0.7839, "settings tried": 6}])  # older shape
    fake_run(r, "20261102-090000-b002", "2026-11-02T09:00:00+00:00", parameters=_parameters(n_iter=20, source=SECRET_SOURCE),
             reused=("scope", "acquire", "prepare"), test=0.70, gate=False, alerts=())
    fake_run(r, "20261103-090000-c003", "2026-11-03T09:00:00+00:00", promoted="churn_model:v2", test=0.80,
             retrain={"status": "ok", "champion": "churn_model:v1", "promoted": True, "tag": "churn_model:v2", "reason": "better"})
    fake_run(r, "20261104-090000-d004", "2026-11-04T09:00:00+00:00", stages=("monitor",), status="failed", model=False,
             error="ValueError: current_source: no rows", alerts=("feature_drift", "concept_drift"))
    (r / "20261105-090000-e005").mkdir()
    (r / "20261105-090000-e005" / "run.json").write_text('{"run_id": "20261105-0900', encoding="utf-8")  # cut short
    stamp = datetime(2026, 11, 5, 9, tzinfo=timezone.utc).timestamp()
    os.utime(r / "20261105-090000-e005" / "run.json", (stamp, stamp))
    (r / "latest").symlink_to("20261103-090000-c003")
    for other in ("_dev", ".hidden"): fake_run(r, other, "2026-12-01T00:00:00+00:00")  # not runs
    monitoring = r / "monitoring"
    for hour in (8, 9):  # two kept checks, through the history module itself
        check = tmp_path / "check"
        check.mkdir(exist_ok=True)
        (check / "drift.json").write_text(json.dumps({"model": "churn_model:v2", "rows": 500, "features": [{"feature": "x", "drifted": True}],
                                                      "prediction": {"psi": 0.1}, "concept": {"metric": "roc_auc"}}))
        (check / "alerts.json").write_text(json.dumps([{"level": "warning", "kind": "feature_drift"}]))
        keep_check(check, monitoring, now=datetime(2026, 11, 4, hour, tzinfo=timezone.utc))
    write_history_page(monitoring)
    return r


def test_table_rows_and_columns(reports):
    t = runs_table(reports)
    assert tuple(t.columns) == COLUMNS
    assert t.run.tolist() == ["20261105-090000-e005", "20261104-090000-d004", "20261103-090000-c003",
                              "20261102-090000-b002", "20261101-090000-a001"]  # newest first; _dev, .hidden, monitoring, latest skipped
    assert t.kind.tolist() == [None, "monitor", "retrain", "pipeline", "pipeline"]
    assert t.status.tolist() == ["unreadable", "failed", "ok", "ok", "ok"]
    assert t.error.iloc[0].startswith("run.json: JSONDecodeError") and t.error.iloc[1] == "monitor: ValueError: current_source: no rows"
    assert t.started.iloc[1] == pd.Timestamp("2026-11-04T09:00:00Z") and str(t.started.dtype) == "datetime64[ns, UTC]"
    assert t.seconds.iloc[2] == 45.92
    assert (t.stages_run.tolist()[1:], t.stages_reused.tolist()[1:]) == ([1, 8, 5, 8], [0, 0, 3, 0])
    # settings changed since the previous run of the same kind, the source's password redacted
    assert t.changed.tolist()[1:] == ["first run", "first run",
                                      "acquire.source=postgresql://reader:***@db.example/churn; train.n_iter=20", "first run"]
    assert t.metric.tolist()[2:] == ["roc_auc"] * 3 and t.unit.tolist()[2:] == ["unitless"] * 3
    assert t.validation.tolist()[2:] == [0.7863, 0.7863, 0.7839]  # CV of the selected family; the held-out score where train.json has one
    assert t.test.tolist()[2:] == [0.80, 0.70, 0.7939]
    assert t.gate.tolist()[1:] == ["-", "passed", "failed", "passed"]
    assert t.promotion.tolist()[1:] == ["-", "churn_model:v2", "not promoted", "churn_model:v1"]
    assert t.alerts.tolist()[1:] == [2, 1, 0, 1] and t.alert_kinds.iloc[1] == "concept_drift, feature_drift"
    assert t.link.iloc[2] == "20261103-090000-c003/index.html" and t.link.iloc[0] is None
    assert t.latest.tolist() == [False, False, True, False, False]


def test_plot_has_the_metric_with_its_unit(reports):
    fig = plot_runs(runs_table(reports))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "roc_auc (unitless)" and ax.get_xlabel() == "run start (UTC)"
    assert ax.lines[1].get_ydata().tolist() == [0.7939, 0.70, 0.80]  # test, oldest first; the monitor run has none
    assert [x.get_text() for x in ax.get_legend().get_texts()][2:] == ["promoted", "retraining run"]


class _Page(HTMLParser):
    "The page's links, images and unclosed or stray tags"
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.hrefs, self.srcs, self.stack, self.stray = [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "href" in a: self.hrefs.append(a["href"])
        if "src" in a: self.srcs.append(a["src"])
        if tag not in self.VOID: self.stack.append(tag)

    def handle_endtag(self, tag):
        if self.stack and self.stack[-1] == tag: self.stack.pop()
        else: self.stray.append(tag)


def test_index_page(reports):
    path = write_runs_index(reports)
    assert path == reports / "index.html"
    text = path.read_text(encoding="utf-8")
    page = _Page(); page.feed(text)
    assert not page.stack and not page.stray, (page.stack, page.stray)  # every tag closed, in order
    assert '<meta charset="utf-8">' in text and "<title>Runs</title>" in text
    for run in ("20261101-090000-a001", "20261102-090000-b002", "20261103-090000-c003", "20261104-090000-d004"):
        assert f"{run}/index.html" in page.hrefs, run
    assert "monitoring/index.html" in page.hrefs and "(2 check(s)" in text
    assert all((reports / h).is_file() for h in page.hrefs), page.hrefs  # every link resolves from reports/index.html
    assert len(page.srcs) == 1 and page.srcs[0].startswith("data:image/png;base64,")  # the plot, embedded: no external resource
    assert "<figure><img" in text and "<figcaption>The primary metric, roc_auc (unitless)" in text and "Look for" in text
    assert "<th>duration (seconds)</th>" in text and "<th>roc_auc, test (unitless)</th>" in text
    assert "<td>20261105-090000-e005</td>" in text and "JSONDecodeError" in text  # the unreadable run listed, without a link
    assert "s3cret" not in text and "20261103-090000-c003</a> (latest)" in text
    assert "<td>churn_model:v2</td>" in text and "<td>not promoted</td>" in text and "<td>2: concept_drift, feature_drift</td>" in text
    assert sorted(p.name for p in reports.iterdir() if p.name.startswith(".") and p.name != ".hidden") == []  # no temporary file left


def test_empty_reports_folder(tmp_path):
    text = write_runs_index(tmp_path).read_text(encoding="utf-8")
    assert "0 run(s)" in text and "No pipeline run with a score yet" in text and "No monitoring history yet" in text
    assert "<figure>" not in text
    with pytest.raises(ValueError, match="no pipeline or retraining run"): plot_runs(runs_table(tmp_path))
    with pytest.raises(FileNotFoundError, match="is not a folder"): runs_table(tmp_path / "missing")

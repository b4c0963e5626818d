"""The pipeline on a Dask LocalCluster (`cluster = local`, two workers) against the same settings in process.

A copy of the shared small run's project runs again with `DEFAULT.cluster` set to a LocalCluster of two workers and
every stage forced: the runner starts one cluster for the run, acquire streams the snapshot from five partitions, the
search's and the cross-validation's folds are fitted on its workers (the train stage measures how busy they were), and the results match the run in process: the same contract, the
same splits (their content hashes), the same family and metrics within noise. Batch scoring on the cluster writes
what scoring in process writes. The unit checks (the setting, connecting, the busy measure) are in
nbs/00_cluster.ipynb."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import SMALL, cli

pytestmark = pytest.mark.slow
LOCAL = "local?workers=2&threads=1&memory=2GiB"


def test_the_pipeline_on_a_local_cluster_matches_the_run_in_process(project, good_run, tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(project.path, proj, symlinks=True)
    here = SimpleNamespace(path=proj, env={**project.env, "BENTOML_HOME": str(proj / "bentoml_home")})
    r = cli(here, "run", *SMALL, "--set", f"DEFAULT.cluster={LOCAL}", "--set", "acquire.partition_rows=700", "--force")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    on = proj / r.stdout.strip().splitlines()[-1]
    read = lambda run, f: json.loads((run / f).read_text())
    here_run = good_run.dir

    prov = read(on, "provenance.json")  # the snapshot streamed from five partitions: the same content
    assert prov["partitions"] == 5 and prov["content_sha256"] == read(here_run, "provenance.json")["content_sha256"], prov
    assert "Ran on the Dask cluster at" in (on / "02_acquire.html").read_text()
    assert read(on, "contract.json") == read(here_run, "contract.json")
    prepared = read(on, "prepare.json")  # prepared over the snapshot's five partitions, every split held whole
    assert prepared["splits"] == read(here_run, "prepare.json")["splits"]  # rows and content hashes
    assert prepared["partitions"] == 5 and all(s["file"] is None for s in prepared["sample"].values()), prepared["sample"]
    assert "rows held here" in (on / "03_prepare.html").read_text()

    where = read(on, "train.json")["cluster"]
    assert where["workers"] == 2 and where["cluster"].startswith("tcp://127.0.0.1:"), where
    assert where["tasks"] >= 2 * 3 and where["busy_share"] > 0.05, where  # the folds ran on the workers
    assert read(here_run, "train.json")["cluster"] == {"cluster": "in process"}
    assert read(on, "train.json")["best_family"] == read(here_run, "train.json")["best_family"]
    got, want = read(on, "metrics.json")["test"], read(here_run, "metrics.json")["test"]
    for name in ("roc_auc", "f1", "recall"):
        assert abs(got[name] - want[name]) < 0.02, (name, got[name], want[name])
    page = (on / "05_train.html").read_text()
    assert "Ran on the Dask cluster at" in page and "dashboard" in page and "2 worker(s)" in page
    assert "The folds ran there as" in (on / "06_evaluate.html").read_text()
    checked = read(on, "drift.json")  # the batch read and scored in partitions (other tests re-check the shared run's own)
    source = next(a.split("=", 1)[1] for a in SMALL if a.startswith("monitor.current_source="))
    from mlflow_template.acquire import load_source
    from mlflow_template.contract import validate_rows
    accepted, quarantined = validate_rows(load_source(source), read(on, "contract.json"))
    assert [checked[k] for k in ("rows", "accepted", "quarantined")] == [len(accepted) + len(quarantined), len(accepted), len(quarantined)]
    assert "Ran on the Dask cluster at" in (on / "08_monitor.html").read_text()

    test = pd.read_parquet(here_run / "test.parquet").drop(columns="churn")
    test.to_parquet(tmp_path / "batch.parquet")
    outs = {}
    for name, extra in (("here", []), ("on", ["--cluster", LOCAL])):
        s = cli(here, "score", "--source", str(tmp_path / "batch.parquet"), "--output", str(tmp_path / f"{name}.parquet"),
                "--chunk-rows", "100", "--no-progress", *extra)
        assert s.returncode == 0, s.stdout + s.stderr
        outs[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    assert "scored on 2 Dask worker(s)" in s.stdout, s.stdout
    pd.testing.assert_frame_equal(outs["on"], outs["here"])


def test_a_split_larger_than_sample_rows_is_written_whole_and_sampled(project, good_run, tmp_path):
    "prepare.sample_rows below the splits' sizes: each split whole in {split}_all.parquet, a stratified sample held for the later stages, the explore tables over every row"
    proj = tmp_path / "project"
    shutil.copytree(project.path, proj, symlinks=True)
    here = SimpleNamespace(path=proj, env={**project.env, "BENTOML_HOME": str(proj / "bentoml_home")})
    r = cli(here, "run", *SMALL, "--set", f"DEFAULT.cluster={LOCAL}", "--set", "acquire.partition_rows=700",
            "--set", "prepare.sample_rows=400", "--stages", "scope,acquire,prepare,explore", "--force")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    on = proj / r.stdout.strip().splitlines()[-1]
    prepared, here_prepared = (json.loads((run / "prepare.json").read_text()) for run in (on, good_run.dir))
    assert prepared["splits"] == here_prepared["splits"]  # the same splits, written whole
    for name, split in prepared["sample"].items():
        whole, held = pd.read_parquet(on / f"{name}_all.parquet"), pd.read_parquet(on / f"{name}.parquet")
        assert split["file"] == f"{name}_all.parquet" and len(whole) == split["rows"] > 400 >= len(held) == split["held"] > 350
        assert set(held.customer_id) <= set(whole.customer_id)
        share = lambda t: (t.churn == "Yes").mean()
        assert abs(share(held) - share(whole)) < 0.01, name  # stratified
    assert json.loads((on / "contract.json").read_text()) == json.loads((good_run.dir / "contract.json").read_text())
    page = (on / "03_prepare.html").read_text()
    assert "Fitted on a stratified sample of" in page and "rows held here" in page
    explored = (on / "04_explore.html").read_text()
    rows = prepared["splits"]["train"]["rows"]
    assert f"The summary tables below cover all {rows:,} rows of the training split" in explored, explored[-3000:]

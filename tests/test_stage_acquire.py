"""The acquire stage in process: the runbook's parameters are the package's options, the data is checked against the
spec before anything is written, and the raw snapshot is written once, read-only, never silently replaced."""
from __future__ import annotations

import inspect
import json
import os
import shutil
import stat
import subprocess

import nbformat
import pandas as pd
import pytest

from mlflow_template.acquire import OPTIONS, acquire, check_acquired, load_source, snapshot
from mlflow_template.core import sha256_file, sha256_frame, write_json
from mlflow_template.runfolder import RunFolder
from mlflow_template.scope import ProblemSpec
from mlflow_template.settings import runbook_parameters
from mlflow_template.synthetic import make_churn

from conftest import BIN, ROOT, copy_project

RUNBOOK = ROOT / "nbs" / "pipeline" / "02_acquire.ipynb"
SPEC = ProblemSpec(target="churn", task="binary", positive_class="Yes")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---------------------------------------------------------------- the runbook is thin

def test_runbook_parameters_are_run_dir_source_format_and_the_options():
    # and where it reads: here, or in partitions on a Dask cluster (`cluster`, `partition_rows`; acquire_dask)
    assert set(runbook_parameters(RUNBOOK)) == {"run_dir", "source", "format", *OPTIONS, "cluster", "partition_rows"}
    assert len(OPTIONS) == len(set(OPTIONS))
    assert set(OPTIONS) <= set(inspect.signature(load_source).parameters)  # every one reaches load_source


def test_runbook_holds_calls_only():
    nb = nbformat.read(RUNBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    assert all(len(c.source.splitlines()) <= 15 for c in code)
    text = "\n".join(c.source for c in code)
    for decision in ("clean_target", "check_columns", "table=table", "load_source"):
        assert decision not in text, f"the runbook should leave {decision} to mlflow_template.acquire.acquire"


# ---------------------------------------------------------------- checks before anything is written

@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns="churn"), "lacks the columns the spec names: target 'churn'"),
    (lambda df: df.assign(churn=None), "target 'churn' is missing in every row"),
    (lambda df: df.assign(churn="No"), "target 'churn' has one class only"),
])
def test_acquire_rejects_bad_data_before_writing(tmp_path, change, message):
    change(make_churn(300, seed=1)).to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises((KeyError, ValueError), match=message):
        acquire(str(tmp_path / "data.csv"), SPEC, tmp_path / "run" / "raw.parquet")
    assert not (tmp_path / "run").exists()


def test_acquire_writes_the_snapshot_and_its_provenance(tmp_path):
    data = make_churn(400, seed=2)
    data.to_csv(tmp_path / "data.csv", index=False)
    df, prov = acquire(str(tmp_path / "data.csv"), SPEC, tmp_path / "raw.parquet", **{k: None for k in OPTIONS})
    assert prov["rows"] == len(df) == len(data) and prov["format"] == "csv" and "options" not in prov
    assert prov["content_sha256"] == sha256_frame(pd.read_parquet(tmp_path / "raw.parquet"))
    assert prov["snapshot_sha256"] == sha256_file(tmp_path / "raw.parquet")
    check_acquired(df, SPEC)  # what was written passes the check


# ---------------------------------------------------------------- the snapshot is immutable

@pytest.fixture
def first(tmp_path):
    raw = tmp_path / "raw.parquet"
    prov = snapshot(make_churn(500, seed=3), raw, "synthetic://churn?rows=500&seed=3")
    return raw, prov, (sha256_file(raw), raw.stat().st_mtime_ns)


def test_snapshot_is_read_only(first):
    raw, _, _ = first
    assert mode(raw) == 0o444
    assert not list(raw.parent.glob(".raw.parquet.*"))  # no temporary file left behind


def test_snapshot_refuses_different_data_and_keeps_the_original(first):
    raw, prov, before = first
    with pytest.raises(FileExistsError, match=r"raw\.parquet: this run already holds a raw snapshot with different "
                                              r"content.*start a new run"):
        snapshot(make_churn(500, seed=4), raw, "synthetic://churn?rows=500&seed=4")
    assert (sha256_file(raw), raw.stat().st_mtime_ns) == before
    assert sha256_frame(pd.read_parquet(raw)) == prov["content_sha256"]


def test_snapshot_of_the_same_data_keeps_the_file_as_it_is(first):
    raw, prov, before = first
    again = snapshot(make_churn(500, seed=3), raw, "synthetic://churn?rows=500&seed=3")
    assert (sha256_file(raw), raw.stat().st_mtime_ns) == before and mode(raw) == 0o444
    assert (again["content_sha256"], again["snapshot_sha256"]) == (prov["content_sha256"], prov["snapshot_sha256"])


def test_same_data_that_parquet_stores_as_another_type_is_still_the_same(tmp_path):
    df = pd.DataFrame({"n": pd.Series([1, None, 3], dtype=object), "churn": ["Yes", "No", "No"]})  # read back as floats
    first = snapshot(df, tmp_path / "raw.parquet", "x.csv")
    assert snapshot(df.copy(), tmp_path / "raw.parquet", "x.csv")["snapshot_sha256"] == first["snapshot_sha256"]


def test_an_unreadable_file_in_the_way_is_not_replaced(tmp_path):
    (tmp_path / "raw.parquet").write_bytes(b"not parquet")
    with pytest.raises(FileExistsError, match="raw.parquet"):
        snapshot(make_churn(100, seed=1), tmp_path / "raw.parquet", "synthetic://churn?rows=100")
    assert (tmp_path / "raw.parquet").read_bytes() == b"not parquet"


def test_a_read_only_snapshot_is_read_copied_and_removed_like_any_file(first, tmp_path):
    raw, prov, _ = first
    assert sha256_frame(RunFolder(raw.parent).read_parquet("raw.parquet")) == prov["content_sha256"]
    copy = tmp_path / "copy"
    shutil.copytree(raw.parent, copy, ignore=shutil.ignore_patterns("copy"))
    assert mode(copy / "raw.parquet") == 0o444
    snapshot(make_churn(500, seed=3), copy / "raw.parquet", "synthetic://churn?rows=500&seed=3")  # a rerun there: kept
    shutil.rmtree(copy)
    assert not copy.exists()


# ---------------------------------------------------------------- through the real runner

@pytest.mark.slow
def test_rerun_into_the_same_run_with_other_data_fails_and_keeps_the_snapshot(tmp_path):
    project = copy_project(tmp_path)
    write_json(project / "reports" / "r" / "spec.json", SPEC.to_dict())  # what the scope stage would have written

    def run(*args):
        return subprocess.run([str(BIN / "mlflow-template"), "run", "--stages", "acquire", "--run-dir", "reports/r", *args],
                              cwd=project, capture_output=True, text=True, timeout=600)

    r = run("--set", "acquire.source=synthetic://churn?rows=400&seed=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    raw = project / "reports" / "r" / "raw.parquet"
    before = (sha256_file(raw), raw.stat().st_mtime_ns)
    assert mode(raw) == 0o444

    r = run("--set", "acquire.source=synthetic://churn?rows=400&seed=1")  # the same data again: kept, run ok
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert (sha256_file(raw), raw.stat().st_mtime_ns) == before

    r = run("--set", "acquire.source=synthetic://churn?rows=400&seed=2")
    assert r.returncode == 1, r.stdout + r.stderr
    stage = json.loads((project / "reports" / "r" / "run.json").read_text())["stages"][0]
    assert stage["stage"] == "acquire" and stage["status"] == "failed"
    assert "raw.parquet" in stage["error"] and "start a new run" in stage["error"]
    assert (sha256_file(raw), raw.stat().st_mtime_ns) == before

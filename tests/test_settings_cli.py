"""Settings as a user meets them through the real `mlflow-template` command, and `make lab` starting as root."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

import httpx
import pytest

from conftest import BIN, ROOT, copy_project, free_port, stop_group


def cli(path, *args, timeout=300):
    return subprocess.run([str(BIN / "mlflow-template"), *args], cwd=path, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "BENTOML_HOME": str(path / "bentoml_home")})


def run_folders(path) -> set:
    return {p.name for p in (path / "reports").iterdir() if p.is_dir()}


def test_empty_number_setting_is_named_and_nothing_runs(tmp_path):
    project = copy_project(tmp_path)
    # --stages train: had the empty value got through, the run would start (and fail later, in the train runbook)
    r = cli(project, "run", "--set", "train.n_iter=", "--stages", "train")
    assert r.returncode == 2, r.stdout + r.stderr
    assert re.search(r"train\.n_iter: empty, but the train runbook needs an int \(its default is \d+\)", r.stderr), r.stderr
    assert run_folders(project) == set()


def test_empty_text_setting_means_none(tmp_path):
    project = copy_project(tmp_path)
    (project / "mine.ini").write_text("[DEFAULT]\nid_column =\n")  # every other value: the runbooks' own defaults
    r = cli(project, "run", "--settings", "mine.ini", "--stages", "scope")
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = project / r.stdout.strip().splitlines()[-1]
    assert json.loads((run_dir / "spec.json").read_text())["id_column"] == ""
    assert json.loads((run_dir / "run.json").read_text())["parameters"]["scope"] == {"id_column": ""}


@pytest.mark.slow
def test_make_lab_starts_as_root_on_port(tmp_path):
    port, log = free_port(), tmp_path / "lab.log"
    env = {**os.environ, "PORT": str(port), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    # -o: take the virtual environment as set up (this checks the lab recipe, not a reinstall)
    with open(log, "wb") as out:
        proc = subprocess.Popen(["make", "-o", ".venv/.installed", "lab"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 60, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).status_code
                break
            except httpx.TransportError: time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert answer in (200, 403), f"make lab did not answer on port {port} (exit code {proc.poll()}):\n{text[-3000:]}"
    finally:
        stop_group(proc)

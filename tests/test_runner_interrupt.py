"""Stopping a run: SIGTERM or Ctrl-C (SIGINT) to `mlflow-template run` ends the stage's kernel and the joblib workers it
started, records the run as interrupted and exits with 143 or 130; a runner killed outright (SIGKILL) leaves no
process behind either, and its run then reads as interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import psutil
import pytest

from mlflow_template.runner import run_status

from conftest import BIN, copy_project

pytestmark = pytest.mark.slow

# a train stage that runs long enough (a randomized search on two joblib workers) to be stopped while it runs
SLOW_TRAIN = ["--stages", "scope,acquire,prepare,train", "--set", "train.n_iter=20", "--set", "train.n_jobs=2",
              "--set", "acquire.source=synthetic://churn?rows=20000&seed=1"]
STARTUP = 180  # seconds allowed until the train stage's workers run (a loaded machine is slow to get there)
GONE = 20      # seconds allowed for every process of the run to end once the runner is stopped


def _default_signals():
    "In the child: SIGINT and SIGTERM as a terminal gives them (a background test run inherits SIGINT ignored)"
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cli(project, *args, **kw):
    return subprocess.Popen([str(BIN / "mlflow-template"), *args], cwd=project, preexec_fn=_default_signals, **kw)


def cmdline(p: psutil.Process) -> list:
    try: return p.cmdline()
    except psutil.Error: return []  # gone, or a zombie


def alive(p: psutil.Process) -> bool:
    "Whether `p` still runs (a zombie has ended: only its exit status is left for a parent to collect)"
    try: return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess: return False


def in_group(pgid: int) -> list:
    "The live processes of process group `pgid`"
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and alive(p): out.append(p)
        except (ProcessLookupError, psutil.Error): pass
    return out


def mentioning(paths: list) -> list:
    "The live processes whose command line names one of `paths`"
    out = []
    for p in psutil.process_iter():
        if alive(p) and any(path in cmdline(p) for path in paths): out.append(p)
    return out


def describe(procs) -> list:
    out = []
    for p in procs:
        try: out.append((p.pid, p.status(), " ".join(cmdline(p))[:160]))
        except psutil.Error: out.append((p.pid, "gone", ""))
    return out


@pytest.fixture
def training(tmp_path):
    "A run of the pipeline up to train, caught while train's joblib workers run: the runner, its run folder, its process tree"
    project = copy_project(tmp_path)
    run_dir, log = project / "reports" / "stopme", open(tmp_path / "runner.log", "w")
    runner = cli(project, "run", "--run-dir", "reports/stopme", *SLOW_TRAIN, stdout=log, stderr=subprocess.STDOUT,
                 start_new_session=True)
    try:
        deadline, tree = time.monotonic() + STARTUP, []
        while time.monotonic() < deadline and runner.poll() is None:
            stages = {}
            if (run_dir / "run.json").is_file():
                stages = {s["stage"]: s["status"] for s in json.loads((run_dir / "run.json").read_text())["stages"]}
            tree = psutil.Process(runner.pid).children(recursive=True)
            workers = [p for p in tree if "loky" in " ".join(cmdline(p))]
            if stages.get("train") == "running" and len(workers) >= 2: break
            time.sleep(0.3)
        else:
            pytest.fail(f"train's workers did not start within {STARTUP}s (runner exit code {runner.poll()}):\n"
                        f"{(tmp_path / 'runner.log').read_text()[-3000:]}")
        kernels = [p for p in tree if "ipykernel_launcher" in cmdline(p)]
        assert len(kernels) == 1, describe(tree)
        cmd = cmdline(kernels[0])
        yield type("Training", (), dict(project=project, run_dir=run_dir, runner=runner, tree=tree, kernel=kernels[0],
                                        connection_file=cmd[cmd.index("-f") + 1], log=tmp_path / "runner.log"))
    finally:  # nothing of a failed test may outlive it
        if runner.poll() is None: runner.kill()
        runner.wait()
        log.close()
        for p in tree:
            try: p.kill()
            except psutil.Error: pass


def assert_nothing_left(t, why: str):
    "Within GONE seconds, no process of the runner's tree, of the kernel's group or naming its connection file runs"
    deadline, left = time.monotonic() + GONE, None
    while time.monotonic() < deadline:
        left = [p for p in t.tree if alive(p)] + in_group(t.kernel.pid) + mentioning([t.connection_file])
        if not left:
            print(f"{why}: every process gone {time.monotonic() - deadline + GONE:.2f}s later")
            return
        time.sleep(0.1)
    pytest.fail(f"{why}: still running after {GONE}s: {describe(set(left))}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_ends_its_kernel_and_workers_and_says_interrupted(training, sig, code):
    t = training
    if sig == signal.SIGTERM:  # while it runs, nobody else may run into its folder
        second = subprocess.run([str(BIN / "mlflow-template"), "run", "--run-dir", "reports/stopme", "--stages", "scope"],
                                cwd=t.project, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"in progress (pid {t.runner.pid})" in second.stderr, second.stderr
    t.runner.send_signal(sig)
    start = time.monotonic()
    assert t.runner.wait(60) == code, t.log.read_text()[-3000:]
    print(f"the runner exited {time.monotonic() - start:.2f}s after {sig.name}")
    assert_nothing_left(t, f"after {sig.name} to the runner")
    assert not os.path.exists(t.connection_file)
    record = json.loads((t.run_dir / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert {s["stage"]: s["status"] for s in record["stages"]} == {"scope": "ok", "acquire": "ok", "prepare": "ok",
                                                                  "train": "interrupted"}
    assert record["stages"][-1]["error"] == f"stopped by {sig.name}"
    index = (t.run_dir / "index.html").read_text()
    assert 'Run stopme: <span class="interrupted">interrupted</span>' in index and f"stopped by {sig.name}" in index
    assert f"run interrupted by {sig.name}" in t.log.read_text()


def test_a_killed_runner_leaves_no_process_and_reads_as_interrupted(training):
    t = training
    t.runner.kill()
    t.runner.wait()
    print(f"kernel group {t.kernel.pid} before SIGKILL: {len(t.tree)} descendants of the runner")
    assert_nothing_left(t, "after SIGKILL to the runner")
    assert not os.path.exists(t.connection_file)  # its watchdog removed it
    assert json.loads((t.run_dir / "run.json").read_text())["status"] == "running"  # nobody has looked yet
    record = run_status(t.run_dir)
    assert record["status"] == "interrupted"
    train = record["stages"][-1]
    assert train["status"] == "interrupted" and f"the runner (pid {t.runner.pid}) died" in train["error"]
    assert json.loads((t.run_dir / "run.json").read_text())["status"] == "interrupted"  # rewritten for every reader
    assert 'class="interrupted">interrupted' in (t.run_dir / "index.html").read_text()

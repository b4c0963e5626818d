"Shared test helpers: free ports, process groups, and a real `bentoml serve` of a promoted model."
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_TIMEOUT = 90  # seconds
# Pipeline runs in tests are not logged to MLflow (about 2 s each): the shared run is (`good_run`), and
# tests/test_tracking.py runs one against a real server; every other run proves what it tests without it.
os.environ["MLFLOW_TEMPLATE_TRACKING"] = "0"
TRACKED = {"MLFLOW_TEMPLATE_TRACKING": "1"}


def copy_project(dest: Path) -> Path:
    "The project's settings and runbooks copied into `dest` (with an empty reports/), where the CLI can run them"
    for f in ("pyproject.toml", "settings.ini"): shutil.copy(ROOT / f, dest / f)
    shutil.copytree(ROOT / "nbs" / "pipeline", dest / "nbs" / "pipeline", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (dest / "reports").mkdir(exist_ok=True)
    return dest


def default_prepared(rows: int = 20_000, seed: int = 42) -> tuple:
    "(spec, Prepared): the default settings' problem and `make_churn` data as `synthetic://churn` gives it, prepared as the prepare stage does"
    from mlflow_template.prepare import prepare_data
    from mlflow_template.scope import ProblemSpec
    from mlflow_template.settings import load_parameters
    from mlflow_template.synthetic import make_churn
    params = load_parameters()
    sc = params["scope"]
    spec = ProblemSpec(target=sc["target"], task=sc["task"], positive_class=sc["positive_class"], id_column=sc["id_column"],
                       seed=sc["seed"], primary_metric=sc["primary_metric"])
    return spec, prepare_data(make_churn(rows, seed=seed), spec, **{k: v for k, v in params["prepare"].items() if k not in ("run_dir", "cluster", "sample_rows")})


def free_port() -> int:
    "A TCP port the OS says is free right now"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 10) -> None:
    "Stop `proc`'s process group (SIGTERM, then SIGKILL), and any descendant that left the group"
    try: kids = psutil.Process(proc.pid).children(recursive=True)  # BentoML's workers run in their own sessions
    except psutil.NoSuchProcess: kids = []
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
        if proc.poll() is not None: break
        try: os.killpg(proc.pid, sig)
        except ProcessLookupError: break
        try: proc.wait(wait)
        except subprocess.TimeoutExpired: pass
    _, alive = psutil.wait_procs(kids, timeout=grace)
    for k in alive:
        try: k.kill()
        except psutil.NoSuchProcess: pass
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def serving(command, ready: str, env: dict, cwd: Path, workdir: Path, what: str):
    "Run `command(port)` on a free loopback port until the block ends; yield its URL once `ready` answers 200"
    for attempt in range(3):  # a port taken between free_port() and bind is retried, not a flaky failure
        port, out = free_port(), workdir / f"{what.split()[0]}-{attempt}.log"
        with open(out, "wb") as f:
            proc = subprocess.Popen(command(port), cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"{url}{ready}", timeout=2).status_code == 200: break
                except httpx.TransportError: pass
                time.sleep(0.2)
            else:
                text = out.read_text(errors="replace")
                if proc.poll() is not None and "address already in use" in text.lower() and attempt < 2: continue
                pytest.fail(f"{what} was not ready within {READY_TIMEOUT}s (exit code {proc.poll()}):\n{text[-3000:]}")
            yield url
            return
        finally:
            stop_group(proc)


def bentoml_serve(home: Path, name: str, log: Path, workdir: Path, cwd: Path = ROOT):
    "Run `bentoml serve mlflow_template.service:ModelService` on a free port until the block ends; yield its URL"
    env = {**os.environ, "BENTOML_HOME": str(home), "MLFLOW_TEMPLATE_MODEL_NAME": name,
           "MLFLOW_TEMPLATE_PREDICTION_LOG": str(log), "BENTOML_DO_NOT_TRACK": "True"}
    return serving(lambda port: [str(BIN / "bentoml"), "serve", "mlflow_template.service:ModelService", "--host", "127.0.0.1",
                                 "--port", str(port)], "/readyz", env, cwd, workdir, "bentoml serve")


# ---- one small real pipeline run, shared by every test module that only reads it (test_pipeline, test_package) ----
SMALL = ["--set", "acquire.source=synthetic://churn?rows=3000&seed=42", "--set", "explore.profile_rows=1000",
         "--set", "train.n_iter=2", "--set", "evaluate.cv_folds=2", "--set", "evaluate.importance_repeats=1",
         "--set", "monitor.current_source=synthetic://churn?rows=1500&seed=7&shift_monthly_charges=25&concept=0.8",
         "--set", "deploy.max_records=3"]  # a request limit set in settings travels with the model to the service


def _shared_run(root: Path) -> tuple[Path, dict]:
    "The project with the shared run in `root`, made by the first test process that needs it; the others wait, then reuse it"
    path, result = root / "shared-project", root / "shared-run.json"
    with open(root / "shared-run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if not result.exists():
            path.mkdir()
            copy_project(path)
            env = {**os.environ, "BENTOML_HOME": str(path / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True", **TRACKED}
            r = subprocess.run([str(BIN / "mlflow-template"), "run", *SMALL], cwd=path, env=env, capture_output=True, text=True,
                               timeout=900)
            result.write_text(json.dumps({"returncode": r.returncode, "stdout": r.stdout, "stderr": r.stderr}))
    return path, json.loads(result.read_text())


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    "(the shared project, its run's result): one run for the whole session, also when pytest-xdist runs tests in two processes"
    base = tmp_path_factory.getbasetemp()  # under xdist, each process's own folder in the session's
    return _shared_run(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@pytest.fixture(scope="session")
def project(tmp_path_factory, shared):
    "This test process's own copy of the project (settings, runbooks, its own BentoML store) holding the shared run"
    path = tmp_path_factory.mktemp("project")
    shutil.copytree(shared[0], path, symlinks=True, dirs_exist_ok=True)
    env = {**os.environ, "BENTOML_HOME": str(path / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "True"}
    return SimpleNamespace(path=path, env=env, store=path / "bentoml_home")


def cli(project, *args, timeout=900):
    return subprocess.run([str(BIN / "mlflow-template"), *args], cwd=project.path, env=project.env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def good_run(project, shared):
    "The shared run of the small settings (SMALL), tracked in the project's embedded MLflow store, in this process's copy"
    r = SimpleNamespace(**shared[1])
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    run_dir = project.path / r.stdout.strip().splitlines()[-1]
    return SimpleNamespace(result=r, dir=run_dir, record=json.loads((run_dir / "run.json").read_text()))


class RunsTogether:
    "Commands started at once on first use, each waited for when asked (a pipeline run is mostly kernels starting, which two cores overlap)"
    def __init__(self, commands: dict, cwd: Path, env: dict):
        self.commands, self.cwd, self.env, self.done, self.procs = commands, Path(cwd), env, {}, {}

    def __getitem__(self, key) -> SimpleNamespace:
        "The finished run of `key`: returncode, stdout, stderr"
        if not self.procs:
            for i, (k, cmd) in enumerate(self.commands.items()):  # output to files: a full pipe would stall a run
                out, err = (open(self.cwd / f"together-{i}.{x}", "w+") for x in ("out", "err"))
                self.procs[k] = (subprocess.Popen(cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=err, text=True), out, err)
        if key not in self.done:
            proc, out, err = self.procs[key]
            proc.wait(timeout=900)
            out.seek(0); err.seek(0)
            self.done[key] = SimpleNamespace(returncode=proc.returncode, stdout=out.read(), stderr=err.read())
            out.close(); err.close()
        return self.done[key]


class _Hook(BaseHTTPRequestHandler):
    "A local webhook: answers 500 to the first post, 200 to the others, and keeps what it received"
    received: list = []

    def do_POST(self):
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(500 if len(_Hook.received) == 1 else 200)
        self.end_headers()

    def log_message(self, *args): pass


@pytest.fixture
def hook():
    "A local webhook server: (its URL, with a secret-looking query; the list of JSON bodies it received)"
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    yield f"http://127.0.0.1:{server.server_port}/alerts?token=not-in-any-report", _Hook.received
    server.shutdown()
    server.server_close()


# The longest test files first, so that with two test processes neither ends long after the other (pytest-xdist hands
# out whole files in collection order); the rest keep their order.
LONGEST_FIRST = ("test_datasets.py", "test_retrain.py", "test_reuse.py", "test_pipeline.py", "test_monitor_rates.py",
                 "test_stage_acquire.py", "test_monitor_cli.py", "test_model_security.py", "test_runner_interrupt.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))

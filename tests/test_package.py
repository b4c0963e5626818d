"""Shipping the model: Kubernetes manifests validated against the Kubernetes schemas (offline, kubernetes-validate), and a
bento built from a real pipeline run's promoted model, its generated Dockerfile checked, served by `bentoml serve <tag>`
from an empty folder with a fresh BentoML home that holds only what the bento carries."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import kubernetes_validate
import pandas as pd
import pytest
import yaml

from mlflow_template import deploy, package
from mlflow_template.service import predict_records

from conftest import BIN, READY_TIMEOUT, ROOT, free_port, stop_group


K8S_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
TAG, IMAGE = "churn_model:twbjv7xmhgpwsax4", "registry.example.com/churn_model_service:ouyd4zhmhs73wax4"


def _validate(docs: list, version: str) -> None:
    for d in docs: kubernetes_validate.validate(d, version, strict=True)  # strict: unknown fields are errors too


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("params", [{}, {"replicas": 4, "max_replicas": 12, "target_cpu": 55, "cpu": "2", "memory": "3Gi",
                                         "cpu_limit": "4", "memory_limit": "6Gi", "port": 8080}], ids=["defaults", "custom"])
def test_manifests_validate_against_the_kubernetes_schemas(params, version):
    docs = package.render_manifests(TAG, IMAGE, **params)
    _validate(docs, version)
    deployment, service, hpa = docs
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    (c,) = pod["spec"]["containers"]
    port = params.get("port", 3000)
    assert c["image"] == IMAGE and c["ports"] == [{"name": "http", "containerPort": port}]
    assert (c["livenessProbe"]["httpGet"]["path"], c["readinessProbe"]["httpGet"]["path"]) == ("/livez", "/readyz")
    assert c["resources"] == {"requests": {"cpu": params.get("cpu", "500m"), "memory": params.get("memory", "1Gi")},
                              "limits": {"cpu": params.get("cpu_limit", "1"), "memory": params.get("memory_limit", "2Gi")}}
    assert deployment["spec"]["replicas"] == hpa["spec"]["minReplicas"] == params.get("replicas", 2)
    assert hpa["spec"]["maxReplicas"] == params.get("max_replicas", 5)
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"] == "churn-model"
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()  # the Service reaches the pods
    for meta in (deployment["metadata"], pod["metadata"], service["metadata"], hpa["metadata"]):
        assert meta["annotations"]["mlflow-template/model-tag"] == TAG
        assert meta["labels"]["app.kubernetes.io/version"] == TAG.split(":")[1]


BREAKS = {  # a change that makes the manifests invalid, and what the validator says
    "replicas as text": (lambda d: d[0]["spec"].__setitem__("replicas", "two"), "is not of type 'integer'"),
    "probe without a port": (lambda d: d[0]["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].pop("port"),
                             "'port' is a required property"),
    "unknown Service field": (lambda d: d[1]["spec"].__setitem__("replica", 2), "Additional properties are not allowed"),
    "autoscaler without a ceiling": (lambda d: d[2]["spec"].pop("maxReplicas"), "'maxReplicas' is a required property"),
}


@pytest.mark.parametrize("name", BREAKS)
def test_broken_manifests_fail_validation(name):
    docs = package.render_manifests(TAG, IMAGE)
    _validate(docs, K8S_VERSIONS[0])  # valid before the change
    breaker, message = BREAKS[name]
    breaker(docs)
    with pytest.raises(kubernetes_validate.ValidationError, match=re.escape(message)):
        _validate(docs, K8S_VERSIONS[0])


def _run(args, env, cwd, timeout=300):
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: exit code {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


def _serve_bento(bento: str, env: dict, cwd, log):
    "Start `bentoml serve <bento>` on a free port; return (process, url) once /readyz answers 200"
    port = free_port()
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(BIN / "bentoml"), "serve", bento, "--host", "127.0.0.1", "--port", str(port)],
                                cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200: return proc, url
        except httpx.TransportError: pass
        time.sleep(0.25)
    stop_group(proc)
    pytest.fail(f"`bentoml serve {bento}` was not ready within {READY_TIMEOUT}s (exit code {proc.poll()}):\n"
                f"{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def built(project, good_run, tmp_path_factory):
    "The bento of the run's promoted model, built by `python -m mlflow_template.package bento`, and exported with its model"
    t0, tmp = time.monotonic(), tmp_path_factory.mktemp("bento")
    env = {k: v for k, v in project.env.items() if k not in ("MLFLOW_TEMPLATE_MODEL_NAME", "PYTHONPATH")}
    bento = _run([sys.executable, "-m", "mlflow_template.package", "bento"], env, ROOT).strip().splitlines()[-1]
    archive = tmp / "service.bento"
    _run([str(BIN / "bentoml"), "export", bento, str(archive)], env, tmp)
    with deploy.use_store(project.store):
        model, contract, info = deploy.load_model(json.loads((good_run.dir / "deploy.json").read_text())["tag"])
    records = json.loads(pd.read_parquet(good_run.dir / "test.parquet").head(12)[contract["features"]]
                         .to_json(orient="records", date_format="iso"))
    expected = predict_records(model, contract, records, info["tag"], threshold=deploy.served_threshold(info))["predictions"]
    return SimpleNamespace(tag=bento, dir=project.store / "bentos" / bento.replace(":", "/"), archive=archive, env=env,
                           promoted=info["tag"], records=records, expected=expected, seconds=time.monotonic() - t0)


def _predict_all(url: str, built) -> list:
    "The bento's answers to the records, 3 per request (this run's model refuses more: deploy.max_records=3)"
    answers = []
    for i in range(0, len(built.records), 3):
        r = httpx.post(f"{url}/predict", json={"records": built.records[i:i + 3]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == built.promoted
        answers += r.json()["predictions"]
    return answers


def _same_predictions(answers: list, expected: list) -> None:
    "The same labels and probabilities (within 1e-9) as the model itself, the way the project's service computes them"
    assert [a["label"] for a in answers] == [e["label"] for e in expected]
    assert max(abs(a["probability"] - e["probability"]) for a, e in zip(answers, expected)) <= 1e-9


@pytest.mark.slow
def test_bento_of_a_real_run_serves_from_an_empty_folder_with_its_own_code(built, tmp_path):
    t0, bdir, promoted = time.monotonic(), built.dir, built.promoted
    assert built.tag.startswith("churn_model_service:"), built.tag
    info = yaml.safe_load((bdir / "bento.yaml").read_text())
    assert [m["tag"] for m in info["models"]] == [promoted]  # the promoted model, chosen at build time
    assert {"name": "MLFLOW_TEMPLATE_MODEL_NAME", "value": promoted, "stage": "all"} in info["envs"]

    # the generated Dockerfile: Python 3.11 base image, the runtime pins from requirements.lock, the entry point
    pins = package.runtime_requirements((ROOT / "requirements.lock").read_text())
    assert package.check_dockerfile(bdir, pins) == []
    dockerfile = (bdir / "env/docker/Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert f"ARG MLFLOW_TEMPLATE_MODEL_NAME={promoted}\nENV MLFLOW_TEMPLATE_MODEL_NAME=$MLFLOW_TEMPLATE_MODEL_NAME" in dockerfile
    assert re.search(r'^ENTRYPOINT \[ "/home/bentoml/bento/env/docker/entrypoint.sh" \]', dockerfile, re.M)
    installed = (bdir / "env/python/requirements.txt").read_text().splitlines()
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    for dist in ("bentoml", "scikit-learn", "skops", "pandas", "numpy", "pydantic"):
        (pin,) = [l for l in lock if l.lower().startswith(dist + "==")]
        assert pin in installed, f"{pin} is not in the bento's requirements"
    assert not [l for l in installed if l.lower().startswith(("jupyterlab==", "nbdev==", "papermill==", "pytest=="))]

    # the exported bento alone (model included) in a fresh BentoML home: nothing of the project's store comes along
    fresh, empty = tmp_path / "fresh_home", tmp_path / "empty"
    empty.mkdir()
    _run([str(BIN / "bentoml"), "import", str(built.archive)], {**built.env, "BENTOML_HOME": str(fresh)}, tmp_path)
    assert sorted(p.name for p in (fresh / "models").iterdir()) == ["churn_model"]
    src = fresh / "bentos" / built.tag.replace(":", "/") / "src"
    assert (src / "mlflow_template" / "service.py").is_file()

    # served from an empty folder; PYTHONVERBOSE makes every process log the file each module is loaded from
    serve_env = {**built.env, "BENTOML_HOME": str(fresh), "PYTHONVERBOSE": "1",
                 "MLFLOW_TEMPLATE_PREDICTION_LOG": str(tmp_path / "predictions.jsonl")}
    log = tmp_path / "serve.log"
    proc, url = _serve_bento(built.tag, serve_env, empty, log)
    try: answers = _predict_all(url, built)
    finally: stop_group(proc)
    assert sorted(p.name for p in empty.iterdir()) == []  # served without any project file, and wrote none here
    _same_predictions(answers, built.expected)

    # the code that answered is the bento's copy of mlflow_template, never the project's editable install
    text = log.read_text(errors="replace")
    loaded = set(re.findall(r"^# (?:code object from|\S+ matches) (\S+/mlflow_template)/\w+\.py$", text, re.M))
    assert loaded == {str(src / "mlflow_template")}, loaded
    assert re.search(rf"^# (?:code object from|\S+ matches) {re.escape(str(src))}/mlflow_template/service\.py$", text, re.M)
    assert str(ROOT / "mlflow_template") not in text

    # Kubernetes manifests for this model, naming the bento's image (`bentoml containerize` names it after the bento)
    out = tmp_path / "k8s.yaml"
    _run([sys.executable, "-m", "mlflow_template.package", "manifests", "--replicas", "3", "--out", str(out)], built.env, ROOT)
    docs = list(yaml.safe_load_all(out.read_text()))
    _validate(docs, K8S_VERSIONS[0])
    assert docs[0]["spec"]["template"]["spec"]["containers"][0]["image"] == built.tag and docs[0]["spec"]["replicas"] == 3
    assert docs[0]["metadata"]["annotations"]["mlflow-template/model-tag"] == promoted
    took = built.seconds + time.monotonic() - t0
    assert took < 180, f"build, export, serve and checks took {took:.0f}s"


@pytest.mark.slow
def test_bento_serves_as_its_container_does(built, tmp_path):
    "The generated image runs `bentoml serve $BENTO_PATH`: the bento folder with its models inside, an empty BENTOML_HOME"
    import tarfile
    folder, home, empty = tmp_path / "bento", tmp_path / "home", tmp_path / "empty"
    for d in (folder, home, empty): d.mkdir()
    with tarfile.open(built.archive) as t: t.extractall(folder, filter="data")
    assert (folder / "models" / built.promoted.replace(":", "/")).is_dir()  # the model travels inside the bento
    env = {**built.env, "BENTOML_HOME": str(home), "MLFLOW_TEMPLATE_MODEL_NAME": built.promoted,  # as the Dockerfile sets it
           "MLFLOW_TEMPLATE_PREDICTION_LOG": str(tmp_path / "predictions.jsonl")}
    proc, url = _serve_bento(str(folder), env, empty, tmp_path / "serve.log")
    try: answers = _predict_all(url, built)
    finally: stop_group(proc)
    _same_predictions(answers, built.expected)

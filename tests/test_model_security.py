"""Model files cannot run code, and half-written promotions are never served.

A crafted `model.skops` naming a function (`numpy.testing`'s `runstring`, `mlflow_template.core.write_json`) is
refused by name before any of it runs, both as a file and as a store version; the reviewed type list is exactly
what the pipeline's models need; a promotion killed at any point leaves the previous model served, and
`mlflow-template store check --fix` removes what it left behind."""
from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.compose import make_column_transformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from mlflow_template import deploy
from mlflow_template.core import sha256_file
from mlflow_template.modelfile import TRUSTED_TYPES, dump_model, load_model_file, pipeline_types

BIN = Path(sys.executable).parent
NAME = "secure_model"
_ids = itertools.count(10**12)


# crafting hostile model files: a harmless pipeline whose StandardScaler node is replaced by a call

def _renumber(node):
    "Fresh `__id__`s, so nodes taken from another file do not collide with the host file's memo"
    if isinstance(node, dict):
        if "__id__" in node: node["__id__"] = next(_ids)
        for v in node.values(): _renumber(v)
    elif isinstance(node, list):
        for v in node: _renumber(v)
    return node


def _replace(node, cls: str, new: dict) -> bool:
    "Replace the first node of class `cls` under `node` by `new`"
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in list(items):
        if isinstance(v, dict) and v.get("__class__") == cls:
            node[k] = new
            return True
        if _replace(v, cls, new): return True
    return False


def craft(path: Path, module: str, name: str, args: tuple) -> Path:
    "A model.skops in which skops would call `module.name(*args)` while loading (a ConstructorFromReduceNode)"
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(np.arange(8.0).reshape(-1, 1), [0] * 4 + [1] * 4)
    host = zipfile.ZipFile(io.BytesIO(sio.dumps(model)))
    schema = json.loads(host.read("schema.json"))
    arg_schema = json.loads(zipfile.ZipFile(io.BytesIO(sio.dumps(tuple(args)))).read("schema.json"))
    for k in ("protocol", "_skops_version"): arg_schema.pop(k)
    call = {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode",
            "content": _renumber(arg_schema), "__id__": next(_ids)}
    assert _replace(schema, "StandardScaler", call)
    with zipfile.ZipFile(path, "w") as z:
        for member in host.namelist():
            z.writestr(member, json.dumps(schema) if member == "schema.json" else host.read(member))
    return path


def _runstring(marker: Path) -> tuple:
    return "numpy.testing._private.utils", "runstring", (f"open({str(marker)!r}, 'w').write('ran')", {})


def _write_json(marker: Path) -> tuple:
    return "mlflow_template.core", "write_json", (str(marker), {"ran": True})


HOSTILE = {"runstring": _runstring, "write_json": _write_json}


@pytest.fixture
def store(tmp_path):
    "A throwaway BentoML model store for the test"
    with deploy.use_store(tmp_path / "bentoml") as path: yield path


@pytest.fixture(scope="module")
def small():
    "A small fitted pipeline and its data contract"
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"tenure": rng.integers(0, 72, 80).astype(float), "plan": rng.choice(["a", "b"], 80)})
    y = np.where(X.tenure < 20, "Yes", "No")
    model = make_pipeline(make_column_transformer((StandardScaler(), ["tenure"]), (OneHotEncoder(), ["plan"])),
                          LogisticRegression()).fit(X, y)
    contract = {"version": 1, "target": "churn", "task": "binary", "positive_class": "Yes", "classes": ["No", "Yes"],
                "features": ["tenure", "plan"],
                "columns": {"tenure": {"kind": "numeric", "dtype": "float64", "nullable": False},
                            "plan": {"kind": "categorical", "dtype": "object", "nullable": False, "categories": ["a", "b"]}}}
    return model, contract, X


# 1. nothing in a model file runs code

def test_reviewed_types_are_exactly_what_the_pipeline_models_need():
    "Every task x family x clipping method inside the real preprocessing: a new type fails here until it is reviewed"
    assert pipeline_types() == sorted(TRUSTED_TYPES)
    assert not any(t.endswith(".") for t in TRUSTED_TYPES)  # exact names, no prefixes


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_the_crafted_file_really_runs_its_payload_when_trusted(tmp_path, kind):
    "The check below is meaningful: trusting the name (as a prefix rule did) runs the payload"
    module, name, args = HOSTILE[kind](tmp_path / "proof")
    sio.load(craft(tmp_path / "m.skops", module, name, args), trusted=[f"{module}.{name}"])
    assert (tmp_path / "proof").exists()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_model_file_naming_a_function_is_refused_before_it_runs(tmp_path, kind):
    marker = tmp_path / "marker"
    module, name, args = HOSTILE[kind](marker)
    f = craft(tmp_path / "model.skops", module, name, args)
    with pytest.raises(ValueError, match=rf"untrusted type\(s\) \['{module}\.{name}'\]"): load_model_file(f)
    assert not marker.exists()
    with pytest.raises(ValueError, match="untrusted type"): load_model_file(f, sha256=sha256_file(f))  # right hash or not
    assert not marker.exists()


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_store_model_naming_a_function_is_refused_and_never_served(tmp_path, store, small, kind):
    "Even with hashes that match (whoever wrote the store wrote them), the service refuses to start on it"
    from mlflow_template.service import make_service
    marker = tmp_path / "marker"
    module, name, args = HOSTILE[kind](marker)
    with bentoml.models.create(NAME, labels={"stage": "promoted"}) as ref:
        path = Path(ref.path)
        craft(path / deploy.MODEL_FILE, module, name, args)
        (path / deploy.CONTRACT_FILE).write_text(json.dumps(small[1]))
        ref.info.metadata[deploy.FILES_KEY] = {f: sha256_file(path / f) for f in (deploy.MODEL_FILE, deploy.CONTRACT_FILE)}
    with pytest.raises(ValueError, match=f"{module}.{name}"): deploy.load_model(NAME)
    with pytest.raises(ValueError, match=f"{module}.{name}"): make_service(NAME)
    assert not marker.exists()


def test_a_model_file_changed_after_promotion_is_refused_naming_both_hashes(store, small):
    model, contract, X = small
    tag = deploy.save_model(model, name=NAME, contract=contract, metrics={})
    f = store / NAME / tag.split(":")[1] / deploy.MODEL_FILE
    recorded = bentoml.models.get(tag).info.metadata["files"][deploy.MODEL_FILE]
    assert recorded == sha256_file(f)
    dump_model(make_pipeline(StandardScaler(), LogisticRegression(C=1e-3)).fit(np.c_[X.tenure], X.tenure < 20), f)
    with pytest.raises(ValueError, match=f"{sha256_file(f)}, expected {recorded}"): load_model_file(f, sha256=recorded)
    with pytest.raises(ValueError, match="model.skops does not match its hash"): deploy.load_model(tag)
    with pytest.raises(LookupError, match="1 incomplete or changed version"): deploy.load_model(NAME)


# 2. half-saved models

def _dir(tag: str) -> Path:
    return deploy.store_path() / tag.replace(":", "/")


def _truncate(tag):
    with open(_dir(tag) / deploy.MODEL_FILE, "r+b") as fh: fh.truncate(fh.seek(0, 2) // 2)


def _empty_contract(tag): (_dir(tag) / deploy.CONTRACT_FILE).write_text("")


def _no_hashes(tag):
    y = _dir(tag) / "model.yaml"
    y.write_text("\n".join(l for l in y.read_text().splitlines() if "model.skops:" not in l and "contract.json:" not in l))


def _no_yaml(tag): (_dir(tag) / "model.yaml").unlink()


def _truncated_yaml(tag):
    y = _dir(tag) / "model.yaml"
    y.write_text(y.read_text()[:40])


PARTIAL = {"truncated model.skops": _truncate, "empty contract.json": _empty_contract,
           "metadata without file hashes": _no_hashes, "no model.yaml": _no_yaml, "truncated model.yaml": _truncated_yaml}


def _store_check(store: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "BENTOML_HOME": str(store.parent)}
    return subprocess.run([str(BIN / "mlflow-template"), "store", "check", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_each_partial_state_falls_back_to_the_previous_good_version(store, small):
    model, contract, X = small
    good = deploy.save_model(model, name=NAME, contract=contract, metrics={"roc_auc": 0.9})
    broken = {}
    for what, damage in PARTIAL.items():
        tag = deploy.save_model(model, name=NAME, contract=contract, metrics={})
        damage(tag)
        broken[tag] = what
        loaded = deploy.load_model(NAME)
        assert loaded[2]["tag"] == good, what
        assert loaded[0].predict_proba(X).shape == (len(X), 2)
        assert deploy.promoted_models(NAME).tag.tolist() == [good], what
        assert deploy.promoted_names() == [NAME]
    from mlflow_template.scope import ProblemSpec
    versus = deploy.compare_with_champion(NAME, ProblemSpec(target="churn", positive_class="Yes"), {"roc_auc": 0.5},
                                          X.assign(churn=np.where(X.tenure < 20, "Yes", "No")))
    assert versus["champion_tag"] == good
    listed = _store_check(store)
    assert listed.returncode == 1 and all(f"unverified: {t}:" in listed.stdout for t in broken), listed
    later = deploy.save_model(model, name=NAME, contract=contract, metrics={})  # a later promotion works
    assert deploy.load_model(NAME)[2]["tag"] == later
    fixed = _store_check(store, "--fix")
    assert fixed.returncode == 0 and all(f"removed: {t}:" in fixed.stdout for t in broken), fixed
    assert sorted(p.name for p in (store / NAME).iterdir() if p.is_dir()) == sorted(t.split(":")[1] for t in (good, later))
    assert sorted(str(m.tag) for m in bentoml.models.list(NAME)) == sorted([good, later])  # BentoML reads it again
    assert str(bentoml.models.get(f"{NAME}:latest").tag) == later
    assert _store_check(store).returncode == 0


_SAVE = """
import os, shutil, signal, sys
from mlflow_template import deploy
from mlflow_template.core import read_json
from mlflow_template.modelfile import load_model_file
model_file, contract_file, name, point = sys.argv[1:5]
if point != "none":  # die while BentoML copies the version into the store: before file n, or half-way through it
    how, n = point.split(":")
    store, copied, copy2, copytree = str(deploy.store_path()), [], shutil.copy2, shutil.copytree
    def dying_copy(src, dst, **kw):
        if str(dst).startswith(store):
            copied.append(dst)
            if len(copied) == int(n):
                if how == "half":
                    with open(src, "rb") as i, open(dst, "wb") as o: o.write(i.read()[: os.path.getsize(src) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        return copy2(src, dst, **kw)
    shutil.copytree = lambda src, dst, **kw: copytree(src, dst, **{**kw, "copy_function": dying_copy})
model, contract = load_model_file(model_file), read_json(contract_file)
print("ready", flush=True)
print(deploy.save_model(model, name=name, contract=contract, metrics={}), flush=True)
"""

# the version folder holds three files (model.skops, contract.json, model.yaml): die before or inside each
KILL_POINTS = [f"{how}:{n}" for n in (1, 2, 3) for how in ("before", "half")]


def _promote_in_subprocess(folder: Path, store: Path, point: str = "none", kill_after: float | None = None) -> str:
    "Run save_model in a child process that dies at `point` (or is SIGKILLed `kill_after` seconds in); its tag or ''"
    proc = subprocess.Popen([sys.executable, "-c", _SAVE, str(folder / "model.skops"), str(folder / "contract.json"),
                             NAME, point], stdout=subprocess.PIPE, text=True, env={**os.environ, "BENTOML_HOME": str(store.parent)})
    assert proc.stdout.readline().strip() == "ready"
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    return out.strip()


def test_a_promotion_killed_at_any_point_never_replaces_the_served_model(tmp_path, store, small):
    "SIGKILL `save_model` in a subprocess while it copies each file, and at several delays: the good version stays served"
    model, contract, X = small
    dump_model(model, tmp_path / "model.skops")
    (tmp_path / "contract.json").write_text(json.dumps(contract))
    good = deploy.save_model(model, name=NAME, contract=contract, metrics={})
    for point in KILL_POINTS:
        assert _promote_in_subprocess(tmp_path, store, point) == "", point  # died before it could finish
        assert deploy.load_model(NAME)[2]["tag"] == good, point
        assert deploy.promoted_models(NAME).tag.tolist() == [good], point
    assert len(deploy.check_store()) == len(KILL_POINTS)  # each kill left a half-written version behind
    finished = [t for delay in (0.0, 0.1, 0.3, 0.5, 0.7) if (t := _promote_in_subprocess(tmp_path, store, kill_after=delay))]
    # a kill can land after a promotion committed but before the child printed its tag: that version is whole and
    # served, so the rule is "the newest promoted version is served and verifies", and every reported one is promoted
    served, promoted = deploy.load_model(NAME)[2]["tag"], deploy.promoted_models(NAME).tag.tolist()
    assert set(finished) <= set(promoted) and promoted[-1] == good and served == promoted[0], (finished, promoted)
    assert deploy.verify_version(bentoml.models.get(served)) is None
    later = _promote_in_subprocess(tmp_path, store)  # a later promotion works, and is served
    assert later and deploy.load_model(NAME)[2]["tag"] == later
    fixed = _store_check(store, "--fix")
    assert fixed.returncode == 0 and fixed.stdout.count("removed: ") >= len(KILL_POINTS), fixed
    assert deploy.check_store().empty and deploy.load_model(NAME)[2]["tag"] == later

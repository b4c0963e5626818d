"""Incremental runs through the real command: a stage runs again exactly when something it depends on changed.

On a copy of the shared small run's project (its reports and its store), a first run reuses what it can of the
shared run (other tests may have rerun its monitor on another batch) and runs the rest; the same command again then
reuses every stage and leaves the same artifacts; then one input changes at a time, and exactly the stages that read it (or read what
those wrote) run: an explore setting (explore only), the monitor runbook (monitor only), and `train.n_iter` (train
and the stages after it; monitor only if deploy promoted, since it watches the served model). `--force` runs a
stage anyway. A CSV source is read again when one of its values changes, not when it is rewritten with the same
bytes. The unit checks (keys, reads, the store's and the source's state) are in nbs/09_reuse.ipynb."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import SMALL, cli

pytestmark = pytest.mark.slow
STAGES = ["scope", "acquire", "prepare", "explore", "train", "evaluate", "deploy", "monitor"]


def _run(here, *args) -> SimpleNamespace:
    r = cli(here, "run", *SMALL, *args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    run_dir = here.path / r.stdout.strip().splitlines()[-1]
    record = json.loads((run_dir / "run.json").read_text())
    ran = [s["stage"] for s in record["stages"] if not s.get("reused_from")]
    return SimpleNamespace(dir=run_dir, record=record, ran=ran, out=r.stdout)


def test_each_kind_of_change_reruns_exactly_the_stages_that_depend_on_it(project, good_run, tmp_path):
    proj = tmp_path / "project"
    shutil.copytree(project.path, proj, symlinks=True)  # settings, runbooks, the shared run and the store
    here = SimpleNamespace(path=proj, env={**project.env, "BENTOML_HOME": str(proj / "bentoml_home")})

    first = _run(here)
    assert "train" not in first.ran, first.out  # the shared run's model, as nothing that decides it changed
    same = _run(here)  # nothing changed: every stage reused from the run before, the same artifacts
    assert same.ran == [] and same.out.count(f"reused from run {first.dir.name}") == 8, same.out
    assert same.record["artifacts"] == first.record["artifacts"]
    assert all((same.dir / s["html"].split("/")[-1]).is_file() for s in same.record["stages"])
    assert f'reused from run <a href="../{first.dir.name}/index.html">' in (same.dir / "index.html").read_text()
    assert not any(p.name.startswith(".") for p in same.dir.iterdir())  # no bookkeeping files in the run folder

    assert _run(here, "--set", "explore.profile_rows=900").ran == ["explore"]  # a parameter that only explore reads

    book = proj / "nbs" / "pipeline" / "08_monitor.ipynb"  # a runbook edited
    nb = json.loads(book.read_text())
    nb["cells"].append({"cell_type": "markdown", "metadata": {}, "source": ["A note added by the user."]})
    book.write_text(json.dumps(nb, indent=1))
    assert _run(here).ran == ["monitor"]

    trained = _run(here, "--set", "train.n_iter=3")  # a new model: what reads it runs again, what does not is reused
    promoted = json.loads((trained.dir / "deploy.json").read_text())["promoted"]
    assert trained.ran == ["train", "evaluate", "deploy"] + (["monitor"] if promoted else []), (trained.ran, promoted)

    assert _run(here, "--force", "scope").ran == ["scope"]  # scope wrote the same spec: nothing after it runs again

    # a file source: read again when its bytes change, not when it is only written anew with the same bytes
    csv, upto = proj / "data" / "raw" / "customers.csv", ["--stages", "scope,acquire", "--set"]
    csv.parent.mkdir(parents=True, exist_ok=True)
    pd.read_parquet(good_run.dir / "raw.parquet").to_csv(csv, index=False)
    source = f"acquire.source={csv}"
    assert _run(here, *upto, source).ran == ["acquire"]
    text = csv.read_text()
    csv.write_text(text)  # the same bytes, a new modification time
    assert _run(here, *upto, source).ran == []
    csv.write_text(text.replace(",Yes\n", ",No\n", 1))  # one label changed
    changed = _run(here, *upto, source)
    assert changed.ran == ["acquire"], changed.out
    assert pd.read_parquet(changed.dir / "raw.parquet").churn.eq("No").sum() == pd.read_csv(csv).churn.eq("No").sum()

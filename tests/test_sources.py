"""Every acquire source against a real peer: files over http:// (a local HTTP server) and s3:// (moto's S3 server),
SQLite and DuckDB database files, a paged JSON API that fails transiently, JSON-lines logs by glob. Bad input gets an
error naming the file and line, the table or the variable, and secrets never reach an error or a provenance record."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import sqlite3
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import pytest

import mlflow_template.acquire_files as acquire_files
from mlflow_template.acquire import load_source, snapshot
from mlflow_template.core import sha256_frame, write_json
from mlflow_template.scope import ProblemSpec

from conftest import ROOT
from servers import http_server, s3_server

FRAME = pd.DataFrame({"id": [1, 2, 3, 4], "plan": ["basic", "pro", None, "basic"], "spend": [9.5, None, 3.25, 7.0],
                      "churn": ["No", "Yes", "No", "Yes"]})


def same(a: pd.DataFrame, b: pd.DataFrame):
    "Equal frames, counting None and NaN as the same missing value (Parquet gives None where CSV gives NaN)"
    pd.testing.assert_frame_equal(a.where(a.notna(), np.nan), b.where(b.notna(), np.nan))


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- files over http://

class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("files")
    FRAME.to_csv(d / "x.csv", index=False)
    with gzip.open(d / "x.csv.gz", "wt") as f: FRAME.to_csv(f, index=False)
    FRAME.to_parquet(d / "x.parquet", index=False)
    return d


@pytest.fixture(scope="module")
def file_server(files):
    with http_server(partial(QuietFiles, directory=str(files))) as url: yield url


@pytest.mark.parametrize("name", ["x.csv", "x.csv.gz", "x.parquet"])
def test_http_file_is_the_same_frame_as_the_file_read_directly(file_server, files, name):
    got = load_source(f"{file_server}/{name}", progress=False)
    direct = pd.read_parquet(files / name) if name.endswith(".parquet") else pd.read_csv(files / name)
    pd.testing.assert_frame_equal(got, direct)
    same(got, FRAME)


def test_http_download_shows_progress(file_server, capsys):
    load_source(f"{file_server}/x.parquet", progress=True)
    err = capsys.readouterr().err
    assert "x.parquet" in err and "100%" in err


def test_large_local_file_shows_progress(files, monkeypatch, capsys):
    monkeypatch.setattr(acquire_files, "PROGRESS_BYTES", 1)  # every file counts as large
    pd.testing.assert_frame_equal(load_source(str(files / "x.csv.gz")), pd.read_csv(files / "x.csv.gz"))
    assert "100%" in capsys.readouterr().err
    load_source(str(files / "x.csv.gz"), progress=False)
    assert capsys.readouterr().err == ""


def test_http_404_is_a_clear_error_with_the_token_redacted(file_server):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv\?token=\*\*\*: no such file") as e:
        load_source(f"{file_server}/missing.csv?token=hush-hush", progress=False)
    assert "hush-hush" not in str(e.value)


def test_file_url_takes_credentials_from_the_environment(file_server, monkeypatch):
    monkeypatch.setenv("FILE_TOKEN", "s3cr3t-value")
    same(load_source(f"{file_server}/x.csv?sig=${{FILE_TOKEN}}", progress=False), FRAME)  # expanded when reading
    with pytest.raises(FileNotFoundError) as e:
        load_source(f"{file_server}/missing.csv?dl=${{FILE_TOKEN}}", progress=False)
    assert "s3cr3t-value" not in str(e.value) and "${FILE_TOKEN}" in str(e.value)
    monkeypatch.delenv("FILE_TOKEN")
    with pytest.raises(KeyError, match="FILE_TOKEN"):
        load_source(f"{file_server}/x.csv?sig=${{FILE_TOKEN}}", progress=False)


# ---------------------------------------------------------------- files over s3://

BUCKET = "acquire-test"


@pytest.fixture(scope="module")
def s3():
    "A bucket on moto's S3 server; s3fs finds it through the standard AWS_ENDPOINT_URL variable"
    import boto3
    import s3fs
    with s3_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            mp.delenv(k, raising=False)
        for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key="data/part-1.csv", Body=FRAME.iloc[:2].to_csv(index=False).encode())
        client.put_object(Bucket=BUCKET, Key="data/part-2.csv", Body=FRAME.iloc[2:].to_csv(index=False).encode())
        buf = io.BytesIO()
        FRAME.to_parquet(buf, index=False)
        client.put_object(Bucket=BUCKET, Key="data/x.parquet", Body=buf.getvalue())
        try: yield BUCKET
        finally: s3fs.S3FileSystem.clear_instance_cache()


def test_s3_parquet(s3):
    pd.testing.assert_frame_equal(load_source(f"s3://{s3}/data/x.parquet", progress=False), pd.read_parquet(io.BytesIO(
        FRAME.to_parquet(index=False))))


def test_s3_glob_reads_every_match_in_order(s3):
    same(load_source(f"s3://{s3}/data/part-*.csv", progress=False), FRAME)


def test_s3_missing_key_is_a_clear_error(s3):
    with pytest.raises(FileNotFoundError, match=f"s3://{s3}/data/nope.parquet: no such file"):
        load_source(f"s3://{s3}/data/nope.parquet", progress=False)
    with pytest.raises(FileNotFoundError, match="no file matches"):
        load_source(f"s3://{s3}/data/none-*.csv", progress=False)


# ---------------------------------------------------------------- SQL: SQLite and DuckDB files

@pytest.fixture(scope="module")
def dbs(tmp_path_factory):
    import duckdb
    d = tmp_path_factory.mktemp("db")
    with sqlite3.connect(d / "shop.db") as con:
        FRAME.to_sql("customers", con, index=False)
        con.execute("create table orders (order_id integer)")
    con.close()
    con = duckdb.connect(str(d / "shop.duckdb"))
    con.register("frame", FRAME)
    con.execute("create table customers as select * from frame")
    con.execute("create table orders (order_id integer)")
    con.close()
    return d


@pytest.fixture(params=["sqlite:///{d}/shop.db", "duckdb:///{d}/shop.duckdb"], ids=["sqlite", "duckdb"])
def db(request, dbs):
    return request.param.format(d=dbs)


def test_sql_table_and_query(db, dbs):
    before = {p.name: digest(p) for p in dbs.iterdir()}
    same(load_source(db, table="customers", progress=False), FRAME)
    got = load_source(db, query="SELECT id, spend FROM customers WHERE churn = 'Yes' ORDER BY id", progress=False)
    assert list(got.columns) == ["id", "spend"] and got.id.tolist() == [2, 4]
    assert pd.isna(got.spend.iloc[0]) and got.spend.iloc[1] == 7.0
    assert {p.name: digest(p) for p in dbs.iterdir()} == before  # read-only: the database files are untouched


def test_sql_missing_table_lists_the_tables(db):
    with pytest.raises(KeyError, match=r"table 'customer' is not in .*its tables: customers, orders"):
        load_source(db, table="customer", progress=False)


def test_sql_needs_exactly_one_of_table_and_query(db):
    with pytest.raises(ValueError, match="exactly one of table and query .got both"):
        load_source(db, table="customers", query="select 1", progress=False)
    with pytest.raises(ValueError, match="got neither"):
        load_source(db, progress=False)


def test_sql_missing_database_file_is_an_error_and_not_created(tmp_path):
    for url in (f"sqlite:///{tmp_path}/nope.db", f"duckdb:///{tmp_path}/nope.duckdb"):
        with pytest.raises(FileNotFoundError, match="no such database file"):
            load_source(url, table="t", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sql_unset_credential_variable_is_named(monkeypatch):
    monkeypatch.delenv("ACQ_DB_USER", raising=False)
    monkeypatch.delenv("ACQ_DB_PASSWORD", raising=False)
    with pytest.raises(KeyError, match="variables ACQ_DB_USER, ACQ_DB_PASSWORD are not set"):
        load_source("postgresql://${ACQ_DB_USER}:${ACQ_DB_PASSWORD}@127.0.0.1:1/db", table="t", progress=False)


def test_sql_expanded_secret_never_reaches_an_error(monkeypatch):
    monkeypatch.setenv("ACQ_DB_USER", "ann")
    monkeypatch.setenv("ACQ_DB_PASSWORD", "pw-Zq81-secret")
    with pytest.raises(Exception) as e:  # no server (and perhaps no driver) there: any error, but never the secret
        load_source("postgresql://${ACQ_DB_USER}:${ACQ_DB_PASSWORD}@127.0.0.1:1/db", table="t", progress=False)
    assert "pw-Zq81-secret" not in str(e.value) and "127.0.0.1" in str(e.value)


def test_sql_secret_in_the_url_never_reaches_provenance(dbs, tmp_path, monkeypatch):
    monkeypatch.setenv("ACQ_DB_DIR", str(dbs))  # stands in for a credential: the expanded URL must never show
    source = "sqlite:///${ACQ_DB_DIR}/shop.db"
    df = load_source(source, table="customers", progress=False)
    record = snapshot(df, tmp_path / "raw.parquet", source, options={"table": "customers", "query": None})
    assert record["source"] == source and record["format"] == "sql" and record["options"] == {"table": "customers"}
    assert str(dbs) not in json.dumps(record)
    with pytest.raises(KeyError) as e:
        load_source(source, table="nope", progress=False)
    assert str(dbs) not in str(e.value) and "${ACQ_DB_DIR}" in str(e.value)


# ---------------------------------------------------------------- HTTP JSON API

RECORDS = [{"id": i, "user": {"age": 20 + i, "plan": "pro" if i % 2 else "basic"}} for i in range(1, 8)]
EXPECTED = pd.json_normalize(RECORDS)
TOKEN = "tok-Hx92-secret"


def api_handler(state: dict):
    "Pages in four styles; each page fails once with 503, page 2 of /next is throttled once with 429"
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args): pass

        def reply(self, code, body=None, headers=()):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            for k, v in headers: self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            u, q = urlsplit(self.path), dict(parse_qsl(urlsplit(self.path).query))
            with state["lock"]:
                state["hits"].append(self.path)
                first = self.path not in state["seen"]
                state["seen"].add(self.path)
            if u.path == "/always-503": return self.reply(503)
            if u.path == "/slow":
                time.sleep(1.5)
                return self.reply(200, [{"a": 1}])
            if u.path == "/secure":
                if self.headers.get("Authorization") != f"Bearer {TOKEN}": return self.reply(401, {"error": "who?"})
                return self.reply(200, RECORDS)
            if u.path == "/wait":
                if first: return self.reply(429, headers=[("Retry-After", "1")])
                return self.reply(200, RECORDS)
            if first: return self.reply(503)  # a transient failure on the first request of every page
            if u.path == "/next":
                page = int(q.get("page", 1))
                if page == 2 and not state["throttled"]:
                    state["throttled"] = True
                    return self.reply(429, headers=[("Retry-After", "0")])
                more = page * 3 < len(RECORDS)
                return self.reply(200, {"data": RECORDS[(page - 1) * 3: page * 3], "next": f"/next?page={page + 1}" if more else None})
            if u.path == "/link":
                page = int(q.get("page", 1))
                links = [("Link", f'</link?page={page + 1}>; rel="next"')] if page * 3 < len(RECORDS) else []
                return self.reply(200, RECORDS[(page - 1) * 3: page * 3], links)
            if u.path == "/pages":
                page, size = int(q["page"]), int(q["per_page"])
                return self.reply(200, {"results": RECORDS[(page - 1) * size: page * size]})
            if u.path == "/offset":
                off, limit = int(q["offset"]), int(q["limit"])
                return self.reply(200, {"items": RECORDS[off: off + limit], "total": len(RECORDS)})
            self.reply(404, {"error": "no such endpoint"})
    return Handler


@pytest.fixture
def api():
    state = {"lock": threading.Lock(), "hits": [], "seen": set(), "throttled": False}
    with http_server(api_handler(state)) as url:
        yield url, state


def test_api_next_link_in_the_body_with_retries(api):
    url, state = api
    got = load_source(f"{url}/next", "api", backoff=0.01, progress=False)
    pd.testing.assert_frame_equal(got, EXPECTED)
    # 3 pages; each failed once (503), page 2 was throttled once more (429)
    assert state["hits"] == ["/next", "/next", "/next?page=2", "/next?page=2", "/next?page=2", "/next?page=3", "/next?page=3"]


def test_api_next_link_in_a_link_header(api):
    url, _ = api
    pd.testing.assert_frame_equal(load_source(f"{url}/link", "api", backoff=0.01, progress=False), EXPECTED)


def test_api_page_numbers(api):
    url, state = api
    got = load_source(f"{url}/pages", "api", paging="page", size_param="per_page", page_size=3, backoff=0.01, progress=False)
    pd.testing.assert_frame_equal(got, EXPECTED)
    assert [h for h in dict.fromkeys(state["hits"])] == [f"/pages?per_page=3&page={p}" for p in (1, 2, 3)]


def test_api_offsets_and_max_pages(api):
    url, _ = api
    got = load_source(f"{url}/offset", "api", paging="offset", size_param="limit", page_size=3, backoff=0.01, progress=False)
    pd.testing.assert_frame_equal(got, EXPECTED)
    two = load_source(f"{url}/offset", "api", paging="offset", size_param="limit", page_size=3, max_pages=2,
                      backoff=0.01, progress=False)
    assert two.id.tolist() == [1, 2, 3, 4, 5, 6]


def test_api_flatten_names_columns_by_key(api):
    url, _ = api
    got = load_source(f"{url}/next", "api", flatten=True, backoff=0.01, progress=False)
    assert list(got.columns) == ["id", "age", "plan"]


def test_api_honours_retry_after(api):
    url, _ = api
    t0 = time.monotonic()
    pd.testing.assert_frame_equal(load_source(f"{url}/wait", "api", backoff=0.01, progress=False), EXPECTED)
    assert time.monotonic() - t0 >= 0.9  # waited the server's Retry-After: 1, not the 0.01 s backoff


def test_api_that_always_fails_names_url_and_status(api):
    url, state = api
    with pytest.raises(ConnectionError) as e:
        load_source(f"{url}/always-503?api_key=hush-hush", "api", retries=2, backoff=0.01, progress=False)
    msg = str(e.value)
    assert "/always-503?api_key=***" in msg and "HTTP 503" in msg and "3 tries" in msg and "hush-hush" not in msg
    assert len(state["hits"]) == 3  # the first request and two retries


def test_api_timeout(api):
    url, _ = api  # the server answers after 1.5 s: a TimeoutError means the client gave up at 0.5 s
    with pytest.raises(TimeoutError, match=r"/slow: no answer within 0.5 s \(1 try\)"):
        load_source(f"{url}/slow", "api", timeout=0.5, retries=0, progress=False)


def test_api_connection_refused(api):
    with http_server(BaseHTTPRequestHandler) as gone: pass  # a port that was just closed
    with pytest.raises(ConnectionError, match="cannot connect"):
        load_source(f"{gone}/x", "api", retries=1, backoff=0.01, progress=False)


def test_api_auth_header_from_the_environment(api, tmp_path, monkeypatch):
    url, _ = api
    monkeypatch.delenv("ACQ_API_TOKEN", raising=False)
    with pytest.raises(KeyError, match="auth_env: environment variable ACQ_API_TOKEN is not set"):
        load_source(f"{url}/secure", "api", auth_env="ACQ_API_TOKEN", progress=False)
    with pytest.raises(PermissionError, match="HTTP 401"):
        load_source(f"{url}/secure", "api", progress=False)
    monkeypatch.setenv("ACQ_API_TOKEN", TOKEN)
    options = {"auth_env": "ACQ_API_TOKEN", "paging": "next", "table": "", "flatten": False}
    df = load_source(f"{url}/secure", "api", progress=False, **options)
    pd.testing.assert_frame_equal(df, EXPECTED)
    record = snapshot(df, tmp_path / "raw.parquet", f"{url}/secure", "api", options=options)
    assert record["options"] == {"auth_env": "ACQ_API_TOKEN", "paging": "next"}
    assert TOKEN not in json.dumps(record)


# ---------------------------------------------------------------- logs: JSON lines by glob

def test_prediction_logs_by_glob_flattened(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    for part, ids in ((1, ["C1", "C2"]), (2, ["C3"])):
        (logs / f"predictions-{part}.jsonl").write_text("".join(
            json.dumps({"ts": "2026-01-01T00:00:00+00:00", "model": "churn_model:abc", "id": i,
                        "features": {"tenure_months": n, "contract": "monthly"}, "label": "No", "probability": 0.1}) + "\n"
            for n, i in enumerate(ids)))
    got = load_source(f"{logs}/*.jsonl", flatten=True, progress=False)
    assert list(got.columns) == ["ts", "model", "id", "tenure_months", "contract", "label", "probability"]
    assert got.id.tolist() == ["C1", "C2", "C3"] and got.tenure_months.tolist() == [0, 1, 0]
    nested = load_source(f"{logs}/*.jsonl", progress=False)
    assert "features" in nested.columns  # without flatten the nested values stay as read


# ---------------------------------------------------------------- bad files

def test_csv_with_a_broken_line_names_file_and_line(tmp_path):
    (tmp_path / "broken.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")
    with pytest.raises(ValueError, match=r"broken\.csv: cannot be read as csv: .*line 3"):
        load_source(str(tmp_path / "broken.csv"), progress=False)


def test_malformed_json_lines_name_the_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl: cannot be read as jsonl: line 3"):
        load_source(str(tmp_path / "bad.jsonl"), progress=False)
    with gzip.open(tmp_path / "bad2.jsonl.gz", "wt") as f: f.write('{"a": 1}\n{"a": 2}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad2\.jsonl\.gz: cannot be read as jsonl: line 3"):
        load_source(str(tmp_path / "bad2.jsonl.gz"), progress=False)


def test_empty_file_and_empty_result(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: the file is empty"):
        load_source(str(tmp_path / "empty.csv"), progress=False)
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"header\.csv: no rows"):
        load_source(str(tmp_path / "header.csv"), progress=False)


def test_missing_file_and_glob_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such file"):
        load_source(str(tmp_path / "nope.csv"), progress=False)
    with pytest.raises(FileNotFoundError, match=r"none-\*\.parquet: no file matches"):
        load_source(f"{tmp_path}/none-*.parquet", progress=False)


# ---------------------------------------------------------------- provenance

def test_same_input_same_hash_and_the_snapshot_is_what_was_read(files, tmp_path):
    src = str(files / "x.csv")
    df1, df2 = load_source(src, progress=False), load_source(src, progress=False)
    p1 = snapshot(df1, tmp_path / "a" / "raw.parquet", src)
    p2 = snapshot(df2, tmp_path / "b" / "raw.parquet", src)
    assert p1["content_sha256"] == p2["content_sha256"] and p1["rows"] == 4 and p1["columns"] == list(FRAME.columns)
    back = pd.read_parquet(tmp_path / "a" / "raw.parquet")
    same(back, df1)
    assert sha256_frame(back) == p1["content_sha256"]


# ---------------------------------------------------------------- the acquire runbook checks before it writes

@pytest.mark.parametrize("case, frame, message", [
    ("absent", FRAME.drop(columns="churn"), "lacks the columns the spec names: target 'churn'"),
    ("all missing", FRAME.assign(churn=None), "target 'churn' is missing in every row"),
    ("one class", FRAME.assign(churn="No"), "target 'churn' has one class only"),
])
def test_runbook_rejects_a_bad_target_before_writing(tmp_path, case, frame, message):
    import papermill
    run = tmp_path / "run"
    run.mkdir()
    write_json(run / "spec.json", ProblemSpec(target="churn", task="binary", positive_class="Yes").to_dict())
    (run / "raw.parquet").write_bytes(b"an earlier snapshot")
    before = {p.name: digest(p) for p in run.iterdir()}
    frame.to_csv(tmp_path / "data.csv", index=False)
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(ROOT / "nbs" / "pipeline" / "02_acquire.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"run_dir": str(run), "source": str(tmp_path / "data.csv")},
                                   kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    assert message in e.value.evalue
    assert {p.name: digest(p) for p in run.iterdir()} == before  # nothing in the run folder changed

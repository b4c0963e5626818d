"""A PostgreSQL source against a real server: the test installs the Debian server package when it is missing, runs
its own cluster in a temporary folder on a free loopback port with password (SCRAM) authentication, and stops it
when the module ends, also when a test fails. The URL is the one the README shows, credentials from the environment."""
from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlflow_template.acquire import load_source

from conftest import free_port, stop_group

pytestmark = pytest.mark.slow

APT_TIMEOUT = 600   # seconds for each of apt-get update and apt-get install
READY_TIMEOUT = 60  # seconds for the server to accept connections
ADMIN, ADMIN_PASSWORD = "pgadmin", "adm-Vt3e-secret"
READER, PASSWORD = "crm_reader", "pw@Kx7:q/9%-secret"  # URL-special characters: expanded after the URL is parsed
SOURCE = "postgresql://${DB_USER}:${DB_PASSWORD}@127.0.0.1:{port}/crm"  # the README's URL, on the test's server

N = 50
_i = np.arange(N)
CUSTOMERS = pd.DataFrame({
    "customer_id": (1000 + _i).astype("int64"),
    "plan": [None if i in (7, 23) else ("basic", "pro", "family")[i % 3] for i in _i],
    "tenure_months": (_i * 7 % 61).astype("int64"),
    "monthly_charges": [np.nan if i == 11 else round(20 + (i * 37 % 80) + 0.25 * (i % 4), 2) for i in _i],
    "signup_date": [dt.date(2023, 1, 1) + dt.timedelta(days=int(i) * 9) for i in _i],
    "churn": [bool(i % 3 == 1 or i % 7 == 0) for i in _i],
})
DDL = """create table customers (customer_id integer primary key, plan text, tenure_months integer,
                                 monthly_charges double precision, signup_date date, churn boolean not null);
         create table orders (order_id integer primary key, customer_id integer references customers)"""


def server_bin() -> Path | None:
    "The bin folder of the newest installed PostgreSQL server (Debian layout), or None"
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: [int(x) for x in p.parents[1].name.split(".") if x.isdigit()])
    return found[-1].parent if found else None


def install_server() -> Path:
    "Install the Debian PostgreSQL server with apt-get; a failure fails the test with apt's output"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]):
        try: r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e: pytest.fail(f"{' '.join(cmd)}: {e}")
        if r.returncode:
            pytest.fail(f"{' '.join(cmd)} failed (exit code {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return server_bin() or pytest.fail("apt-get installed postgresql, yet no /usr/lib/postgresql/*/bin/initdb")


def as_owner(folder: Path) -> dict:
    "subprocess arguments that run a command as the `postgres` user when we are root (PostgreSQL refuses root)"
    if os.geteuid() != 0: return {}
    shutil.chown(folder, "postgres", "postgres")
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def run(cmd: list, who: dict, timeout: float = 120) -> None:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **who)
    if r.returncode: pytest.fail(f"{cmd[0]} failed (exit code {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")


def connect(port: int, dbname: str = "postgres"):
    import psycopg
    return psycopg.connect(host="127.0.0.1", port=port, dbname=dbname, user=ADMIN, password=ADMIN_PASSWORD,
                           connect_timeout=3, autocommit=True)


def start(bindir: Path, data: Path, sockets: Path, log: Path, who: dict):
    "Start `postgres` on 127.0.0.1 and a free port (retried when the port is taken meanwhile); return (process, port)"
    import psycopg
    for attempt in range(3):
        port = free_port()
        with open(log, "ab") as f:
            proc = subprocess.Popen([str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={sockets}",
                                     "-c", "fsync=off"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True, **who)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    connect(port).close()
                    return proc, port
                except psycopg.OperationalError: time.sleep(0.2)
        except BaseException:  # interrupted while waiting: leave no server behind
            stop_group(proc)
            raise
        stop_group(proc)
        text = log.read_text(errors="replace")
        if "could not bind" in text and attempt < 2: continue
        pytest.fail(f"postgres was not ready within {READY_TIMEOUT}s (exit code {proc.poll()}):\n{text[-3000:]}")


@pytest.fixture(scope="module")
def pg_port():
    "A fresh PostgreSQL cluster holding database crm (customers, orders) and a read-only login; yield its port"
    from psycopg import sql
    bindir = server_bin() or install_server()
    folder = Path(tempfile.mkdtemp(prefix="mlflow_template-pg-"))  # not under pytest's tmp: postgres must reach it
    proc = None
    try:
        who = as_owner(folder)
        (folder / "pwfile").write_text(ADMIN_PASSWORD + "\n")
        if who: shutil.chown(folder / "pwfile", "postgres", "postgres")
        run([bindir / "initdb", "-D", folder / "data", "-U", ADMIN, "--auth=scram-sha-256",
             f"--pwfile={folder / 'pwfile'}", "--encoding=UTF8", "--locale=C", "--no-sync"], who)
        proc, port = start(bindir, folder / "data", folder, folder / "server.log", who)
        with connect(port) as con:
            con.execute("create database crm")
            con.execute(sql.SQL("create role {} login password {}").format(sql.Identifier(READER), sql.Literal(PASSWORD)))
        with connect(port, "crm") as con, con.cursor() as cur:
            cur.execute(DDL)
            cur.executemany("insert into customers values (%s, %s, %s, %s, %s, %s)",
                            [tuple(None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in row)
                             for row in CUSTOMERS.itertuples(index=False)])
            cur.execute("insert into orders values (1, 1000), (2, 1003)")
            cur.execute(f"grant select on customers, orders to {READER}")
        yield port
    finally:
        if proc is not None:
            stop = [str(bindir / "pg_ctl"), "stop", "-D", str(folder / "data"), "-m", "fast", "-w", "-t", "30"]
            try: subprocess.run(stop, capture_output=True, timeout=40, **as_owner(folder))
            except (OSError, subprocess.TimeoutExpired): pass
            stop_group(proc)  # a no-op when pg_ctl stopped it
        shutil.rmtree(folder, ignore_errors=True)


def source(port: int) -> str: return SOURCE.replace("{port}", str(port))


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("DB_USER", READER)
    monkeypatch.setenv("DB_PASSWORD", PASSWORD)


def test_table_reads_every_row_with_its_types(pg_port, creds):
    df = load_source(source(pg_port), table="customers", progress=False)
    assert df.dtypes.astype(str).to_dict() == {"customer_id": "int64", "plan": "object", "tenure_months": "int64",
                                               "monthly_charges": "float64", "signup_date": "object", "churn": "bool"}
    assert isinstance(df.signup_date.iloc[0], dt.date)  # a date column arrives as datetime.date objects
    assert df.plan.isna().sum() == 2 and df.monthly_charges.isna().sum() == 1
    pd.testing.assert_frame_equal(df.sort_values("customer_id", ignore_index=True), CUSTOMERS)
    same = load_source(source(pg_port), table="public.customers", progress=False)
    assert len(same) == N  # schema.table


def test_query_reads_the_filtered_rows(pg_port, creds):
    got = load_source(source(pg_port), progress=False,
                      query="select customer_id, monthly_charges, signup_date from customers "
                            "where churn and plan = 'pro' and signup_date >= '2023-03-01' order by customer_id")
    want = CUSTOMERS[CUSTOMERS.churn & (CUSTOMERS.plan == "pro") & (CUSTOMERS.signup_date >= dt.date(2023, 3, 1))]
    assert 0 < len(want) < N
    pd.testing.assert_frame_equal(got, want[["customer_id", "monthly_charges", "signup_date"]].reset_index(drop=True))


def test_wrong_password_is_an_error_without_any_password(pg_port, monkeypatch):
    monkeypatch.setenv("DB_USER", READER)
    monkeypatch.setenv("DB_PASSWORD", "wrong-Qm4z-guess")
    with pytest.raises(ValueError, match="password authentication failed") as e:
        load_source(source(pg_port), table="customers", progress=False)
    msg = str(e.value)
    assert "wrong-Qm4z-guess" not in msg and PASSWORD not in msg
    assert msg.startswith(f"source postgresql://${{DB_USER}}:***@127.0.0.1:{pg_port}/crm: reading table 'customers' failed")
    assert 'for user "***"' in msg  # every value a placeholder expands to is hidden, the user name too
    literal = f"postgresql://{READER}:wrong-Qm4z-guess@127.0.0.1:{pg_port}/crm"  # a password written into the URL
    with pytest.raises(ValueError, match="password authentication failed") as e:
        load_source(literal, table="customers", progress=False)
    assert "wrong-Qm4z-guess" not in str(e.value) and f"{READER}:***@127.0.0.1" in str(e.value)


def test_missing_table_is_named_with_the_tables_there_are(pg_port, creds):
    with pytest.raises(KeyError, match=r"table 'customer' is not in postgresql://\$\{DB_USER\}:\*\*\*@"
                                       r"127\.0\.0\.1:\d+/crm \(its tables: customers, orders\)") as e:
        load_source(source(pg_port), table="customer", progress=False)
    assert PASSWORD not in str(e.value)
    with pytest.raises(KeyError, match="table 'sales.customers' is not in"):
        load_source(source(pg_port), table="sales.customers", progress=False)


def test_failing_query_names_the_error_without_the_password(pg_port, creds):
    with pytest.raises(ValueError, match=r"the query failed: .*column \"nope\" does not exist") as e:
        load_source(source(pg_port), query="select nope from customers", progress=False)
    assert PASSWORD not in str(e.value)


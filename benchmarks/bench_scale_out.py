"""Scale-out benchmark: the PostgreSQL + S3 lake with several API replicas and run workers at once.

    .venv/bin/python benchmarks/bench_scale_out.py                                # full size (~10 min)
    .venv/bin/python benchmarks/bench_scale_out.py --rows 20000 --users 30000     # smoke run (~2.5 min)
    .venv/bin/python benchmarks/bench_scale_out.py --parts 1,3                    # only some parts

Starts a PostgreSQL server (the test suite's temporary cluster, `integration_hub_tests/fakes`)
and a moto S3 server (the test suite's fake, in a process of its own so that it does not share
the load client's interpreter), and writes a catalog whose lake is a PostgreSQL DuckLake catalog
with its data in S3, whose API landing is in S3 (`landing: {connection: lake_bucket, prefix:
api_landing/}`) and whose Dagster instances are on PostgreSQL. Every command runs as a process of
its own, in a working folder of its own (its own $DAGSTER_HOME and $TMPDIR, the same catalog
content): as it would on another machine. Nothing of the lake is on local disk.

Part 1, API throughput with S3 as the durable store: `integration-hub api --rate-limit 0`
replicas; `--connections` concurrent keep-alive client connections (httpx) POST
`--batch-records`-record batches to /v1/end-users for `--seconds`, spread round-robin over
1 replica, then over 2. Records/s for each and the ratio 2/1, request latency p50/p99, and the
CPU each process used meanwhile. Then one run applies everything accepted.

Part 2, ack-to-queryable with two workers applying: two API integrations; two workers, each
looping `integration-hub run <its integration>` (1 s between runs, as a sensor would start
them), while a client POSTs `--ack-records`-record batches at `--ack-rate` batches/s per
integration for `--ack-seconds`. Each acknowledged batch is timed from its 202 until its records
are in its attributes table through a reader in this process (`open_reader`, polled every
0.25 s). p50/p99/max, after the warm-up (until the first batch of each integration is
queryable, which includes the first runs' start-up). Meanwhile pg_locks is sampled every 50 ms:
how often the lake's commit lock (a PostgreSQL advisory lock every write transaction takes) was
held, and how often a writer waited for it.

Part 3, CSV apply throughput: two CSV integrations' files of `--rows` rows each (bench_csv's
generator: 8,000,000 rows = ~1 GB each by default) in the inbound bucket, into empty tables of a
fresh lake: applied one after the other by one worker, then by two workers at the same time
(`integration-hub run A` and `run B` from two folders). Wall times, MiB/s and the ratio, the
CPU used, how long the two applies ran at once, and the commit lock as in part 2.

No speed target: on a 2-core machine the point is correctness and that no writer waits for
another's lock, not a 2x speed-up. Each part checks its results (every acknowledged record
applied, each batch or file recorded in `processed_files` exactly once, the user count) and the
script exits non-zero if any check fails or something failed to run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))  # integration_hub and integration_hub_tests (the fakes) from this checkout

from common import MB, cli_command, cli_env, measure, print_table  # noqa: E402 - after the path tweak

LAKE_BUCKET = "bench-lake"
INBOUND_BUCKET = "bench-inbound"
PASSWORD_VARIABLE = "IHUB_BENCH_PG_PASSWORD"
LOAD_INTEGRATION = "api_load"
ACK_INTEGRATIONS = ("events_a", "events_b")
CSV_INTEGRATIONS = ("crm_a", "crm_b")
CSV_FILE = "users.csv"
PLACEHOLDER = "@@USER@@"
API_PROPERTIES = [
    {"property": "planTier", "name": "plan_tier", "type": "string"},
    {"property": "visits", "name": "visits", "type": "number"},
    {"property": "isActive", "name": "is_active", "type": "boolean"},
    {"property": "signup", "name": "signup_day", "type": "date"},
    {"property": "lastSeen", "name": "last_seen_at", "type": "datetime"},
]
SMOKE_BELOW_ROWS = 1_000_000  # --rows below this: the short durations of a smoke run

FAILURES: list[str] = []  # correctness checks that failed, or things that did not run
PROCESSES: list[subprocess.Popen] = []  # every process started here and maybe still running
PROCESSES_LOCK = threading.Lock()
APPLIED_USERS: dict[str, int] = {}  # API integration -> records acknowledged and applied (one user each)


# ---------------------------------------------------------------------------- servers


def _moto_child(connection: Any) -> None:
    """(A spawned child.) The test suite's moto server until the parent says stop (or goes away)."""
    import logging

    from integration_hub_tests.fakes.moto_server import MotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with MotoServer() as s3:
        connection.send((s3.endpoint_url, os.getpid()))
        with contextlib.suppress(EOFError):
            connection.recv()


@contextlib.contextmanager
def moto_process() -> Iterator[tuple[str, int]]:
    """moto S3 over HTTP in a process of its own: (endpoint URL, pid)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    child = context.Process(target=_moto_child, args=(theirs,), daemon=True)
    child.start()
    theirs.close()
    try:
        if not ours.poll(60):
            raise RuntimeError("the moto server did not start within 60 s")
        yield ours.recv()
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        child.join(60)
        if child.is_alive():
            child.terminate()
            child.join(10)
        ours.close()


def s3_client(endpoint_url: str) -> Any:
    import boto3

    from integration_hub_tests.fakes.moto_server import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY

    return boto3.client(
        "s3", endpoint_url=endpoint_url, region_name="us-east-1",
        aws_access_key_id=FAKE_ACCESS_KEY_ID, aws_secret_access_key=FAKE_SECRET_ACCESS_KEY,
    )  # fmt: skip


def delete_prefix(client: Any, bucket: str, prefix: str) -> None:
    """Free moto's memory: delete every object under `prefix`."""
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (0 once it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        total = 0.0
        for p in [process, *process.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_process(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM to the process group started for it (start_new_session), then SIGKILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def stop_all() -> None:
    with PROCESSES_LOCK:
        running = list(PROCESSES)
    for process in reversed(running):
        stop_process(process)


# ---------------------------------------------------------------------------- the deployment


@dataclass
class Cluster:
    """The shared services: PostgreSQL (`postgres`, the test suite's fake) and moto S3."""

    postgres: Any
    endpoint_url: str
    moto_pid: int
    work: Path
    client: Any = None
    dagster_database: str = ""

    def __post_init__(self) -> None:
        self.client = s3_client(self.endpoint_url)
        for bucket in (LAKE_BUCKET, INBOUND_BUCKET):
            self.client.create_bucket(Bucket=bucket)
        os.environ[PASSWORD_VARIABLE] = self.postgres.password  # for the readers in this process
        self.dagster_database = self.postgres.new_database("dagster")

    def dagster_url(self) -> str:
        pg = self.postgres
        return f"postgresql+psycopg2://hub:{pg.password}@{pg.host}:{pg.port}/{self.dagster_database}"

    def catalog(self, integrations: list[dict[str, Any]], name: str) -> Catalog:
        """A catalog document on a new lake: a new PostgreSQL database and S3 prefix of its own."""
        import yaml

        database = self.postgres.new_database(name)
        prefix = f"{name}-{uuid.uuid4().hex[:6]}"
        connection = {
            "type": "s3", "region": "us-east-1", "endpoint_url": self.endpoint_url,
            "access_key_id": "testing", "secret_access_key": "testing",
        }  # fmt: skip
        document = {
            "warehouse": {
                "catalog": self.postgres.url(database, password="${" + PASSWORD_VARIABLE + "}"),
                "data_path": f"s3://{LAKE_BUCKET}/{prefix}/lake/",
                "data_connection": "lake_bucket",
            },
            "landing": {"connection": "lake_bucket", "prefix": "api_landing/"},
            "connections": [
                {"name": "lake_bucket", "bucket": LAKE_BUCKET, "prefix": prefix, **connection},
                {"name": "inbound", "bucket": INBOUND_BUCKET, "prefix": prefix, **connection},
            ],
            "integrations": integrations,
        }
        return Catalog(self, name, prefix, database, yaml.safe_dump(document, sort_keys=False))

    def node(self, catalog: Catalog, name: str) -> Node:
        """A working folder as on another machine: the catalog, $DAGSTER_HOME on PostgreSQL, $TMPDIR."""
        import yaml

        from integration_hub.core.state import DAGSTER_YAML

        folder = self.work / catalog.name / name
        (folder / "dagster_home").mkdir(parents=True)
        (folder / "tmp").mkdir()
        (folder / "integrations.yaml").write_text(catalog.text)
        config = {
            **yaml.safe_load(DAGSTER_YAML),
            "storage": {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}},
        }
        (folder / "dagster_home" / "dagster.yaml").write_text(yaml.safe_dump(config))
        env = cli_env(
            DAGSTER_HOME=str(folder / "dagster_home"), INTEGRATION_HUB_CATALOG=str(folder / "integrations.yaml"),
            DAGSTER_PG_URL=self.dagster_url(), TMPDIR=str(folder / "tmp"), PYTHONUNBUFFERED="1",
            **{PASSWORD_VARIABLE: self.postgres.password},
        )  # fmt: skip
        return Node(name, folder, env)


@dataclass
class Catalog:
    cluster: Cluster
    name: str
    prefix: str
    database: str  # the lake's PostgreSQL catalog database
    text: str
    _loaded: Any = None

    def loaded(self) -> Any:
        """The catalog as integration_hub reads it (for the readers in this process)."""
        if self._loaded is None:
            from integration_hub.core.catalog import load_catalog

            path = self.cluster.work / self.name / "reader.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.text)
            self._loaded = load_catalog(path)
        return self._loaded


@dataclass
class Node:
    name: str
    folder: Path
    env: dict[str, str]
    logs: int = 0

    def command(self, *args: str, timeout: float = 600) -> str:
        done = subprocess.run(
            cli_command(*args), cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"integration-hub {' '.join(args)} ({self.name}) failed: {done.stderr.strip()[-800:]}"
            )
        return done.stdout

    def start(self, *args: str, log_name: str | None = None) -> subprocess.Popen:
        """`integration-hub ARGS` in the background (its own process group); output to a log file."""
        self.logs += 1
        log = self.folder / (log_name or f"{args[0]}-{self.logs}.log")
        with open(log, "wb") as output:
            process = subprocess.Popen(
                cli_command(*args), cwd=self.folder, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        process.log = log  # type: ignore[attr-defined]
        with PROCESSES_LOCK:
            PROCESSES.append(process)
        return process

    def run(self, integration: str, timeout: float = 3600) -> tuple[float, str]:
        """`integration-hub run NAME` to its end: (seconds, output); a failure is recorded."""
        started = time.perf_counter()
        process = self.start("run", integration, log_name=f"run-{integration}-{self.logs + 1}.log")
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_process(process)
            code = -1
        seconds = time.perf_counter() - started
        output = log_text(process)
        if code != 0:
            FAILURES.append(
                f"`integration-hub run {integration}` on {self.name} exited {code}: {tail(output)}"
            )
        return seconds, output


def log_text(process: subprocess.Popen) -> str:
    """The output of a process started by Node.start."""
    return process.log.read_text(errors="replace")  # type: ignore[attr-defined]


def tail(text: str, lines: int = 3) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


def api_integration(name: str) -> dict[str, Any]:
    return {
        "name": name, "type": "api", "system": "bench_site", "environment": "production",
        "user_id_property": "userId",
        # Attribute names are unique across inbound integrations: each gets its own.
        "properties": [{**p, "name": f"{name}_{p['name']}"} for p in API_PROPERTIES],
    }  # fmt: skip


@dataclass
class Replica:
    node: Node
    process: subprocess.Popen
    url: str


def start_replica(node: Node, timeout: float = 90) -> Replica:
    import httpx

    from integration_hub_tests.api_support import free_port

    port = free_port()
    process = node.start(
        "api", "--port", str(port), "--rate-limit", "0", "--no-access-log", log_name="api.log"
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the API replica {node.name} exited {process.returncode}: {tail(log_text(process))}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return Replica(node, process, url)
        time.sleep(0.2)
    raise RuntimeError(f"the API replica {node.name} did not answer /healthz within {timeout:.0f} s")


def api_record(user_id: str, n: int) -> dict[str, Any]:
    return {
        "userId": user_id,
        "planTier": ("free", "gold", "platinum")[n % 3],
        "visits": n % 1000,
        "isActive": n % 3 != 0,
        "signup": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}",
        "lastSeen": f"2024-05-01T{n % 24:02d}:{n % 60:02d}:00Z",
    }


def body_template(integration_token: str, records: int) -> bytes:
    """A request body whose user ids are PLACEHOLDER-<i>: each request puts its own tag in."""
    data = [api_record(f"{PLACEHOLDER}-{i:03d}", i) for i in range(records)]
    return json.dumps({"integration_token": integration_token, "data": data}).encode()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else float("nan")


# ---------------------------------------------------------------------------- reading the lake


def query(catalog: Catalog, sql: str, params: list[Any] | None = None, attempts: int = 3) -> list[tuple]:
    """One read-only query through open_reader (the lake's last commit); [] before the lake exists."""
    import duckdb

    from integration_hub.core.warehouse import WarehouseError, open_reader

    for attempt in range(attempts):
        try:
            with open_reader(catalog.loaded()) as con:
                return [] if con is None else con.execute(sql, params or []).fetchall()
        except (WarehouseError, duckdb.Error):
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    return []


def check(ok: bool, description: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'}  {description}", flush=True)
    if not ok:
        FAILURES.append(description)
    return ok


def check_api_applied(catalog: Catalog, integration: str, acked: dict[str, int]) -> None:
    """Every acknowledged record applied, each batch once in processed_files, nothing left pending."""
    records = sum(acked.values())
    table = f"attributes_{integration}"
    ((rows, users),) = query(catalog, f"SELECT count(*), count(DISTINCT user_id) FROM {table}")
    check(
        rows == users == records,
        f"{integration}: {records:,} acknowledged records, {users:,} distinct users "
        f"in {table} ({rows:,} rows; every record a user of its own)",
    )
    keys = dict(query(
        catalog, "SELECT key, count(*) FROM processed_files WHERE integration = ? GROUP BY key", [integration]
    ))  # fmt: skip
    twice = sum(1 for n in keys.values() if n > 1)
    check(
        set(keys) == set(acked) and twice == 0,
        f"{integration}: {len(acked):,} acknowledged batches, {len(keys):,} in processed_files, "
        f"{len(set(keys) - set(acked))} not acknowledged, {len(set(acked) - set(keys))} missing, {twice} twice",
    )
    ((failed,),) = query(
        catalog,
        "SELECT count(*) FROM processed_files WHERE integration = ? AND status <> 'success'",
        [integration],
    )
    sources = query(
        catalog, f"SELECT count(*) FROM {table} WHERE _source NOT IN (SELECT key FROM processed_files "
        "WHERE integration = ?)", [integration],
    )[0][0]  # fmt: skip
    check(
        failed == 0 and sources == 0,
        f"{integration}: {failed} batches failed, {sources} rows whose _source is no recorded batch",
    )
    pending = catalog.cluster.client.list_objects_v2(
        Bucket=LAKE_BUCKET, Prefix=f"{catalog.prefix}/api_landing/{integration}/pending/"
    ).get("KeyCount", 0)
    check(pending == 0, f"{integration}: {pending} objects left in pending/")


class LockWatcher(threading.Thread):
    """Samples the lake's advisory locks in its PostgreSQL catalog database (pg_locks) every `interval`.

    Writers take turns to commit through one advisory lock ("commit", held for each write
    transaction); a run holds its integration's lock for its whole length. A sample that shows a
    session waiting (granted = false) for the commit lock is a writer waiting for another one.
    """

    def __init__(self, catalog: Catalog, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.catalog, self.interval = catalog, interval
        self.samples: list[
            tuple[float, int, int, int]
        ] = []  # (time, commit held, commit waited for, other waits)
        self.done = threading.Event()
        self.error = ""

    def run(self) -> None:
        import psycopg2

        try:
            db = psycopg2.connect(self.catalog.cluster.postgres.dsn(self.catalog.database))
            db.autocommit = True
            with db.cursor() as cursor:
                cursor.execute("SELECT hashtext('integration_hub'), hashtext('commit')")
                space, commit = (v & 0xFFFFFFFF for v in cursor.fetchone())  # int4 -> pg_locks' oid
                while not self.done.wait(self.interval):
                    cursor.execute(
                        "SELECT objid::bigint, granted FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 "
                        "AND classid::bigint = %s AND database = (SELECT oid FROM pg_database "
                        "WHERE datname = current_database())", (space,),
                    )  # fmt: skip
                    rows = cursor.fetchall()
                    self.samples.append((
                        time.time(), sum(1 for o, g in rows if o == commit and g),
                        sum(1 for o, g in rows if o == commit and not g), sum(1 for o, g in rows if o != commit and not g),
                    ))  # fmt: skip
            db.close()
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        self.done.set()
        self.join(10)

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, float]:
        samples = [
            s for s in self.samples if (start is None or s[0] >= start) and (end is None or s[0] <= end)
        ]
        n = max(1, len(samples))
        longest = streak = 0
        for _, _, waiting, _ in samples:
            streak = streak + 1 if waiting else 0
            longest = max(longest, streak)
        return {
            "samples": len(samples),
            "held": sum(1 for s in samples if s[1]) / n,  # share of the samples with the commit lock held
            "waited": sum(1 for s in samples if s[2]) / n,  # ... with a writer waiting for it
            "longest_wait": longest * self.interval,  # seconds, about (consecutive samples)
            "other_waits": sum(1 for s in samples if s[3]) / n,  # ... waiting for another advisory lock
        }

    def describe(self, start: float | None = None, end: float | None = None) -> str:
        if self.error:
            return f"the lock sampler failed: {self.error}"
        s = self.summary(start, end)
        return (
            f"the lake's commit lock (a PostgreSQL advisory lock; pg_locks sampled every {self.interval * 1000:.0f} ms, "
            f"{s['samples']} samples) was held in {s['held']:.0%} of the samples and waited for in {s['waited']:.0%} "
            f"(longest wait ~{s['longest_wait']:.2f} s); other advisory locks waited for in {s['other_waits']:.0%}"
        )


# ---------------------------------------------------------------------------- part 1


async def post_batch(
    client: Any,  # an httpx.AsyncClient
    url: str,
    body: bytes,
    headers: dict[str, str],
    statuses: Counter[int],
    errors: list[str],
    latencies: list[float],
) -> dict[str, Any] | None:
    """POST one batch; counts its status (0: no answer) and latency; the 202's body, else None."""
    import httpx

    sent = time.perf_counter()
    try:
        answer = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        statuses[0] += 1
        errors.append(f"{type(exc).__name__}: {exc}")
        return None
    latencies.append(time.perf_counter() - sent)
    statuses[answer.status_code] += 1
    if answer.status_code == 202:
        return answer.json()
    errors.append(f"{answer.status_code}: {answer.text[:200]}")
    return None


async def _closed_loop(
    urls: list[str], headers: dict[str, str], template: bytes, tag: str, seconds: float, connections: int
) -> dict[str, Any]:
    """`connections` clients, each POSTing one batch after another, round-robin over `urls`."""
    import httpx

    counter = itertools.count()
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    acked: dict[str, int] = {}
    errors: list[str] = []
    placeholder = PLACEHOLDER.encode()
    limits = httpx.Limits(
        max_connections=connections * len(urls), max_keepalive_connections=connections * len(urls)
    )
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def one_client() -> None:
            while loop.time() < deadline:
                n = next(counter)
                body = template.replace(placeholder, f"{tag}{n:07d}".encode())
                reply = await post_batch(
                    client, f"{urls[n % len(urls)]}/v1/end-users", body, headers, statuses, errors, latencies
                )
                if reply is not None:
                    acked[reply["batch_id"]] = int(reply["accepted"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return {
        "seconds": elapsed,
        "latencies": latencies,
        "statuses": statuses,
        "acked": acked,
        "errors": errors,
    }


def throughput_round(
    replicas: list[Replica],
    cluster: Cluster,
    headers: dict[str, str],
    template: bytes,
    tag: str,
    seconds: float,
    connections: int,
) -> dict[str, Any]:
    pids = {"replica": [r.process.pid for r in replicas], "moto": [cluster.moto_pid]}
    before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    client_before = own_cpu()
    result = asyncio.run(
        _closed_loop([r.url for r in replicas], headers, template, tag, seconds, connections)
    )
    result["cpu"] = {k: sum(cpu_seconds(p) for p in v) - before[k] for k, v in pids.items()}
    result["cpu"]["client"] = own_cpu() - client_before
    result["records_per_s"] = sum(result["acked"].values()) / result["seconds"]
    result["load"] = os.getloadavg()[0]
    return result


def part1(
    args: argparse.Namespace,
    cluster: Cluster,
    catalog: Catalog,
    replicas: list[Replica],
    bearer: str,
    tokens: dict[str, str],
    worker: Node,
) -> list[list[str]]:
    seconds = args.seconds
    print(
        f"\nPart 1: API throughput, {args.batch_records}-record batches, {args.connections} client connections, "
        f"{seconds:g} s per round, landing in S3 (moto), rate limit off",
        flush=True,
    )
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    template = body_template(tokens[LOAD_INTEGRATION], args.batch_records)
    acked: dict[str, int] = {}
    # Warm-up: each replica's first requests (connections to PostgreSQL and S3, token look-ups).
    warm = throughput_round(replicas, cluster, headers, template, "w", min(2.0, seconds), args.connections)
    acked |= warm["acked"]
    rounds = {}
    for n in (1, 2):
        result = throughput_round(
            replicas[:n], cluster, headers, template, f"r{n}", seconds, args.connections
        )
        acked |= result["acked"]
        rounds[n] = result
        cpu = result["cpu"]
        print(
            f"  {n} replica(s): {result['records_per_s']:,.0f} records/s ({len(result['acked']):,} batches in "
            f"{result['seconds']:.1f} s, statuses {dict(result['statuses'])}); latency p50 "
            f"{percentile(result['latencies'], 0.5) * 1000:.1f} ms, p99 {percentile(result['latencies'], 0.99) * 1000:.1f} ms; "
            f"CPU s: replicas {cpu['replica']:.1f}, moto {cpu['moto']:.1f}, client {cpu['client']:.1f} "
            f"(= {(cpu['replica'] + cpu['moto'] + cpu['client']) / result['seconds']:.2f} cores busy); "
            f"load average {result['load']:.1f}",
            flush=True,
        )
        if result["errors"]:
            print(f"    not 202: {len(result['errors'])}, e.g. {result['errors'][0]}", flush=True)
            FAILURES.append(f"part 1, {n} replica(s): {len(result['errors'])} requests not accepted")

    print(
        f"  applying the {len(acked):,} batches ({sum(acked.values()):,} records) with one run ...",
        flush=True,
    )
    applied, output = worker.run(LOAD_INTEGRATION)
    ((transactions,),) = query(
        catalog, "SELECT count(*) FROM integration_runs WHERE integration = ?", [LOAD_INTEGRATION]
    )
    print(
        f"    `integration-hub run {LOAD_INTEGRATION}`: {applied:.1f} s, {transactions} transaction(s)",
        flush=True,
    )
    check_api_applied(catalog, LOAD_INTEGRATION, acked)
    APPLIED_USERS[LOAD_INTEGRATION] = sum(acked.values())

    one, two = rounds[1], rounds[2]
    ratio = two["records_per_s"] / one["records_per_s"] if one["records_per_s"] else float("nan")
    rows = []
    for n, result in rounds.items():
        cpu = result["cpu"]
        busy = (cpu["replica"] + cpu["moto"] + cpu["client"]) / result["seconds"]
        rows.append([
            f"1. API, {n} replica{'s' if n > 1 else ''}: records/s",
            f"{result['records_per_s']:,.0f}", f"{percentile(result['latencies'], 0.5) * 1000:.1f}",
            f"{percentile(result['latencies'], 0.99) * 1000:.1f}",
            f"{cpu['replica']:.0f} / {cpu['moto']:.0f} / {cpu['client']:.0f} ({busy:.1f} cores)",
        ])  # fmt: skip
    rows.append(["1. API, ratio 2 replicas / 1", f"{ratio:.2f}x", "", "", ""])
    print_table(
        ["figure", "value", "p50 ms", "p99 ms", "CPU s: replicas / moto / client"],
        rows,
        title="Part 1: API throughput",
    )
    cores = os.cpu_count()
    requests = {n: max(1, len(r["acked"])) for n, r in rounds.items()}
    replica_ms = sum(r["cpu"]["replica"] for r in rounds.values()) / sum(requests.values()) * 1000
    moto_ms = sum(r["cpu"]["moto"] for r in rounds.values()) / sum(requests.values()) * 1000
    busy = {n: sum(r["cpu"].values()) / r["seconds"] for n, r in rounds.items()}
    print(
        f"info  what this means on {cores} cores: every 202 waits for two PUTs to S3 (the batch's status, then its "
        f"data) instead of an fsync. Each {args.batch_records}-record request cost a replica {replica_ms:.0f} ms of "
        f"CPU (parse, validate, canonical NDJSON, two signed boto3 PUTs) and moto {moto_ms:.0f} ms. With one replica "
        f"these processes kept {busy[1]:.1f} cores busy, with two {busy[2]:.1f}: a second replica only adds what a "
        f"free core gives, and here it shares {cores} cores with moto, the client and whatever else runs "
        f"(load average {two['load']:.1f}), hence {ratio:.2f}x. The replicas share no local state (batches and "
        "idempotency keys in S3, tokens in PostgreSQL): against a real S3, with a core per replica, each replica "
        "adds its own throughput.",
        flush=True,
    )
    return [
        *(
            [
                f"1. API records/s, {n} replica{'s' if n > 1 else ''}",
                f"{r['records_per_s']:,.0f}",
                f"p50 / p99 {percentile(r['latencies'], 0.5) * 1000:.0f} / {percentile(r['latencies'], 0.99) * 1000:.0f} ms",
            ]
            for n, r in rounds.items()
        ),
        ["1. API records/s, 2 replicas / 1", f"{ratio:.2f}x", ""],
    ]


# ---------------------------------------------------------------------------- part 2


class WorkerLoop(threading.Thread):
    """A run worker: `integration-hub run NAME` again and again (1 s apart) until told to stop."""

    def __init__(self, node: Node, integration: str) -> None:
        super().__init__(daemon=True)
        self.node, self.integration = node, integration
        self.stopping = threading.Event()
        self.runs: list[tuple[float, float, int]] = []  # (start, seconds, exit code)

    def run(self) -> None:
        while not self.stopping.is_set():
            started = time.time()
            process = self.node.start("run", self.integration, log_name=f"run-{len(self.runs) + 1}.log")
            code = process.wait()
            self.runs.append((started, time.time() - started, code))
            if code != 0:
                FAILURES.append(
                    f"part 2: `integration-hub run {self.integration}` on {self.node.name} exited "
                    f"{code}: {tail(log_text(process))}"
                )
            self.stopping.wait(1.0)


class Visibility(threading.Thread):
    """Polls the lake (open_reader in this process) for acknowledged batches' records."""

    def __init__(self, catalog: Catalog, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.catalog, self.interval = catalog, interval
        self.lock = threading.Lock()
        self.waiting: dict[str, tuple[str, float, int]] = {}  # batch id -> (integration, acked at, records)
        self.seen: dict[str, tuple[str, float, float]] = {}  # batch id -> (integration, acked at, delay)
        self.errors: list[str] = []
        self.polls: list[float] = []
        self.done = threading.Event()

    def add(self, batch_id: str, integration: str, acked_at: float, records: int) -> None:
        with self.lock:
            self.waiting[batch_id] = (integration, acked_at, records)

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        import duckdb

        with self.lock:
            by_integration: dict[str, list[str]] = {}
            for batch_id, (integration, _, _) in self.waiting.items():
                by_integration.setdefault(integration, []).append(batch_id)
        if not by_integration:
            return
        asked = time.time()  # the answer shows the lake's last commit as of about now
        found: dict[str, int] = {}
        try:
            for integration, batch_ids in by_integration.items():
                found |= dict(query(
                    self.catalog, f"SELECT _source, count(*) FROM attributes_{integration} "
                    "WHERE _source IN (SELECT unnest(?)) GROUP BY _source", [batch_ids], attempts=1,
                ))  # fmt: skip
        except duckdb.CatalogException:
            pass  # before the first run made the tables
        except Exception as exc:  # noqa: BLE001 - a reader should not fail: reported at the end
            self.errors.append(str(exc).splitlines()[0])
        self.polls.append(time.time() - asked)
        with self.lock:
            for batch_id, count in found.items():
                integration, acked_at, records = self.waiting[batch_id]
                if count >= records:
                    del self.waiting[batch_id]
                    self.seen[batch_id] = (integration, acked_at, max(0.0, asked - acked_at))


async def _steady(
    urls: list[str],
    headers: dict[str, str],
    templates: dict[str, bytes],
    rate: float,
    seconds: float,
    on_ack: Callable[[str, str, float, int], None],
) -> dict[str, Any]:
    """Open loop: each integration's n-th batch sent at start + n / rate, round-robin over the replicas."""
    import httpx

    placeholder = PLACEHOLDER.encode()
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    latencies: list[float] = []
    per = int(rate * seconds)
    names = list(templates)
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.1

        async def one(k: int) -> None:
            n, which = divmod(k, len(names))
            integration = names[which]
            await asyncio.sleep(max(0.0, start + (n + which / len(names)) / rate - loop.time()))
            body = templates[integration].replace(placeholder, f"{integration[-1]}{n:07d}".encode())
            reply = await post_batch(
                client, f"{urls[k % len(urls)]}/v1/end-users", body, headers, statuses, errors, latencies
            )
            if reply is not None:
                on_ack(reply["batch_id"], integration, time.time(), int(reply["accepted"]))

        await asyncio.gather(*(one(k) for k in range(per * len(names))))
    return {"statuses": statuses, "errors": errors, "latencies": latencies, "sent": per * len(names)}


def apply_intervals(catalog: Catalog, integration: str) -> list[tuple[float, float]]:
    rows = query(
        catalog, "SELECT epoch(started_at), epoch(finished_at) FROM integration_runs WHERE integration = ? "
        "AND finished_at IS NOT NULL ORDER BY started_at", [integration],
    )  # fmt: skip
    return [(float(a), float(b)) for a, b in rows]


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def overlap_seconds(first: list[tuple[float, float]], second: list[tuple[float, float]]) -> float:
    """Seconds during which an apply of each list was in progress at once."""
    both = [(max(a, c), min(b, d)) for a, b in first for c, d in second if min(b, d) > max(a, c)]
    return union_seconds(both)


def part2(
    args: argparse.Namespace,
    cluster: Cluster,
    catalog: Catalog,
    replicas: list[Replica],
    bearer: str,
    tokens: dict[str, str],
    workers: list[Node],
) -> list[list[str]]:
    print(
        f"\nPart 2: ack-to-queryable, {len(ACK_INTEGRATIONS)} API integrations, {args.ack_records}-record batches "
        f"at {args.ack_rate:g}/s each for {args.ack_seconds:g} s over {len(replicas)} replicas; a worker per "
        "integration looping `integration-hub run`",
        flush=True,
    )
    headers = {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"}
    templates = {name: body_template(tokens[name], args.ack_records) for name in ACK_INTEGRATIONS}
    visibility = Visibility(catalog)
    loops = [WorkerLoop(node, name) for node, name in zip(workers, ACK_INTEGRATIONS, strict=True)]
    acked: dict[str, dict[str, int]] = {name: {} for name in ACK_INTEGRATIONS}

    def on_ack(batch_id: str, integration: str, at: float, records: int) -> None:
        acked[integration][batch_id] = records
        visibility.add(batch_id, integration, at, records)

    started = time.time()
    locks = LockWatcher(catalog)
    locks.start()
    visibility.start()
    for loop in loops:
        loop.start()
    cpu_before = children_cpu()
    try:
        posted = asyncio.run(
            _steady([r.url for r in replicas], headers, templates, args.ack_rate, args.ack_seconds, on_ack)
        )
        posting_ended = time.time()
        deadline = time.time() + max(300.0, args.ack_seconds)
        while visibility.waiting and time.time() < deadline:
            time.sleep(0.5)
        drained = time.time() - posting_ended
    finally:
        for loop in loops:
            loop.stopping.set()
        for loop in loops:
            loop.join(120)
        visibility.done.set()
        visibility.join(30)
        locks.stop()
    cpu_runs = children_cpu() - cpu_before
    if posted["errors"]:
        FAILURES.append(f"part 2: {len(posted['errors'])} requests not accepted, e.g. {posted['errors'][0]}")
    print(
        f"  {posted['sent']} requests sent, statuses {dict(posted['statuses'])}; request latency p50 "
        f"{percentile(posted['latencies'], 0.5) * 1000:.1f} ms, p99 {percentile(posted['latencies'], 0.99) * 1000:.1f} ms; "
        f"all queryable {drained:.1f} s after the last was sent; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    if visibility.waiting:
        FAILURES.append(f"part 2: {len(visibility.waiting)} acknowledged batches never became queryable")

    # Warm-up: until the first batch of each integration is queryable (the first runs' start-up).
    firsts = {}
    for name in ACK_INTEGRATIONS:
        seen = [(at, delay) for integration, at, delay in visibility.seen.values() if integration == name]
        firsts[name] = min(seen, default=(started, float("nan")))
    steady_from = max(at + delay for at, delay in firsts.values())
    rows = []
    summary = {}
    for name in (*ACK_INTEGRATIONS, "both"):
        delays = [
            d for i, at, d in visibility.seen.values() if (name == "both" or i == name) and at >= steady_from
        ]
        summary[name] = delays
        rows.append([
            f"2. ack-to-queryable, {name}", str(len(delays)), f"{percentile(delays, 0.5):.2f}",
            f"{percentile(delays, 0.99):.2f}", f"{max(delays, default=float('nan')):.2f}",
        ])  # fmt: skip
    print_table(
        ["figure", "batches", "p50 s", "p99 s", "max s"],
        rows,
        title="Part 2: ack-to-queryable (from the 202 until a reader sees the batch's records)",
    )
    for name in ACK_INTEGRATIONS:
        at, delay = firsts[name]
        print(
            f"info  {name}: first batch queryable after {delay:.1f} s (warm-up, includes the first run's start-up; "
            "batches acknowledged before both were queryable are not in the figures)"
        )
    intervals = {name: apply_intervals(catalog, name) for name in ACK_INTEGRATIONS}
    busy = {name: union_seconds(v) for name, v in intervals.items()}
    both = overlap_seconds(*intervals.values())
    window = (
        max(b for v in intervals.values() for _, b in v) - min(a for v in intervals.values() for a, _ in v)
        if all(intervals.values())
        else float("nan")
    )
    for loop in loops:
        codes = Counter(code for _, _, code in loop.runs)
        print(
            f"info  worker {loop.node.name} ({loop.integration}): {len(loop.runs)} run(s) (exit codes {dict(codes)}), "
            f"{len(intervals[loop.integration])} transactions, applying {busy[loop.integration]:.1f} s of the "
            f"{window:.1f} s between the first apply's start and the last one's end"
        )
    print(
        f"info  applies of both integrations in progress at once: {both:.1f} s; the runs used {cpu_runs:.0f} CPU-s "
        f"({cpu_runs / max(1.0, time.time() - started):.2f} cores over the part); the reader polled "
        f"{len(visibility.polls)} times (p99 {percentile(visibility.polls, 0.99):.2f} s a poll)"
        + (
            f"; reads that failed: {len(visibility.errors)}, e.g. {visibility.errors[0]}"
            if visibility.errors
            else ""
        )
    )
    print(
        f"info  {locks.describe(steady_from, posting_ended)} (from the warm-up's end to the last batch sent)"
    )
    lock = locks.summary(steady_from, posting_ended)
    cores = os.cpu_count()
    p99 = percentile(summary["both"], 0.99)
    print(
        f"info  what this means on {cores} cores: each worker's run keeps applying as batches land (list pending/, "
        f"read them from S3, MERGE, commit in PostgreSQL, move them to applied/), so a batch waits for the apply "
        f"cycle under way and the next one: p99 {p99:.1f} s. The two workers applied at the same time for "
        f"{both:.0f} s; a writer waited for the other's commit lock in {lock['waited']:.0%} of the samples "
        f"(longest ~{lock['longest_wait']:.1f} s), so the lake's single commit lock is not what sets the delay. "
        f"It was held in {lock['held']:.0%} of them: a small group of batches is MERGEd inside its write "
        "transaction (its Parquet file written to S3, then the commit in PostgreSQL), so that lock is what all "
        "writers share, and the writers' transactions together must fit in the time. On "
        f"{cores} cores the two runs share the CPU with the replicas, moto and this reader ({cpu_runs:.0f} "
        "CPU-s of runs).",
        flush=True,
    )
    for name in ACK_INTEGRATIONS:
        check_api_applied(catalog, name, acked[name])
        APPLIED_USERS[name] = sum(acked[name].values())
    delays = summary["both"]
    return [
        [
            "2. ack-to-queryable p50 / p99 / max",
            f"{percentile(delays, 0.5):.1f} / {p99:.1f} / {max(delays, default=float('nan')):.1f} s",
            f"{len(delays)} batches, 2 workers applying",
        ]
    ]


# ---------------------------------------------------------------------------- part 3


def prepare_csv_lake(catalog_path: str) -> None:
    """(A spawned child.) The lake with its (empty) tables, as before a day's first files."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import ensure_schema, open_writer

    catalog = load_catalog(catalog_path)
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)


def csv_integrations(size: int) -> list[dict[str, Any]]:
    import bench_csv

    from integration_hub.core.catalog import DEFAULT_MAX_FILE_BYTES

    integrations = []
    for name in CSV_INTEGRATIONS:
        integration: dict[str, Any] = {
            "name": name, "type": "s3_csv", "connection": "inbound", "folder": name, "user_id_column": "email",
            "properties": [{"column": c, "name": f"{name}_{n}", "type": t} for c, n, t in bench_csv.PROPERTIES],
        }  # fmt: skip
        if size > DEFAULT_MAX_FILE_BYTES:
            integration["max_file_bytes"] = size
        integrations.append(integration)
    return integrations


def csv_variant(cluster: Cluster, variant: str, csv_path: Path, size: int, rows: int) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    catalog = cluster.catalog(csv_integrations(size), f"csv_{variant}")
    nodes = [cluster.node(catalog, f"worker-{n}") for n in (1, 2)]
    measure(prepare_csv_lake, str(nodes[0].folder / "integrations.yaml"))
    mark = time.perf_counter()
    for name in CSV_INTEGRATIONS:
        cluster.client.upload_file(
            str(csv_path), INBOUND_BUCKET, f"{catalog.prefix}/{name}/{CSV_FILE}",
            Config=TransferConfig(multipart_chunksize=64 * MB),
        )  # fmt: skip
    print(
        f"  {variant}: uploaded the two files in {time.perf_counter() - mark:.1f} s; applying ...", flush=True
    )
    moto_before, children_before = cpu_seconds(cluster.moto_pid), children_cpu()
    locks = LockWatcher(catalog)
    locks.start()
    started = time.perf_counter()
    runs: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}  # each run process's (start, end)

    def one_run(node: Node, name: str) -> None:
        begin = time.time()
        runs[name], _ = node.run(name)
        spans[name] = (begin, time.time())

    if variant == "sequential":
        for name in CSV_INTEGRATIONS:
            one_run(nodes[0], name)
    else:
        threads = [
            threading.Thread(target=one_run, args=(node, name))
            for node, name in zip(nodes, CSV_INTEGRATIONS, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    wall = time.perf_counter() - started
    locks.stop()
    result = {
        "wall": wall, "runs": runs, "moto_cpu": cpu_seconds(cluster.moto_pid) - moto_before,
        "runs_overlap": overlap_seconds(*([span] for span in spans.values())) if len(spans) == 2 else 0.0,
        "runs_cpu": children_cpu() - children_before, "load": os.getloadavg()[0], "locks": locks.summary(),
        "lock_text": locks.describe(),
    }  # fmt: skip
    print(
        f"    {wall:.1f} s ({', '.join(f'{n} {s:.1f} s' for n, s in runs.items())}); CPU s: runs "
        f"{result['runs_cpu']:.0f}, moto {result['moto_cpu']:.0f}; load average {result['load']:.1f}",
        flush=True,
    )
    check_csv_applied(catalog, variant, rows)
    # The applies (integration_runs: from reading the file to the commit), read before the lake's files go.
    applies = {name: apply_intervals(catalog, name) for name in CSV_INTEGRATIONS}
    result["applies"] = {name: union_seconds(v) for name, v in applies.items()}
    result["overlap"] = overlap_seconds(*applies.values())
    print(
        f"    applies (integration_runs) {', '.join(f'{n} {s:.1f} s' for n, s in result['applies'].items())}, "
        f"both at once {result['overlap']:.1f} s; {result['lock_text']}",
        flush=True,
    )
    delete_prefix(cluster.client, INBOUND_BUCKET, f"{catalog.prefix}/")  # moto keeps objects in memory
    delete_prefix(cluster.client, LAKE_BUCKET, f"{catalog.prefix}/")
    return result


def check_csv_applied(catalog: Catalog, variant: str, rows: int) -> None:
    for name in CSV_INTEGRATIONS:
        ((count, users),) = query(catalog, f"SELECT count(*), count(DISTINCT user_id) FROM attributes_{name}")
        files = query(catalog, "SELECT key, status FROM processed_files WHERE integration = ?", [name])
        runs = query(
            catalog, "SELECT status, rows_applied FROM integration_runs WHERE integration = ?", [name]
        )
        check(
            count == users == rows
            and len(files) == 1
            and files[0][1] == "success"
            and runs == [("success", rows)],
            f"part 3 {variant}, {name}: {count:,} rows ({users:,} users) of {rows:,}; processed_files {files}; "
            f"runs (status, rows applied) {runs}",
        )
    ((profiles,),) = query(catalog, "SELECT count(*) FROM user_profiles")
    check(
        profiles == rows,
        f"part 3 {variant}: {profiles:,} users in user_profiles, expected {rows:,} (the same "
        "users in both files)",
    )


def part3(args: argparse.Namespace, cluster: Cluster) -> list[list[str]]:
    import bench_csv

    csv_path = cluster.work / CSV_FILE
    started = time.perf_counter()
    bench_csv.generate_csv(csv_path, args.rows)
    size = csv_path.stat().st_size
    print(
        f"\nPart 3: CSV apply, two integrations' files of {args.rows:,} rows ({size / MB:,.0f} MiB each, "
        f"generated in {time.perf_counter() - started:.1f} s) into empty tables of a fresh lake",
        flush=True,
    )
    results = {
        variant: csv_variant(cluster, variant, csv_path, size, args.rows)
        for variant in ("sequential", "parallel")
    }
    csv_path.unlink()
    seq, par = results["sequential"], results["parallel"]
    ratio = seq["wall"] / par["wall"]
    rows = [
        ["3. CSV, one worker, A then B", f"{seq['wall']:.1f}", f"{2 * size / MB / seq['wall']:.1f}",
         " + ".join(f"{s:.1f}" for s in seq["runs"].values()), f"{seq['runs_cpu']:.0f} / {seq['moto_cpu']:.0f}"],
        ["3. CSV, two workers at once", f"{par['wall']:.1f}", f"{2 * size / MB / par['wall']:.1f}",
         " | ".join(f"{s:.1f}" for s in par["runs"].values()), f"{par['runs_cpu']:.0f} / {par['moto_cpu']:.0f}"],
        ["3. CSV, speed-up (one worker / two)", f"{ratio:.2f}x", "", "", ""],
    ]  # fmt: skip
    print_table(
        ["figure", "wall s", "MiB/s", "each run s", "CPU s: runs / moto"],
        rows,
        title=f"Part 3: CSV apply throughput, 2 x {size / MB:,.0f} MiB",
    )
    cores = os.cpu_count()
    busy_seq = (seq["runs_cpu"] + seq["moto_cpu"]) / seq["wall"]
    busy_par = (par["runs_cpu"] + par["moto_cpu"]) / par["wall"]
    print(
        f"info  what this means on {cores} cores: one worker kept {busy_seq:.1f} cores busy (the run's DuckDB "
        f"threads plus moto, which serves every byte in Python), two workers {busy_par:.1f}: on {cores} cores two "
        f"writers mostly share the same CPU, so the gain ({ratio:.2f}x) comes from overlapping one run's start-up, "
        f"S3 transfers and commit with the other's work. The two runs were in progress together for "
        f"{par['runs_overlap']:.0f} of their {par['wall']:.0f} s, their applies (download, read, validate, write, commit) "
        f"for {par['overlap']:.0f} s, and a writer waited for the commit lock in {par['locks']['waited']:.0%} of "
        f"the samples (longest ~{par['locks']['longest_wait']:.1f} s): neither integration waited for the "
        "other's run, only, at most, for its short commit.",
        flush=True,
    )
    return [
        ["3. CSV, one worker (A then B)", f"{seq['wall']:.1f} s", f"{2 * size / MB / seq['wall']:.1f} MiB/s"],
        ["3. CSV, two workers at once", f"{par['wall']:.1f} s", f"{2 * size / MB / par['wall']:.1f} MiB/s"],
        ["3. CSV, one worker / two workers", f"{ratio:.2f}x", ""],
    ]


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=8_000_000,
        help="rows of each CSV file in part 3 (default 8,000,000 = ~1 GB); below 1,000,000 the "
        "durations of parts 1 and 2 default to a smoke run's",
    )
    parser.add_argument("--parts", default="1,2,3", help="a subset of 1,2,3 (default all)")
    parser.add_argument("--seconds", type=float, help="part 1: seconds per round (default 20; smoke run 5)")
    parser.add_argument(
        "--connections", type=int, default=8, help="part 1: concurrent client connections (default 8)"
    )
    parser.add_argument(
        "--batch-records", type=int, default=500, help="part 1: records per request (default 500)"
    )
    parser.add_argument(
        "--ack-seconds", type=float, help="part 2: seconds of posting (default 60; smoke run 20)"
    )
    parser.add_argument(
        "--ack-rate", type=float, default=5.0, help="part 2: batches/s per integration (default 5)"
    )
    parser.add_argument("--ack-records", type=int, default=20, help="part 2: records per batch (default 20)")
    parser.add_argument(
        "--work-dir", type=Path, default=HERE / ".work", help="scratch space (default benchmarks/.work)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (catalogs, logs) afterwards"
    )
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every benchmark the same arguments
    smoke = args.rows < SMOKE_BELOW_ROWS
    args.seconds = args.seconds or (5.0 if smoke else 20.0)
    args.ack_seconds = args.ack_seconds or (20.0 if smoke else 60.0)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts or parts - {"1", "2", "3"} or args.rows < 2:
        parser.error("--parts is a subset of 1,2,3; --rows at least 2")

    work = args.work_dir.resolve() / "scale_out"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(
        f"Scale-out benchmark: PostgreSQL catalog + S3 (moto) lake, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f} before, {date.today().isoformat()}, "
        f"work folder {work}",
        flush=True,
    )
    started = time.perf_counter()
    try:
        rows = _run(args, parts, work)
    except Exception as exc:  # noqa: BLE001 - reported as a failure; everything is stopped below
        import traceback

        traceback.print_exc()
        FAILURES.append(f"the benchmark failed: {type(exc).__name__}: {exc}")
        rows = []
    finally:
        stop_all()
        if not args.keep and not FAILURES:
            shutil.rmtree(work, ignore_errors=True)
    if rows:
        print_table(["figure", "value", ""], rows, title="Summary")
    print(f"\n{time.perf_counter() - started:.0f} s in all; load average now {os.getloadavg()[0]:.1f}")
    if FAILURES:
        print(
            f"\nFAILED ({len(FAILURES)}):"
            + "".join(f"\n  - {f}" for f in FAILURES)
            + (f"\n(work folder kept: {work})" if work.exists() else "")
        )
        return 1
    print("all correctness checks PASS")
    return 0


def _run(args: argparse.Namespace, parts: set[str], work: Path) -> list[list[str]]:
    from integration_hub_tests.fakes.postgres_server import PostgresServer

    rows: list[list[str]] = []
    with PostgresServer() as postgres, moto_process() as (endpoint_url, moto_pid):
        cluster = Cluster(postgres, endpoint_url, moto_pid, work)
        print(f"  PostgreSQL on port {postgres.port}, moto S3 at {endpoint_url} (pid {moto_pid})", flush=True)
        if parts & {"1", "2"}:
            integrations = [api_integration(name) for name in (LOAD_INTEGRATION, *ACK_INTEGRATIONS)]
            catalog = cluster.catalog(integrations, "api")
            admin = cluster.node(catalog, "admin")
            admin.command("integrations")  # the Dagster instance's tables, made by one process first
            bearer = json.loads(admin.command("tokens", "create", "bench", "--json"))["token"]
            tokens = {
                name: json.loads(admin.command("endpoint", name, "--json"))["integration_token"]
                for name in (LOAD_INTEGRATION, *ACK_INTEGRATIONS)
            }
            replicas = [start_replica(cluster.node(catalog, f"api-{n}")) for n in (1, 2)]
            workers = [cluster.node(catalog, f"worker-{n}") for n in (1, 2)]
            try:
                if "1" in parts:
                    rows += part1(args, cluster, catalog, replicas, bearer, tokens, workers[0])
                if "2" in parts:
                    rows += part2(args, cluster, catalog, replicas, bearer, tokens, workers)
                ((profiles,),) = query(catalog, "SELECT count(*) FROM user_profiles")
                expected = sum(APPLIED_USERS.values())
                check(
                    profiles == expected,
                    f"API lake: {profiles:,} users in user_profiles, expected {expected:,} "
                    f"(every acknowledged record a user of its own: {APPLIED_USERS})",
                )
            finally:
                for replica in replicas:
                    stop_process(replica.process)
        if "3" in parts:
            rows += part3(args, cluster)
    return rows


if __name__ == "__main__":
    sys.exit(main())

"""The lake with people in it: readers never wait, reads stay fast, history answers at once.

    .venv/bin/python benchmarks/bench_lake.py                                # full size (see below)
    .venv/bin/python benchmarks/bench_lake.py --rows 200000 --users 300000   # smoke run
    .venv/bin/python benchmarks/bench_lake.py --parts 3,4                    # only some parts

Part 2, readers never wait: the 1 GB apply of bench_csv.py (`--rows` rows into `--users` users,
`integration-hub run bench` as a subprocess on a moto S3 connection), three times, each from
its own copy of the same prepared lake:
  A  alone: the apply's wall time, the floor for B;
  B  with an analyst holding open_reader open in another process for the whole apply and
     running a query every few seconds: the apply's wall time against A (target: < 1 s more);
  C  with an analyst polling `SELECT count(*) FROM user_profiles` through open_reader every
     ~0.5 s in another process (target: every answer < 2 s, the old count until the commit and
     the new one after), and the End User Update API running (`integration-hub api`) with
     `integration-hub run bench_api` started as its sensor would (every 10 s while batches are
     pending): one batch POSTed when the apply starts, one when its write transaction begins
     (seen in /proc/locks), each timed from its 202 until open_reader sees it (target: < 60 s;
     the floor is a batch sent with no apply running).
Part 3, reads stay fast: `user_profiles` over two inbound integrations of 0.6 x `--profile-users`
users each (overlapping to `--profile-users` distinct users, default 10M), a selective query
(one user) and a full scan, in the lake (open_reader) and in a plain DuckDB file holding the same
tables and view (same memory_limit): best of 3 after one warm-up each (target: lake <= 1.5x). Also,
to show where the lake's selective query spends its time (best of 20 each): the same query for a
user no file holds (the lake's catalog reads alone), and the Parquet files that hold the user read
directly, outside the lake.
Part 4, history: `--history-applies` small applies (`--history-rows` rows each, through
core.ingest.apply_source) on the part-3 lake, every third one changing one user's plan; then
core.history.attribute_history for that user (best of 3 after one warm-up; target < 1 s; floor:
the user's current row) and `integration-hub history USER --json` as a subprocess (reported;
floor: `integration-hub sql` of the user's row).

Prints a summary: each figure, its floor, the ratio and PASS/FAIL per target. Exits non-zero
only if something failed to run or a result is wrong (targets are reported, not enforced).
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_csv as csvb  # noqa: E402 - after the path tweak: the data, the lake and ours, as bench_csv.py
from common import (  # noqa: E402
    MB,
    Measurement,
    cli_command,
    cli_env,
    copy_lake,
    folder_bytes,
    lake_settings,
    measure,
    moto_server,
    print_table,
    target_line,
)

ROOT = Path(__file__).resolve().parent.parent
API_INTEGRATION = "bench_api"
API_TABLE = f"attributes_{API_INTEGRATION}"
API_BATCH_RECORDS = 100
COUNT_QUERY = "SELECT count(*) FROM user_profiles"
FLOOR_BATCH = "with no apply running (floor)"
AT_START = "when the apply starts"
IN_TRANSACTION = "when its write transaction begins"
MAX_TRANSACTION_BATCHES = 6  # batches sent when the CSV run takes the write lock (one per time)

# Part 3/4: two inbound integrations; crm has bench_csv's 10 properties, web 5 of its own.
CRM, WEB = "crm", "web"
WEB_PROPERTIES: list[tuple[str, str, str]] = [
    ("visits", "web_visits", "number"),
    ("browser", "web_browser", "string"),
    ("segment", "web_segment", "string"),
    ("premium", "web_premium", "boolean"),
    ("last_seen", "web_last_seen", "datetime"),
]
FULL_SCAN = "SELECT count(*), avg(support_tickets), count(DISTINCT plan), avg(web_visits) FROM user_profiles"
# A selective query that matches no file: every id sorts before '~', so the lake's catalog statistics
# rule out every file and the query costs only its catalog reads (reported, not a target).
NO_SUCH_USER = "no such user"
NO_SUCH_USER_ID = "~no such user"
DECOMPOSITION_ROUNDS = 20


def selective_sql(user: str) -> str:
    """Part 3's selective query: one user's row of `user_profiles`."""
    return f"SELECT * FROM user_profiles WHERE user_id = {csvb.lit(user)}"

# Targets.
MAX_READ_SECONDS = 2.0
MAX_WRITER_DELAY = 1.0
MAX_ACK_TO_QUERYABLE = 60.0
MAX_READ_RATIO = 1.5
MAX_HISTORY_SECONDS = 1.0


def user_id(i: int) -> str:
    """The id of user `i`, as bench_csv's data writes it."""
    return f"user{i:09d}@example.com"


# ---------------------------------------------------------------------------- part 2: the analysts (children)


@dataclass
class Answer:
    """One answer of the polling analyst."""

    at: float  # time.time() when it asked
    seconds: float  # until the answer: open_reader + the query
    open_seconds: float  # of which open_reader (a new DuckDB, the extensions, ATTACH)
    count: int | None
    error: str | None

    @property
    def until(self) -> float:
        return self.at + self.seconds


def poll_counts(catalog_path: str, interval: float, answered: Any, stop: Any, results: Any) -> None:
    """(A child.) An analyst asking for the count every `interval` s, each time through a new open_reader."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import open_reader

    catalog = load_catalog(catalog_path)
    while not stop.is_set():
        at, started = time.time(), time.perf_counter()
        count, error, opened = None, None, 0.0
        try:
            with open_reader(catalog) as con:
                assert con is not None
                opened = time.perf_counter() - started
                count = con.execute(COUNT_QUERY).fetchone()[0]
        except Exception as exc:  # a reader that fails is what this measures: keep the reason
            error = str(exc).splitlines()[0]
        seconds = time.perf_counter() - started
        results.put(Answer(at, seconds, opened, count, error))
        with answered.get_lock():
            answered.value += 1
        stop.wait(max(0.0, interval - seconds))
    results.put(None)


def hold_reader(catalog_path: str, interval: float, user: str, stop: Any, ready: Any, results: Any) -> None:
    """(A child.) An analyst with one open_reader open throughout, running a query every `interval` s."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import open_reader

    with open_reader(load_catalog(catalog_path)) as con:
        assert con is not None
        con.execute("SELECT count(*) FROM user_profiles WHERE user_id = ?", [user]).fetchone()
        ready.set()
        while not stop.wait(interval):
            at, started = time.time(), time.perf_counter()
            con.execute("SELECT count(*) FROM user_profiles WHERE user_id = ?", [user]).fetchone()
            results.put((at, time.perf_counter() - started))
    results.put(None)


class Child:
    """A spawned child running `target(*args, [counter,] stop, [ready,] results)` until stopped.

    The child puts each result on the `results` queue as it goes and None when it ends, so a
    child that dies leaves what it measured until then; stop() returns those results.
    """

    def __init__(self, target: Any, *args: Any, ready: bool = False, counter: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.counter = context.Value("i", 0) if counter else None
        if self.counter is not None:
            args = (*args, self.counter)
        self.stop_event = context.Event()
        self.ready = context.Event() if ready else None
        self.results = context.Queue()
        extra = (self.stop_event, self.ready, self.results) if ready else (self.stop_event, self.results)
        self.process = context.Process(target=target, args=(*args, *extra))
        self.process.start()
        self.exit_note = ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        if self.ready is not None and not self.ready.wait(timeout):
            raise RuntimeError("the analyst process did not open the lake")

    def wait_count(self, count: int, timeout: float = 300.0) -> None:
        """Until the child counted `count` (e.g. answers)."""
        deadline = time.monotonic() + timeout
        while self.counter is not None and self.counter.value < count:
            if not self.process.is_alive():
                raise RuntimeError(f"the polling analyst's process died (exit code {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the polling analyst did not answer {count - self.counter.value} times in {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self, timeout: float = 120.0) -> list[Any]:
        """Stop the child; everything it measured (also when it died: then `exit_note` says how)."""
        import queue

        self.stop_event.set()
        items: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.results.get(timeout=0.5)
            except queue.Empty:
                if not self.process.is_alive():
                    break
                continue
            if item is None:
                break
            items.append(item)
        self.process.join(30)
        if self.process.exitcode not in (0, None):
            self.exit_note = f"its process died (exit code {self.process.exitcode})"
        return items


# ---------------------------------------------------------------------------- part 2: the API


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_integration() -> dict[str, Any]:
    return {
        "name": API_INTEGRATION,
        "type": "api",
        "system": "bench_site",
        "environment": "production",
        "user_id_property": "userId",
        "properties": [
            {"property": "note", "name": "api_note", "type": "string"},
            {"property": "score", "name": "api_score", "type": "number"},
        ],
    }


@dataclass
class Api:
    """The API server, the sensor-like applier thread, and the batches sent."""

    catalog: Path
    env: dict[str, str]
    log: Path
    interval: float
    url: str = ""
    bearer: str = ""
    token: str = ""
    server: subprocess.Popen | None = None
    busy: threading.Event = field(default_factory=threading.Event)
    runs: list[tuple[float, float, int]] = field(default_factory=list)  # (started, ended, exit code)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        from integration_hub.api.tokens import TokenStore
        from integration_hub.core.catalog import load_catalog

        store = TokenStore(load_catalog(self.catalog).landing_path)
        self.bearer, self.token = store.create_bearer("bench"), store.issue_integration_token(API_INTEGRATION)
        store.close()
        port = free_port()
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                cli_command("--catalog", str(self.catalog), "api", "--port", str(port), "--no-access-log"),
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.url = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                connection = http.client.HTTPConnection(self.url, timeout=2)
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"the API did not start: see {self.log}")
        self.thread = threading.Thread(target=self._apply_like_the_sensor, daemon=True)
        self.thread.start()

    def _apply_like_the_sensor(self) -> None:
        """Every `interval` s: if batches are pending, `integration-hub run bench_api` (what the sensor starts)."""
        from integration_hub.api.batches import BatchStore
        from integration_hub.core.catalog import load_catalog

        store = BatchStore(load_catalog(self.catalog).landing_path)
        while not self.stop.is_set():
            if store.pending_batch_ids(API_INTEGRATION):
                self.busy.set()
                started = time.time()
                with open(self.log, "ab") as log:
                    code = subprocess.call(
                        cli_command("--catalog", str(self.catalog), "run", API_INTEGRATION),
                        env=self.env, stdout=log, stderr=subprocess.STDOUT,
                    )  # fmt: skip
                self.runs.append((started, time.time(), code))
                self.busy.clear()
            self.stop.wait(self.interval)

    def wait_idle(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while self.busy.is_set() and time.monotonic() < deadline:
            time.sleep(0.1)

    def post(self, marker: str, first_user: int) -> float:
        """POST one batch of API_BATCH_RECORDS users from `first_user` on; the time of its 202."""
        body = json.dumps({
            "integration_token": self.token,
            "data": [{"userId": user_id(first_user + n), "note": marker, "score": n} for n in range(API_BATCH_RECORDS)],
        })  # fmt: skip
        headers = {"Authorization": f"Bearer {self.bearer}", "Content-Type": "application/json"}
        connection = http.client.HTTPConnection(self.url, timeout=30)
        connection.request("POST", "/v1/end-users", body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read()
        connection.close()
        if response.status != 202:
            raise RuntimeError(f"the API answered {response.status}: {answer[:200]!r}")
        return time.time()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(600)
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(20)
            except subprocess.TimeoutExpired:
                self.server.kill()


def batch_visible(catalog: Any, marker: str) -> bool:
    """Whether open_reader sees the whole batch `marker` (its rows in the API integration's table)."""
    from integration_hub.core.warehouse import open_reader

    with open_reader(catalog) as con:
        assert con is not None
        return con.execute(f"SELECT count(*) FROM {API_TABLE} WHERE api_note = ?", [marker]).fetchone()[0] >= API_BATCH_RECORDS


class Watcher(threading.Thread):
    """Polls open_reader every 0.25 s for the batches being watched; when each became visible."""

    def __init__(self, catalog_path: Path) -> None:
        super().__init__(daemon=True)
        from integration_hub.core.catalog import load_catalog

        self.catalog = load_catalog(catalog_path)
        self.watching: dict[str, float] = {}  # marker -> 202 time
        self.seen: dict[str, float] = {}  # marker -> seconds from the 202 until visible
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.errors: list[str] = []

    def watch(self, marker: str, acknowledged: float) -> None:
        with self.lock:
            self.watching[marker] = acknowledged

    def run(self) -> None:
        while not self.done.wait(0.25):
            with self.lock:
                waiting = {m: t for m, t in self.watching.items() if m not in self.seen}
            for marker, acknowledged in waiting.items():
                try:
                    visible = batch_visible(self.catalog, marker)
                except Exception as exc:  # a failing reader is a finding: count it, keep watching
                    self.errors.append(str(exc).splitlines()[0])
                    continue
                if visible:
                    self.seen[marker] = time.time() - acknowledged

    def wait_for(self, markers: list[str], timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline and not all(m in self.seen for m in markers):
            time.sleep(0.25)


def write_lock_holder(catalog_path: Path) -> list[str] | None:
    """The command line of the process holding the lake's write lock (Linux /proc/locks), if any."""
    try:
        inode = os.stat(catalog_path.with_name(catalog_path.name + ".lock")).st_ino
        with open("/proc/locks", encoding="ascii") as locks:
            lines = locks.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or parts[1] != "FLOCK":
            continue  # "->" marks a process waiting for a lock, not holding it
        if parts[5].rsplit(":", 1)[-1] == str(inode):
            try:
                with open(f"/proc/{parts[4]}/cmdline", "rb") as cmdline:
                    return cmdline.read().decode(errors="replace").split("\0")[:-1]
            except OSError:
                return None
    return None


# ---------------------------------------------------------------------------- part 2: the runs


@dataclass
class Apply:
    """One measured apply of part 2 and what happened around it."""

    kind: str
    measured: Measurement | None = None
    started_at: float = 0.0
    analyst: list[Any] = field(default_factory=list)
    old_count: int | None = None
    new_count: int | None = None
    commit_at: float | None = None  # the commit's snapshot_time (DuckLake's)
    transactions: list[list[Any]] = field(default_factory=list)  # every hold of the lock: [begun, ended, batch, 202 at]
    transaction_batches: dict[str, float | None] = field(default_factory=dict)  # batch -> seconds to visible
    watch_errors: list[str] = field(default_factory=list)  # the batch watcher's failed reads
    analyst_failure: str = ""  # the analyst's process died or stopped answering
    batches: dict[str, float | None] = field(default_factory=dict)  # label -> seconds to visible
    batch_acks: dict[str, float] = field(default_factory=dict)  # label -> seconds after the CLI started
    api_runs: list[tuple[float, float, int]] = field(default_factory=list)
    error: str | None = None


def retrying(read: Any, errors: list[str], attempts: int = 5) -> Any:
    """`read()`, again after a second if the lake cannot be read (each failure is kept in `errors`)."""
    import duckdb

    from integration_hub.core.warehouse import WarehouseError

    for attempt in range(attempts):
        try:
            return read()
        except (WarehouseError, duckdb.Error) as exc:
            errors.append(str(exc).splitlines()[0])
            if attempt == attempts - 1:
                raise
            time.sleep(1)
    return None


def lake_count(catalog_path: Path) -> int:
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import open_reader

    with open_reader(load_catalog(catalog_path)) as con:
        assert con is not None
        return int(con.execute(COUNT_QUERY).fetchone()[0])


def commit_time(catalog_path: Path, after: float) -> float | None:
    """When the lake committed the CSV apply: the first snapshot after `after` that wrote attributes_bench."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import LAKE, open_reader

    with open_reader(load_catalog(catalog_path)) as con:
        assert con is not None
        table_id = con.execute(
            f'SELECT table_id FROM "__ducklake_metadata_{LAKE}".ducklake_table WHERE table_name = ? AND end_snapshot IS NULL',
            [csvb.TABLE],
        ).fetchone()[0]
        row = con.execute(
            f"SELECT min(epoch(snapshot_time)) FROM {LAKE}.snapshots() WHERE epoch(snapshot_time) > ? "
            "AND list_contains(changes['tables_inserted_into'], ?)",
            [after, str(table_id)],
        ).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def run_part2(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Prepare once, then the applies A (alone), B (a reader held open), C (a polling reader + the API)."""
    part = work / "readers"
    part.mkdir(parents=True, exist_ok=True)
    base = part / "base"
    applies: list[Apply] = []
    with moto_server() as moto:
        client = moto.client()
        client.create_bucket(Bucket=csvb.BUCKET)
        csv_path, size = csvb.generate(args, part)
        integrations = [csvb.csv_integration(csvb.size_note(size)), api_integration()]
        connection = csvb.s3_connection(moto.endpoint_url)
        existing = csvb.prepare(args, csvb.write_catalog(base / "integrations.yaml", connection, integrations), None)
        csvb.land_file(client, csv_path)
        kinds = [k for _ in range(args.repeat) for k in ("A", "B")] + ["C"]
        for n, kind in enumerate(kinds):
            folder = part / f"{kind}{n}"
            shutil.rmtree(folder, ignore_errors=True)
            copy_lake(base, folder)
            catalog = csvb.write_catalog(folder / "integrations.yaml", connection, integrations)
            csvb.land_file(client, csv_path)
            print(f"  part 2: apply {kind} ({dict(A='alone', B='an analyst holding a reader open', C='polling analyst + API')[kind]}) ...", flush=True)
            apply = Apply(kind)
            try:
                if kind == "A":
                    apply.started_at = time.time()
                    apply.measured = csvb.run_ours(catalog, part, args.memory_limit)
                elif kind == "B":
                    _apply_with_held_reader(args, part, catalog, apply)
                else:
                    _apply_with_poller_and_api(args, part, catalog, apply)
            except Exception as exc:  # report it with the others; the exit status says it failed
                apply.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"    FAILED: {apply.error}", flush=True)
            if apply.measured is not None:
                print(f"    {apply.measured.seconds:.1f} s, peak RSS {apply.measured.peak_rss_mb:,.0f} MiB "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            applies.append(apply)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    return {"applies": applies, "size": size, "existing": existing}


def _apply_with_held_reader(args: argparse.Namespace, part: Path, catalog: Path, apply: Apply) -> None:
    analyst = Child(hold_reader, str(catalog), args.analyst_interval, user_id(args.rows), ready=True)
    try:
        analyst.wait_ready()
        apply.started_at = time.time()
        apply.measured = csvb.run_ours(catalog, part, args.memory_limit)
    finally:
        apply.analyst = analyst.stop()
        apply.analyst_failure = analyst.exit_note


def _apply_with_poller_and_api(args: argparse.Namespace, part: Path, catalog: Path, apply: Apply) -> None:
    env = cli_env(DAGSTER_HOME=str(part / "dagster_home"))
    api = Api(catalog, env, part / "api.log", args.sensor_interval)
    watcher = Watcher(catalog)
    poller: Child | None = None
    others = args.rows + 1  # existing users the file does not hold: the API batches leave the count alone
    try:
        api.start()
        watcher.start()
        acknowledged = api.post("floor", others)
        watcher.watch("floor", acknowledged)
        watcher.wait_for(["floor"], timeout=600)
        apply.batches[FLOOR_BATCH] = watcher.seen.get("floor")
        api.wait_idle()  # the run that applied it has ended: the CSV apply starts on a quiet lake
        apply.old_count = retrying(lambda: lake_count(catalog), watcher.errors)
        poller = Child(poll_counts, str(catalog), args.poll_interval, counter=True)
        poller.wait_count(3)  # a few answers before the apply: the idle reference
        box: list[Any] = []

        def cli() -> None:
            try:
                box.append(csvb.run_ours(catalog, part, args.memory_limit))
            except Exception as exc:  # noqa: BLE001 - handed to the main thread
                box.append(exc)

        apply.started_at = time.time()
        thread = threading.Thread(target=cli)
        thread.start()
        acknowledged = api.post("at-start", others + API_BATCH_RECORDS)
        watcher.watch("at-start", acknowledged)
        apply.batch_acks[AT_START] = acknowledged - apply.started_at
        # Each time the CSV run takes the lake's write lock, a batch is sent; the longest hold
        # is the apply's transaction (the others are short bookkeeping transactions).
        holding = False
        while thread.is_alive():
            holder = write_lock_holder(catalog.parent / "catalog.sqlite")
            csv_holds = bool(holder) and holder[-2:] == ["run", csvb.INTEGRATION]
            if csv_holds and not holding:
                begun, marker, acknowledged = time.time(), f"tx-{len(apply.transactions) + 1}", None
                if len(apply.transactions) < MAX_TRANSACTION_BATCHES:
                    acknowledged = api.post(marker, others + (len(apply.transactions) + 2) * API_BATCH_RECORDS)
                    watcher.watch(marker, acknowledged)
                apply.transactions.append([begun, None, marker, acknowledged])
            elif holding and not csv_holds:
                apply.transactions[-1][1] = time.time()
            holding = csv_holds
            time.sleep(0.02)
        thread.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        apply.measured = box[0]
        end = apply.started_at + apply.measured.seconds
        longest = max(apply.transactions, key=lambda t: (t[1] or end) - t[0], default=None)
        if longest is not None and longest[3] is not None:
            apply.batch_acks[IN_TRANSACTION] = longest[3] - apply.started_at
        try:
            poller.wait_count(poller.counter.value + 3 if poller.counter else 0)  # a few answers after the apply
        except RuntimeError as exc:
            apply.analyst_failure = str(exc)
        apply.analyst = poller.stop()
        apply.analyst_failure = apply.analyst_failure or poller.exit_note
        poller = None
        watcher.wait_for(list(watcher.watching), timeout=MAX_ACK_TO_QUERYABLE * 5)
        apply.batches[AT_START] = watcher.seen.get("at-start")
        if longest is not None and longest[3] is not None:
            apply.batches[IN_TRANSACTION] = watcher.seen.get(longest[2])
        else:
            print("    (the apply's write transaction was not seen in /proc/locks: no batch sent then)", flush=True)
        apply.transaction_batches = {t[2]: watcher.seen.get(t[2]) for t in apply.transactions if t[3] is not None}
        apply.new_count = retrying(lambda: lake_count(catalog), watcher.errors)
        apply.commit_at = retrying(lambda: commit_time(catalog, apply.started_at), watcher.errors)
    finally:
        if poller is not None:
            poller.stop()
        watcher.done.set()
        apply.watch_errors = list(watcher.errors)
        api.close()
        apply.api_runs = list(api.runs)


# ---------------------------------------------------------------------------- parts 3 and 4: the profiles lake


def crm_rows_sql(start: int, stop: int, seed: int) -> str:
    """Users [start, stop) as crm's CSV cells (bench_csv's columns), all VARCHAR."""
    return f"SELECT {csvb._text_columns_sql(seed)} FROM range({int(start)}, {int(stop)}) AS t(i)"


def web_rows_sql(start: int, stop: int) -> str:
    """Users [start, stop) as web's typed rows."""
    return f"""
    SELECT 'user' || lpad(CAST(i AS VARCHAR), 9, '0') || '@example.com' AS user_id,
           CAST(hash(i, 1) % 500 AS DOUBLE) AS web_visits,
           ['Chrome', 'Firefox', 'Safari', 'Edge'][1 + CAST(hash(i, 2) % 4 AS INTEGER)] AS web_browser,
           'segment-' || CAST(hash(i, 3) % 200 AS VARCHAR) AS web_segment,
           hash(i, 4) % 3 = 0 AS web_premium,
           TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_seconds(CAST(hash(i, 5) % 30000000 AS BIGINT)) AS web_last_seen,
           TIMESTAMPTZ '2024-06-01 00:00:00+00' AS _updated_at, 'seed' AS _source
      FROM range({int(start)}, {int(stop)}) AS t(i)
    """


def crm_typed_sql(start: int, stop: int) -> str:
    typed = ", ".join([
        "email AS user_id",
        *(f"CAST({csvb.q(c)} AS {csvb.DUCKDB_TYPES[t]}) AS {csvb.q(n)}" for c, n, t in csvb.PROPERTIES),
        "TIMESTAMPTZ '2024-01-01 00:00:00+00' AS _updated_at", "'seed' AS _source",
    ])  # fmt: skip
    return f"SELECT {typed} FROM ({crm_rows_sql(start, stop, seed=2)})"


def profile_ranges(users: int) -> dict[str, tuple[int, int]]:
    """crm: the first 60% of the users, web: the last 60% (overlapping by 20%)."""
    share = round(users * 0.6)
    return {CRM: (0, share), WEB: (users - share, users)}


def write_profiles_catalog(folder: Path) -> Path:
    import yaml

    (folder / "landing").mkdir(parents=True, exist_ok=True)
    document = {
        "warehouse": lake_settings(folder),
        "landing": str(folder / "api_landing"),
        "connections": [{"name": "files", "type": "local", "path": str(folder / "landing")}],
        "integrations": [
            {"name": CRM, "type": "s3_csv", "connection": "files", "folder": CRM, "user_id_column": "email",
             "properties": [{"column": c, "name": n, "type": t} for c, n, t in csvb.PROPERTIES]},
            {"name": WEB, "type": "s3_csv", "connection": "files", "folder": WEB, "user_id_column": "email",
             "properties": [{"column": c, "name": n, "type": t} for c, n, t in WEB_PROPERTIES]},
        ],
    }  # fmt: skip
    path = folder / "integrations.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def build_profiles(catalog_path: str, plain_path: str, users: int) -> dict[str, Any]:
    """(A child.) Both attribute tables in the lake (one transaction each), then the same tables and view in a plain file."""
    import duckdb

    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import ensure_schema, open_writer, transaction, user_profiles_sql

    os.environ.setdefault(csvb.MEMORY_ENV, csvb.PREPARE_MEMORY)
    catalog = load_catalog(catalog_path)
    ranges = profile_ranges(users)
    with open_writer(catalog) as con:
        con.execute("SET enable_progress_bar = false")
        ensure_schema(con, catalog)
        with transaction(con):
            con.execute(f"INSERT INTO attributes_{CRM} {crm_typed_sql(*ranges[CRM])}")
        with transaction(con):
            con.execute(f"INSERT INTO attributes_{WEB} {web_rows_sql(*ranges[WEB])}")
        con.execute(f"ATTACH {csvb.lit(plain_path)} AS plain")
        for name in (CRM, WEB):
            con.execute(f"CREATE TABLE plain.attributes_{name} AS SELECT * FROM lake.attributes_{name}")
        con.execute("DETACH plain")
        distinct = con.execute("SELECT count(*) FROM user_profiles").fetchone()[0]
    with duckdb.connect(plain_path) as plain:
        plain.execute(f"CREATE VIEW user_profiles AS {user_profiles_sql(catalog)}")
    return {"distinct": distinct, "lake_bytes": folder_bytes(catalog.warehouse_data_path),
            "plain_bytes": os.path.getsize(plain_path)}


def _reader(kind: str, location: str) -> Any:
    """An open read connection: the lake through open_reader, or the plain file with the same settings."""
    import duckdb

    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.warehouse import MEMORY_LIMIT_ENV, READER_MEMORY_LIMIT, open_reader

    if kind == "lake":
        return open_reader(load_catalog(location))
    con = duckdb.connect(location, read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{os.environ.get(MEMORY_LIMIT_ENV) or READER_MEMORY_LIMIT}'")
    return con


def _comparable(rows: list[tuple[Any, ...]]) -> str:
    """Rows as text to compare across databases: sorted, floats to 9 digits (parallel sums differ in the last bits)."""
    return repr(sorted((tuple(f"{v:.9g}" if isinstance(v, float) else v for v in row) for row in rows), key=repr))


def _timed(con: Any, sql: str, rounds: int) -> dict[str, Any]:
    """`sql` once to warm up and `rounds` times timed."""
    timings = []
    for _ in range(rounds + 1):
        mark = time.perf_counter()
        rows = con.execute(sql).fetchall()
        timings.append(time.perf_counter() - mark)
    return {"warm-up": timings[0], "runs": timings[1:], "best": min(timings[1:]), "rows": _comparable(rows)}


def run_reads(kind: str, location: str, queries: dict[str, str], rounds: int, point_user: str | None = None) -> dict[str, Any]:
    """(A child.) Open, then each query once to warm up and `rounds` times timed.

    With `point_user`, also the selective query's parts, DECOMPOSITION_ROUNDS times each: the
    query itself, the same query for a user no file holds (in the lake: its catalog reads alone)
    and, in the lake, each table's Parquet files that hold the user read directly with
    read_parquet outside the lake (`USE memory`: a statement resolved through the lake opens
    the catalog too), which is what its scans cost without DuckLake.
    """
    from integration_hub.core.sql import literal

    started = time.perf_counter()
    with _reader(kind, location) as con:
        opened = time.perf_counter() - started
        out: dict[str, Any] = {"open": opened, "settings": con.execute(
            "SELECT current_setting('memory_limit'), current_setting('threads')").fetchone()}
        for name, sql in queries.items():
            out[name] = _timed(con, sql, rounds)
        if point_user is None:
            return out
        parts = out["decomposition"] = {
            "selective": _timed(con, selective_sql(point_user), DECOMPOSITION_ROUNDS),
            NO_SUCH_USER: _timed(con, selective_sql(NO_SUCH_USER_ID), DECOMPOSITION_ROUNDS),
        }
        if kind == "lake":
            tables = {}
            for table in (f"attributes_{CRM}", f"attributes_{WEB}"):
                tables[table] = [row[0] for row in con.execute(
                    f"SELECT data_file FROM ducklake_list_files('lake', {literal(table)})").fetchall()]
            con.execute("USE memory")
            for table, files in tables.items():
                holding = [f for f in files if con.execute(
                    f"SELECT count(*) FROM read_parquet({literal(f)}) WHERE user_id = {literal(point_user)}").fetchone()[0]]
                listed = ", ".join(literal(f) for f in holding)
                sql = f"SELECT * FROM read_parquet([{listed}]) WHERE user_id = {literal(point_user)}"
                parts[table] = {"files": len(holding), "of": len(files), **_timed(con, sql, DECOMPOSITION_ROUNDS)}
    return out


def run_history_applies(catalog_path: str, users: int, applies: int, rows: int, user: int) -> dict[str, Any]:
    """(A child.) `applies` sources of `rows` crm users through apply_source (MERGE); every third sets `user`'s plan."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.ingest import RunRecord, apply_source, new_run_id, now_utc
    from integration_hub.core.warehouse import open_writer

    catalog = load_catalog(catalog_path)
    integration = catalog.integration(CRM)
    start, stop = profile_ranges(users)[CRM]
    span = max(1, stop - start - rows)
    seconds, plans = [], []
    with open_writer(catalog) as con:
        for k in range(applies):
            first = start + (k * 7919 * rows) % span
            source = f"SELECT * FROM ({crm_rows_sql(first, first + rows, seed=10 + k)}) WHERE email <> {csvb.lit(user_id(user))}"
            if k % 3 == 0:
                plan = f"history-{k}"
                plans.append(plan)
                source += (
                    f" UNION ALL SELECT * REPLACE ({csvb.lit(plan)} AS {csvb.q('Plan Tier')}) "
                    f"FROM ({crm_rows_sql(user, user + 1, seed=10 + k)})"
                )
            run = RunRecord(run_id=new_run_id(), integration=CRM, kind="csv", source=f"history-{k}.csv", started_at=now_utc())
            mark = time.perf_counter()
            apply_source(con, integration, source, run, max_rejected_ratio=0.0)
            seconds.append(time.perf_counter() - mark)
            if run.status != "success":
                raise RuntimeError(f"apply {k}: {run.summary()}")
    return {"seconds": seconds, "plans": plans}


def run_history(catalog_path: str, user: str, rounds: int) -> dict[str, Any]:
    """(A child.) attribute_history for `user`, and the floor: the user's current row; warm-up + `rounds` each."""
    from integration_hub.core.catalog import load_catalog
    from integration_hub.core.history import attribute_history

    catalog = load_catalog(catalog_path)
    out: dict[str, Any] = {}
    with _reader("lake", catalog_path) as con:
        for name, call in (
            ("history", lambda: attribute_history(con, catalog, user)),
            ("current row", lambda: con.execute(f"SELECT * FROM attributes_{CRM} WHERE user_id = ?", [user]).fetchall()),
        ):
            timings, result = [], None
            for _ in range(rounds + 1):
                mark = time.perf_counter()
                result = call()
                timings.append(time.perf_counter() - mark)
            out[name] = {"first": timings[0], "runs": timings[1:], "best": min(timings[1:])}
            if name == "history":
                plan = [c.value for c in result if c.attribute == "plan"]  # type: ignore[union-attr]
                out["changes"] = len(result)  # type: ignore[arg-type]
                out["plan values"] = plan
    return out


def run_parts_3_4(args: argparse.Namespace, work: Path, parts: set[str]) -> dict[str, Any]:
    folder = work / "profiles"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    catalog = write_profiles_catalog(folder)
    plain = folder / "plain.duckdb"
    started = time.perf_counter()
    built = measure(build_profiles, str(catalog), str(plain), args.profile_users).result
    print(
        f"  parts 3-4: built user_profiles of {built['distinct']:,} users (two tables of "
        f"{round(args.profile_users * 0.6):,}) in the lake ({built['lake_bytes'] / MB:,.0f} MiB) and in a plain file "
        f"({built['plain_bytes'] / MB:,.0f} MiB) in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    out: dict[str, Any] = {"distinct": built["distinct"]}
    target = round(args.profile_users * 0.5)  # in both tables
    if "3" in parts:
        queries = {
            "selective": selective_sql(user_id(target)),
            "full scan": FULL_SCAN,
        }
        for kind, location in (("lake", catalog), ("plain", plain)):
            print(f"  part 3: reads from the {kind} ...", flush=True)
            m = measure(run_reads, kind, str(location), queries, args.read_rounds, user_id(target),
                        preload=("duckdb", "integration_hub.core.warehouse"))
            m.result["peak_rss"] = m.peak_rss_bytes
            out[kind] = m.result
    if "4" in parts:
        history_user = round(args.profile_users * 0.3)  # a crm user
        rows = min(args.history_rows, max(10, round(args.profile_users * 0.6) // 10))
        print(f"  part 4: {args.history_applies} applies of {rows:,} rows ...", flush=True)
        applied = measure(run_history_applies, str(catalog), args.profile_users, args.history_applies, rows, history_user,
                          preload=("duckdb", "integration_hub.core.ingest")).result
        uid = user_id(history_user)
        m = measure(run_history, str(catalog), uid, args.read_rounds, preload=("duckdb", "integration_hub.core.history"))
        cli_runs, floor_runs, cli_changes = [], [], None
        env = cli_env()
        for _ in range(args.read_rounds):
            log = folder / "history.json"
            cli_runs.append(measure(cli_command("--catalog", str(catalog), "history", uid, "--json"), env=env, stdout=log).seconds)
            cli_changes = len(json.loads(log.read_text()))
            floor_runs.append(measure(
                cli_command("--catalog", str(catalog), "sql", f"SELECT * FROM attributes_{CRM} WHERE user_id = {csvb.lit(uid)}", "--json"),
                env=env, stdout=folder / "sql.json",
            ).seconds)  # fmt: skip
        out["history"] = {**m.result, "applies": applied, "rows": rows, "user": uid, "cli": cli_runs,
                          "cli floor": floor_runs, "cli changes": cli_changes}
    return out


# ---------------------------------------------------------------------------- report


def _ratio(value: float | None, floor: float | None) -> str:
    return f"{value / floor:.2f}x" if value is not None and floor else "-"


def _s(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def _polling_analyst(c: Apply) -> list[tuple[str, str, str, str, str, str]]:
    """Part 2a: how fast the answers came, and whether each showed the snapshot it should."""
    assert c.measured is not None
    answers: list[Answer] = c.analyst
    end = c.started_at + c.measured.seconds
    idle = [a for a in answers if a.until < c.started_at]
    during = [a for a in answers if c.started_at <= a.at <= end]
    errors = [a for a in answers if a.error]
    # The apply commits in one of the CSV run's holds of the write lock: before the first began
    # the lake can only show the old count, after the last ended only the new one; an answer
    # overlapping them may show either (but the answers may switch only once).
    begun = min((t[0] for t in c.transactions), default=c.started_at)
    ended = max(((t[1] or end) for t in c.transactions), default=end)
    wrong = [
        a for a in answers if a.error is None
        and ((a.until < begun and a.count != c.old_count) or (a.at > ended and a.count != c.new_count)
             or a.count not in (c.old_count, c.new_count))
    ]  # fmt: skip
    counts = [a.count for a in answers if a.error is None]
    switches = sum(1 for x, y in zip(counts, counts[1:], strict=False) if x != y)
    right = bool(counts) and not wrong and switches == 1 and counts[0] == c.old_count and counts[-1] == c.new_count
    idle_max = max((a.seconds for a in idle), default=None)
    worst = max(during, key=lambda a: a.seconds, default=None)

    def at(t: float | None) -> str:
        return f"{t - c.started_at:.1f} s" if t else "-"

    print(
        f"\n(a) polling analyst (a new open_reader + `{COUNT_QUERY}` each time): {len(answers)} answers, "
        f"{len(during)} during the apply, {len(errors)} errors; latency idle max {_s(idle_max)}, during the apply max "
        f"{_s(worst.seconds if worst else None)} (of which open_reader {_s(worst.open_seconds if worst else None)}), median "
        f"{_s(statistics.median(a.seconds for a in during) if during else None)}\n"
        f"    count {c.old_count:,} -> {c.new_count:,}; after the CLI started: the CSV run held the write lock between "
        f"{at(begun)} and {at(ended)} ({len(c.transactions)} time(s)), commit snapshot_time {at(c.commit_at)}, the answers switched "
        f"{switches} time(s); old until the commit and new after: {'yes' if right else 'NO'}"
        + (f" (wrong: {[(round(a.at - c.started_at, 1), a.count) for a in wrong[:5]]})" if wrong else "")
        + (f"\n    failed answers: {[(round(a.at - c.started_at, 1), a.error) for a in errors[:3]]}" if errors else "")
        + (f"\n    the analyst: {c.analyst_failure} (its last answer began {at(answers[-1].at if answers else None)})"
           if c.analyst_failure else "")
    )
    ok_latency = worst is not None and worst.seconds < MAX_READ_SECONDS
    return [
        ("2a reader latency during the apply (max)", _s(worst.seconds if worst else None), f"idle max {_s(idle_max)}",
         _ratio(worst.seconds if worst else None, idle_max), f"< {MAX_READ_SECONDS:.0f} s", "PASS" if ok_latency else "FAIL"),
        ("2a answers that failed", f"{len(errors)} of {len(answers)}" + (", the analyst died" if c.analyst_failure else ""),
         "-", "-", "none", "FAIL" if errors or c.analyst_failure else "PASS"),
        ("2a answers: old count until the commit, new after", "yes" if right else "no", "-", "-", "every answer",
         "PASS" if right else "FAIL"),
    ]


def report_part2(results: dict[str, Any], summary: list[tuple[str, str, str, str, str, str]]) -> bool:
    ok = True
    applies: list[Apply] = results["applies"]
    failed = [a for a in applies if a.error or a.measured is None]
    for a in failed:
        print(f"FAILED  apply {a.kind}: {a.error}")
    ok &= not failed
    alone = [a.measured.seconds for a in applies if a.kind == "A" and a.measured]
    held = [a.measured.seconds for a in applies if a.kind == "B" and a.measured]
    rows = [
        (a.kind, "alone" if a.kind == "A" else "reader held open" if a.kind == "B"
         else "polling reader + API", _s(a.measured.seconds if a.measured else None),
         f"{a.measured.peak_rss_mb:,.0f}" if a.measured else "-", (a.error or "")[:80])
        for a in applies
    ]  # fmt: skip
    print_table(["apply", "beside it", "wall", "peak RSS MiB", "error"], rows,
                title=f"Part 2: the apply of {results['size'] / MB:,.0f} MiB into {results['existing']:,} users, three ways")

    # (a) the polling analyst
    c = next((a for a in applies if a.kind == "C" and a.measured), None)
    if c is not None and (c.analyst or c.analyst_failure):
        summary += _polling_analyst(c)
    elif "C" in [a.kind for a in applies]:
        summary.append(("2a reader latency during the apply (max)", "-", "-", "-", f"< {MAX_READ_SECONDS:.0f} s", "FAIL"))

    # (b) the held-open analyst
    b_runs = [a for a in applies if a.kind == "B" and a.measured]
    if alone and held:
        delay = min(held) - min(alone)
        queries = [s[1] for a in b_runs for s in a.analyst]
        print(
            f"\n(b) reader held open: apply alone {' / '.join(f'{s:.1f}' for s in alone)} s, with the reader held open "
            f"{' / '.join(f'{s:.1f}' for s in held)} s (best: {min(held):.1f} vs {min(alone):.1f} s, {delay:+.1f} s); "
            f"the held reader ran {len(queries)} queries meanwhile (max {_s(max(queries, default=None))})"
            + "".join(f"; the held reader: {a.analyst_failure}" for a in b_runs if a.analyst_failure)
        )
        summary.append(("2b apply with a reader held open", _s(min(held)), f"alone {_s(min(alone))}",
                        _ratio(min(held), min(alone)), f"< {MAX_WRITER_DELAY:.0f} s more",
                        "PASS" if delay < MAX_WRITER_DELAY else "FAIL"))

    # (c) the API batches
    if c is not None and c.batches:
        floor = c.batches.get(FLOOR_BATCH)
        print("\n(c) API batches, from their 202 until open_reader sees them:")
        for label, seconds in c.batches.items():
            sent = c.batch_acks.get(label)
            print(f"    sent {label}{f' ({sent:.1f} s after the CLI started)' if sent is not None else ''}: "
                  f"{_s(seconds) if seconds is not None else 'not seen'}")
        runs = [(round(s - c.started_at, 1), round(e - s, 1), code) for s, e, code in c.api_runs]
        print(f"    `integration-hub run {API_INTEGRATION}` runs (start after the CSV CLI started, seconds, exit): {runs}")
        end = c.started_at + c.measured.seconds
        holds = [(round(b - c.started_at, 1), round((e or end) - b, 1), _s(c.transaction_batches.get(m)) if a else "not sent")
                 for b, e, m, a in c.transactions]
        print(f"    the CSV run held the lake's write lock {len(holds)} time(s) (start after the CLI started, seconds held, "
              f"a batch sent then visible after): {holds}; the longest is taken as the apply's transaction")
        if c.watch_errors:
            print(f"    this process's reads of the lake (the batch watcher, the counts) failed {len(c.watch_errors)} "
                  f"time(s), e.g. {c.watch_errors[0]}")
        for label, seconds in c.batches.items():
            if label == FLOOR_BATCH:
                continue
            failed = f" ({len(c.watch_errors)} failed reads meanwhile)" if c.watch_errors else ""
            summary.append((f"2c API batch sent {label}: ack to queryable", _s(seconds) + failed, f"no apply {_s(floor)}",
                            _ratio(seconds, floor), f"< {MAX_ACK_TO_QUERYABLE:.0f} s",
                            "PASS" if seconds is not None and seconds < MAX_ACK_TO_QUERYABLE else "FAIL"))
        ok &= all(code == 0 for _, _, code in c.api_runs)
    for a in applies:
        if a.measured and a.kind == "C" and a.measured.result.get("timeline"):
            print_table(["s since the CLI started", "event or log line of the Dagster run"],
                        [(f"{t:.1f}", what) for t, what in [*a.measured.result["timeline"], (a.measured.seconds, "the CLI process exited")]],
                        title="apply C: where the time goes")
    return ok


def report_part3(results: dict[str, Any], summary: list[tuple[str, str, str, str, str, str]]) -> bool:
    lake, plain = results.get("lake"), results.get("plain")
    if not lake or not plain:
        return True
    rows = []
    ok = True
    for name in ("selective", "full scan"):
        ratio = lake[name]["best"] / plain[name]["best"]
        same = lake[name]["rows"] == plain[name]["rows"]
        ok &= same
        rows.append((name, f"{plain[name]['best']:.3f}", f"{lake[name]['best']:.3f}", f"{ratio:.2f}x",
                     " / ".join(f"{s:.3f}" for s in plain[name]["runs"]), " / ".join(f"{s:.3f}" for s in lake[name]["runs"]),
                     "yes" if same else "NO"))
        summary.append((f"3 {name} query on user_profiles", f"{lake[name]['best']:.3f} s", f"plain {plain[name]['best']:.3f} s",
                        f"{ratio:.2f}x", f"<= {MAX_READ_RATIO}x", "PASS" if ratio <= MAX_READ_RATIO else "FAIL"))
    print_table(
        ["query", "plain best s", "lake best s", "lake/plain", "plain runs", "lake runs", "same rows"],
        rows,
        title=(f"Part 3: user_profiles of {results['distinct']:,} users; memory_limit {lake['settings'][0]}, "
               f"threads {lake['settings'][1]}; open: lake {lake['open']:.2f} s, plain {plain['open']:.2f} s; "
               f"peak RSS lake {lake['peak_rss'] / MB:,.0f} MiB, plain {plain['peak_rss'] / MB:,.0f} MiB"),
    )
    parts, plain_parts = lake.get("decomposition"), plain.get("decomposition")
    if parts and plain_parts:
        ms = 1000.0
        reads = {t: d for t, d in parts.items() if t.startswith("attributes_")}
        read_seconds = sum(d["best"] for d in reads.values())
        print(
            f"Where the lake's selective query spends its time (best of {DECOMPOSITION_ROUNDS}): the query "
            f"{parts['selective']['best'] * ms:.1f} ms, against the plain file's {plain_parts['selective']['best'] * ms:.1f} ms; "
            f"the same query for a user no file holds (the lake: its catalog reads alone) {parts[NO_SUCH_USER]['best'] * ms:.1f} ms, "
            f"plain {plain_parts[NO_SUCH_USER]['best'] * ms:.1f} ms; the Parquet files holding the user, read directly "
            "outside the lake: "
            + " + ".join(f"{t} {d['best'] * ms:.1f} ms ({d['files']} of {d['of']} files)" for t, d in reads.items())
            + f" = {read_seconds * ms:.1f} ms, {read_seconds / plain_parts['selective']['best']:.2f}x the plain file's whole query."
        )
    return ok


def report_part4(results: dict[str, Any], summary: list[tuple[str, str, str, str, str, str]]) -> bool:
    h = results.get("history")
    if not h:
        return True
    plans = h["applies"]["plans"]
    found = h["plan values"]
    right = found[1:] == plans and h["cli changes"] == h["changes"]
    applies = h["applies"]["seconds"]
    print(
        f"\nPart 4: {len(applies)} applies of {h['rows']:,} crm rows (apply_source, {min(applies):.2f}-{max(applies):.2f} s "
        f"each, median {statistics.median(applies):.2f} s), {len(plans)} of them setting {h['user']}'s plan; its history: "
        f"{h['changes']} changes, plan {found[:1]} then {len(found) - 1} values "
        f"({'as applied' if found[1:] == plans else 'NOT as applied: ' + repr(found)}); the CLI listed "
        f"{h['cli changes']} changes\n"
        f"    attribute_history: first {h['history']['first']:.3f} s, then {' / '.join(f'{s:.3f}' for s in h['history']['runs'])}; "
        f"the user's current row: first {h['current row']['first']:.3f} s, then "
        f"{' / '.join(f'{s:.3f}' for s in h['current row']['runs'])}\n"
        f"    `integration-hub history USER --json`: {' / '.join(f'{s:.2f}' for s in h['cli'])} s; "
        f"`integration-hub sql` of the user's row: {' / '.join(f'{s:.2f}' for s in h['cli floor'])} s"
    )
    best = h["history"]["best"]
    summary.append(("4 attribute_history of one user", f"{best:.3f} s", f"current row {h['current row']['best']:.3f} s",
                    _ratio(best, h["current row"]["best"]), f"< {MAX_HISTORY_SECONDS:.0f} s",
                    "PASS" if best < MAX_HISTORY_SECONDS else "FAIL"))
    summary.append(("4 `integration-hub history` (subprocess)", f"{min(h['cli']):.2f} s", f"`sql` {min(h['cli floor']):.2f} s",
                    _ratio(min(h["cli"]), min(h["cli floor"])), "(reported)", "-"))
    return right


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csvb.add_size_arguments(parser)
    parser.add_argument("--profile-users", type=int, default=None,
                        help="distinct users of parts 3-4 (default 1.25 x --users: 10,000,000)")
    parser.add_argument("--parts", default="2,3,4", help="comma-separated subset of 2,3,4 (default all)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="part 2: applies A and B this many times each, the best counts (default 2)"
    )
    parser.add_argument("--poll-interval", type=float, default=0.5, help="part 2a: seconds between the analyst's queries")
    parser.add_argument("--analyst-interval", type=float, default=3.0, help="part 2b: seconds between the held reader's queries")
    parser.add_argument("--sensor-interval", type=float, default=10.0,
                        help="part 2c: seconds between checks for pending API batches (the API sensor's default: 10)")
    parser.add_argument("--history-applies", type=int, default=30, help="part 4: applies before the history (default 30)")
    parser.add_argument("--history-rows", type=int, default=10_000, help="part 4: rows per apply (default 10,000)")
    parser.add_argument("--read-rounds", type=int, default=3, help="parts 3-4: timed runs after the warm-up (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir afterwards")
    args, _ = parser.parse_known_args(argv)  # run_all.py passes every benchmark the same arguments
    csvb.check_sizes(parser, args)
    needed = (2 + MAX_TRANSACTION_BATCHES) * API_BATCH_RECORDS + 1
    if args.users - csvb.existing_in_file(args.rows) < needed:
        parser.error(f"--users must leave {needed} users outside the file for the API batches")
    args.profile_users = args.profile_users or round(args.users * 1.25)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if parts - {"2", "3", "4"} or args.repeat < 1 or args.read_rounds < 1:
        parser.error("--parts is a subset of 2,3,4; --repeat and --read-rounds at least 1")

    work = args.work_dir.resolve() / "lake"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    print(f"Lake benchmark: part 2 {args.rows:,} rows into {args.users:,} users; parts 3-4 {args.profile_users:,} users; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; work dir {work}", flush=True)
    summary: list[tuple[str, str, str, str, str, str]] = []
    ok = True
    try:
        if "2" in parts:
            ok &= report_part2(run_part2(args, work), summary)
        if parts & {"3", "4"}:
            results = run_parts_3_4(args, work, parts)
            ok &= report_part3(results, summary)
            ok &= report_part4(results, summary)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(["figure", "value", "floor", "ratio", "target", "result"], summary,
                title=f"Summary ({date.today().isoformat()}, load average now {os.getloadavg()[0]:.1f})")
    for figure, value, _, ratio, target, result in summary:
        if result in ("PASS", "FAIL"):
            print(target_line(f"{figure} {target}", f"{value}, {ratio}", result == "PASS"))
    print(f"all results as expected: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The attribute store: a DuckLake, read and written through DuckDB.

DuckDB is the engine; the tables live in a DuckLake: a catalog database holding metadata and
snapshots (embedded default: a SQLite file) and Parquet files under a data path. Every statement
of a reader sees the last committed snapshot, so analysts, commands, the API server and sensors
never wait for a run and never delay one.

Writers: runs of different integrations do their work (downloads, staging, validation) at the
same time. A SQLite catalog lets one writer commit at a time, and a DuckLake transaction whose
metadata snapshot is older than another's commit cannot commit at all, so with SQLite the write
transactions themselves (see `transaction`) take turns through a lock on the catalog file. They
are short: the slow work (validation, a large source's new Parquet files) happens before. Two
runs of one integration are serialized for their whole length (`integration_lock`).

Scale-out: the catalog is a PostgreSQL database and the data an s3:// path, shared by every
machine. The same turns are taken through PostgreSQL advisory locks instead of files (`Lake.lock`),
so no lock or state is on any machine's disk.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import duckdb

from .catalog import Catalog, InboundIntegration, S3Connection
from .sql import DUCKDB_TYPES, ident, literal, sql_values

MEMORY_LIMIT_ENV = "INTEGRATION_HUB_DUCKDB_MEMORY"
# DuckDB would take 80% of RAM; the warehouse shares the machine with Dagster and the API, and
# spills to disk (temp_directory) beyond this. $INTEGRATION_HUB_DUCKDB_MEMORY overrides it.
DEFAULT_MEMORY_LIMIT = "1GB"
READER_MEMORY_LIMIT = "512MB"
LOCK_TIMEOUT_SECONDS = 600.0
LAKE = "lake"  # the name the lake is attached under in every connection
# A lookup of one user reads little: DuckLake skips the files, and Parquet the row groups, whose
# user_id range leaves the user out, so files are a few MB of small row groups (measured by
# benchmarks/bench_lake.py part 3; a full scan is as fast). ensure_schema sets them on every lake.
PARQUET_ROW_GROUP_ROWS = 16_384
# Lake option -> (the value set, the value the lake shows for it: a size without its unit).
LAKE_FILE_OPTIONS = {
    "parquet_row_group_size": (str(PARQUET_ROW_GROUP_ROWS), str(PARQUET_ROW_GROUP_ROWS)),
    "target_file_size": ("16000000B", "16000000"),
}
SQLITE_BUSY_TIMEOUT_MS = 10_000
TAG_INTEGRATION = "integration_hub/integration"  # run tag naming the integration (core.assets re-exports it)

BOOKKEEPING_TABLES: dict[str, dict[str, str]] = {
    "integration_runs": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "kind": "VARCHAR",
        "source": "VARCHAR",
        "started_at": "TIMESTAMPTZ",
        "finished_at": "TIMESTAMPTZ",
        "status": "VARCHAR",
        "rows_read": "BIGINT",
        "rows_applied": "BIGINT",
        "rows_rejected": "BIGINT",
        "properties_imported": "INTEGER",
        "message": "VARCHAR",
        "dagster_run_id": "VARCHAR",
        "details": "JSON",
    },
    "rejected_rows": {
        "run_id": "VARCHAR",
        "integration": "VARCHAR",
        "source": "VARCHAR",
        "row_number": "BIGINT",
        "user_id": "VARCHAR",
        "column_name": "VARCHAR",
        "value": "VARCHAR",
        "reason": "VARCHAR",
    },
    "processed_files": {
        "integration": "VARCHAR",
        "key": "VARCHAR",
        "sha256": "VARCHAR",
        "size_bytes": "BIGINT",
        "status": "VARCHAR",
        "run_id": "VARCHAR",
        "processed_at": "TIMESTAMPTZ",
        "moved_to": "VARCHAR",
    },
}


class WarehouseError(RuntimeError):
    """The warehouse cannot be used: the message is one line naming the path and the fix."""


class WarehouseBusyError(WarehouseError):
    """Another process holds the warehouse (or an integration) for too long."""


class LakeError(WarehouseError):
    """The lake cannot be opened or created."""


def attributes_table(integration_name: str) -> str:
    return f"attributes_{integration_name}"


# ---------------------------------------------------------------------------- the lake


@dataclass(frozen=True)
class S3DataAccess:
    """How DuckDB's httpfs reaches an s3:// data path: the data connection's endpoint and credentials."""

    region: str | None = None
    endpoint: str | None = None  # host:port of an S3-compatible store (moto, MinIO); None for AWS
    use_ssl: bool = True
    key_id: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    timeout_seconds: float = 60.0
    retries: int = 2

    @classmethod
    def of(cls, connection: S3Connection) -> S3DataAccess:
        endpoint = urlsplit(connection.endpoint_url) if connection.endpoint_url else None
        key_id, secret, token = connection.access_key_id, connection.secret_access_key, connection.session_token
        if key_id is None:
            # The default AWS chain (environment, profile, instance role), as boto3 reads it.
            import boto3

            found = boto3.Session().get_credentials()
            frozen = found.get_frozen_credentials() if found else None
            key_id, secret_text, token_text = (
                (frozen.access_key, frozen.secret_key, frozen.token) if frozen else (None, None, None)
            )
        else:
            secret_text = secret.get_secret_value() if secret else None
            token_text = token.get_secret_value() if token else None
        return cls(
            region=connection.region,
            endpoint=endpoint.netloc if endpoint else None,
            use_ssl=endpoint.scheme != "http" if endpoint else True,
            key_id=key_id,
            secret=secret_text,
            session_token=token_text,
            timeout_seconds=max(connection.connect_timeout_seconds, connection.read_timeout_seconds),
            retries=connection.max_retries,
        )

    def setup(self, con: duckdb.DuckDBPyConnection, name: str = "lake_data", scope: str | None = None) -> None:
        """Give `con` this access: a temporary (in-memory) secret, and the connection's timeouts.

        With `scope` (an s3:// prefix) the secret serves only URLs under it: DuckDB picks the
        secret with the longest matching scope, so the lake's and the API landing's can differ.
        """
        options = ["TYPE s3"]
        for option, value in (
            ("KEY_ID", self.key_id), ("SECRET", self.secret), ("SESSION_TOKEN", self.session_token),
            ("REGION", self.region), ("ENDPOINT", self.endpoint),
        ):
            if value:
                options.append(f"{option} {literal(value)}")
        if self.endpoint:
            options += ["URL_STYLE 'path'", f"USE_SSL {'true' if self.use_ssl else 'false'}"]
        if scope:
            options.append(f"SCOPE {literal(scope)}")
        con.execute(f"CREATE OR REPLACE TEMPORARY SECRET {ident(name)} ({', '.join(options)})")
        con.execute(f"SET http_timeout = {max(1, round(self.timeout_seconds))}")
        con.execute(f"SET http_retries = {self.retries}")


@dataclass(frozen=True)
class Lake:
    """Where the lake lives: its catalog database and its data path.

    Embedded: `catalog_path` is a SQLite file and `data_path` a local folder. Scale-out:
    `postgres_dsn` (libpq keywords, password included: never shown) names a PostgreSQL catalog,
    `data_path` is an s3:// URL reached through `s3`, and `catalog_path` is None.
    """

    catalog_path: Path | None
    data_path: Path | str
    retention_days: int = 30
    postgres_dsn: str | None = field(default=None, repr=False)
    shown_catalog: str | None = None  # how messages name a PostgreSQL catalog (its URL, no password)
    s3: S3DataAccess | None = field(default=None, repr=False)

    @classmethod
    def of(cls, catalog: Catalog) -> Lake:
        settings = catalog.warehouse
        s3 = None
        if settings.data_on_s3 and settings.data_connection:
            connection = catalog.connection(settings.data_connection)
            s3 = S3DataAccess.of(connection) if isinstance(connection, S3Connection) else None
        data_path: Path | str = settings.data_path if settings.data_on_s3 else catalog.warehouse_data_path
        if settings.on_postgres:
            return cls(
                None, data_path, settings.snapshot_retention_days,
                postgres_dsn=postgres_dsn(settings.catalog), shown_catalog=catalog.warehouse_shown, s3=s3,
            )
        return cls(catalog.warehouse_catalog_path, data_path, settings.snapshot_retention_days, s3=s3)

    @property
    def on_postgres(self) -> bool:
        return self.postgres_dsn is not None

    @property
    def shown(self) -> str:
        """The catalog as messages name it: the SQLite file, or the PostgreSQL URL without password."""
        return self.shown_catalog or str(self.catalog_path)

    @property
    def data_is_local(self) -> bool:
        return not str(self.data_path).startswith("s3://")

    @property
    def exists(self) -> bool:
        if self.postgres_dsn is not None:
            return _postgres_lake_exists(self)
        assert self.catalog_path is not None
        return self.catalog_path.exists()

    @property
    def data_url(self) -> str:
        # DuckLake joins file names onto DATA_PATH as text: it must end in a separator.
        return str(self.data_path).rstrip("/") + "/"

    @property
    def scratch_folder(self) -> Path:
        """Where a writer's DuckDB spills (not state: nothing in it outlives the connection)."""
        if self.catalog_path is not None:
            return self.catalog_path.parent / ".duckdb_tmp"
        return Path(tempfile.gettempdir()) / "integration-hub-duckdb"

    def metadata_url(self) -> str:
        if self.postgres_dsn is not None:
            return "ducklake:postgres:" + self.postgres_dsn
        return "ducklake:sqlite:" + str(self.catalog_path)

    def attach_sql(self, alias: str = LAKE, read_only: bool = False, with_data_path: bool = True) -> str:
        """The ATTACH statement that opens this lake (a PostgreSQL one's includes its password).

        The catalog records its data path when it is created; naming it again makes DuckLake check
        that the catalog and the data path still belong together.
        """
        options = [f"DATA_PATH {literal(self.data_url)}"] if with_data_path else []
        if self.postgres_dsn is None:
            options += ["META_JOURNAL_MODE 'WAL'", f"META_BUSY_TIMEOUT {SQLITE_BUSY_TIMEOUT_MS}"]
        if read_only:
            options.append("READ_ONLY")
        return f"ATTACH {literal(self.metadata_url())} AS {ident(alias)} ({', '.join(options)})"

    def lock(self, name: str, what: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Any:
        """An exclusive lock on `name` shared by every process using this lake: `commit`, `attach`
        or `integration:NAME`. A file lock beside a SQLite catalog; a PostgreSQL advisory lock (no
        file, any machine) with a PostgreSQL one. Either is released when its holder dies."""
        if self.postgres_dsn is not None:
            return postgres_lock(self, name, what, timeout)
        assert self.catalog_path is not None
        if name.startswith("integration:"):
            path = self.catalog_path.parent / ".locks" / f"{name.split(':', 1)[1]}.lock"
        else:
            path = self.catalog_path.with_name(self.catalog_path.name + (".lock" if name == "commit" else f".lock.{name}"))
        return file_lock(path, what, timeout)

    def scrub(self, text: str) -> str:
        """`text` with this lake's secrets (catalog password, S3 secret) masked."""
        for secret in (dsn_password(self.postgres_dsn), self.s3 and self.s3.secret, self.s3 and self.s3.session_token):
            if secret:
                text = text.replace(secret, "***")
        return text


# ---------------------------------------------------------------------------- a PostgreSQL catalog

# libpq's own connect timeout, and TCP settings that notice a dead peer within about a minute
# (a read timeout: libpq has none of its own).
POSTGRES_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def postgres_dsn(url: str) -> str:
    """A postgresql:// URL as libpq keywords (what DuckDB's postgres extension and psycopg2 take)."""
    parts = urlsplit(url)
    keywords: dict[str, str] = {}
    if parts.hostname:
        keywords["host"] = parts.hostname
    if parts.port:
        keywords["port"] = str(parts.port)
    if parts.path.strip("/"):
        keywords["dbname"] = unquote(parts.path.strip("/"))
    if parts.username:
        keywords["user"] = unquote(parts.username)
    if parts.password:
        keywords["password"] = unquote(parts.password)
    for name, value in parse_qsl(parts.query):
        keywords[name] = value
    for name, value in POSTGRES_DEFAULTS.items():
        keywords.setdefault(name, value)
    return " ".join(f"{name}={_libpq_value(value)}" for name, value in keywords.items())


def _libpq_value(value: str) -> str:
    if re.fullmatch(r"[\w.\-/:~]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_DSN_PASSWORD = re.compile(r"(?:^| )password=(?:'((?:[^'\\]|\\.)*)'|([^ ']+))")


def dsn_password(dsn: str | None) -> str | None:
    """The password in libpq keywords, if any (to mask it wherever text may repeat it)."""
    match = _DSN_PASSWORD.search(dsn) if dsn else None
    if not match:
        return None
    return match.group(2) if match.group(2) is not None else re.sub(r"\\(.)", r"\1", match.group(1))


def without_password(dsn: str | None) -> str | None:
    """libpq keywords with the password left out (libpq then reads PGPASSWORD or ~/.pgpass)."""
    return _DSN_PASSWORD.sub("", dsn).strip() if dsn else dsn


def postgres_connect(dsn: str, shown: str, purpose: str) -> Any:
    """A psycopg2 connection to the catalog database; LakeError (one line, no password) if it fails."""
    import psycopg2

    try:
        return psycopg2.connect(dsn, application_name=f"integration_hub {purpose}")
    except psycopg2.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        password = dsn_password(dsn)
        raise LakeError(
            f"cannot reach the warehouse catalog {shown} ({reason.replace(password, '***') if password else reason}): "
            "check warehouse.catalog, the password and that PostgreSQL accepts connections from this machine"
        ) from None


def _postgres_connect(lake: Lake, purpose: str) -> Any:
    assert lake.postgres_dsn is not None
    return postgres_connect(lake.postgres_dsn, lake.shown, purpose)


_POSTGRES_LAKES_SEEN: set[str] = set()  # catalogs this process found initialized (they stay so)


def _postgres_lake_exists(lake: Lake) -> bool:
    assert lake.postgres_dsn is not None
    if lake.postgres_dsn in _POSTGRES_LAKES_SEEN:
        return True
    db = _postgres_connect(lake, "reader")
    try:
        with db.cursor() as cursor:
            cursor.execute("SELECT to_regclass('ducklake_metadata') IS NOT NULL")
            found = bool(cursor.fetchone()[0])
    finally:
        db.close()
    if found:
        _POSTGRES_LAKES_SEEN.add(lake.postgres_dsn)
    return found


@contextmanager
def postgres_lock(lake: Lake, name: str, what: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """A session-level advisory lock in the catalog database, held while the block runs.

    Closing the session releases it, and a holder that dies closes it: its machine's kernel, or
    failing that TCP keepalives on both sides, end the session.
    """
    import psycopg2

    db = _postgres_connect(lake, f"lock {name}")
    try:
        db.autocommit = True
        with db.cursor() as cursor:
            cursor.execute(
                "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3"
            )
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(timeout * 1000)}ms",))
            try:
                cursor.execute("SELECT pg_advisory_lock(hashtext('integration_hub'), hashtext(%s))", (name,))
            except psycopg2.errors.LockNotAvailable:
                raise WarehouseBusyError(
                    f"{what} has been busy for {timeout:.0f} s: another run holds it; wait for it to "
                    "finish (see the Dagster UI) and try again"
                ) from None
        yield
    finally:
        db.close()


def extension_directory() -> str | None:
    """The folder of the signed extensions shipped by the duckdb-ext-* wheels, if installed."""
    try:
        import duckdb_ext  # type: ignore[import-not-found]  # a namespace package of data files
    except ImportError:
        return None
    for base in getattr(duckdb_ext, "__path__", []):
        folder = Path(base) / "extensions"
        if folder.is_dir():
            return str(folder)
    return None


def _load_extensions(con: duckdb.DuckDBPyConnection, names: tuple[str, ...]) -> None:
    for name in names:
        try:
            con.execute(f"LOAD {name}")
        except duckdb.Error:
            # No wheel for this platform: DuckDB's own repository (still signature-checked).
            con.execute(f"INSTALL {name}")
            con.execute(f"LOAD {name}")


# Loading the lake's extensions into a new DuckDB costs ~0.35 s of CPU, nearly all of it checking
# their signatures (50 MB each). A DuckDB a reader or writer is done with is detached from its
# lake, reset, and kept here (the last few) for the next new_connection of this process.
_SPARE: list[tuple[int, duckdb.DuckDBPyConnection]] = []  # (pid, DuckDB): never one a parent made
_SPARE_LOCK = threading.Lock()
SPARE_DUCKDBS = 2
# The settings a reader or writer changes for its whole DuckDB, back to their defaults before reuse
# (memory_limit and TimeZone are set by every new_connection).
_RESET_SETTINGS = ("temp_directory", "parquet_metadata_cache", "preserve_insertion_order", "http_timeout", "http_retries")


def _spare_duckdb() -> duckdb.DuckDBPyConnection | None:
    with _SPARE_LOCK:
        while _SPARE:
            pid, con = _SPARE.pop()
            if pid == os.getpid():
                return con
    return None


def retire(con: duckdb.DuckDBPyConnection) -> None:
    """Close a DuckDB from new_connection, or keep it for the next one: lakes detached, secrets dropped,
    settings reset. One that cannot be reset cleanly (or is not needed) is closed."""
    try:
        con.execute("USE memory")
        attached = con.execute(
            "SELECT database_name FROM duckdb_databases() WHERE NOT internal AND database_name <> 'memory' "
            "AND NOT starts_with(database_name, '__ducklake_metadata_')"
        ).fetchall()
        for (name,) in attached:  # DuckLake detaches its catalog database with the lake
            con.execute(f"DETACH {ident(name)}")
        for (name,) in con.execute("SELECT name FROM duckdb_secrets() WHERE NOT persistent").fetchall():
            con.execute(f"DROP TEMPORARY SECRET {ident(name)}")
        for setting in _RESET_SETTINGS:
            con.execute(f"RESET GLOBAL {setting}")
        # Clean only if `memory` alone is left (DuckLake's catalog database went with its lake).
        clean = con.execute("SELECT count(*) FROM duckdb_databases() WHERE NOT internal").fetchone()[0] == 1
    except duckdb.Error:
        clean = False
    closing = [] if clean else [con]
    with _SPARE_LOCK:
        if clean:
            _SPARE.append((os.getpid(), con))
        while len(_SPARE) > SPARE_DUCKDBS:
            closing.append(_SPARE.pop(0)[1])
    for spare in closing:
        spare.close()


_SIZE_UNITS = {
    "": 1, "b": 1, "bytes": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
    "gb": 1000**3, "gib": 1024**3, "tb": 1000**4, "tib": 1024**4,
}


def size_bytes(text: str) -> float | None:
    """A size as DuckDB shows or takes it ('18.8 GiB', '256MB') in bytes; None when it does not parse."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", text or "")
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        return None
    return float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def memory_limit_bytes(con: duckdb.DuckDBPyConnection) -> int:
    """The DuckDB's memory_limit in bytes (DuckDB shows it as e.g. '953.6 MiB')."""
    shown = str(con.execute("SELECT current_setting('memory_limit')").fetchone()[0])
    limit = size_bytes(shown)
    if limit is None:
        raise WarehouseError(f"DuckDB reports a memory_limit of {shown!r}, which is not a size")
    return int(limit)


def new_connection(memory_limit: str | None = None, temp_directory: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the lake's extensions loaded (unsigned extensions stay refused).

    Give it back with `retire` (or close it) when done.
    """
    con = _spare_duckdb()
    if con is None:
        config: dict[str, Any] = {"custom_user_agent": "integration_hub", "autoinstall_known_extensions": False}
        folder = extension_directory()
        if folder:
            config["extension_directory"] = folder
        con = duckdb.connect(config=config)
        _load_extensions(con, ("ducklake",))
    con.execute("SET TimeZone = 'UTC'")
    limit = memory_limit or os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT
    con.execute(f"SET memory_limit = {literal(limit)}")
    if temp_directory is not None:
        con.execute(f"SET temp_directory = {literal(str(temp_directory))}")
    return con


# Catalog files this process has checked and may have open through DuckDB. Once it may, it never
# opens one again itself (a plain open() or Python's sqlite3): closing any descriptor of a file
# drops every POSIX lock the process holds on it, DuckDB's own SQLite's included, and that SQLite
# then reads pages another writer is changing ("database disk image is malformed").
_CATALOGS_CHECKED: set[str] = set()
_CATALOGS_LOCK = threading.Lock()


def _check_catalog_once(path: Path) -> None:
    """`_check_catalog_file` before this process first opens the catalog through DuckDB, never after."""
    key = str(path.resolve())
    with _CATALOGS_LOCK:
        if key in _CATALOGS_CHECKED:
            return
        if path.exists():
            _check_catalog_file(path)
        _CATALOGS_CHECKED.add(key)


def _check_catalog_file(path: Path) -> None:
    """A catalog file that exists must be a DuckLake catalog: say so before DuckDB writes into it."""
    with open(path, "rb") as handle:
        header = handle.read(16)
    if header and header != b"SQLite format 3\x00":
        raise LakeError(
            f"the warehouse catalog {path} is not a DuckLake catalog (not a SQLite database): "
            "point warehouse.catalog at another file, or move this one away"
        )
    if not header:
        return  # an empty file: DuckLake initializes it
    tables = _catalog_tables(path)
    if tables and "ducklake_metadata" not in tables:
        raise LakeError(
            f"the warehouse catalog {path} is a SQLite database but not a DuckLake catalog: "
            "point warehouse.catalog at a new file (it is created on first use)"
        )


def _catalog_tables(path: Path, attempts: int = 5) -> set[str]:
    """The table names in a SQLite file, read a few times over: this second SQLite client can read
    a torn page ("malformed") while DuckDB's own SQLite commits, which says nothing about the file."""
    for attempt in range(attempts):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as db:
                return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            if attempt == attempts - 1:
                raise LakeError(
                    f"the warehouse catalog {path} cannot be read ({exc}): check the file and its permissions"
                ) from None
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def prepare_lake(lake: Lake) -> None:
    """Check the paths of a lake about to be written; make a missing catalog/data folder if its parent exists."""
    if lake.catalog_path is None:
        return  # PostgreSQL and S3: attaching says whether they can be reached
    if not lake.data_is_local:
        _check_catalog_once(lake.catalog_path)
        return
    assert isinstance(lake.data_path, Path)
    for what, setting, path in (
        ("catalog", "warehouse.catalog", lake.catalog_path),
        ("data folder", "warehouse.data_path", lake.data_path),
    ):
        parent = path.parent
        if not parent.is_dir():
            raise LakeError(
                f"the warehouse {what} {path} cannot be created: its folder {parent} does not exist; "
                f"create it (mkdir -p {parent}) or change {setting} in the catalog"
            )
    if not lake.catalog_path.exists() and not os.access(lake.catalog_path.parent, os.W_OK):
        raise LakeError(
            f"the warehouse catalog {lake.catalog_path} cannot be created: {lake.catalog_path.parent} is not "
            "writable; fix its permissions or change warehouse.catalog"
        )
    _check_catalog_once(lake.catalog_path)
    try:
        lake.data_path.mkdir(exist_ok=True)
        probe = lake.data_path / f".write-test-{os.getpid()}-{threading.get_ident()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise LakeError(
            f"the warehouse data folder {lake.data_path} cannot be written ({exc.strerror}): fix its "
            "permissions or change warehouse.data_path in the catalog"
        ) from None


def attach(con: duckdb.DuckDBPyConnection, lake: Lake, read_only: bool) -> None:
    try:
        _load_extensions(con, ("postgres",) if lake.on_postgres else ("sqlite",))
        if lake.s3 is not None:
            _load_extensions(con, ("httpfs",))
            lake.s3.setup(con)
        con.execute(lake.attach_sql(read_only=read_only))
        con.execute(f"USE {LAKE}")
    except duckdb.OutOfMemoryException:
        limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        raise LakeError(
            f"DuckDB needed more than its memory_limit of {limit} to open the warehouse {lake.shown}: "
            f"set ${MEMORY_LIMIT_ENV} higher (e.g. 4GB) and run again"
        ) from None
    except duckdb.Error as exc:
        reason = lake.scrub(str(exc).splitlines()[0])
        fix = (
            ": warehouse.data_path must name the folder the lake was created with (or move the data back)"
            if "does not match existing data path" in reason else ""
        )
        raise LakeError(f"cannot open the warehouse {lake.shown}: {reason}{fix}") from None


def _lake_of(where: Catalog | Lake) -> Lake:
    return where if isinstance(where, Lake) else Lake.of(where)


@dataclass
class _SharedReader:
    """A read-only DuckDB with the lake attached, shared by this process's readers of that lake."""

    base: duckdb.DuckDBPyConnection
    users: int = 0


# Opening a DuckDB costs ~0.3 s of CPU, mostly checking the signatures of the ducklake and sqlite
# extensions (100 MB), so a process keeps one reader DuckDB per lake (the last few) and hands out a
# connection to it (`cursor`) per open_reader. Each statement still sees the lake's last commit.
_READERS: dict[tuple[Any, ...], _SharedReader] = {}
_READERS_LOCK = threading.Lock()
SHARED_READERS = 2  # lakes whose reader DuckDB a process keeps when nobody uses them


def _instance_key(lake: Lake, memory_limit: str) -> tuple[Any, ...]:
    """What a kept DuckDB of `lake` must match to be used again (FileNotFoundError: no catalog file)."""
    # The catalog file's identity, not only its path: a lake made anew at the same path (another
    # file, perhaps with the inode number of the one removed) gets a new DuckDB. The change time
    # moves only when SQLite checkpoints its WAL into the file, now and then. The pid: a forked
    # child must not use its parent's DuckDB. The S3 access: changed credentials, a new DuckDB.
    access = hash(astuple(lake.s3)) if lake.s3 is not None else None
    if lake.catalog_path is None:
        return (os.getpid(), lake.postgres_dsn, lake.data_url, access, memory_limit)
    stat = lake.catalog_path.stat()
    identity = (stat.st_dev, stat.st_ino, stat.st_ctime_ns)
    return (os.getpid(), str(lake.catalog_path), lake.data_url, access, *identity, memory_limit)


def _same_lake(kept: tuple[Any, ...], wanted: tuple[Any, ...]) -> bool:
    """Whether a kept DuckDB's key is of the same lake (process, catalog, data path) but no longer matches."""
    return kept[:3] == wanted[:3] and kept != wanted


def _new_reader(lake: Lake, memory_limit: str) -> duckdb.DuckDBPyConnection:
    if lake.catalog_path is not None:
        _check_catalog_once(lake.catalog_path)
    con = new_connection(memory_limit=memory_limit)
    # The lake's files never change once written: their footers can be kept between queries. GLOBAL:
    # a plain SET would hold only for this connection, not for the readers' cursors.
    con.execute("SET GLOBAL parquet_metadata_cache = true")
    try:
        attach(con, lake, read_only=True)
    except LakeError:
        con.close()
        raise
    return con


@contextmanager
def open_reader(
    where: Catalog | Lake, timeout: float = 30.0, private: bool = False
) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection to the lake (each statement sees the last commit), or None before the first run.

    `private`: a DuckDB of its own, for a caller that changes settings of the whole DuckDB (such
    as `enable_external_access`), which a shared one must not.
    """
    lake = _lake_of(where)
    if not lake.exists:
        yield None
        return
    memory_limit = os.environ.get(MEMORY_LIMIT_ENV) or READER_MEMORY_LIMIT
    if private:
        own = _new_reader(lake, memory_limit)
        try:
            yield own
        finally:
            own.close()
        return
    try:
        key = _instance_key(lake, memory_limit)
    except FileNotFoundError:  # removed since: no lake
        yield None
        return
    with _READERS_LOCK:
        shared = _READERS.pop(key, None)
        if shared is None:
            for other_key, other in list(_READERS.items()):
                if other.users == 0 and _same_lake(other_key, key):  # kept for a former state of the catalog file
                    del _READERS[other_key]
                    retire(other.base)
            shared = _SharedReader(_new_reader(lake, memory_limit))
        _READERS[key] = shared  # now the most recently used
        shared.users += 1
        # Close the least recently used ones nobody is reading from (closing a DuckDB closes its
        # connections); one in use stays until a later open finds it free.
        for other_key, other in list(_READERS.items())[:-SHARED_READERS]:
            if other.users == 0:
                del _READERS[other_key]
                retire(other.base)
        con = shared.base.cursor()
    try:
        con.execute(f"USE {LAKE}")
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()
        with _READERS_LOCK:
            shared.users -= 1


_WRITERS: dict[int, Lake] = {}  # id(connection) -> the lake it writes (whose commit lock it takes)
_IN_TRANSACTION: set[int] = set()  # ids of connections inside transaction()


# A process keeps the writer DuckDBs it has finished with (the last few; each one used by one
# open_writer at a time, so settings one writer changes for its whole DuckDB never reach another):
# a run's steps and checks then pay the ~0.3 s of loading the extensions once, not per connection.
_IDLE_WRITERS: dict[tuple[Any, ...], list[duckdb.DuckDBPyConnection]] = {}
_IDLE_WRITERS_LOCK = threading.Lock()
IDLE_WRITERS = 2


def _new_writer(lake: Lake) -> duckdb.DuckDBPyConnection:
    con = new_connection(temp_directory=lake.scratch_folder)
    try:
        # The first ATTACH writes a new catalog, so writers attach one at a time (a few
        # milliseconds; not the commit lock, which a long commit may hold).
        with lake.lock("attach", "the warehouse"):
            attach(con, lake, read_only=False)
    except BaseException:
        con.close()
        raise
    return con


def _writer_key(lake: Lake) -> tuple[Any, ...] | None:
    try:
        return _instance_key(lake, os.environ.get(MEMORY_LIMIT_ENV) or DEFAULT_MEMORY_LIMIT)
    except FileNotFoundError:  # not created yet: the first writer makes it
        return None


def _keep_writer(key: tuple[Any, ...], base: duckdb.DuckDBPyConnection) -> None:
    """Keep `base` as the most recently used idle writer; close the least recently used beyond IDLE_WRITERS."""
    with _IDLE_WRITERS_LOCK:
        _IDLE_WRITERS.setdefault(key, []).append(base)
        _IDLE_WRITERS[key] = _IDLE_WRITERS.pop(key)  # now the most recent key
        kept = [(k, b) for k, bases in _IDLE_WRITERS.items() for b in bases]
        closing = kept[:-IDLE_WRITERS]
        for k, b in closing:
            _IDLE_WRITERS[k].remove(b)
            if not _IDLE_WRITERS[k]:
                del _IDLE_WRITERS[k]
    for _, b in closing:
        retire(b)


@contextmanager
def open_writer(where: Catalog | Lake) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection to the lake, created on first use. Write through `transaction`."""
    lake = _lake_of(where)
    prepare_lake(lake)
    key = _writer_key(lake)
    stale: list[duckdb.DuckDBPyConnection] = []
    with _IDLE_WRITERS_LOCK:
        idle = _IDLE_WRITERS.get(key, []) if key is not None else []
        base = idle.pop() if idle else None
        if base is None and key is not None:  # kept for a former state of the catalog file: of no more use
            for other_key in [k for k in _IDLE_WRITERS if _same_lake(k, key)]:
                stale += _IDLE_WRITERS.pop(other_key)
    for old in stale:
        retire(old)
    base = base or _new_writer(lake)
    # A connection of its own (`cursor`): a fresh session, no temporary tables of the last writer.
    con = base.cursor()
    clean = False
    try:
        con.execute(f"USE {LAKE}")
        con.execute("SET TimeZone = 'UTC'")
        _WRITERS[id(con)] = lake
        yield con
        clean = True
    finally:
        _WRITERS.pop(id(con), None)
        con.close()
        # Kept only after a clean exit: after an error the DuckDB may be in any state.
        key = _writer_key(lake) if clean else None
        if key is not None:
            _keep_writer(key, base)
        else:
            base.close()


@contextmanager
def file_lock(path: Path, what: str, timeout: float = LOCK_TIMEOUT_SECONDS) -> Iterator[None]:
    """An exclusive lock on `path` (waiting up to `timeout`); released when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WarehouseBusyError(
                        f"{what} has been busy for {timeout:.0f} s: another run holds it; wait for it to "
                        "finish (see the Dagster UI) and try again"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write transaction on the lake: all of it commits, or none of it (and the error is raised).

    Write transactions take turns (see the module docstring); keep slow
    work (reading sources, validation) before this block.
    """
    if id(con) in _IN_TRANSACTION:  # nested: part of the enclosing transaction
        yield con
        return
    lake = _WRITERS.get(id(con))
    # A connection not from open_writer (a plain DuckDB file, e.g. one being migrated) needs no turn.
    with lake.lock("commit", "the warehouse") if lake is not None else nullcontext():
        con.execute("BEGIN TRANSACTION")
        _IN_TRANSACTION.add(id(con))
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass  # a failed COMMIT has already ended the transaction
            raise
        finally:
            _IN_TRANSACTION.discard(id(con))


def integration_lock(where: Catalog | Lake, integration: str) -> Any:
    """Held by a run of `integration` for its whole length: two runs of one integration take turns."""
    return _lake_of(where).lock(f"integration:{integration}", f"integration {integration}")


# ---------------------------------------------------------------------------- schema


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """A table's columns in order, name -> DuckDB type; empty if there is no such table."""
    return tables_columns(con, [table])[table]


def tables_columns(con: duckdb.DuckDBPyConnection, tables: list[str]) -> dict[str, dict[str, str]]:
    """`table_columns` of several tables, in one look at the catalog (each look reads the lake's catalog)."""
    if not tables:
        return {}
    # Quoted in place, not bound: binding any parameter makes DuckDB's Python client import pandas (0.5 s).
    rows = con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        f"AND schema_name = 'main' AND table_name IN {sql_values(tables)} "
        "ORDER BY table_name, column_index"
    ).fetchall()
    found: dict[str, dict[str, str]] = {table: {} for table in tables}
    for table, name, data_type in rows:
        found[table][name] = data_type
    return found


def table_data_folder(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """The folder (or URL prefix) DuckLake writes `table`'s Parquet files to, ending in '/'.

    Read from the lake's own catalog (attached by DuckLake as __ducklake_metadata_<name>): the
    data path, then the schema's and the table's folders, each relative to the one before unless
    it says otherwise.
    """
    meta = ident(f"__ducklake_metadata_{LAKE}")
    row = con.execute(
        f"SELECT m.value, s.path, s.path_is_relative, t.path, t.path_is_relative "
        f"FROM {meta}.ducklake_table t JOIN {meta}.ducklake_schema s USING (schema_id), {meta}.ducklake_metadata m "
        "WHERE m.key = 'data_path' AND s.schema_name = 'main' AND s.end_snapshot IS NULL "
        f"AND t.table_name = {literal(table)} AND t.end_snapshot IS NULL"
    ).fetchone()
    if row is None:
        raise WarehouseError(f"the lake has no table {table}")
    folder = row[0]
    for path, relative in ((row[1], row[2]), (row[3], row[4])):
        if path:
            folder = folder + path if relative else path
    return folder if folder.endswith("/") else folder + "/"


def table_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    """The lake's tables and views."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main' "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = 'main' AND NOT internal"
    ).fetchall()
    return {r[0] for r in rows}


_TYPE_ALIASES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}


def same_type(actual: str, wanted: str) -> bool:
    """DuckDB reports TIMESTAMPTZ as TIMESTAMP WITH TIME ZONE: the same type, nothing to alter."""
    actual, wanted = actual.upper(), wanted.upper()
    return _TYPE_ALIASES.get(actual, actual) == _TYPE_ALIASES.get(wanted, wanted)


def ensure_table(
    con: duckdb.DuckDBPyConnection, table: str, columns: dict[str, str], existing: dict[str, str] | None = None
) -> None:
    """Create the table, or add/retype columns the catalog added or changed (no-op when it matches).

    `existing`: the table's columns (`table_columns`), when the caller has just read them.
    """
    existing = table_columns(con, table) if existing is None else existing
    if not existing:
        body = ", ".join(f"{ident(name)} {sql_type}" for name, sql_type in columns.items())
        with transaction(con):
            con.execute(f"CREATE TABLE IF NOT EXISTS {ident(table)} ({body})")
        return
    changes = _column_changes(existing, columns)
    if changes:
        with transaction(con):
            _alter_columns(con, table, existing, changes)


def _column_changes(existing: dict[str, str], columns: dict[str, str]) -> list[tuple[str, str]]:
    """The (name, type) of the columns to add or retype so a table with `existing` has `columns`
    (a column wanted as JSON is only ever added, never retyped)."""
    return [
        (name, sql_type) for name, sql_type in columns.items()
        if name not in existing or not (same_type(existing[name], sql_type) or sql_type == "JSON")
    ]


def _alter_columns(
    con: duckdb.DuckDBPyConnection, table: str, existing: dict[str, str], changes: list[tuple[str, str]]
) -> None:
    for name, sql_type in changes:
        if name not in existing:
            # A new property on an existing integration: add the column, keep the data.
            con.execute(f"ALTER TABLE {ident(table)} ADD COLUMN {ident(name)} {sql_type}")
        else:
            try:
                con.execute(f"ALTER TABLE {ident(table)} ALTER COLUMN {ident(name)} TYPE {sql_type}")
            except duckdb.Error as exc:
                raise RuntimeError(
                    f"cannot change column {name!r} of {table} from {existing[name]} to {sql_type}: "
                    f"existing values do not convert ({str(exc).splitlines()[0]}); fix the values or "
                    "give the property a new name"
                ) from None


def attribute_columns(integration: InboundIntegration) -> dict[str, str]:
    columns = {"user_id": "VARCHAR"}
    columns.update({name: DUCKDB_TYPES[ptype] for _, name, ptype in integration.inbound_properties})
    columns.update({"_updated_at": "TIMESTAMPTZ", "_source": "VARCHAR"})
    return columns


def ensure_bookkeeping(con: duckdb.DuckDBPyConnection) -> None:
    existing = tables_columns(con, list(BOOKKEEPING_TABLES))
    for table, columns in BOOKKEEPING_TABLES.items():
        ensure_table(con, table, columns, existing[table])


def ensure_attribute_table(con: duckdb.DuckDBPyConnection, integration: InboundIntegration) -> str:
    """The integration's table; `user_id` has no index: each apply keeps it unique (checked after every run)."""
    table = attributes_table(integration.name)
    ensure_table(con, table, attribute_columns(integration))
    return table


def user_profiles_sql(catalog: Catalog) -> str:
    """One row per user known to any inbound integration, one column per property."""
    inbound = catalog.inbound
    if not inbound:
        return "SELECT CAST(NULL AS VARCHAR) AS user_id WHERE FALSE"
    if len(inbound) == 1:
        # One table holds each user once: the view is its projection, which lets DuckDB answer a
        # count or an aggregate from the table alone, with no join.
        only = inbound[0]
        names = ", ".join(ident(name) for _, name, _ in only.inbound_properties)
        return (
            f"SELECT user_id, {names + ', ' if names else ''}_updated_at AS last_updated_at "
            f"FROM {ident(attributes_table(only.name))}"
        )
    # A full outer join chain, not a union of the ids joined back to each table: DuckDB hashes
    # one side per join instead of every id twice (4x faster, and it fits a 512 MB reader at 24M).
    aliases = [f"t{n}" for n in range(len(inbound))]
    joined = f"{ident(attributes_table(inbound[0].name))} AS t0"
    for n, integration in enumerate(inbound[1:], start=1):
        earlier = ", ".join(f"{a}.user_id" for a in aliases[:n])
        joined += (
            f" FULL OUTER JOIN {ident(attributes_table(integration.name))} AS t{n} "
            f"ON t{n}.user_id = {earlier if n == 1 else f'COALESCE({earlier})'}"
        )
    columns = [f"COALESCE({', '.join(f'{a}.user_id' for a in aliases)}) AS user_id"]
    for alias, integration in zip(aliases, inbound, strict=True):
        columns += [f"{alias}.{ident(name)}" for _, name, _ in integration.inbound_properties]
    columns.append(f"greatest({', '.join(f'{a}._updated_at' for a in aliases)}) AS last_updated_at")
    return f"SELECT {', '.join(columns)} FROM {joined}"


def _schema_is_current(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> bool:
    wanted = dict(BOOKKEEPING_TABLES)
    wanted.update({attributes_table(i.name): attribute_columns(i) for i in catalog.inbound})
    existing = tables_columns(con, list(wanted))
    if any(_column_changes(existing[table], columns) for table, columns in wanted.items()):
        return False
    view = con.execute(
        "SELECT sql FROM duckdb_views() WHERE database_name = current_database() AND view_name = 'user_profiles'"
    ).fetchone()
    return view is not None and _view_query(view[0]) == _rendered_query(con, user_profiles_sql(catalog))


def _view_query(create_view: str) -> str:
    return create_view.split(" AS ", 1)[1]


def _rendered_query(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """A query as DuckDB stores it in a view (re-rendered: quotes, parentheses), to compare with one."""
    con.execute(f"CREATE OR REPLACE TEMP VIEW _wanted_view AS {sql}")
    try:
        stored = con.execute("SELECT sql FROM duckdb_views() WHERE temporary AND view_name = '_wanted_view'").fetchone()
    finally:
        con.execute("DROP VIEW IF EXISTS temp.main._wanted_view")
    return _view_query(stored[0])


def _file_options_to_set(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """The LAKE_FILE_OPTIONS the lake does not have yet (a new lake, or one made before them)."""
    current = dict(con.execute(f"SELECT option_name, value FROM {LAKE}.options() WHERE scope = 'GLOBAL'").fetchall())
    return {name: value for name, (value, shown) in LAKE_FILE_OPTIONS.items() if current.get(name) != shown}


def ensure_schema(con: duckdb.DuckDBPyConnection, catalog: Catalog) -> None:
    """Create and migrate every table and view the catalog needs, in one transaction (none if current)."""
    options = _file_options_to_set(con)
    if not options and _schema_is_current(con, catalog):
        return  # every run calls this: no empty snapshot, no turn at the write lock
    with transaction(con):
        for name, value in options.items():
            con.execute(f"CALL {LAKE}.set_option({literal(name)}, {literal(value)})")
        ensure_bookkeeping(con)
        for integration in catalog.inbound:
            ensure_attribute_table(con, integration)
        con.execute(f"CREATE OR REPLACE VIEW user_profiles AS {user_profiles_sql(catalog)}")

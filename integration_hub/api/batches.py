"""The API's durable landing store: accepted batches on disk, their status, idempotency keys.

Layout under the catalog's `landing` folder (default `data/api_landing`):

```
<landing>/tokens.sqlite3                      bearer and integration tokens (hashes only)
<landing>/<integration>/pending/<batch>.ndjson accepted records, waiting for a Dagster run
<landing>/<integration>/pending/<batch>.json   the batch's status (what GET /v1/batches answers)
<landing>/<integration>/applied/...           moved here by the run that applied them
<landing>/<integration>/failed/...            moved here by a run that could not apply them
<landing>/_idempotency/<sha256>.json          first answers to requests with an Idempotency-Key
```

Every file is written to a temporary name, fsync'd, renamed into place and its directory
fsync'd, so a file under its final name is complete and survives a crash of the process
(and of the machine). A batch exists once its `.ndjson` is in `pending/` (or its status in
`applied/`/`failed/`); a status without data in `pending/` is an attempt that never finished
and was never acknowledged. Batch ids sort by time: applying pending batches in id order
makes later batches win.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import duckdb

    from ..core.catalog import Catalog
    from .s3_batches import S3BatchStore

PENDING, APPLIED, FAILED = "pending", "applied", "failed"
STATUS_NAMES = {PENDING: "accepted", APPLIED: "applied", FAILED: "failed"}  # what GET /v1/batches says
DATA_SUFFIX, STATUS_SUFFIX = ".ndjson", ".json"
IDEMPOTENCY_DIR = "_idempotency"
IDEMPOTENCY_WINDOW_SECONDS = 24 * 3600
APPLIED_RETENTION_SECONDS = 7 * 24 * 3600
ORPHAN_SECONDS = 3600
BATCH_ID = re.compile(r"b_[0-9]{8}T[0-9]{12}Z_[0-9a-f]{8}\Z")

_id_lock = threading.Lock()
_last_id_ns = 0


def new_batch_id() -> str:
    """`b_<UTC time to the microsecond>_<random>`: sorts by time, strictly increasing per process."""
    global _last_id_ns
    with _id_lock:
        now = max(time.time_ns() // 1000 * 1000, _last_id_ns + 1000)
        _last_id_ns = now
    stamp = datetime.fromtimestamp(now // 1_000_000_000, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"b_{stamp}{(now // 1000) % 1_000_000:06d}Z_{secrets.token_hex(4)}"


def batch_time(batch_id: str) -> datetime:
    stamp = batch_id[2:24]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(directory: Path, data: bytes, sync: bool = True) -> Path:
    """Write `data` to a new temporary file in `directory` (and fsync it)."""
    tmp = directory / f".tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`: temp file, fsync, rename, fsync of the folder."""
    tmp = _write_temp(path.parent, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def idempotency_hash(namespace: str, key: str) -> str:
    """The name a key is stored under: its bearer token's namespace and the key, hashed."""
    return hashlib.sha256(f"{namespace}\0{key}".encode()).hexdigest()


class IdempotencyBusy(Exception):
    """Another request with the same Idempotency-Key is being processed right now."""


AnyBatchStore: TypeAlias = "BatchStore | S3BatchStore"  # the landing stores, which share their methods


def batch_store(catalog: Catalog) -> BatchStore | S3BatchStore:
    """The catalog's landing store: a local folder (the embedded default), or S3 (scale-out)."""
    if catalog.landing_on_s3:
        from .s3_batches import S3BatchStore

        return S3BatchStore.of(catalog)
    return BatchStore(catalog.landing_path)


@dataclass(frozen=True)
class BatchLocation:
    integration: str
    state: str  # pending | applied | failed
    status_path: Path
    data_path: Path


class BatchStore:
    """The landing folder of the API. Shared by the API server (writes) and Dagster runs (apply)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"folder {self.root}"

    # -- folders ----------------------------------------------------------------
    def folder(self, integration: str, state: str = PENDING) -> Path:
        return self.root / integration / state

    def location(self, integration: str) -> str:
        return f"{self.folder(integration)}/"

    def data_url(self, integration: str, batch_id: str) -> str:
        return str(self.folder(integration) / f"{batch_id}{DATA_SUFFIX}")

    def prepare_reading(self, con: duckdb.DuckDBPyConnection) -> None:
        """DuckDB reads the local batch files as they are."""

    def probe_write(self) -> None:
        """For `check`: OSError when the folder (or, before first use, its nearest existing parent)
        is not writable."""
        probe = self.root
        while not probe.exists() and probe != probe.parent:  # created on first use: its nearest folder
            probe = probe.parent
        if not os.access(probe, os.W_OK):
            raise PermissionError(
                errno.EACCES,
                f"the landing folder {self.root} is not writable: the API could not store batches; "
                "fix its permissions or set `landing:` in the catalog",
            )

    def problem(self) -> str | None:
        """Why batches cannot be stored right now (for /healthz), or None."""
        if os.access(self.root, os.W_OK):
            return None
        return f"the landing folder {self.root} is not writable: check its permissions and free space"

    def ensure_folders(self, integration: str) -> None:
        created = False
        for state in (PENDING, APPLIED, FAILED):
            path = self.folder(integration, state)
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True, mode=0o700)
                created = True
        if created:  # the new folders themselves must survive a crash
            for path in (self.root / integration, self.root, self.root.parent):
                if path.is_dir():
                    fsync_dir(path)

    # -- landing (API server) -----------------------------------------------------
    def land(
        self,
        integration: str,
        batch_id: str,
        data: bytes,
        status: dict[str, Any],
        idempotency: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Make an accepted batch durable; return only when it is on disk.

        Order: the idempotency record (pointing at the batch) first, then the status, then
        the data. A crash before the data's rename leaves no batch, and the idempotency
        record pointing at a missing batch is ignored by `idempotent_answer`.

        The records (data file) and the idempotency record are fsync'd; the status file is
        not: it only repeats the counts and rejected records of the answer already given,
        and after a power loss that took it, GET /v1/batches still answers from the data.
        One fsync less per request is ~30% of the cost of a small request.
        """
        self.ensure_folders(integration)
        pending = self.folder(integration)
        data_tmp = _write_temp(pending, data)
        status_tmp = _write_temp(pending, _dumps(status), sync=False)
        try:
            if idempotency is not None:
                key_hash, record = idempotency
                self.write_idempotency(key_hash, record)
            os.replace(status_tmp, pending / f"{batch_id}{STATUS_SUFFIX}")
            os.replace(data_tmp, pending / f"{batch_id}{DATA_SUFFIX}")
        except BaseException:
            data_tmp.unlink(missing_ok=True)
            status_tmp.unlink(missing_ok=True)
            raise
        fsync_dir(pending)

    # -- idempotency --------------------------------------------------------------
    @property
    def idempotency_folder(self) -> Path:
        return self.root / IDEMPOTENCY_DIR

    def write_idempotency(self, key_hash: str, record: dict[str, Any]) -> None:
        folder = self.idempotency_folder
        if not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fsync_dir(self.root)
        write_durably(folder / f"{key_hash}.json", _dumps(record))

    @contextlib.contextmanager
    def claim_idempotency(self, key_hash: str) -> Iterator[dict[str, Any] | None]:
        """Hold the key (IdempotencyBusy if another request does) and give its first answer, if any.

        The hold is a lock on a file beside the key's record: one machine, any number of processes.
        """
        folder = self.idempotency_folder
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(folder / f"{key_hash}.lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IdempotencyBusy() from None
            yield self.idempotent_answer(key_hash)

    def idempotent_answer(self, key_hash: str) -> dict[str, Any] | None:
        """The stored first answer for a key, if it is within the window and its batch exists."""
        path = self.idempotency_folder / f"{key_hash}.json"
        try:
            record = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return None
        if time.time() - float(record.get("created", 0)) > IDEMPOTENCY_WINDOW_SECONDS:
            return None
        batch_id = record.get("batch_id")
        if not isinstance(batch_id, str) or self.locate(batch_id, [record.get("integration", "")]) is None:
            return None  # the first attempt never finished landing: nothing was acknowledged
        return record

    def prune_idempotency(self, now: float | None = None) -> int:
        """Forget keys older than the 24 h window."""
        now = now or time.time()
        removed = 0
        folder = self.idempotency_folder
        if not folder.is_dir():
            return 0
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if now - entry.stat().st_mtime > IDEMPOTENCY_WINDOW_SECONDS + 60:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # -- reading ------------------------------------------------------------------
    def pending_batch_ids(self, integration: str) -> list[str]:
        """Landed, not yet applied batches, oldest first (a cheap directory listing)."""
        try:
            with os.scandir(self.folder(integration)) as entries:
                ids = [e.name[: -len(DATA_SUFFIX)] for e in entries if e.name.endswith(DATA_SUFFIX)]
        except FileNotFoundError:
            return []
        return sorted(i for i in ids if BATCH_ID.match(i))

    def pending_batches(self, integration: str) -> dict[str, int]:
        """Landed, not yet applied batches and their sizes in bytes, oldest first."""
        found = {}
        for batch_id in self.pending_batch_ids(integration):
            with contextlib.suppress(FileNotFoundError):  # applied by another run meanwhile
                found[batch_id] = (self.folder(integration) / f"{batch_id}{DATA_SUFFIX}").stat().st_size
        return found

    def locate(self, batch_id: str, integrations: list[str]) -> BatchLocation | None:
        if not BATCH_ID.match(batch_id):
            return None
        for integration in integrations:
            if not integration:
                continue
            for state in (PENDING, APPLIED, FAILED):
                folder = self.folder(integration, state)
                status_path = folder / f"{batch_id}{STATUS_SUFFIX}"
                data_path = folder / f"{batch_id}{DATA_SUFFIX}"
                if state == PENDING:
                    if data_path.exists():
                        return BatchLocation(integration, state, status_path, data_path)
                elif status_path.exists():
                    return BatchLocation(integration, state, status_path, data_path)
        return None

    def read_status(self, location: BatchLocation) -> dict[str, Any]:
        try:
            status = json.loads(location.status_path.read_bytes())
        except (FileNotFoundError, ValueError):
            status = {
                "batch_id": location.data_path.name[: -len(DATA_SUFFIX)],
                "integration": location.integration,
            }
        status["status"] = STATUS_NAMES[location.state]
        return status

    # -- finishing (Dagster run) ----------------------------------------------------
    def finish(self, integration: str, items: list[tuple[str, dict[str, Any]]], failed: bool) -> None:
        """Record the outcome of applying batches and move them out of `pending/`.

        Called after the DuckDB commit, which is what makes applying durable: the files only
        follow it. So the folders are fsync'd once for all the batches, not once per file; a
        crash before that leaves a batch in `pending/`, and the next run, finding it recorded
        in DuckDB, moves it again.
        """
        self.ensure_folders(integration)
        target = self.folder(integration, FAILED if failed else APPLIED)
        pending = self.folder(integration)
        for batch_id, status in items:
            tmp = target / f".tmp-{secrets.token_hex(8)}"
            tmp.write_bytes(_dumps(status))
            os.replace(tmp, target / f"{batch_id}{STATUS_SUFFIX}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(pending / f"{batch_id}{DATA_SUFFIX}", target / f"{batch_id}{DATA_SUFFIX}")
            (pending / f"{batch_id}{STATUS_SUFFIX}").unlink(missing_ok=True)
        fsync_dir(target)
        fsync_dir(pending)

    def accepted_status(self, integration: str, batch_id: str) -> dict[str, Any]:
        """The status written when the batch was accepted (or a minimal one)."""
        path = self.folder(integration) / f"{batch_id}{STATUS_SUFFIX}"
        try:
            return json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return {"batch_id": batch_id, "integration": integration}

    def prune(self, integration: str, now: float | None = None, every_seconds: float = 0.0) -> int:
        """Forget applied batches after 7 days and unfinished attempts (no data) after an hour.

        With `every_seconds`, does nothing if the last prune of the integration was more
        recent than that (listing `applied/` is not free when it holds many batches).
        """
        now = now or time.time()
        marker = self.root / integration / ".pruned"
        if every_seconds:
            with contextlib.suppress(FileNotFoundError):
                if now - marker.stat().st_mtime < every_seconds:
                    return 0
            with contextlib.suppress(FileNotFoundError):
                marker.touch()
        removed = 0
        for state, age in ((APPLIED, APPLIED_RETENTION_SECONDS), (PENDING, ORPHAN_SECONDS)):
            for entry in _entries(self.folder(integration, state)):
                name = entry.name
                try:
                    if now - entry.stat().st_mtime <= age:
                        continue
                    if state == PENDING:
                        orphan_status = name.endswith(STATUS_SUFFIX) and not (
                            Path(entry.path[: -len(STATUS_SUFFIX)] + DATA_SUFFIX).exists()
                        )
                        if not (orphan_status or name.startswith(".tmp-")):
                            continue
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed


def _entries(folder: Path) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            yield from list(entries)
    except FileNotFoundError:
        return

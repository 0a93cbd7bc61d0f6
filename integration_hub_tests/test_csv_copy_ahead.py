"""On S3 a move is a copy and a delete: a large file is copied to success/ (or failed/) while its rows
are applied, and the original is deleted only after the commit. Whatever changes the outcome after the
copy started leaves no copy in the wrong folder, and a copy left by a killed run is reused."""

from __future__ import annotations

import posixpath
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from integration_hub.core.catalog import Catalog
from integration_hub.core.ingest import REWRITE_MIN_ROWS, Progress
from integration_hub.core.landing import LandingFile, LandingStore, landing_store
from integration_hub.core.warehouse import LAKE, ensure_schema, open_reader, open_writer
from integration_hub.inbound_csv import processing
from integration_hub.inbound_csv.processing import FileMoves, process_file
from integration_hub_tests.conftest import _moto_landing
from integration_hub_tests.support import BUCKET, PREFIX, Landing, query, runs_of

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"
SEED = HEADER + "ann@x.com,gold,5,yes,2024-01-01,2024-05-01T10:00:00Z\nbob@x.com,silver,1,no,2024-02-01,\n"


def rows(count: int) -> str:
    return "".join(f"u{n}@x.com,free,{n},no,2024-01-01,\n" for n in range(count))


class WatchedStore:
    """The real S3 store, noting each copy, delete and move with the users the lake showed then."""

    def __init__(self, store: LandingStore, reader: duckdb.DuckDBPyConnection, fail_copies: int = 0) -> None:
        self._store = store
        self._reader = reader  # opened beforehand: a query answers in milliseconds
        self._fail_copies = fail_copies
        self.moves_by_copy = store.moves_by_copy
        self.events: list[tuple[str, str, int]] = []
        self.fetched: list[Path] = []

    def fetch(self, file: LandingFile, work_dir: Path) -> Path:
        path = self._store.fetch(file, work_dir)
        self.fetched.append(path)
        return path

    def _users(self) -> int:
        return self._reader.cursor().execute(f"SELECT count(*) FROM {LAKE}.attributes_crm").fetchone()[0]

    def copy(self, file: LandingFile, subfolder: str) -> str:
        self.events.append(("copy", subfolder, self._users()))
        if self._fail_copies:
            self._fail_copies -= 1
            raise OSError("the copy failed")
        return self._store.copy(file, subfolder)

    def delete(self, key: str) -> None:
        self.events.append(("delete", key, self._users()))
        self._store.delete(key)

    def move(self, file: LandingFile, subfolder: str) -> str:
        self.events.append(("move", subfolder, self._users()))
        return self._store.move(file, subfolder)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[Landing, Catalog]]:
    """moto's S3, and a catalog whose table holds two users."""
    with _moto_landing(tmp_path) as landing:
        catalog = landing.write_catalog()
        landing.put("crm/seed.csv", SEED)
        process(catalog, store_of(catalog), "crm/seed.csv")
        yield landing, catalog


@pytest.fixture
def watched(s3: tuple[Landing, Catalog]) -> Iterator[Callable[..., WatchedStore]]:
    """Makes the catalog's S3 store watched, over a reader of the lake opened beforehand."""
    _, catalog = s3
    with open_reader(catalog, private=True) as reader:
        yield lambda **kwargs: WatchedStore(store_of(catalog), reader, **kwargs)


def store_of(catalog: Catalog) -> LandingStore:
    return landing_store(catalog, catalog.connection("landing"))


def process(
    catalog: Catalog, store: LandingStore | WatchedStore, key: str, copy_ahead_min_bytes: int = 1, progress: Progress | None = None
) -> None:
    """One pending file through process_file, as the asset runs it (copying ahead from 1 byte)."""
    integration = catalog.integration("crm")
    file = next(f for f in store.list_pending("crm") if f.key == key)
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)
        with FileMoves(con, store, copy_ahead_min_bytes) as moves:  # type: ignore[arg-type]
            process_file(con, store, integration, file, progress=progress, moves=moves)  # type: ignore[arg-type]


def test_a_large_file_is_copied_to_success_before_its_commit_and_deleted_after_it(s3: tuple[Landing, Catalog], watched: Callable[..., WatchedStore]) -> None:
    landing, catalog = s3
    # Enough rows to rewrite the table: the apply takes long enough for the copy to start well before the commit.
    landing.put("crm/users.csv", HEADER + rows(REWRITE_MIN_ROWS))
    store = watched()
    process(catalog, store, "crm/users.csv")

    # Copied while the lake still showed the two users of before; the original deleted once the new ones were in.
    assert store.events == [("copy", "success", 2), ("delete", "crm/users.csv", 2 + REWRITE_MIN_ROWS)]
    assert landing.keys() == ["success/seed.csv", "success/users.csv"]
    assert landing.read("crm/success/users.csv") == HEADER + rows(REWRITE_MIN_ROWS)
    moved = query(catalog, "SELECT moved_to FROM processed_files WHERE key = 'crm/users.csv'")
    assert moved == [("crm/success/users.csv",)]


def test_the_downloaded_copy_is_removed_once_its_rows_are_staged_before_the_commit(
    s3: tuple[Landing, Catalog], watched: Callable[..., WatchedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    landing, catalog = s3
    landing.put("crm/users.csv", HEADER + rows(1000))
    monkeypatch.setattr(processing, "PROGRESS_MIN_BYTES", 0)  # progress lines for this small file too
    store = watched()
    still_there: list[bool] = []

    def progress(line: str) -> None:
        if line.startswith("committed"):  # the run is still inside the file's apply here
            # Removed after the hash, which the commit waited for: at most a moment behind it.
            deadline = time.monotonic() + 5
            while store.fetched[-1].exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            still_there.append(store.fetched[-1].exists())

    process(catalog, store, "crm/users.csv", progress=progress)
    assert still_there == [False]
    assert query(catalog, "SELECT count(*) FROM attributes_crm") == [(1002,)]
    assert landing.keys() == ["success/seed.csv", "success/users.csv"]


def test_a_file_under_the_size_is_moved_after_its_commit(s3: tuple[Landing, Catalog], watched: Callable[..., WatchedStore]) -> None:
    landing, catalog = s3
    landing.put("crm/users.csv", HEADER + rows(3))
    store = watched()
    process(catalog, store, "crm/users.csv", copy_ahead_min_bytes=10_000)
    assert store.events == [("move", "success", 5)]
    assert landing.keys() == ["success/seed.csv", "success/users.csv"]


def test_a_file_that_fails_at_its_commit_leaves_no_copy_in_success(s3: tuple[Landing, Catalog], watched: Callable[..., WatchedStore]) -> None:
    """Without its gzip trailer every row reads, so the copy to success/ starts; the check before the
    commit then fails the file: the copy is deleted and the file goes to failed/ with its reason."""
    import gzip

    landing, catalog = s3
    before = query(catalog, "SELECT * FROM attributes_crm ORDER BY user_id")
    landing.put("crm/users.csv.gz", gzip.compress((HEADER + rows(300)).encode())[:-8])
    store = watched()
    process(catalog, store, "crm/users.csv.gz")

    assert store.events == [
        ("copy", "success", 2),
        ("delete", "crm/success/users.csv.gz", 2),
        ("move", "failed", 2),
    ]
    assert landing.keys() == ["failed/users.csv.gz", "failed/users.errors.csv", "success/seed.csv"]
    assert "is an incomplete gzip file" in landing.read("crm/failed/users.errors.csv")
    assert runs_of(catalog)[-1]["status"] == "failed"
    assert query(catalog, "SELECT * FROM attributes_crm ORDER BY user_id") == before


def test_a_failed_early_copy_is_made_again_after_the_commit(s3: tuple[Landing, Catalog], watched: Callable[..., WatchedStore]) -> None:
    landing, catalog = s3
    landing.put("crm/users.csv", HEADER + rows(300))
    store = watched(fail_copies=1)
    process(catalog, store, "crm/users.csv")
    assert [event[:2] for event in store.events] == [("copy", "success"), ("move", "success")]
    assert store.events[-1][2] == 302  # moved after the commit
    assert landing.keys() == ["success/seed.csv", "success/users.csv"]


def test_a_copy_left_by_a_killed_run_is_reused_and_another_file_of_the_name_is_kept(s3: tuple[Landing, Catalog]) -> None:
    landing, catalog = s3
    content = HEADER + rows(300)
    landing.put("crm/users.csv", content)
    time.sleep(1.1)  # S3 times have whole seconds: the copy is newer than the upload, as a run's would be
    # What a run killed after copying ahead leaves: the copy in success/, the original still pending.
    source = {"Bucket": BUCKET, "Key": posixpath.join(PREFIX, "crm/users.csv")}
    landing.s3.copy_object(CopySource=source, Bucket=BUCKET, Key=posixpath.join(PREFIX, "crm/success/users.csv"))
    process(catalog, store_of(catalog), "crm/users.csv")
    assert landing.keys() == ["success/seed.csv", "success/users.csv"]
    assert runs_of(catalog)[-1]["rows_applied"] == 300

    # A different file of the same name is never overwritten: the next one gets a dated name.
    landing.put("crm/users.csv", HEADER + rows(301))
    process(catalog, store_of(catalog), "crm/users.csv")
    dated = [name for name in landing.keys() if name not in ("success/seed.csv", "success/users.csv")]
    assert len(dated) == 1 and dated[0].startswith("success/users.") and len(landing.keys()) == 3
    assert landing.read("crm/success/users.csv") == content

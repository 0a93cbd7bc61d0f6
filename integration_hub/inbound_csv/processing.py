"""Processing landed CSV files: validate, apply, then move to success/ or failed/.

The database commit comes first and the move second: if the process dies in between, the
file is still pending, and processing it again finds its sha256 already applied, records it
as skipped and moves it. A failed file is moved to failed/ with a `<name>.errors.csv`
beside it that explains why. Moves run on a thread of their own (`FileMoves`), so a large
file's copy overlaps the next file and the run's checks; the run ends when they are done.
"""

from __future__ import annotations

import csv
import io
import logging
import posixpath
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import NamedTuple

import duckdb

from ..core.catalog import CsvIntegration
from ..core.ingest import Progress, RunRecord, apply_source, new_run_id, now_utc, record_failure, record_run
from ..core.landing import LandingError, LandingFile, LandingStore, stem
from ..core.sql import literal, sql_value, sql_values
from ..core.warehouse import ensure_bookkeeping, transaction
from .content import FileDigest, digest_file, explain_gzip
from .diagnose import diagnose, explain_read_error
from .reader import (
    HEAD_BYTES,
    CsvFileError,
    CsvShape,
    csv_source_sql,
    human_bytes,
    inspect_file_head,
    needs_serial_scan,
)

log = logging.getLogger(__name__)
ERROR_COLUMNS = ("row_number", "user_id", "column_name", "value", "reason")
PROGRESS_MIN_BYTES = 32 * 1024 * 1024
# From this size a file's copy to success/ (or failed/) on S3 starts before its commit (FileMoves).
COPY_AHEAD_MIN_BYTES = 32 * 1024 * 1024


class DuplicateFile(Exception):
    """This exact content was already applied for the integration."""

    def __init__(self, earlier_run: str) -> None:
        self.earlier_run = earlier_run


def _record_file(con: duckdb.DuckDBPyConnection, run: RunRecord, file: LandingFile, sha256: str | None) -> None:
    values = sql_values([run.integration, file.key, sha256, file.size, run.status, run.run_id, now_utc()])
    con.execute(
        f"INSERT INTO processed_files (integration, key, sha256, size_bytes, status, run_id, processed_at) VALUES {values}"
    )


def _applied_before(con: duckdb.DuckDBPyConnection, integration: str, sha256: str) -> str | None:
    row = con.execute(
        f"SELECT run_id FROM processed_files WHERE integration = {sql_value(integration)} AND sha256 = {sql_value(sha256)} "
        "AND status IN ('success', 'partial') ORDER BY processed_at LIMIT 1"
    ).fetchone()
    return row[0] if row else None


def _errors_csv(con: duckdb.DuckDBPyConnection, run: RunRecord, work_dir: Path) -> str | None:
    """The rejected rows of a run (or the file-level reason) as CSV text; None if all went well."""
    reason = io.StringIO()
    csv.writer(reason, lineterminator="\n").writerow(["", "", "", "", run.message])
    if run.rows_rejected:
        target = work_dir / "errors.csv"
        con.execute(
            f"COPY (SELECT row_number, user_id, column_name, value, reason FROM rejected_rows "
            f"WHERE run_id = {literal(run.run_id)} ORDER BY row_number, column_name) "
            f"TO {literal(str(target))} (HEADER, DELIMITER ',')"
        )
        rows = target.read_text(encoding="utf-8")
        return rows + reason.getvalue() if run.status == "failed" and run.message else rows
    if run.status == "failed":
        return ",".join(ERROR_COLUMNS) + "\n" + reason.getvalue()
    return None


class _EarlyCopy(NamedTuple):
    subfolder: str
    target: Future[str]  # the copy's key


class FileMoves:
    """Moves processed files out of the pending folder on a thread of its own, in order, then
    records where each went (`processed_files.moved_to`) in one transaction.

    A large file's move (a server-side copy on S3) then overlaps the next file's work and the
    run's checks. Where a move is a copy and a delete (S3), a file of at least
    `copy_ahead_min_bytes` is copied as soon as its outcome is known (`copy_ahead`), while its rows
    are still being applied; the original is deleted only after the commit. Leaving the block
    waits for every move and raises a failed one, naming the other files a failure left pending.
    """

    def __init__(
        self, con: duckdb.DuckDBPyConnection, store: LandingStore, copy_ahead_min_bytes: int = COPY_AHEAD_MIN_BYTES
    ) -> None:
        self._con = con
        self._store = store
        self._copy_ahead_min_bytes = copy_ahead_min_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="integration-hub-move")
        self._copies = ThreadPoolExecutor(max_workers=1, thread_name_prefix="integration-hub-copy")
        self._moves: list[tuple[RunRecord, LandingFile, Future[str]]] = []
        self._early: dict[str, _EarlyCopy] = {}

    def copy_ahead(self, file: LandingFile, failed: bool) -> None:
        """Start copying a large file to success/ (or failed/) before its commit.

        Should the outcome change after all (a check at the commit, an error), the copy is deleted
        and the file moved as usual; only a run killed meanwhile leaves it behind, and the next
        move reuses it (`LandingStore.copy`).
        """
        if not self._store.moves_by_copy or file.size < self._copy_ahead_min_bytes or file.key in self._early:
            return
        subfolder = _subfolder(failed)
        self._early[file.key] = _EarlyCopy(subfolder, self._copies.submit(self._store.copy, file, subfolder))

    def submit(self, file: LandingFile, run: RunRecord, errors_text: str | None) -> None:
        early = self._early.pop(file.key, None)
        self._moves.append((run, file, self._pool.submit(self._move, file, run, errors_text, early)))

    def _move(self, file: LandingFile, run: RunRecord, errors_text: str | None, early: _EarlyCopy | None) -> str:
        subfolder = _subfolder(run.status == "failed")
        copied = self._early_copy(early)
        if copied is not None and early is not None and early.subfolder == subfolder:
            self._store.delete(file.key)
            moved_to = copied
        else:
            if copied is not None:  # the outcome changed after the copy started
                self._store.delete(copied)
            moved_to = self._store.move(file, subfolder)
        if errors_text is not None:
            errors_key = posixpath.join(posixpath.dirname(moved_to), f"{stem(posixpath.basename(moved_to))}.errors.csv")
            self._store.write_text(errors_key, errors_text)
        return moved_to

    @staticmethod
    def _early_copy(early: _EarlyCopy | None) -> str | None:
        """The early copy's key; None without one, or when it failed (the move then copies again)."""
        if early is None:
            return None
        try:
            return early.target.result()
        except Exception:
            log.warning("copying ahead failed; the file is moved after its commit instead", exc_info=True)
            return None

    def __enter__(self) -> FileMoves:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            self._record()
        except Exception:
            if exc is None:
                raise
            # Already failing: what moved is recorded, and the run's own error stays the one raised.
            log.exception("while finishing the moves of a failed run")
        finally:
            self._discard_early_copies()
            self._pool.shutdown(wait=True)
            self._copies.shutdown(wait=True)

    def _record(self) -> None:
        """Wait for every move and record those done; raise the failure, naming every file left pending."""
        failed: list[tuple[str, Exception]] = []
        moved = []
        for run, file, future in self._moves:
            try:
                run.details["moved_to"] = future.result()
                moved.append([run.details["moved_to"], run.run_id, file.key])
            except Exception as exc:  # the file stays pending: the next run finds it applied and moves it
                failed.append((file.key, exc))
        if moved:
            with transaction(self._con):
                self._con.execute(
                    "UPDATE processed_files SET moved_to = m.moved_to "
                    f"FROM (VALUES {', '.join(sql_values(row) for row in moved)}) AS m(moved_to, run_id, key) "
                    "WHERE processed_files.run_id = m.run_id AND processed_files.key = m.key"
                )
        if len(failed) == 1:
            raise failed[0][1]
        if failed:
            others = ", ".join(key for key, _ in failed[1:])
            raise LandingError(f"{failed[0][1]} (not moved either, and also pending: {others})") from None

    def _discard_early_copies(self) -> None:
        """Delete the early copies of files whose processing raised: those files stay pending."""
        for early in self._early.values():
            copied = self._early_copy(early)
            if copied is not None:
                try:
                    self._store.delete(copied)
                except Exception:
                    log.exception("could not delete %s, an early copy of a file that stays pending", copied)
        self._early.clear()


def _subfolder(failed: bool) -> str:
    return "failed" if failed else "success"


def _fail(con: duckdb.DuckDBPyConnection, run: RunRecord, file: LandingFile, message: str, sha256: str | None) -> None:
    with transaction(con):
        record_failure(con, run, message)
        _record_file(con, run, file, sha256)


def process_file(
    con: duckdb.DuckDBPyConnection,
    store: LandingStore,
    integration: CsvIntegration,
    file: LandingFile,
    dagster_run_id: str | None = None,
    progress: Progress | None = None,
    moves: FileMoves | None = None,
) -> RunRecord | None:
    """Validate and apply one landed file; None if it vanished (another run took it).

    The file is moved to success/ or failed/ through `moves`, or before returning without it.

    `progress` gets a line per step (download, validation, apply, commit) of a file of at least
    PROGRESS_MIN_BYTES; smaller files take a second or less and get their one-line summary.
    """
    if moves is None:
        with FileMoves(con, store) as own:
            return process_file(con, store, integration, file, dagster_run_id, progress, own)
    if file.size < PROGRESS_MIN_BYTES:
        progress = None
    ensure_bookkeeping(con)
    run = RunRecord(
        run_id=new_run_id(),
        integration=integration.name,
        kind="csv",
        source=store.url(file.key),
        started_at=now_utc(),
        dagster_run_id=dagster_run_id,
        details={"key": file.key, "size_bytes": file.size},
    )
    with tempfile.TemporaryDirectory(prefix="integration-hub-") as tmp:
        work_dir = Path(tmp)
        if file.size > integration.max_file_bytes:
            _fail(
                con,
                run,
                file,
                f"{run.source} is {human_bytes(file.size)}, over the limit of {human_bytes(integration.max_file_bytes)} "
                "(max_file_bytes): split it into smaller files or raise max_file_bytes",
                None,
            )
            moves.submit(file, run, _errors_csv(con, run, work_dir))
            return run
        if file.size == 0:
            _fail(con, run, file, f"{run.source} is empty (0 bytes): export it again with a header row and data rows", None)
            moves.submit(file, run, _errors_csv(con, run, work_dir))
            return run
        fetch_started = time.perf_counter()
        try:
            path = store.fetch(file, work_dir)
        except FileNotFoundError:
            log.info("%s is gone: another run processed it", file.key)
            return None
        if progress is not None:
            progress(f"fetched {human_bytes(file.size)} in {time.perf_counter() - fetch_started:.1f} s")

        with ThreadPoolExecutor(max_workers=1) as pool:
            # Hashing (and checking a gzip stream) overlaps DuckDB's work; it is needed only before the commit.
            digest: Future[FileDigest] = pool.submit(digest_file, path, file.name.lower().endswith(".gz"))
            # A downloaded copy (not the landed file itself) is read by nothing but the hash once its
            # rows are staged. Removing 1 GB takes a second or more on some file systems: after the
            # hash, in the same worker, beside the apply.
            release = partial(pool.submit, path.unlink, missing_ok=True) if path.is_relative_to(work_dir) else None
            run = _apply_file(con, integration, file, path, work_dir, run, digest, progress, moves, release)
        moves.submit(file, run, _errors_csv(con, run, work_dir))
    return run


def _is_read_error(exc: duckdb.Error, path: Path) -> bool:
    """An error about the file's content (as opposed to the warehouse)."""
    return (
        isinstance(exc, (duckdb.InvalidInputException, duckdb.ConversionException))
        or needs_serial_scan(exc)
        or (isinstance(exc, duckdb.IOException) and str(path) in str(exc))
    )


def _apply_file(
    con: duckdb.DuckDBPyConnection,
    integration: CsvIntegration,
    file: LandingFile,
    path: Path,
    work_dir: Path,
    run: RunRecord,
    digest: Future[FileDigest],
    progress: Progress | None,
    moves: FileMoves,
    release: Callable[[], object] | None = None,
) -> RunRecord:
    """Stage, validate and apply the fetched file at `path`; `release()` (if given) once its rows are staged."""
    where = run.source
    gzipped = file.name.lower().endswith(".gz")
    released = False

    def decided(applying: bool) -> None:
        nonlocal released
        moves.copy_ahead(file, failed=not applying)
        if release is not None:
            release()
            released = True

    def before_commit(con: duckdb.DuckDBPyConnection, run: RunRecord) -> None:
        checked = digest.result()
        if checked.gzip_problem:
            raise CsvFileError(explain_gzip(checked.gzip_problem, where))
        earlier = _applied_before(con, integration.name, checked.sha256)
        if earlier is not None:
            raise DuplicateFile(earlier)
        _record_file(con, run, file, checked.sha256)

    def attempt(shape: CsvShape, extra: int | None, parallel: bool = True) -> RunRecord:
        return apply_source(
            con,
            integration,
            csv_source_sql(path, integration, shape, extra, parallel),
            run,
            max_rejected_ratio=integration.max_rejected_ratio,
            row_offset=1,  # the header is row 1, as a spreadsheet shows it
            before_commit=before_commit,
            on_decision=decided,
            progress=progress,
        )

    def unreadable(exc: duckdb.Error) -> CsvFileError:
        """Why a read failed: a broken gzip stream first, else DuckDB's error in the file's own words.
        An error that is not about the file (the warehouse's) is raised as it is."""
        checked = digest.result()
        if checked.gzip_problem:
            return CsvFileError(explain_gzip(checked.gzip_problem, where))
        if not _is_read_error(exc, path):
            raise exc
        return CsvFileError(explain_read_error(exc, integration, where, path, work_dir))

    def read_after_failure(shape: CsvShape, extra: int | None, failure: duckdb.Error) -> RunRecord:
        """The error path: find every row that does not fit. A broken row fails the file (diagnose
        raises); rows with too few or too many cells are read padded and rejected one by one."""
        # Diagnosing reads the file again: not once it is released (a failure after staging is not
        # about its rows), and it is explained like any other failure instead.
        if digest.result().gzip_problem or released or not _is_read_error(failure, path):
            raise unreadable(failure)
        try:
            diagnosis = diagnose(con, path, integration, shape, where)
        except duckdb.Error as exc:
            raise unreadable(exc) from None
        if not (diagnosis.ragged_rows or needs_serial_scan(failure)):
            raise unreadable(failure)
        extra = max(extra or 0, diagnosis.widest - shape.width)
        # DuckDB's serial scanner misses a quote left open at the end of the file; the scan above
        # has ruled that out, so it is safe here for files whose quoted line breaks need it.
        parallel = not needs_serial_scan(failure)
        try:
            return attempt(shape, extra, parallel)
        except duckdb.Error as exc:
            if not (parallel and needs_serial_scan(exc)):
                raise unreadable(exc) from None
        try:
            return attempt(shape, extra, parallel=False)
        except duckdb.Error as exc:
            raise unreadable(exc) from None

    try:
        with open(path, "rb") as handle:
            raw_head = handle.read(HEAD_BYTES)
        shape = inspect_file_head(con, raw_head, file.size, gzipped, integration, where, work_dir)
        if shape.warnings:
            run.details["warnings"] = shape.warnings
            for warning in shape.warnings:
                log.warning("%s: %s", where, warning)
        # Strict (every row the header's width) unless the head already shows wider rows, such as
        # a trailing delimiter on every row: then padded, with that many cells past the header.
        extra = shape.widest_sampled - shape.width or None
        try:
            return attempt(shape, extra)
        except duckdb.Error as failure:
            return read_after_failure(shape, extra, failure)
    except DuplicateFile as duplicate:
        run.status, run.rows_applied = "skipped", 0
        run.message = f"identical content was already applied by run {duplicate.earlier_run}: not applied twice"
        with transaction(con):
            record_run(con, run)
            _record_file(con, run, file, digest.result().sha256)
        return run
    except CsvFileError as exc:
        _fail(con, run, file, str(exc), digest.result().sha256)
        return run

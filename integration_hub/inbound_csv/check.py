"""Connection checks and dry runs for inbound CSV: list the folder for real, read a header."""

from __future__ import annotations

import argparse
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import duckdb

from ..core.catalog import Catalog, CsvIntegration
from ..core.landing import LandingError, LandingFile, LandingStore, landing_store
from .reader import HEAD_BYTES, CsvFileError, inspect_file_head


@dataclass
class CheckOutcome:
    name: str
    ok: bool
    message: str


def sample_of(store: LandingStore, file: LandingFile, work_dir: Path, size: int = HEAD_BYTES) -> Path:
    """The first complete lines of a landed file (decompressed), as a local CSV file."""
    head = store.read_head(file, min(file.size, size)) if file.size else b""
    if file.name.lower().endswith(".gz"):
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, size * 8)
    truncated = file.size > size or file.name.lower().endswith(".gz")
    if truncated and b"\n" in head:
        head = head[: head.rindex(b"\n") + 1]
    target = work_dir / "sample.csv"
    target.write_bytes(head)
    return target


def _header_problem(store: LandingStore, integration: CsvIntegration, file: LandingFile) -> str | None:
    where = store.url(file.key)
    if file.size == 0:
        return f"{where} is empty (0 bytes): export it again with a header row and data rows"
    if file.size > integration.max_file_bytes:
        return f"{where} is {file.size:,} bytes, over max_file_bytes ({integration.max_file_bytes:,})"
    raw_head = store.read_head(file, min(file.size, HEAD_BYTES))
    with tempfile.TemporaryDirectory(prefix="integration-hub-check-") as tmp:
        con = duckdb.connect()
        try:
            gzipped = file.name.lower().endswith(".gz")
            inspect_file_head(con, raw_head, file.size, gzipped, integration, where, Path(tmp))
        except CsvFileError as exc:
            return str(exc)
        finally:
            con.close()
    return None


def check_csv_integration(catalog: Catalog, integration: CsvIntegration) -> list[CheckOutcome]:
    """List the folder and read the header of the oldest pending file."""
    connection = catalog.connection(integration.connection)
    try:
        store = landing_store(catalog, connection)
        pending = store.list_pending(integration.folder)
    except LandingError as exc:
        return [CheckOutcome(integration.name, False, str(exc))]
    where = store.url(integration.folder) + "/"
    if not pending:
        return [CheckOutcome(integration.name, True, f"{where} is reachable; no pending files (nothing to check yet)")]
    oldest = pending[0]
    try:
        problem = _header_problem(store, integration, oldest)
    except (LandingError, FileNotFoundError) as exc:
        return [CheckOutcome(integration.name, False, f"cannot read {oldest.key}: {exc}")]
    if problem:
        return [CheckOutcome(integration.name, False, problem)]
    return [
        CheckOutcome(
            integration.name,
            True,
            f"{where} is reachable; {len(pending)} pending file(s); the header of {oldest.name} has every mapped column",
        )
    ]


def dry_run_csv_integration(catalog: Catalog, integration: CsvIntegration, args: argparse.Namespace) -> int:
    """What a run would process, with a header check per file; changes nothing."""
    connection = catalog.connection(integration.connection)
    store = landing_store(catalog, connection)
    pending = store.list_pending(integration.folder)
    if not pending:
        print(f"{integration.name}: no pending files in {store.url(integration.folder)}/")
        return 0
    problems = 0
    for file in pending:
        problem = _header_problem(store, integration, file)
        problems += problem is not None
        print(f"would process {file.key} ({file.size:,} bytes): {problem or 'header ok'}")
    if problems:
        from ..cli.output import CommandError

        raise CommandError(f"{problems} of {len(pending)} file(s) would fail: fix them before the run")
    return 0

"""Broken CSV files, on a local folder and on S3: each fails (or loses only its bad rows) with a message
saying what is wrong, where (the file as the user knows it, and the row) and how to fix it; nothing
of a failed file is applied."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from integration_hub.core.catalog import Catalog, CatalogError, load_catalog
from integration_hub.inbound_csv.check import check_csv_integration
from integration_hub.inbound_csv.diagnose import explain_row_problem
from integration_hub.inbound_csv.reader import HEAD_BYTES
from integration_hub_tests.support import CRM_INTEGRATION, Landing, lake_settings, query, run_job, runs_of

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"
SEED = HEADER + "ann@x.com,gold,5,yes,2024-01-01,2024-05-01T10:00:00Z\nbob@x.com,silver,1,no,2024-02-01,\n"
MiB = 1024 * 1024


def rows(count: int, start: int = 0) -> str:
    return "".join(f"u{n}@x.com,free,{n},no,2024-01-01,\n" for n in range(start, start + count))


def table(catalog: Catalog) -> list[tuple]:
    return query(catalog, "SELECT * FROM attributes_crm ORDER BY user_id")


def seeded(landing: Landing, **integration: Any) -> tuple[Catalog, list[tuple]]:
    """A catalog whose table already holds two users, and the table as it is."""
    catalog = landing.write_catalog({**CRM_INTEGRATION, **integration})
    landing.put("crm/seed.csv", SEED)
    assert run_job(catalog, "crm").success
    assert runs_of(catalog)[-1]["status"] == "success"
    return catalog, table(catalog)


def process(landing: Landing, catalog: Catalog, name: str, content: str | bytes, compress: bool = True) -> dict:
    landing.put(f"crm/{name}", content, compress=compress)
    result = run_job(catalog, "crm")
    run = runs_of(catalog)[-1]
    assert result.success == (run["status"] != "failed")  # a run whose only file failed is red
    return run


def failed_with(landing: Landing, catalog: Catalog, before: list[tuple], run: dict, name: str, *phrases: str) -> str:
    """Failed, naming the file as the user knows it and never a temporary path; kept in failed/ with its
    explanation; the table exactly as before."""
    message = run["message"]
    assert run["status"] == "failed" and run["rows_applied"] == 0, run
    assert landing.url(f"crm/{name}") in message, message
    assert "integration-hub-" not in message and "head.sample" not in message, message
    for phrase in phrases:
        assert phrase in message, message
    assert f"failed/{name}" in landing.keys()
    stem = name.split(".csv")[0]
    explanation = list(csv.DictReader(io.StringIO(landing.read(f"crm/failed/{stem}.errors.csv"))))
    assert explanation[-1]["reason"] == message
    assert table(catalog) == before
    return message


# --------------------------------------------------------------------------- 1. quoting


def _quoted(count: int, broken_row: int | None = None) -> str:
    """A text column quoted throughout, commas inside; the quote of `broken_row` (as a spreadsheet counts) never closes."""
    lines = [HEADER]
    for n in range(count):
        plan = f'"Acme, Corp {n}"' if n + 2 != broken_row else f'"Acme, Corp {n}'
        lines.append(f"u{n}@x.com,{plan},{n},yes,2024-01-01,\n")
    return "".join(lines)


def test_correctly_quoted_values_are_read_as_written(local_or_s3: Landing) -> None:
    catalog, _ = seeded(local_or_s3)
    content = _quoted(30) + 'q@x.com,"say ""hi"", then go",1,yes,2024-01-01,\n' + 'r@x.com,12" pizza,1,yes,2024-01-01,\n'
    run = process(local_or_s3, catalog, "quoted.csv", content)
    assert run["status"] == "success" and run["rows_applied"] == 32
    plans = dict(query(catalog, "SELECT user_id, plan FROM attributes_crm"))
    assert plans["u3@x.com"] == "Acme, Corp 3"
    assert plans["q@x.com"] == 'say "hi", then go' and plans["r@x.com"] == '12" pizza'


def test_an_unclosed_quote_fails_the_file_at_the_row_it_opens(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    run = process(local_or_s3, catalog, "unclosed.csv", _quoted(30, broken_row=16))
    failed_with(
        local_or_s3, catalog, before, run, "unclosed.csv",
        f"row 16 of {local_or_s3.url('crm/unclosed.csv')}: a quoted value opens in this row and is not closed properly",
        '(u14@x.com,"Acme, Corp 14,14,yes,2024-01-01,',
        'write a quote inside a quoted value twice ("")',
        "then upload the file again",
    )
    assert run["rows_read"] == 0 and query(catalog, "SELECT count(*) FROM rejected_rows")[0][0] == 0


def test_a_quote_left_open_to_the_end_of_the_file_fails_it(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    run = process(local_or_s3, catalog, "eof.csv", HEADER + rows(10) + 'z@x.com,"never closed,1,yes,2024-01-01,\n')
    failed_with(local_or_s3, catalog, before, run, "eof.csv", "row 12 of", "not closed properly")


def test_text_after_a_closing_quote_fails_the_file(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    run = process(local_or_s3, catalog, "after.csv", HEADER + rows(5) + 'z@x.com,"Big" Co,1,yes,2024-01-01,\n' + rows(5, 10))
    failed_with(local_or_s3, catalog, before, run, "after.csv", "row 7 of", "not closed properly", '(z@x.com,"Big" Co')


def test_a_broken_quote_far_into_a_file_with_quoted_newlines_and_short_rows(local_or_s3: Landing) -> None:
    # Past the head the dialect is read from; a quoted line break and a short row come first, so the
    # file is read the slow way (padded rows, one thread): that reader misses a quote left open at
    # the end of the file, the scan for bad rows must not.
    catalog, before = seeded(local_or_s3)
    content = HEADER + 'm@x.com,"two\nlines",1,yes,2024-01-01,\n' + "s@x.com,short\n" + rows(40_000)
    content += 'z@x.com,"never closed,1,yes,2024-01-01,\n'
    assert len(content) > HEAD_BYTES
    run = process(local_or_s3, catalog, "late.csv", content)
    failed_with(local_or_s3, catalog, before, run, "late.csv", "row 40004 of", "not closed properly")


def test_row_numbers_count_records_not_lines(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    content = HEADER + 'm@x.com,"two\nlines",1,yes,2024-01-01,\n' + rows(5) + 'z@x.com,"open,1,yes,2024-01-01,\n' + rows(3, 10)
    run = process(local_or_s3, catalog, "records.csv", content)
    failed_with(local_or_s3, catalog, before, run, "records.csv", "row 8 of")


# --------------------------------------------------------------------------- 2. duplicate header names


def test_a_mapped_column_twice_in_the_header_fails_the_file(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    content = "email,Plan Tier,tickets,is_active,signup,last_login,Plan Tier\n" + "a@x.com,gold,1,yes,2024-01-01,,silver\n"
    run = process(local_or_s3, catalog, "dup.csv", content)
    failed_with(
        local_or_s3, catalog, before, run, "dup.csv",
        f"the header of {local_or_s3.url('crm/dup.csv')} has 'Plan Tier' 2 times (columns 2 and 7), "
        "so the column 'Plan Tier' of property 'plan' is ambiguous (names match ignoring case and surrounding spaces): "
        "rename or remove the duplicate columns so each mapped name appears once",
    )


def test_a_user_id_column_matching_twice_ignoring_case_fails_the_file(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    content = HEADER.rstrip("\n") + ", Email \n" + "a@x.com,gold,1,yes,2024-01-01,,b@x.com\n"
    run = process(local_or_s3, catalog, "dupid.csv", content)
    failed_with(
        local_or_s3, catalog, before, run, "dupid.csv",
        "has 'email' (column 1) and ' Email ' (column 7), so the user id column 'email' is ambiguous",
    )


def test_a_duplicate_unmapped_column_passes_with_a_warning_in_the_run_log(local_or_s3: Landing) -> None:
    from integration_hub.definitions import build_definitions

    catalog = local_or_s3.write_catalog()
    local_or_s3.put("crm/notes.csv", HEADER.rstrip("\n") + ",notes,Notes\n" + "a@x.com,gold,1,yes,2024-01-01,,x,y\n")
    job = build_definitions(catalog).resolve_job_def("crm_job")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance)
        logged = [(entry.level, entry.user_message) for entry in instance.all_logs(result.run_id)]
    [run] = runs_of(catalog)
    assert run["status"] == "success" and run["rows_applied"] == 1
    warning = "the header has 'notes' (column 7) and 'Notes' (column 8); that column is not mapped, so none of them is read"
    assert (logging.WARNING, f"{local_or_s3.url('crm/notes.csv')}: {warning}") in logged
    assert warning in run["details"]


# --------------------------------------------------------------------------- 3. lines over the limit


def test_a_line_over_the_limit_names_its_row_the_limit_and_the_fix(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    big = f"big@x.com,{'x' * (5 * MiB)},1,yes,2024-01-01,\n"
    content = HEADER + rows(4) + big + rows(10, 10)
    run = process(local_or_s3, catalog, "long.csv", content)
    failed_with(
        local_or_s3, catalog, before, run, "long.csv",
        f"row 6 of {local_or_s3.url('crm/long.csv')} is 5.0 MiB long, over the line limit of 2.0 MiB (max_line_bytes): "
        "shorten or split the long value, or raise `max_line_bytes` on the integration (at most 32.0 MiB)",
    )

    catalog = local_or_s3.write_catalog({**CRM_INTEGRATION, "max_line_bytes": 8 * MiB})
    run = process(local_or_s3, catalog, "long2.csv", content)
    assert run["status"] == "success" and run["rows_applied"] == 15
    assert query(catalog, "SELECT length(plan) FROM attributes_crm WHERE user_id = 'big@x.com'") == [(5 * MiB,)]


def test_a_line_too_long_for_any_limit_asks_to_split_the_value() -> None:
    integration = load_integration({"max_line_bytes": 32 * MiB})
    message = explain_row_problem(
        "LINE SIZE OVER MAXIMUM", 9, "Maximum line size of 33554432 bytes exceeded. Actual Size:41943040 bytes.",
        None, integration, "s3://b/crm/x.csv",
    )
    assert message == (
        "row 9 of s3://b/crm/x.csv is 40.0 MiB long, over the line limit of 32.0 MiB (max_line_bytes): "
        "split the long value into smaller ones (the limit can be raised to 32.0 MiB at most)"
    )


def load_integration(extra: dict[str, Any]) -> Any:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as folder:
        document = {
            "warehouse": lake_settings(Path(folder)),
            "connections": [{"name": "landing", "type": "local", "path": "landing"}],
            "integrations": [{**CRM_INTEGRATION, **extra}],
        }
        path = Path(folder) / "integrations.yaml"
        path.write_text(yaml.safe_dump(document))
        return load_catalog(path).integration("crm")


@pytest.mark.parametrize("value", [33 * MiB, 1000])
def test_max_line_bytes_has_bounds(value: int) -> None:
    with pytest.raises(CatalogError) as caught:
        load_integration({"max_line_bytes": value})
    assert "max_line_bytes" in str(caught.value)


# --------------------------------------------------------------------------- 4. broken gzip


def _zip(*members: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for member in members:
            archive.writestr(member, "<x/>")
    return buffer.getvalue()


def _gzipped(content: str) -> bytes:
    return gzip.compress(content.encode())


def test_broken_gzip_files_fail_by_their_own_names(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    data = _gzipped(HEADER + rows(5000))
    corrupt = bytearray(data)
    corrupt[len(corrupt) // 2] ^= 0xFF
    files = {
        "half.csv.gz": (data[: len(data) // 2], "is an incomplete gzip file: the compressed data ends early"),
        # Only the trailer missing: DuckDB reads every row, but nothing vouches for them.
        "trailer.csv.gz": (data[:-8], "is an incomplete gzip file: the compressed data ends early"),
        "corrupt.csv.gz": (bytes(corrupt), "is not valid gzip data: the compressed stream is corrupt"),
        "plain.csv.gz": (
            (HEADER + rows(3)).encode(),
            "is named .csv.gz but is not gzip data (it looks like plain text): rename it to end in .csv",
        ),
        "book.csv.gz": (gzip.compress(_zip("xl/workbook.xml")), "is not CSV text: it is an Excel workbook (.xlsx)"),
    }
    for name, (content, _) in files.items():
        local_or_s3.put(f"crm/{name}", content, compress=False)
    assert not run_job(catalog, "crm").success  # every file failed: a red run
    runs = {run["source"]: run for run in runs_of(catalog)[1:]}
    assert len(runs) == len(files)
    for name, (_, phrase) in files.items():
        url = local_or_s3.url(f"crm/{name}")
        failed_with(local_or_s3, catalog, before, runs[url], name, f"{url} {phrase}")
    message = {name: runs[local_or_s3.url(f"crm/{name}")]["message"] for name in files}
    assert message["half.csv.gz"].endswith("so rows are missing; compress the whole CSV again and upload it again")
    assert message["corrupt.csv.gz"].endswith("compress the CSV again (gzip users.csv) and upload the new users.csv.gz")


# --------------------------------------------------------------------------- 5. not text at all


def _parquet(tmp_path: Path) -> bytes:
    target = tmp_path / "t.parquet"
    duckdb.execute(f"COPY (SELECT 'a@x.com' AS email) TO '{target}' (FORMAT parquet)")
    return target.read_bytes()


NOT_TEXT = "is not CSV text: it is"
BINARIES: dict[str, tuple[Any, str]] = {
    "gzip": (lambda _: _gzipped(HEADER + rows(2)), f"{NOT_TEXT} gzip-compressed data; rename it to end in .csv.gz"),
    "png": (lambda _: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), f"{NOT_TEXT} a PNG image; upload the data as a CSV file"),
    "pdf": (lambda _: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", f"{NOT_TEXT} a PDF document; export the data as CSV"),
    "xlsx": (
        lambda _: _zip("[Content_Types].xml", "_rels/.rels", "xl/workbook.xml"),
        f"{NOT_TEXT} an Excel workbook (.xlsx); open it in Excel and save it as CSV UTF-8",
    ),
    "zip": (lambda _: _zip("users.csv"), f"{NOT_TEXT} a zip archive; extract the CSV file from it"),
    "xls": (
        lambda _: b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504),
        f"{NOT_TEXT} a legacy Microsoft Office file (an .xls workbook or similar); open it in Excel and save it as CSV",
    ),
    "parquet": (_parquet, f"{NOT_TEXT} a Parquet file; export the data as CSV"),
    "binary": (lambda _: bytes(range(256)) * 4, "is not CSV text: it holds binary data (NUL bytes)"),
    "utf16": (
        lambda _: (HEADER + rows(2)).encode("utf-16-le"),
        "is UTF-16 text without a byte order mark, not utf-8: set `encoding: utf-16` on the integration",
    ),
    "utf16bom": (
        lambda _: (HEADER + rows(2)).encode("utf-16"),
        "is UTF-16 text (it starts with a UTF-16 byte order mark): set `encoding: utf-16` on the integration",
    ),
}


def test_a_file_that_is_not_text_says_what_it_is_and_what_to_do(local_or_s3: Landing, tmp_path: Path) -> None:
    catalog, before = seeded(local_or_s3)
    for kind, (make, _) in BINARIES.items():
        local_or_s3.put(f"crm/{kind}.csv", make(tmp_path))
    assert not run_job(catalog, "crm").success  # one run, one failed file each: red
    runs = {run["source"]: run for run in runs_of(catalog)[1:]}
    assert len(runs) == len(BINARIES)
    for kind, (_, phrase) in BINARIES.items():
        url = local_or_s3.url(f"crm/{kind}.csv")
        failed_with(local_or_s3, catalog, before, runs[url], f"{kind}.csv", f"{url} {phrase}")


def test_check_reports_a_file_that_is_not_text(local_or_s3: Landing) -> None:
    catalog = local_or_s3.write_catalog()
    local_or_s3.put("crm/image.csv", b"\x89PNG\r\n\x1a\n" + bytes(100))
    [outcome] = check_csv_integration(catalog, catalog.integration("crm"))
    assert not outcome.ok
    assert outcome.message.startswith(f"{local_or_s3.url('crm/image.csv')} is not CSV text: it is a PNG image")


# --------------------------------------------------------------------------- 6. no data rows


def test_a_header_only_file_says_how_to_fix_it(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3)
    files = {"header.csv": HEADER, "blank.csv": HEADER + "\n\n\r\n", "zipped.csv.gz": HEADER}
    for name, content in files.items():
        local_or_s3.put(f"crm/{name}", content)
    assert not run_job(catalog, "crm").success  # every file failed: a red run
    runs = {run["source"]: run for run in runs_of(catalog)[1:]}
    for name in files:
        url = local_or_s3.url(f"crm/{name}")
        failed_with(
            local_or_s3, catalog, before, runs[url], name,
            f"{url} has a header row but no data rows: export it again with the data rows below the header",
        )


# --------------------------------------------------------------------------- 7. rows with too few or too many cells


def test_a_short_row_is_rejected_and_never_clears_stored_values(local_or_s3: Landing) -> None:
    catalog, before = seeded(local_or_s3, on_blank="clear")
    content = HEADER + "ann@x.com,platinum\n" + "bob@x.com,,,,,\n" + rows(20)
    run = process(local_or_s3, catalog, "short.csv", content)
    assert (run["status"], run["rows_read"], run["rows_applied"], run["rows_rejected"]) == ("partial", 22, 21, 1)
    [(row_number, reason)] = query(catalog, "SELECT row_number, reason FROM rejected_rows")
    assert row_number == 2 and reason == (
        "the row has 2 cells, the header has 6: add the missing cells (blank cells still need their "
        "delimiters, as in a,,c) and quote values that contain a line break"
    )
    users = {r[0]: r[1:] for r in table(catalog)}
    assert users["ann@x.com"] == before[0][1:]  # untouched: gold, 5, yes, ...
    assert users["bob@x.com"][:5] == (None, None, None, None, None)  # every cell there and blank: cleared
    errors = list(csv.DictReader(io.StringIO(local_or_s3.read("crm/success/short.errors.csv"))))
    assert [(e["row_number"], e["reason"]) for e in errors] == [("2", reason)]


def test_ragged_rows_far_into_a_large_file_are_rejected_one_by_one(local_or_s3: Landing) -> None:
    catalog, _ = seeded(local_or_s3)
    content = HEADER + 'm@x.com,"two\nlines",1,yes,2024-01-01,\n' + rows(30_000)
    content += "s@x.com,short\n" + rows(100, 30_000) + "w@x.com,wide,1,yes,2024-01-01,,x,y\n" + rows(10, 40_000)
    assert len(content) > HEAD_BYTES
    run = process(local_or_s3, catalog, "big.csv", content)
    assert (run["status"], run["rows_read"], run["rows_rejected"]) == ("partial", 30_113, 2), run
    rejected = query(catalog, "SELECT row_number, reason FROM rejected_rows WHERE run_id = ? ORDER BY 1", [run["run_id"]])
    assert [r[0] for r in rejected] == [30_003, 30_104]
    assert rejected[0][1].startswith("the row has 2 cells, the header has 6")
    assert rejected[1][1] == "the row has 8 cells, the header has 6: quote values that contain the delimiter"
    assert query(catalog, "SELECT plan FROM attributes_crm WHERE user_id = 'm@x.com'") == [("two\nlines",)]


def test_a_trailing_delimiter_on_every_row_is_not_an_error(local_or_s3: Landing) -> None:
    catalog, _ = seeded(local_or_s3)
    content = HEADER + "".join(line + ",\n" for line in rows(30).splitlines())
    run = process(local_or_s3, catalog, "trailing.csv", content)
    assert run["status"] == "success" and run["rows_applied"] == 30

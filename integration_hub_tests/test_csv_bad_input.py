"""Bad input: each case gets a clear message, the file is kept and explained, nothing is lost."""

from __future__ import annotations

import csv
import io

import pytest

from integration_hub_tests.support import CRM_INTEGRATION, Landing, failure_reason, query, run_job, runs_of

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"


def _catalog(landing: Landing):
    from integration_hub.core.catalog import load_catalog

    return load_catalog(landing.catalog_path)


def process(landing: Landing, name: str, content: str | bytes, **integration) -> dict:
    catalog = landing.write_catalog({**CRM_INTEGRATION, **integration})
    landing.put(f"crm/{name}", content)
    result = run_job(catalog, "crm")
    run = runs_of(catalog)[-1]
    # The file is the run's only source: the run fails (red) exactly when the file failed, with its reason.
    assert result.success == (run["status"] != "failed")
    if not result.success:
        assert run["message"] in failure_reason(result) and name in failure_reason(result)
    return run


def failed_with(landing: Landing, run: dict, name: str, *phrases: str) -> None:
    """The file failed with a message containing the phrases; it sits in failed/ with an explanation."""
    assert run["status"] == "failed", run
    for phrase in phrases:
        assert phrase in run["message"], run["message"]
    assert "integration-hub-" not in run["message"], run["message"]  # never a temporary download path
    stem = name.split(".csv")[0]
    assert f"failed/{name}" in landing.keys()
    explanation = list(csv.DictReader(io.StringIO(landing.read(f"crm/failed/{stem}.errors.csv"))))
    assert explanation[-1]["reason"] == run["message"]
    assert query(_catalog(landing), "SELECT count(*) FROM attributes_crm")[0][0] == 0


def test_empty_file(landing: Landing) -> None:
    run = process(landing, "empty.csv", b"")
    failed_with(landing, run, "empty.csv", "empty (0 bytes)", "export it again")


def test_header_only(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "header.csv", HEADER)
    failed_with(local_or_s3, run, "header.csv", "has a header row but no data rows", "export it again")


def test_header_and_only_blank_lines_past_the_head(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "blanks.csv", HEADER + "\n" * (1024 * 1024 + 10))
    failed_with(local_or_s3, run, "blanks.csv", "no data rows: send it again with the data rows below the header")


def test_no_user_id_column(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "noid.csv", "mail,Plan Tier,tickets,is_active,signup,last_login\na@x.com,gold,1,yes,2024-01-01,\n")
    failed_with(local_or_s3, run, "noid.csv", "missing user id column 'email'", "'mail'", "'Plan Tier'")


def test_missing_mapped_columns_are_all_named(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "cols.csv", "email,Plan Tier,is_active\na@x.com,gold,yes\n")
    failed_with(local_or_s3, run, "cols.csv", "'tickets'", "'signup'", "'last_login'", "the file has columns: 'email'")


def test_header_case_and_spaces_still_match(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "case.csv", " EMAIL ,plan tier,Tickets,IS_ACTIVE,Signup,Last_Login\na@x.com,gold,1,yes,2024-01-01,\n")
    assert run["status"] == "success"


def test_wrong_delimiter_says_how_to_fix(local_or_s3: Landing) -> None:
    content = "email|Plan Tier|tickets|is_active|signup|last_login\na@x.com|gold|1|yes|2024-01-01|\nb@x.com|silver|2|no|2024-01-01|\n"
    run = process(local_or_s3, "pipes.csv", content, delimiter=",")
    failed_with(local_or_s3, run, "pipes.csv", "delimiter")


def test_semicolon_files_are_detected(local_or_s3: Landing) -> None:
    content = "email;Plan Tier;tickets;is_active;signup;last_login\na@x.com;gold;1;yes;2024-01-01;\nb@x.com;silver;2;no;2024-01-01;\n"
    run = process(local_or_s3, "semi.csv", content)
    assert run["status"] == "success" and run["rows_applied"] == 2


def test_utf8_bom(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "bom.csv", ("\ufeff" + HEADER + "a@x.com,gold,1,yes,2024-01-01,\n").encode("utf-8"))
    assert run["status"] == "success"
    assert query(_catalog(local_or_s3), "SELECT user_id FROM attributes_crm") == [("a@x.com",)]


def test_quoted_newlines_and_ragged_rows_together(local_or_s3: Landing) -> None:
    content = (
        HEADER
        + 'a@x.com,"gold\nplus",1,yes,2024-01-01,\n'  # a value with a newline inside quotes
        + "b@x.com,silver,2\n"  # too few cells: rejected, never read as blanks
        + "c@x.com,bronze,3,yes,2024-01-01,,EXTRA\n"  # too many cells: rejected
        + "".join(f"u{n}@x.com,free,1,no,2024-01-01,\n" for n in range(20))
    )
    run = process(local_or_s3, "ragged.csv", content)
    assert run["status"] == "partial" and run["rows_rejected"] == 2, run
    catalog = _catalog(local_or_s3)
    plans = dict(query(catalog, "SELECT user_id, plan FROM attributes_crm"))
    assert plans["a@x.com"] == "gold\nplus" and "b@x.com" not in plans and "c@x.com" not in plans
    rejected = query(catalog, "SELECT row_number, reason FROM rejected_rows ORDER BY row_number")
    assert [r[0] for r in rejected] == [3, 4]
    assert rejected[0][1].startswith("the row has 3 cells, the header has 6: add the missing cells")
    assert rejected[1][1] == "the row has 7 cells, the header has 6: quote values that contain the delimiter"


def test_ragged_rows_without_quoted_newlines(local_or_s3: Landing) -> None:
    content = HEADER + "a@x.com,gold,1,yes,2024-01-01,,EXTRA,MORE\n" + "".join(
        f"u{n}@x.com,free,1,no,2024-01-01,\n" for n in range(20)
    )
    run = process(local_or_s3, "ragged2.csv", content)
    assert run["status"] == "partial" and run["rows_rejected"] == 1


def test_bad_numbers_dates_and_booleans(local_or_s3: Landing) -> None:
    rows = [
        "n1@x.com,gold,1e3,TRUE,2024-02-29,2024-01-01T10:00:00+02:00",  # all valid (leap day, offset)
        "n2@x.com,gold,1 000,true,2024-01-01,",  # thousands separator
        "n3@x.com,gold,nan,true,2024-01-01,",  # not finite
        "n4@x.com,gold,1,Y,2024-01-01,",  # Y is not a boolean we accept
        "n5@x.com,gold,1,true,01/02/2024,",  # not ISO
        "n6@x.com,gold,1,true,2024-01-01,2024-01-01T25:00:00",  # no such hour
    ]
    run = process(local_or_s3, "types.csv", HEADER + "\n".join(rows) + "\n", max_rejected_ratio=1.0)
    assert (run["rows_applied"], run["rows_rejected"]) == (1, 5)
    catalog = _catalog(local_or_s3)
    values = dict(query(catalog, "SELECT value, reason FROM rejected_rows"))
    assert set(values) == {"1 000", "nan", "Y", "01/02/2024", "2024-01-01T25:00:00"}
    [(tickets, login)] = query(catalog, "SELECT support_tickets, CAST(last_login_at AS VARCHAR) FROM attributes_crm")
    assert tickets == 1000.0 and login == "2024-01-01 08:00:00+00"


def test_a_file_over_the_size_limit_fails_without_download(landing: Landing) -> None:
    run = process(landing, "big.csv", HEADER + "a@x.com,gold,1,yes,2024-01-01,\n" * 50, max_file_bytes=1000)
    failed_with(landing, run, "big.csv", "over the limit", "max_file_bytes")
    assert run["rows_read"] == 0


def test_a_header_that_looks_like_sql_is_just_a_name(local_or_s3: Landing) -> None:
    nasty = '"x""); DROP TABLE attributes_crm; --"'
    integration = {
        **CRM_INTEGRATION,
        "properties": [{"column": 'x"); DROP TABLE attributes_crm; --', "name": "nasty", "type": "string"}],
    }
    catalog = local_or_s3.write_catalog(integration)
    local_or_s3.put("crm/sql.csv", f"email,{nasty}\na@x.com,'; DELETE FROM integration_runs; --\n")
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT nasty FROM attributes_crm") == [("'; DELETE FROM integration_runs; --",)]
    assert len(runs_of(catalog)) == 1


def test_a_missing_sql_looking_column_is_reported_verbatim(local_or_s3: Landing) -> None:
    run = process(local_or_s3, "sql2.csv", 'email,"x""); DROP TABLE y; --"\na@x.com,1\n')
    assert run["status"] == "failed" and "'x\"); DROP TABLE y; --'" in run["message"]


def test_unicode_user_ids_and_values(landing: Landing) -> None:
    content = HEADER + "zoë@exämple.com,ゴールド,1,yes,2024-01-01,\n" + "用户@例子.公司,🚀 rocket,2,no,2024-01-01,\n"
    run = process(landing, "unicode.csv", content.encode("utf-8"))
    assert run["status"] == "success"
    assert dict(query(_catalog(landing), "SELECT user_id, plan FROM attributes_crm")) == {
        "zoë@exämple.com": "ゴールド",
        "用户@例子.公司": "🚀 rocket",
    }


def test_latin1_file_asks_for_the_encoding_then_reads_with_it(local_or_s3: Landing) -> None:
    content = (HEADER + "rené@x.com,café,1,yes,2024-01-01,\n").encode("latin-1")
    run = process(local_or_s3, "latin.csv", content)
    failed_with(local_or_s3, run, "latin.csv", "encoding: latin-1")
    run2 = process(local_or_s3, "latin2.csv", content, encoding="latin-1")
    assert run2["status"] == "success"


@pytest.mark.parametrize("ids", [["a@x.com", "a@x.com"], ["", "  "]])
def test_all_rows_rejected_means_the_file_fails(local_or_s3: Landing, ids: list[str]) -> None:
    content = HEADER + "".join(f"{i},gold,1,yes,2024-01-01,\n" for i in ids)
    run = process(local_or_s3, "allbad.csv", content, max_rejected_ratio=1.0)
    assert run["status"] == "failed" and "no valid row" in run["message"]


def test_an_encoding_error_past_the_head_names_its_row(local_or_s3: Landing) -> None:
    good = "".join(f"u{n}@x.com,gold,1,yes,2024-01-01,\n" for n in range(30_000))
    content = (HEADER + good).encode() + "rené@x.com,café,1,yes,2024-01-01,\n".encode("latin-1")
    assert len(content) > 1024 * 1024  # beyond the head the dialect and header are read from
    run = process(local_or_s3, "late.csv", content)
    failed_with(local_or_s3, run, "late.csv", f"row 30002 of {local_or_s3.url('crm/late.csv')} is not valid utf-8 text",
                "set `encoding: latin-1`")


def test_utf16_and_crlf_files_are_read(local_or_s3: Landing) -> None:
    content = HEADER + 'a@x.com,"gold\r\nplus",1,yes,2024-01-01,\r\n' + "b@x.com,silver,2,no,2024-01-01,\r\n"
    run = process(local_or_s3, "wide.csv", content.replace("\n", "\r\n").replace("\r\r", "\r").encode("utf-16"),
                  encoding="utf-16")
    assert run["status"] == "success" and run["rows_applied"] == 2, run
    plans = dict(query(_catalog(local_or_s3), "SELECT user_id, plan FROM attributes_crm"))
    assert plans == {"a@x.com": "gold\r\nplus", "b@x.com": "silver"}


def test_a_large_cell_in_a_small_file_is_just_a_value(local_or_s3: Landing) -> None:
    big = "x" * 300_000  # over Python's csv field limit, well under max_line_bytes
    run = process(local_or_s3, "cell.csv", HEADER + f'a@x.com,"{big}",1,yes,2024-01-01,\n')
    assert run["status"] == "success"
    assert query(_catalog(local_or_s3), "SELECT length(plan) FROM attributes_crm") == [(300_000,)]

"""The inbound CSV contract, run against a local folder, moto in-process and a moto server."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timezone

import pytest

from integration_hub.core.landing import landing_store
from integration_hub.core.warehouse import ensure_schema, open_writer
from integration_hub.inbound_csv import processing
from integration_hub_tests.support import CRM_INTEGRATION, Landing, query, run_job, runs_of, step_error_text

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login,ignored\n"


def crm_file(*rows: str) -> str:
    return HEADER + "".join(f"{r}\n" for r in rows)


def errors_of(landing: Landing, key: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(landing.read(key))))


def test_a_file_becomes_typed_attributes_and_moves_to_success(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put(
        "crm/users.csv",
        crm_file(
            "ann@example.com,gold,3,yes,2024-01-31,2024-05-01T10:00:00Z,x",
            "bob@example.com,silver,0.5,FALSE,2023-12-01,2024-05-01 12:30:00,x",
            "  cy@example.com  ,free,,1,,,x",
        ),
    )
    result = run_job(catalog, "crm")
    assert result.success

    rows = query(catalog, "SELECT user_id, plan, support_tickets, active, signup_date, last_login_at FROM attributes_crm ORDER BY user_id")
    assert rows == [
        ("ann@example.com", "gold", 3.0, True, date(2024, 1, 31), datetime(2024, 5, 1, 10, tzinfo=timezone.utc)),
        ("bob@example.com", "silver", 0.5, False, date(2023, 12, 1), datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)),
        ("cy@example.com", "free", None, True, None, None),
    ]
    assert query(catalog, "SELECT count(*) FROM user_profiles")[0][0] == 3
    assert landing.keys() == ["success/users.csv"]
    [run] = runs_of(catalog)
    assert (run["status"], run["rows_read"], run["rows_applied"], run["rows_rejected"], run["properties_imported"]) == (
        "success", 3, 3, 0, 5
    )
    [processed] = query(catalog, "SELECT key, status, size_bytes, moved_to FROM processed_files")
    assert processed[0] == "crm/users.csv" and processed[1] == "success" and processed[3] == "crm/success/users.csv"

    materialization = result.asset_materializations_for_node("attributes_crm")[0]
    assert materialization.metadata["rows_applied"].value == 3
    assert "ann@example.com" in materialization.metadata["preview"].value
    assert all(check.passed for check in result.get_asset_check_evaluations())


def test_later_files_win_and_users_are_never_deleted(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/a_first.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,", "bob@example.com,gold,1,yes,2024-01-01,,"))
    landing.put("crm/b_second.csv", crm_file("ann@example.com,platinum,2,no,2024-01-01,,"))
    assert run_job(catalog, "crm").success
    rows = dict(query(catalog, "SELECT user_id, plan FROM attributes_crm"))
    assert rows == {"ann@example.com": "platinum", "bob@example.com": "gold"}  # bob was not in the later file


def test_blank_cells_keep_the_value_unless_on_blank_clear(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/a.csv", crm_file("ann@example.com,gold,5,yes,2024-01-01,,"))
    landing.put("crm/b.csv", crm_file("ann@example.com,,,no,,,"))
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT plan, support_tickets, active FROM attributes_crm") == [("gold", 5.0, False)]

    catalog = landing.write_catalog({**CRM_INTEGRATION, "on_blank": "clear"})
    landing.put("crm/c.csv", crm_file("ann@example.com,,,yes,,,"))
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT plan, support_tickets, active FROM attributes_crm") == [(None, None, True)]


def test_bad_rows_are_rejected_with_row_column_value_and_reason(landing: Landing) -> None:
    catalog = landing.write_catalog({**CRM_INTEGRATION, "max_rejected_ratio": 0.5})
    good = [f"user{n}@example.com,gold,{n},yes,2024-01-01,," for n in range(10)]
    landing.put(
        "crm/mixed.csv",
        crm_file(
            *good,
            "bad1@example.com,gold,12abc,yes,2024-01-01,,",  # row 12
            "bad2@example.com,gold,1,maybe,2024-02-30,,",  # row 13: two bad cells
            ",gold,1,yes,2024-01-01,,",  # row 14: empty user id
            "dup@example.com,gold,1,yes,2024-01-01,,",  # rows 15 and 16: duplicated id
            "dup@example.com,silver,1,yes,2024-01-01,,",
            "bad3@example.com,gold,1,yes,2024-01-01,yesterday,",  # row 17
        ),
    )
    assert run_job(catalog, "crm").success
    [run] = runs_of(catalog)
    assert (run["status"], run["rows_read"], run["rows_applied"], run["rows_rejected"]) == ("partial", 16, 10, 6)
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 10

    rejected = query(
        catalog, "SELECT row_number, user_id, column_name, value, reason FROM rejected_rows ORDER BY row_number, column_name"
    )
    by_row = {(r[0], r[2]): r for r in rejected}
    assert by_row[(12, "tickets")][3] == "12abc" and "not a valid number" in by_row[(12, "tickets")][4]
    assert by_row[(13, "is_active")][3] == "maybe" and "true/false, yes/no" in by_row[(13, "is_active")][4]
    assert by_row[(13, "signup")][3] == "2024-02-30" and "YYYY-MM-DD" in by_row[(13, "signup")][4]
    assert "empty user id" in by_row[(14, "email")][4]
    assert "appears 2 times" in by_row[(15, "email")][4] and "rows 15, 16" in by_row[(16, "email")][4]
    assert by_row[(17, "last_login")][3] == "yesterday"

    assert sorted(landing.keys()) == ["success/mixed.csv", "success/mixed.errors.csv"]
    errors = errors_of(landing, "crm/success/mixed.errors.csv")
    assert [e["row_number"] for e in errors] == ["12", "13", "13", "14", "15", "16", "17"]
    assert errors[0] == {"row_number": "12", "user_id": "bad1@example.com", "column_name": "tickets", "value": "12abc",
                         "reason": errors[0]["reason"]}


def test_too_many_rejections_fail_the_file_and_apply_nothing(landing: Landing) -> None:
    catalog = landing.write_catalog()  # default max_rejected_ratio 0.1
    landing.put("crm/bad.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,", "bob@example.com,gold,x,yes,2024-01-01,,"))
    assert not run_job(catalog, "crm").success  # its only file failed: the run is red
    [run] = runs_of(catalog)
    assert run["status"] == "failed" and run["rows_applied"] == 0 and "max_rejected_ratio" in run["message"]
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 0
    assert sorted(landing.keys()) == ["failed/bad.csv", "failed/bad.errors.csv"]
    errors = errors_of(landing, "crm/failed/bad.errors.csv")
    assert errors[0]["value"] == "x" and "max_rejected_ratio" in errors[-1]["reason"]


def test_the_same_content_is_skipped_not_applied_twice(landing: Landing) -> None:
    catalog = landing.write_catalog()
    content = crm_file("ann@example.com,gold,1,yes,2024-01-01,,")
    landing.put("crm/users.csv", content)
    assert run_job(catalog, "crm").success
    first_update = query(catalog, "SELECT _updated_at FROM attributes_crm")[0][0]
    landing.put("crm/users.csv", content)  # re-uploaded by mistake
    assert run_job(catalog, "crm").success
    statuses = [r["status"] for r in runs_of(catalog)]
    assert statuses == ["success", "skipped"]
    assert query(catalog, "SELECT _updated_at FROM attributes_crm")[0][0] == first_update
    keys = landing.keys()
    assert "success/users.csv" in keys and len([k for k in keys if k.startswith("success/users.")]) == 2, keys


def test_a_moved_file_never_overwrites_an_earlier_one(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/users.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,"))
    assert run_job(catalog, "crm").success
    landing.put("crm/users.csv", crm_file("ann@example.com,silver,1,yes,2024-01-01,,"))
    assert run_job(catalog, "crm").success
    success = [k for k in landing.keys() if k.startswith("success/")]
    assert len(success) == 2 and "success/users.csv" in success
    assert "gold" in landing.read("crm/success/users.csv")  # the first one is intact
    assert query(catalog, "SELECT plan FROM attributes_crm") == [("silver",)]


def test_a_failed_move_fails_the_run_and_the_next_run_moves_the_applied_files(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/1.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,"))
    local_landing.put("crm/2.csv", crm_file("bob@example.com,free,2,no,2024-01-01,,"))
    blocker = local_landing.root / "landing" / "crm" / "success"
    blocker.write_text("a file where the success/ folder goes")  # every move fails
    result = run_job(catalog, "crm")
    assert not result.success
    assert f"cannot move {local_landing.root}/landing/crm/1.csv to {blocker}/ (File exists): it stays pending" in (
        step_error_text(result)
    )
    assert "(not moved either, and also pending: crm/2.csv)" in step_error_text(result)
    # Both files were applied (each commits before its move) and both stay pending.
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm ORDER BY 1") == [
        ("ann@example.com", "gold"), ("bob@example.com", "free")
    ]
    assert sorted(local_landing.keys()) == ["1.csv", "2.csv", "success"]
    assert query(catalog, "SELECT key, moved_to FROM processed_files ORDER BY 1") == [("crm/1.csv", None), ("crm/2.csv", None)]
    blocker.unlink()
    assert run_job(catalog, "crm").success
    assert sorted(local_landing.keys()) == ["success/1.csv", "success/2.csv"]
    assert [r["status"] for r in runs_of(catalog)] == ["success", "success", "skipped", "skipped"]
    moved = query(catalog, "SELECT key, status, moved_to FROM processed_files WHERE moved_to IS NOT NULL ORDER BY 1")
    assert moved == [("crm/1.csv", "skipped", "crm/success/1.csv"), ("crm/2.csv", "skipped", "crm/success/2.csv")]


def test_processed_and_foreign_files_are_not_picked_up(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/success/old.csv", crm_file("old@example.com,gold,1,yes,2024-01-01,,"))
    landing.put("crm/failed/bad.csv", crm_file("bad@example.com,gold,1,yes,2024-01-01,,"))
    landing.put("crm/notes.txt", "not a csv")
    landing.put("crm/nested/deeper.csv", crm_file("deep@example.com,gold,1,yes,2024-01-01,,"))
    result = run_job(catalog, "crm")
    assert result.success
    assert runs_of(catalog) == []
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 0


def test_gzip_files_are_read(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/users.csv.gz", crm_file("ann@example.com,gold,1,yes,2024-01-01,,"))
    assert run_job(catalog, "crm").success
    assert query(catalog, "SELECT user_id, plan FROM attributes_crm") == [("ann@example.com", "gold")]
    assert landing.keys() == ["success/users.csv.gz"]


def test_only_the_files_a_sensor_named_are_processed(landing: Landing) -> None:
    catalog = landing.write_catalog()
    landing.put("crm/a.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,"))
    landing.put("crm/b.csv", crm_file("bob@example.com,gold,1,yes,2024-01-01,,"))
    assert run_job(catalog, "crm", files=["crm/a.csv"]).success
    assert query(catalog, "SELECT user_id FROM attributes_crm") == [("ann@example.com",)]
    assert "b.csv" in landing.keys()


def test_a_large_file_logs_each_step(landing: Landing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "PROGRESS_MIN_BYTES", 0)  # every file counts as large
    catalog = landing.write_catalog()
    landing.put("crm/users.csv", crm_file("ann@example.com,gold,1,yes,2024-01-01,,", "bob@example.com,x,y,z,,,"))
    integration = catalog.integration("crm")
    store = landing_store(catalog, catalog.connection(integration.connection))
    [file] = store.list_pending("crm")
    lines: list[str] = []
    with open_writer(catalog) as con:
        ensure_schema(con, catalog)
        run = processing.process_file(con, store, integration, file, progress=lines.append)
    assert run is not None and run.status == "failed"  # 1 of 2 rows rejected: over max_rejected_ratio
    assert [line.split(" ")[0] for line in lines] == ["fetched", "read", "committed"]
    assert lines[1].startswith("read and validated 2 rows, 1 rejected (")

    landing.put("crm/more.csv", crm_file("cy@example.com,gold,1,yes,2024-01-01,,"))
    [file] = store.list_pending("crm")
    lines.clear()
    with open_writer(catalog) as con:
        run = processing.process_file(con, store, integration, file, progress=lines.append)
    assert run is not None and run.status == "success"
    assert [line.split(" ")[0] for line in lines] == ["fetched", "read", "applied", "committed"]
    assert lines[2].startswith("applied 1 row to attributes_crm, committing (")


def test_user_profiles_has_one_row_per_user_across_integrations(local_landing: Landing) -> None:
    def integration(name: str, prop: str) -> dict:
        return {**CRM_INTEGRATION, "name": name, "folder": name,
                "properties": [{"column": "Plan Tier", "name": prop, "type": "string"}]}

    catalog = local_landing.write_catalog(CRM_INTEGRATION, integration("billing", "billing_plan"),
                                          integration("support", "support_tier"))
    local_landing.put("crm/a.csv", crm_file("ann@x.com,gold,1,yes,,,", "bob@x.com,free,2,no,,,"))
    local_landing.put("billing/b.csv", crm_file("bob@x.com,paid,,,,,", "cy@x.com,paid,,,,,", "dee@x.com,paid,,,,,"))
    local_landing.put("support/c.csv", crm_file("bob@x.com,p1,,,,,", "eve@x.com,p2,,,,,", "dee@x.com,p3,,,,,"))
    assert run_job(catalog, "crm").success and run_job(catalog, "billing").success
    result = run_job(catalog, "support")
    [profiles] = result.asset_materializations_for_node("user_profiles")
    assert profiles.metadata["dagster/row_count"].value == 5  # bob is in all three, dee in two
    rows = query(catalog, "SELECT user_id, plan, billing_plan, support_tier, last_updated_at IS NOT NULL "
                          "FROM user_profiles ORDER BY user_id")
    assert rows == [
        ("ann@x.com", "gold", None, None, True),
        ("bob@x.com", "free", "paid", "p1", True),
        ("cy@x.com", None, "paid", None, True),
        ("dee@x.com", None, "paid", "p3", True),
        ("eve@x.com", None, None, "p2", True),
    ]
    assert query(catalog, "SELECT plan, support_tier FROM user_profiles WHERE user_id = 'dee@x.com'") == [(None, "p3")]

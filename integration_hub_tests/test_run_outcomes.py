"""Run outcomes where a data team looks: red runs, the `integration_hub/outcome` tag, WARN checks."""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg
import pytest

from integration_hub.core.ingest import RunRecord
from integration_hub.core.outcome import TAG_OUTCOME, run_outcome, worst
from integration_hub_tests.support import Landing, failure_reason, query, run_job_with_tags, runs_of

HEADER = "email,Plan Tier,tickets,is_active,signup,last_login\n"
GOOD = HEADER + "ann@example.com,gold,1,yes,2024-01-01,\n"
PARTIAL = HEADER + "".join(f"u{n}@example.com,gold,{n},yes,2024-01-01,\n" for n in range(20)) + "bad@example.com,gold,x,yes,2024-01-01,\n"
BROKEN = "mail,Plan Tier\na@x.com,gold\n"  # no user id column: the file fails


def _record(status: str, source: str = "f.csv", rejected: int = 0) -> RunRecord:
    return RunRecord(run_id="r", integration="crm", kind="csv", source=source, status=status,  # type: ignore[arg-type]
                     started_at=datetime.now(timezone.utc), rows_rejected=rejected, message=f"{source} was {status}")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "skipped"),
        (["skipped"], "skipped"),
        (["success", "skipped"], "success"),
        (["success", "partial"], "partial"),
        (["success", "failed"], "partial"),
        (["failed"], "failed"),
        (["failed", "skipped"], "failed"),
        (["failed", "failed"], "failed"),
    ],
)
def test_the_outcome_rule(statuses: list[str], expected: str) -> None:
    outcome = run_outcome([_record(s, f"f{n}.csv") for n, s in enumerate(statuses)])
    assert outcome.outcome == expected
    if expected in ("failed", "partial"):
        assert all(f"f{n}.csv" in outcome.reason for n, s in enumerate(statuses) if s == "failed")


def test_the_worst_outcome_of_a_run_wins() -> None:
    assert worst(None, "success") == "success"
    assert worst("partial", "success") == "partial"
    assert worst("success", "failed") == "failed"
    assert worst("skipped", "success") == "success"


def test_a_run_whose_only_file_failed_is_red_with_the_reason_and_keeps_its_bookkeeping(
    local_landing: Landing,
) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/broken.csv", BROKEN)
    result, tags = run_job_with_tags(catalog, "crm")
    assert not result.success
    assert tags[TAG_OUTCOME] == "failed" and tags["integration_hub/integration"] == "crm"
    reason = failure_reason(result)
    assert "nothing applied" in reason and "broken.csv" in reason and "'email'" in reason
    [run] = runs_of(catalog)  # recorded and explained, the file kept in failed/
    assert run["status"] == "failed" and run["dagster_run_id"] == result.run_id
    assert "failed/broken.csv" in local_landing.keys()


def test_a_partial_run_succeeds_tagged_partial_with_a_warn_check(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a_good.csv", GOOD)
    local_landing.put("crm/b_broken.csv", BROKEN)
    result, tags = run_job_with_tags(catalog, "crm")
    assert result.success
    assert tags[TAG_OUTCOME] == "partial"
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "sources_applied")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "b_broken.csv" in check.description
    # The good file's commit stands.
    assert query(catalog, "SELECT user_id FROM attributes_crm") == [("ann@example.com",)]
    assert sorted(r["status"] for r in runs_of(catalog)) == ["failed", "success"]


def test_rejected_rows_make_a_run_partial(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/partial.csv", PARTIAL)
    result, tags = run_job_with_tags(catalog, "crm")
    assert result.success and tags[TAG_OUTCOME] == "partial"
    check = next(c for c in result.get_asset_check_evaluations() if c.check_name == "sources_applied")
    assert not check.passed and "1 rejected rows" in check.description


def test_a_clean_run_is_success_and_an_idle_one_skipped(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    local_landing.put("crm/a.csv", GOOD)
    result, tags = run_job_with_tags(catalog, "crm")
    assert result.success and tags[TAG_OUTCOME] == "success"
    assert all(c.passed for c in result.get_asset_check_evaluations())
    result, tags = run_job_with_tags(catalog, "crm")
    assert result.success and tags[TAG_OUTCOME] == "skipped"

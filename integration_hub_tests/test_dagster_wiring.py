"""Dagster shape: definitions per catalog entry, the sensor's cursor and run keys, the schedule, the toggle."""

from __future__ import annotations

import json

import dagster as dg
import pytest

# dagster does not export InstigatorStatus, what the UI toggle stores in the instance.
from dagster._core.scheduler.instigation import InstigatorStatus

from integration_hub.core.state import dagster_instance, is_enabled, set_enabled
from integration_hub.definitions import build_definitions
from integration_hub_tests.support import CRM_INTEGRATION, Landing, query, run_job

ROW = "email,Plan Tier,tickets,is_active,signup,last_login\na@x.com,gold,1,yes,2024-01-01,\n"


def test_each_catalog_entry_becomes_its_assets_checks_job_sensor_and_schedule(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog(
        CRM_INTEGRATION, reports=[{"name": "gold_users", "sql": "SELECT user_id FROM user_profiles WHERE plan = 'gold'"}]
    )
    defs = build_definitions(catalog)
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"crm_files", "attributes_crm", "user_profiles", "report_gold_users"} <= keys
    assert graph.get(dg.AssetKey("attributes_crm")).group_name == "crm"
    assert dg.AssetKey("attributes_crm") in graph.get(dg.AssetKey("user_profiles")).parent_keys
    checks = {c.name for c in graph.asset_check_keys}
    assert {"user_id_unique_not_null", "column_types", "sources_applied"} <= checks
    assert defs.resolve_sensor_def("crm_sensor") and defs.resolve_schedule_def("crm_schedule")
    assert defs.resolve_schedule_def("crm_schedule").cron_schedule == "*/15 * * * *"
    # Loading definitions never touches the warehouse.
    assert not catalog.warehouse_catalog_path.exists()


def test_the_sensor_requests_new_files_once(landing: Landing) -> None:
    catalog = landing.write_catalog()
    sensor = build_definitions(catalog).resolve_sensor_def("crm_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert not first.run_requests and "no new files" in first.skip_message

        landing.put("crm/a.csv", ROW)
        second = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=first.cursor))
        [request] = second.run_requests
        assert request.run_config["ops"]["attributes_crm"]["config"]["files"] == ["crm/a.csv"]
        assert request.run_key

        # Still pending (the run has not happened yet): nothing new is requested.
        third = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=second.cursor))
        assert not third.run_requests

        landing.put("crm/b.csv", ROW.replace("a@x.com", "b@x.com"))
        fourth = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=third.cursor))
        [request] = fourth.run_requests
        assert request.run_config["ops"]["attributes_crm"]["config"]["files"] == ["crm/b.csv"]

        # After processing, the cursor forgets files that left the folder: it stays small.
        assert run_job(catalog, "crm", files=["crm/a.csv", "crm/b.csv"]).success
        fifth = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=fourth.cursor))
        assert not fifth.run_requests and json.loads(fifth.cursor) == []
    assert query(catalog, "SELECT count(*) FROM attributes_crm")[0][0] == 2


def test_the_same_upload_gets_the_same_run_key(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    sensor = build_definitions(catalog).resolve_sensor_def("crm_sensor")
    local_landing.put("crm/a.csv", ROW)
    with dg.DagsterInstance.ephemeral() as instance:
        one = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        two = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
    assert one.run_requests[0].run_key == two.run_requests[0].run_key


def test_the_schedule_skips_when_nothing_is_pending(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog()
    schedule = build_definitions(catalog).resolve_schedule_def("crm_schedule")
    with dg.DagsterInstance.ephemeral() as instance:
        skipped = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert not skipped.run_requests and "no pending files" in skipped.skip_message
        local_landing.put("crm/a.csv", ROW)
        ran = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert len(ran.run_requests) == 1


def test_enabled_false_in_the_catalog_stops_sensor_and_schedule(local_landing: Landing) -> None:
    catalog = local_landing.write_catalog({**CRM_INTEGRATION, "enabled": False})
    defs = build_definitions(catalog)
    assert defs.resolve_sensor_def("crm_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert defs.resolve_schedule_def("crm_schedule").default_status == dg.DefaultScheduleStatus.STOPPED


def test_disable_and_enable_flip_the_same_switch_as_the_ui(local_landing: Landing, monkeypatch) -> None:
    catalog = local_landing.write_catalog()
    monkeypatch.setenv("INTEGRATION_HUB_CATALOG", str(local_landing.catalog_path))
    integration = catalog.integration("crm")
    with dagster_instance(catalog) as instance:
        assert is_enabled(instance, integration)  # the catalog default
        assert set_enabled(instance, integration, False) == ["crm_sensor", "crm_schedule"]
        assert not is_enabled(instance, integration)
        assert {s.name: s.status for s in instance.all_instigator_state()} == {
            "crm_sensor": InstigatorStatus.STOPPED,
            "crm_schedule": InstigatorStatus.STOPPED,
        }
        set_enabled(instance, integration, True)
        assert is_enabled(instance, integration)
        assert {s.name: s.status for s in instance.all_instigator_state()} == {
            "crm_sensor": InstigatorStatus.RUNNING,
            "crm_schedule": InstigatorStatus.RUNNING,
        }


@pytest.mark.parametrize("partition_rows", [100, 10_000_000])
def test_the_user_id_check_counts_duplicates_and_nulls_exactly_in_any_number_of_partitions(partition_rows: int) -> None:
    import duckdb

    from integration_hub.core.assets import user_id_counts

    con = duckdb.connect()
    con.execute("CREATE TABLE attributes_crm AS SELECT 'u' || range AS user_id FROM range(1000)")
    con.execute("INSERT INTO attributes_crm VALUES ('u5'), ('u5'), ('u7'), (NULL), (NULL)")
    assert user_id_counts(con, "attributes_crm", partition_rows) == (1005, 3, 2)
    con.execute("DELETE FROM attributes_crm WHERE user_id IN ('u5', 'u7') OR user_id IS NULL")
    assert user_id_counts(con, "attributes_crm", partition_rows) == (998, 0, 0)

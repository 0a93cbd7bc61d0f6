"""The Dagster side of the API: definitions, the batches sensor, applying landed batches."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from integration_hub.api.batches import BatchStore, idempotency_hash, new_batch_id
from integration_hub.api.factory import RETRY_SECONDS, sensor_decision
from integration_hub.api.validation import compile_mapping
from integration_hub.core.catalog import Catalog
from integration_hub.definitions import build_definitions
from integration_hub_tests.api_support import (
    OFF_INTEGRATION,
    QA_INTEGRATION,
    WEB_INTEGRATION,
    apply_batches,
    write_catalog,
)
from integration_hub_tests.support import query


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return write_catalog(tmp_path)


def land(
    catalog: Catalog, *records: dict, integration: str = "web", key: tuple[str, dict] | None = None
) -> str:
    """Land a batch as the server does (validate, then write durably)."""
    validated = compile_mapping(catalog.integration(integration)).validate(list(records))
    batch_id = new_batch_id()
    status = {"batch_id": batch_id, "integration": integration, "accepted": validated.accepted,
              "rejected": validated.problems, "rejected_count": validated.rejected_records}  # fmt: skip
    BatchStore(catalog.landing_path).land(integration, batch_id, validated.ndjson(), status, key)
    return batch_id


def test_definitions_of_an_api_integration(tmp_path: Path) -> None:
    scheduled = {**QA_INTEGRATION, "schedule": "*/5 * * * *"}
    catalog = write_catalog(tmp_path, WEB_INTEGRATION, scheduled, OFF_INTEGRATION)
    definitions = build_definitions(catalog)
    graph = definitions.resolve_asset_graph()
    spec = graph.get(dg.AssetKey("web_batches"))
    assert "api" in spec.kinds
    attributes = definitions.resolve_assets_def(dg.AssetKey("attributes_web"))
    assert attributes.op.pool == "integration_web"
    assert {c.name for c in attributes.check_specs} == {
        "user_id_unique_not_null",
        "column_types",
        "sources_applied",
    }
    assert dg.AssetKey("web_batches") in graph.get(dg.AssetKey("attributes_web")).parent_keys
    assert definitions.resolve_job_def("web_job") is not None
    sensor = definitions.resolve_sensor_def("web_sensor")
    assert sensor.minimum_interval_seconds == 10
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert (
        definitions.resolve_sensor_def("legacy_feed_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    )
    assert definitions.resolve_schedule_def("qa_feed_schedule").cron_schedule == "*/5 * * * *"
    assert not any(s.name == "web_schedule" for s in definitions.schedules or [])


def test_sensor_decision() -> None:
    now = 1_000_000.0
    assert sensor_decision([], 0, None, now)[0] is None
    assert sensor_decision(["b1"], 1, None, now)[0] is None  # a run is already applying
    run_key, cursor, _ = sensor_decision(["b1", "b2"], 0, None, now)
    assert run_key and run_key.endswith("-1")
    assert len(cursor) < 100  # the cursor stays small however many batches are pending
    # The same batches still pending after the run finished (it failed): retried after a pause.
    assert sensor_decision(["b1", "b2"], 0, cursor, now + 5)[0] is None
    retry, _, _ = sensor_decision(["b1", "b2"], 0, cursor, now + RETRY_SECONDS + 1)
    assert retry and retry.endswith("-2") and retry.split("-")[0] == run_key.split("-")[0]
    other, _, _ = sensor_decision(["b1", "b2", "b3"], 0, cursor, now + 5)  # new batches: at once
    assert other and other != run_key


def test_sensor_requests_a_run_for_landed_batches(catalog: Catalog) -> None:
    sensor = build_definitions(catalog).resolve_sensor_def("web_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        empty = sensor(dg.build_sensor_context(instance=instance))
        assert not empty.run_requests
        land(catalog, {"userId": "u1", "planTier": "gold"})
        result = sensor(dg.build_sensor_context(instance=instance))
        assert len(result.run_requests) == 1
        again = sensor(dg.build_sensor_context(instance=instance, cursor=result.cursor))
        assert not again.run_requests  # same batches, run just requested: no duplicate run


def test_a_run_left_started_by_a_dead_worker_does_not_hold_up_the_batches(
    catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from integration_hub.api import factory

    sensor = build_definitions(catalog).resolve_sensor_def("web_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_run(dg.DagsterRun(job_name="web_job", status=dg.DagsterRunStatus.STARTED))
        land(catalog, {"userId": "u1", "planTier": "gold"})
        assert not sensor(dg.build_sensor_context(instance=instance)).run_requests, "a run is applying"
        # The same run, its status unchanged for longer than a run can take: its worker died.
        monkeypatch.setattr(factory, "STALE_RUN_SECONDS", -60)
        assert len(sensor(dg.build_sensor_context(instance=instance)).run_requests) == 1


@pytest.mark.parametrize("together", [True, False], ids=["one-run", "run-per-batch"])
def test_later_batches_win_and_users_are_never_deleted(catalog: Catalog, together: bool) -> None:
    batches = [
        land(
            catalog, {"userId": "u1", "planTier": "gold", "visits": 1}, {"userId": "u2", "planTier": "silver"}
        ),
        land(catalog, {"userId": "u1", "planTier": "platinum"}),
        land(catalog, {"userId": "u1", "visits": "7", "planTier": ""}),
        land(catalog, {"userId": "u3", "isActive": "no"}),
    ]
    if together:
        apply_batches(catalog)
    else:
        store = BatchStore(catalog.landing_path)
        for batch_id in batches:  # one at a time: the later ones wait outside pending/
            for other in batches:
                if other > batch_id and (store.folder("web") / f"{other}.ndjson").exists():
                    os.replace(
                        store.folder("web") / f"{other}.ndjson", catalog.landing_path / f"{other}.hold"
                    )
            apply_batches(catalog)
            for other in batches:
                if (catalog.landing_path / f"{other}.hold").exists():
                    os.replace(
                        catalog.landing_path / f"{other}.hold", store.folder("web") / f"{other}.ndjson"
                    )
    rows = query(catalog, "SELECT user_id, plan_tier, visits, is_active FROM user_profiles ORDER BY user_id")
    assert rows == [("u1", "platinum", 7.0, None), ("u2", "silver", None, None), ("u3", None, None, False)]
    sources = dict(query(catalog, "SELECT user_id, _source FROM attributes_web"))
    assert sources == {"u1": batches[2], "u2": batches[0], "u3": batches[3]}  # the batch that wrote it last
    processed = query(
        catalog, "SELECT key, status FROM processed_files WHERE integration = 'web' ORDER BY key"
    )
    assert processed == [(b, "success") for b in batches]
    runs = query(
        catalog, "SELECT kind, source, status, details FROM integration_runs WHERE integration = 'web'"
    )
    if together:
        assert [r[:3] for r in runs] == [("api", f"{batches[0]}..{batches[-1]}", "success")]
        assert json.loads(runs[0][3])["batches"] == batches
    else:
        assert sorted(r[1] for r in runs) == batches


def test_on_blank_clear_folds_batches_like_sequential_merges(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path, {**WEB_INTEGRATION, "on_blank": "clear"})
    land(catalog, {"userId": "u1", "planTier": "gold", "visits": 1})
    land(catalog, {"userId": "u1", "visits": 2})
    apply_batches(catalog)
    assert query(catalog, "SELECT plan_tier, visits FROM attributes_web") == [(None, 2.0)]


def test_a_batch_is_never_applied_twice(catalog: Catalog) -> None:
    """Crash between the DuckDB commit and the move to applied/: the next run only moves it."""
    batch_id = land(catalog, {"userId": "u1", "planTier": "gold"})
    store = BatchStore(catalog.landing_path)
    apply_batches(catalog)
    for suffix in (".ndjson", ".json"):  # as if the move never happened
        os.replace(
            store.folder("web", "applied") / f"{batch_id}{suffix}",
            store.folder("web") / f"{batch_id}{suffix}",
        )
    apply_batches(catalog)
    assert query(catalog, "SELECT count(*) FROM integration_runs WHERE source = ?", [batch_id]) == [(1,)]
    assert query(catalog, "SELECT count(*) FROM processed_files WHERE key = ?", [batch_id]) == [(1,)]
    assert store.pending_batch_ids("web") == []
    location = store.locate(batch_id, ["web"])
    assert location is not None and store.read_status(location)["status"] == "applied"


def test_an_unreadable_batch_fails_and_moves_to_failed(catalog: Catalog) -> None:
    store = BatchStore(catalog.landing_path)
    good = land(catalog, {"userId": "u1", "planTier": "gold"})
    bad = new_batch_id()
    (store.folder("web") / f"{bad}.ndjson").write_text('{"userId": "u2", "planTier": \n')
    apply_batches(catalog)
    status = store.read_status(store.locate(bad, ["web"]))
    assert status["status"] == "failed" and "could not be read" in status["message"]
    assert store.read_status(store.locate(good, ["web"]))["status"] == "applied"
    failed = query(catalog, "SELECT status FROM integration_runs WHERE source = ?", [bad])
    assert failed == [("failed",)]


def test_idempotency_records_survive_only_with_their_batch(catalog: Catalog) -> None:
    store = BatchStore(catalog.landing_path)
    key = idempotency_hash("acme", "k1")
    record = {"created": time.time(), "request_sha256": "x", "batch_id": "", "integration": "web",
              "status_code": 202, "body": {}}  # fmt: skip
    # Crash after the idempotency record, before the batch: nothing was acknowledged.
    orphan = new_batch_id()
    store.write_idempotency(key, {**record, "batch_id": orphan})
    assert store.idempotent_answer(key) is None
    # Landed (the answer may or may not have reached the client): the retry gets it.
    landed = land(catalog, {"userId": "u1"}, key=(key, {**record, "batch_id": "later"}))
    store.write_idempotency(key, {**record, "batch_id": landed})
    assert store.idempotent_answer(key)["batch_id"] == landed
    # Past the 24 h window the key is forgotten.
    store.write_idempotency(key, {**record, "batch_id": landed, "created": time.time() - 25 * 3600})
    assert store.idempotent_answer(key) is None


def test_unfinished_attempts_are_invisible_and_pruned(catalog: Catalog) -> None:
    store = BatchStore(catalog.landing_path)
    store.ensure_folders("web")
    pending = store.folder("web")
    orphan = new_batch_id()
    (pending / f"{orphan}.json").write_text(json.dumps({"batch_id": orphan}))  # status without data
    (pending / ".tmp-0123456789abcdef").write_bytes(b'{"userId": "half')  # a crash mid-write
    assert store.pending_batch_ids("web") == []
    assert store.locate(orphan, ["web"]) is None
    old = time.time() - 2 * 3600
    for path in pending.iterdir():
        os.utime(path, (old, old))
    assert store.prune("web") == 2
    assert list(pending.iterdir()) == []

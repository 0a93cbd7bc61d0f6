"""The API's landing store in S3 (scale-out): batches, their moves, and Idempotency-Keys claimed
with conditional writes, so that replicas on different machines share them. moto in-process;
the replicas end to end are in test_scale_out.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from integration_hub.api.batches import IdempotencyBusy, batch_store, new_batch_id
from integration_hub.api.s3_batches import LandingUnavailable, S3BatchStore
from integration_hub.core.catalog import CatalogError, S3Connection, load_catalog

BUCKET = "acme-landing"


@pytest.fixture
def connection() -> Iterator[S3Connection]:
    from moto import mock_aws

    with mock_aws():
        settings = S3Connection(
            name="lake_bucket", type="s3", bucket=BUCKET, prefix="team", region="us-east-1",
            access_key_id="testing", secret_access_key="testing-secret",
        )  # fmt: skip
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield settings


def replica(connection: S3Connection) -> S3BatchStore:
    """What one API replica or run worker holds: its own client on the same bucket."""
    return S3BatchStore(connection, "api_landing/")


def objects(store: S3BatchStore) -> list[str]:
    listed = store.client.list_objects_v2(Bucket=BUCKET, Prefix="team/api_landing/")
    return sorted(item["Key"].removeprefix("team/api_landing/") for item in listed.get("Contents", []))


def answer(batch_id: str) -> dict[str, Any]:
    return {
        "created": time.time(), "request_sha256": "abc", "batch_id": batch_id, "integration": "web",
        "status_code": 202, "body": {"batch_id": batch_id, "accepted": 1},
    }  # fmt: skip


def land(store: S3BatchStore, key_hash: str | None = None) -> str:
    batch_id = new_batch_id()
    status = {"batch_id": batch_id, "integration": "web", "accepted": 1}
    record = (key_hash, answer(batch_id)) if key_hash else None
    store.land("web", batch_id, b'{"userId":"u1","planTier":"gold"}\n', status, record)
    return batch_id


def test_a_landed_batch_is_pending_then_moved_to_applied_with_its_outcome(connection: S3Connection) -> None:
    api, worker = replica(connection), replica(connection)
    first, second = land(api), land(api)
    assert worker.pending_batches("web") == {first: 34, second: 34}
    assert worker.data_url("web", first) == f"s3://{BUCKET}/team/api_landing/web/pending/{first}.ndjson"
    location = api.locate(first, ["other", "web"])
    assert location is not None and api.read_status(location)["status"] == "accepted"

    worker.finish("web", [(first, {"batch_id": first, "rows_applied": 1})], failed=False)
    assert worker.pending_batch_ids("web") == [second]
    status = api.read_status(api.locate(first, ["web"]))
    assert status["status"] == "applied" and status["rows_applied"] == 1
    assert f"web/applied/{first}.ndjson" in objects(api), "the records are kept with their outcome"
    worker.finish("web", [(first, {"batch_id": first})], failed=False)  # a rerun after a crash: harmless
    assert api.locate("b_20990101T000000000000Z_00000000", ["web"]) is None


def test_only_one_replica_holds_a_key_and_the_other_replays_its_answer(connection: S3Connection) -> None:
    one, two = replica(connection), replica(connection)
    with one.claim_idempotency("k1") as first:
        assert first is None, "the key is new: this replica holds it"
        with pytest.raises(IdempotencyBusy), two.claim_idempotency("k1"):
            pass
        batch_id = land(one, "k1")
    with two.claim_idempotency("k1") as first:
        assert first is not None and first["batch_id"] == batch_id, "replayed on the other replica"
    assert one.pending_batch_ids("web") == [batch_id], "one batch for the key"


def test_a_key_whose_request_was_refused_is_free_at_once(connection: S3Connection) -> None:
    one, two = replica(connection), replica(connection)
    with one.claim_idempotency("k2") as first:
        assert first is None  # ... and the request is answered 4xx: nothing lands
    with two.claim_idempotency("k2") as first:
        assert first is None, "the claim was released, not left to expire"
        land(two, "k2")


def test_a_dead_replicas_claim_is_taken_over_once_and_its_late_write_fails(connection: S3Connection) -> None:
    dead, one, two = replica(connection), replica(connection), replica(connection)
    assert dead._take("k3") is None  # claimed, then the process stalls without landing
    with pytest.raises(IdempotencyBusy), one.claim_idempotency("k3"):
        pass
    # The claim timeout passes (set, not slept: a loaded machine must not let the first claim expire early).
    one.claim_timeout = 0.0
    with one.claim_idempotency("k3") as first:
        assert first is None, "taken over after the claim timeout"
        with pytest.raises(IdempotencyBusy), two.claim_idempotency("k3"):
            pass
        batch_id = land(one, "k3")
    with pytest.raises(LandingUnavailable, match="claim was lost"):
        land(dead, "k3")  # the stalled replica wakes up: its conditional write fails
    dead._release("k3")  # ... and its request ends, freeing what it still takes for its claim
    assert one.pending_batch_ids("web") == [batch_id], "the stalled replica landed nothing"
    with two.claim_idempotency("k3") as first:
        assert first is not None and first["batch_id"] == batch_id, "the key still answers with the batch"


def test_requests_of_one_key_on_one_replica_take_turns(connection: S3Connection) -> None:
    """Until a request has answered, another with its key on the same replica waits (409): a
    replay there must not end the first request's claim."""
    one = replica(connection)
    with one.claim_idempotency("k5") as first:
        assert first is None
        batch_id = land(one, "k5")
        with pytest.raises(IdempotencyBusy), one.claim_idempotency("k5"):
            pass
    with one.claim_idempotency("k5") as first:
        assert first is not None and first["batch_id"] == batch_id
    with one.claim_idempotency("k6") as first:  # a busy request does not free the holder's key
        with pytest.raises(IdempotencyBusy), one.claim_idempotency("k6"):
            pass
        with pytest.raises(IdempotencyBusy), one.claim_idempotency("k6"):
            pass


def test_old_applied_batches_orphans_and_keys_are_pruned(connection: S3Connection) -> None:
    store = replica(connection)
    applied, pending = land(store, "k4"), land(store)
    store.finish("web", [(applied, {"batch_id": applied})], failed=False)
    orphan = new_batch_id()
    store._put(store._object("web", "pending", orphan, ".json"), b"{}")  # an attempt that died before its data
    assert store.prune("web") == 0, "nothing is old yet"
    later = time.time() + 8 * 24 * 3600
    assert store.prune("web", now=later) == 3  # the applied status and data, and the orphan status
    assert store.prune_idempotency(now=later) == 1
    assert objects(store) == [f"web/pending/{pending}.json", f"web/pending/{pending}.ndjson"]


def test_an_unreachable_bucket_is_one_line_that_names_it_and_no_secret(connection: S3Connection) -> None:
    broken = S3Connection(**{**connection.model_dump(), "bucket": "no-such-bucket", "max_retries": 0})
    store = S3BatchStore(broken, "api_landing")
    with pytest.raises(LandingUnavailable) as failed:
        land(store)
    message = str(failed.value.strerror)
    assert "no-such-bucket" in message and "\n" not in message and "testing-secret" not in message
    assert store.problem() is not None and "no-such-bucket" in store.problem()
    with pytest.raises(LandingUnavailable):
        store.probe_write()


def test_the_catalog_puts_the_landing_on_an_s3_connection_only(tmp_path: Any) -> None:
    document: dict[str, Any] = {
        "landing": {"connection": "lake_bucket", "prefix": "/api_landing/"},
        "connections": [{"name": "lake_bucket", "type": "s3", "bucket": BUCKET, "prefix": "team"}],
    }
    path = tmp_path / "integrations.yaml"
    path.write_text(yaml.safe_dump(document))
    catalog = load_catalog(path)
    assert catalog.landing_shown == f"s3://{BUCKET}/team/api_landing/"
    store = batch_store(catalog)
    assert isinstance(store, S3BatchStore) and store.description == catalog.landing_shown

    document["connections"] = [{"name": "lake_bucket", "type": "local", "path": "drop"}]
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(CatalogError, match="landing field 'connection' 'lake_bucket' is not an s3 connection"):
        load_catalog(path)

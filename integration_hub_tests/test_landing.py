"""Landing storage details: listing stays at the folder level and pages through big folders."""

from __future__ import annotations

import json
import uuid

import boto3
import yaml
from moto import mock_aws

from integration_hub.cli.main import main
from integration_hub.core import landing
from integration_hub.core.catalog import parse_catalog
from integration_hub.core.landing import S3LandingStore
from integration_hub.core.state import dagster_instance, ensure_dagster_home
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.support import CRM_INTEGRATION, lake_settings


@mock_aws
def test_listing_pages_past_1000_objects_and_skips_processed_folders() -> None:
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="big")
    for n in range(1100):
        client.put_object(Bucket="big", Key=f"in/crm/file{n:04d}.csv", Body=b"email\na\n")
    for n in range(50):
        client.put_object(Bucket="big", Key=f"in/crm/success/done{n}.csv", Body=b"email\na\n")
    calls: list[dict] = []
    client.meta.events.register("before-call.s3.ListObjectsV2", lambda params, **_: calls.append(params))
    pending = S3LandingStore(client, "big", "in").list_pending("crm")
    assert len(pending) == 1100 and all("/success/" not in f.key for f in pending)
    assert len(calls) == 2 and all(c["query_string"]["delimiter"] == "/" for c in calls)


@mock_aws
def test_a_large_file_downloads_in_one_wave_of_ranged_gets(tmp_path, monkeypatch) -> None:
    mib = 1024 * 1024
    monkeypatch.setattr(landing, "LARGE_PART", mib)  # scaled down: 1 MiB stands for 128 MiB
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket="big")
    store = S3LandingStore(client, "big", "in")
    ranges: list[str] = []
    client.meta.events.register("before-call.s3.GetObject", lambda params, **_: ranges.append(params["headers"].get("Range")))
    for size, expected_parts in ((10 * mib + 5, landing.DOWNLOAD_STREAMS), (3 * mib, 3)):
        body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        client.put_object(Bucket="big", Key=f"in/crm/f{size}.csv", Body=body)
        (pending,) = [f for f in store.list_pending("crm") if f.size == size]
        ranges.clear()
        fetched = store.fetch(pending, tmp_path)
        assert fetched.read_bytes() == body
        # Never more ranges than streams (one wave), never smaller than LARGE_PART but the last.
        assert len(ranges) == expected_parts and all(r and r.startswith("bytes=") for r in ranges)
        starts = sorted(int(r[6:].split("-")[0]) for r in ranges)
        assert all(b - a >= mib for a, b in zip(starts, starts[1:], strict=False))
        fetched.unlink()


def test_check_says_access_denied_and_never_shows_the_secret(tmp_path, capsys) -> None:
    with MotoServer() as server:
        server.client().create_bucket(Bucket="locked")
        iam = server.client("iam")
        user = f"reader-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        document = {
            "warehouse": lake_settings(tmp_path),
            "connections": [{"name": "landing", "type": "s3", "bucket": "locked", "endpoint_url": server.endpoint_url,
                             "region": "us-east-1", "access_key_id": key["AccessKeyId"],
                             "secret_access_key": key["SecretAccessKey"]}],
            "integrations": [CRM_INTEGRATION],
        }
        path = tmp_path / "integrations.yaml"
        path.write_text(yaml.safe_dump(document))
        with server.iam_auth():
            code = main(["check", "--catalog", str(path)])
    out = capsys.readouterr().out
    assert code == 1 and "access denied" in out and "s3:ListBucket" in out
    assert key["SecretAccessKey"] not in out


def test_the_dagster_home_runs_one_run_per_integration_pool_at_a_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    catalog = parse_catalog({"connections": [], "integrations": []}, base_dir=tmp_path)
    home = ensure_dagster_home(catalog)
    assert "granularity: run" in (home / "dagster.yaml").read_text()
    with dagster_instance(catalog) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.default_pool_limit == 1
        assert json.dumps(str(config.pool_config.pool_granularity)).lower().find("run") >= 0

"""A scale-out project for tests: a catalog whose lake is on PostgreSQL + S3, and its commands as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from integration_hub_tests.fakes.moto_server import FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY, MotoServer
from integration_hub_tests.fakes.postgres_server import PostgresServer

LAKE_BUCKET = "acme-lake"
INBOUND_BUCKET = "acme-inbound"
PASSWORD_VARIABLE = "IHUB_TEST_PG_PASSWORD"
HEADER = "email,Plan Tier,tickets\n"


def integration(name: str, folder: str) -> dict[str, Any]:
    return {
        "name": name, "type": "s3_csv", "connection": "inbound", "folder": folder, "user_id_column": "email",
        "properties": [
            {"column": "Plan Tier", "name": f"{name}_plan", "type": "string"},
            {"column": "tickets", "name": f"{name}_tickets", "type": "number"},
        ],
    }


class ScaleOut:
    """A project folder whose catalog puts the lake on PostgreSQL + S3, and runs commands from it."""

    def __init__(self, root: Path, postgres: PostgresServer, s3: MotoServer) -> None:
        self.root, self.postgres, self.s3 = root, postgres, s3
        self.database = postgres.new_database()
        self.client = s3.client()
        for bucket in (LAKE_BUCKET, INBOUND_BUCKET):
            try:
                self.client.create_bucket(Bucket=bucket)
            except self.client.exceptions.BucketAlreadyOwnedByYou:
                pass
        self.prefix = f"t{self.database[-8:]}"  # one lake and one landing prefix per test
        connection = {
            "type": "s3", "region": "us-east-1", "endpoint_url": s3.endpoint_url,
            "access_key_id": FAKE_ACCESS_KEY_ID, "secret_access_key": FAKE_SECRET_ACCESS_KEY,
        }
        self.document: dict[str, Any] = {
            "warehouse": {
                "catalog": postgres.url(self.database, password="${" + PASSWORD_VARIABLE + "}"),
                "data_path": f"s3://{LAKE_BUCKET}/{self.prefix}/lake/",
                "data_connection": "lake_bucket",
            },
            "connections": [
                {"name": "lake_bucket", "bucket": LAKE_BUCKET, "prefix": self.prefix, **connection},
                {"name": "inbound", "bucket": INBOUND_BUCKET, "prefix": self.prefix, **connection},
            ],
            "integrations": [integration("crm", "crm"), integration("billing", "billing")],
        }
        self.catalog_file = root / "integrations.yaml"
        self.catalog_file.write_text(yaml.safe_dump(self.document, sort_keys=False))
        self.env = {
            **os.environ, PASSWORD_VARIABLE: postgres.password, "DAGSTER_HOME": str(root / "dagster_home"),
            "INTEGRATION_HUB_CATALOG": str(self.catalog_file),
        }
        (root / "dagster_home").mkdir()

    def put(self, key: str, body: str) -> None:
        self.client.put_object(Bucket=INBOUND_BUCKET, Key=f"{self.prefix}/{key}", Body=body.encode())

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "integration_hub.cli.main", *args], cwd=self.root, env=self.env,
            capture_output=True, text=True, timeout=300,
        )
        assert self.postgres.password not in done.stdout + done.stderr, "the catalog's password was shown"
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def sql(self, query: str) -> list[dict[str, Any]]:
        return json.loads(self.command("sql", query, "--json").stdout)

    def lake_objects(self) -> list[str]:
        listed = self.client.list_objects_v2(Bucket=LAKE_BUCKET, Prefix=f"{self.prefix}/lake/")
        return [item["Key"] for item in listed.get("Contents", [])]

    def local_files(self) -> set[str]:
        skip = {"integrations.yaml"}
        return {
            str(path.relative_to(self.root)) for path in self.root.rglob("*")
            if path.is_file() and "dagster_home" not in path.parts and path.name not in skip
        }


def dagster_on_postgres(scale_out: ScaleOut) -> None:
    """$DAGSTER_HOME/dagster.yaml with dagster-postgres storage (the driver named: see docs/deploy.md)."""
    database = scale_out.postgres.new_database("dagster")
    scale_out.env["DAGSTER_PG_URL"] = (
        f"postgresql+psycopg2://hub:{scale_out.postgres.password}@127.0.0.1:{scale_out.postgres.port}/{database}"
    )
    from integration_hub.core.state import DAGSTER_YAML

    logs = {  # the runs' captured output in the bucket too (staged in the system temp folder)
        "module": "dagster_aws.s3.compute_log_manager", "class": "S3ComputeLogManager",
        "config": {
            "bucket": LAKE_BUCKET, "prefix": f"{scale_out.prefix}/dagster-compute-logs",
            "endpoint_url": scale_out.s3.endpoint_url, "region": "us-east-1", "use_ssl": False,
        },
    }  # fmt: skip
    scale_out.env.update(AWS_ACCESS_KEY_ID=FAKE_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET_ACCESS_KEY)
    config = {
        **yaml.safe_load(DAGSTER_YAML),
        "storage": {"postgres": {"postgres_url": {"env": "DAGSTER_PG_URL"}}},
        "compute_logs": logs,
    }
    (scale_out.root / "dagster_home" / "dagster.yaml").write_text(yaml.safe_dump(config))

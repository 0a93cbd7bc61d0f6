"""The OpenAPI document is the truth: schemathesis checks the real server against /openapi.json.

All of schemathesis' checks run, authenticated with a bearer token, in a bounded time:
every answer must be a documented status with a body matching its schema, schema-valid
requests must not be refused as malformed, schema-invalid ones must be refused, unknown
methods get 405 with Allow, a request without the token gets 401.

schemathesis does not know an integration token (it is a secret in the body, not part of
the schema), so its requests stop at 404 `unknown_integration_token` once their shape is
right: records are checked per integration mapping, which the document cannot describe.
413 counts as a refusal of schema-invalid data (more records than `maxItems`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integration_hub_tests.api_support import ApiServer, Tokens, issue_tokens, landed, write_catalog

SCHEMATHESIS_CONFIG = """
seed = 20240501
headers = { Authorization = "Bearer ${INTEGRATION_HUB_TEST_BEARER}" }

[generation]
max-examples = 25
database = "none"

[checks.negative_data_rejection]
expected-statuses = ["400", "401", "404", "405", "409", "413", "415", "422", "429"]
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiServer, Tokens]]:
    root = tmp_path_factory.mktemp("api_openapi")
    catalog = write_catalog(root)
    tokens = issue_tokens(catalog)
    (root / "dagster_home").mkdir()
    with ApiServer(catalog, root / "dagster_home") as server:
        yield server, tokens


def test_the_document_lists_every_answer_and_the_request_limits(served: tuple[ApiServer, Tokens]) -> None:
    server, _ = served
    spec = httpx.get(f"{server.url}/openapi.json").json()
    post = spec["paths"]["/v1/end-users"]["post"]
    assert sorted(post["responses"]) == sorted(
        ["202", "400", "401", "404", "408", "409", "413", "415", "422", "429", "431", "500", "503"]
    )
    assert sorted(spec["paths"]["/v1/batches/{batch_id}"]["get"]["responses"]) == sorted(
        ["200", "400", "401", "404", "408", "429", "431", "500"]
    )
    assert sorted(spec["paths"]["/healthz"]["get"]["responses"]) == ["200", "400", "408", "431", "500", "503"]
    body = post["requestBody"]["content"]["application/json"]["schema"]
    assert body["additionalProperties"] is False
    assert body["properties"]["data"]["minItems"] == 1 and body["properties"]["data"]["maxItems"] == 2000
    assert body["properties"]["integration_token"]["maxLength"] == 256
    (key,) = post["parameters"]
    assert key["name"] == "Idempotency-Key" and key["schema"]["maxLength"] == 255
    # 422 is either answer: no valid record (with the problems) or a reused Idempotency-Key
    assert post["responses"]["422"]["content"]["application/json"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/NoValidRecord"}, {"$ref": "#/components/schemas/ErrorBody"}]
    }


def test_schemathesis_finds_no_difference_between_the_server_and_its_document(
    served: tuple[ApiServer, Tokens], tmp_path: Path
) -> None:
    server, tokens = served
    before = landed(server.catalog)
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{server.url}/openapi.json", "--checks", "all", "--workers", "1", "--output-truncate", "true",
    ]  # fmt: skip
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=110,
        cwd=tmp_path,
        env={**os.environ, "INTEGRATION_HUB_TEST_BEARER": tokens.bearer},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Test cases:" in result.stdout and "passed" in result.stdout
    assert tokens.bearer not in result.stdout
    assert landed(server.catalog) == before  # it never had an integration token

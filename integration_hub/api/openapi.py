"""The OpenAPI document of the End User Update API: every answer the server can give, with its body.

The document is the contract a client is generated from, and schemathesis checks the
running server against it (integration_hub_tests/test_api_openapi.py): a status the server
can answer and the document does not list, or a body that does not match its schema, is a
bug. The request schema carries the server's limits (records per request, key lengths).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .document import MAX_JSON_DEPTH
from .settings import ApiSettings
from .validation import MAX_PROBLEMS

JSON = "application/json"
BATCH_ID_PATTERN = r"^b_[0-9]{8}T[0-9]{12}Z_[0-9a-f]{8}$"


class Problem(BaseModel):
    index: int = Field(description="Position of the record in `data` (0-based).")
    field: str | None = Field(
        description="The property with the problem (null: the record as a whole, or a count of further "
        "unknown properties)."
    )
    message: str


class Accepted(BaseModel):
    batch_id: str
    accepted: int = Field(description="Records accepted (durably stored, applied within about a minute).")
    rejected: list[Problem] = Field(
        description=f"Problems of the rejected records (at most {MAX_PROBLEMS:,} listed)."
    )
    rejected_count: int = Field(description="Records rejected.")


class ErrorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="A stable code, e.g. `invalid_json` (see the description of each status).")
    message: str = Field(description="What is wrong and how to fix it.")


class NoValidRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="`no_valid_records`")
    message: str
    accepted: int = Field(description="Always 0.")
    rejected: list[Problem] = Field(description=f"The problems (at most {MAX_PROBLEMS:,} listed).")
    rejected_count: int


class BatchStatus(BaseModel):
    batch_id: str
    integration: str
    status: str = Field(description="accepted | applied | failed")
    received_at: str | None = None
    accepted: int | None = None
    rejected: list[Problem] = []
    rejected_count: int = 0
    applied_at: str | None = None
    rows_applied: int | None = None
    rows_rejected_at_apply: int | None = None
    rejected_at_apply: list[dict[str, Any]] | None = None
    message: str | None = None


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str = Field(description="`ok`")
    integrations: int = Field(description="API integrations in the catalog.")


class Unhealthy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="`landing_not_writable`")
    message: str
    status: str = Field(description="`degraded`")
    integrations: int


MODELS: list[type[BaseModel]] = [Problem, Accepted, ErrorBody, NoValidRecord, BatchStatus, Health, Unhealthy]


def request_schema(settings: ApiSettings) -> dict[str, Any]:
    """The body of POST /v1/end-users, with the server's limits."""
    scalar = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"}]}
    return {
        "type": "object",
        "required": ["integration_token", "data"],
        "additionalProperties": False,
        "properties": {
            "integration_token": {
                "type": "string",
                "maxLength": 256,
                "description": "The API integration's token (integration-hub endpoint NAME).",
            },
            "data": {
                "type": "array",
                "minItems": 1,
                "maxItems": settings.max_records,
                "description": (
                    f"1 to {settings.max_records:,} records: the integration's user id property (a non-empty "
                    "string or an integer, at most 1,024 characters) plus mapped properties. A record that "
                    "breaks its integration's mapping is rejected on its own and listed in `rejected`."
                ),
                "items": {"type": "object", "additionalProperties": scalar},
                "examples": [[{"userId": "u1", "planTier": "gold"}]],
            },
        },
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(schema: dict[str, Any], description: str, **headers: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description, "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = {
            name.replace("_", "-"): {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return answer


def _error(description: str, **headers: str) -> dict[str, Any]:
    return _json(_ref(ErrorBody), description, **headers)


def _any_request(settings: ApiSettings) -> dict[str, dict[str, Any]]:
    """Answers any request can get, before or beside its operation."""
    return {
        "400": _error("`invalid_http`: the request is not valid HTTP/1.1."),
        "408": _error(
            f"`request_timeout`: the request line and headers did not arrive within {settings.header_timeout:g} s"
            f", or the body paused for more than {settings.body_timeout:g} s. The connection is closed."
        ),
        "431": _error(
            f"`headers_too_large`: the request line and headers are over {settings.max_header_bytes:,} bytes. "
            "The connection is closed."
        ),
        "500": _error("`internal_error`: an unexpected failure; the server log has the details."),
    }


def responses(settings: ApiSettings) -> dict[str, dict[str, dict[str, Any]]]:
    """The responses of each operation, by path and method."""
    any_request = _any_request(settings)
    retry = "Seconds to wait before retrying."
    unauthorized = _error(
        "`unauthorized`: no `Authorization: Bearer <token>`, or the token is unknown or revoked.",
        WWW_Authenticate='`Bearer realm="integration_hub"`',
    )
    rate_limited = _error("`rate_limited`: over the per-token rate limit.", Retry_After=retry)
    return {
        "/v1/end-users": {
            "post": {
                "202": _json(_ref(Accepted), "At least one record was accepted and is stored durably."),
                **any_request,
                "400": _error(
                    "`invalid_json`: not JSON, not UTF-8, `NaN`/`Infinity`, or nested deeper than "
                    f"{MAX_JSON_DEPTH} levels anywhere; `duplicate_key`: a key twice in one object; "
                    "`invalid_request`: not `{integration_token, data}` as described, or more JSON objects and "
                    f"arrays than {settings.max_containers:,}; `invalid_encoding`: `Content-Encoding: gzip` but "
                    "not gzip data; `invalid_idempotency_key`; `invalid_http`: not valid HTTP/1.1."
                ),
                "401": unauthorized,
                "404": _error(
                    "`unknown_integration_token`: the integration token is unknown, was rotated, or its "
                    "integration is disabled. Nothing was stored."
                ),
                "409": _error(
                    "`idempotency_key_in_use`: a request with this Idempotency-Key is still being processed.",
                    Retry_After=retry,
                ),
                "413": _error(
                    f"`payload_too_large`: the body (or a gzip body once decompressed) is over "
                    f"{settings.max_body_bytes:,} bytes; `too_many_records`: more than "
                    f"{settings.max_records:,} records."
                ),
                "415": _error(
                    "`unsupported_media_type`: Content-Type is not `application/json` (UTF-8); "
                    "`unsupported_content_encoding`: Content-Encoding is not `gzip` or `identity`."
                ),
                "422": _json(
                    {"anyOf": [_ref(NoValidRecord), _ref(ErrorBody)]},
                    "`no_valid_records`: no record is valid (with `rejected` and `rejected_count`; nothing "
                    "was stored); `idempotency_key_reused`: the Idempotency-Key was used in the last 24 h "
                    "with a different body.",
                ),
                "429": rate_limited,
                "503": _error(
                    "`storage_unavailable`: the records could not be stored; nothing was accepted.",
                    Retry_After=retry,
                ),
            }
        },
        "/v1/batches/{batch_id}": {
            "get": {
                "200": _json(_ref(BatchStatus), "The batch's status."),
                **any_request,
                "401": unauthorized,
                "404": _error("`batch_not_found`: no batch with this id."),
                "429": rate_limited,
            }
        },
        "/healthz": {
            "get": {
                "200": _json(_ref(Health), "The server is up and the landing folder is writable."),
                **any_request,
                "503": _json(_ref(Unhealthy), "`landing_not_writable`: requests cannot be stored."),
            }
        },
    }


def finish(schema: dict[str, Any], settings: ApiSettings) -> dict[str, Any]:
    """FastAPI's document with every operation's real answers, models and the bearer scheme."""
    components = schema.setdefault("components", {})
    models = components.setdefault("schemas", {})
    for model in MODELS:
        models[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
        models.update(models[model.__name__].pop("$defs", {}))
    for path, operations in responses(settings).items():
        for method, answers in operations.items():
            schema["paths"][path][method]["responses"] = dict(sorted(answers.items()))
    components["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "integration-hub tokens create NAME",
        }
    }
    for unused in ("HTTPValidationError", "ValidationError"):
        models.pop(unused, None)
    return schema

"""The End User Update API: `POST /v1/end-users`, `GET /v1/batches/{batch_id}`, `GET /healthz`.

FastAPI on uvicorn. A request is answered 202 only once its accepted records are on disk
(fsync'd) in the landing store; Dagster runs apply them to DuckDB later. This process
never opens DuckDB.

Per request: the bearer token (401) and the per-token rate limit (429) come first, then a
malformed `Idempotency-Key` (400), the media type and content coding (415), then the body
is read while counting bytes, decompressed if gzip (413 past the limit, without reading
the rest; 408 if it stalls), then an `Idempotency-Key` may replay the first answer. In a
worker thread: the JSON is parsed within bounds (400: document.py), its shape and record
count checked (400, 413), the integration token picks the integration (404, also when it
is disabled), each record is validated (422 when none is valid), and the batch lands.
Limits on the request head (431, 408) and malformed HTTP (400) are the HTTP protocol's
(protocol.py); every error, from there or from here, is `{"error", "message"}` JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..core.catalog import CATALOG_ENV, ApiIntegration, Catalog, CatalogError, load_catalog
from .batches import IdempotencyBusy, batch_store, idempotency_hash, new_batch_id, utc_now_iso
from .document import MAX_JSON_DEPTH, DocumentRefused, parse_document, shown_key
from .openapi import BATCH_ID_PATTERN, request_schema
from .openapi import finish as finish_openapi
from .request_body import BodyRefused, check_media_type, read_body
from .settings import ApiSettings
from .tokens import token_store
from .validation import CompiledMapping, compile_mapping

log = logging.getLogger("integration_hub.api")

LOG_LEVEL_ENV = "INTEGRATION_HUB_API_LOG_LEVEL"
ENABLED_REFRESH_SECONDS = 2.0
CATALOG_CHECK_SECONDS = 2.0
IDEMPOTENCY_PRUNE_SECONDS = 600.0
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_INTEGRATION_TOKEN_CHARS = 256
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"  # printable ASCII, no blank at either end
JSON = "application/json"


# ---------------------------------------------------------------------------- responses


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(content=content, status_code=status, media_type=JSON, headers=headers)


def error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    return json_response(status, {"error": code, "message": message, **extra}, headers)


# ---------------------------------------------------------------------------- state


class RateLimiter:
    """A token bucket per bearer token: `rate` requests/s, up to `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._buckets: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait_seconds(self, key: str, now: float | None = None) -> float:
        """0 if a request may go now (and count it), else how long until one may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [float(self.burst), now]
            tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return 0.0
            bucket[0] = tokens
            return (1.0 - tokens) / self.rate


class Hub:
    """What the request handlers share: catalog, stores, enabled states, limits."""

    def __init__(self, catalog_path: Path, settings: ApiSettings) -> None:
        self.catalog_path = catalog_path
        self.settings = settings
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.enabled: dict[str, bool] = {}
        self._instance: Any = None
        self._catalog_checked = 0.0
        self._catalog_mtime = 0.0
        self._load(load_catalog(catalog_path))

    # -- catalog --------------------------------------------------------------------
    def _load(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._catalog_mtime = self._mtime()
        self.integrations: dict[str, ApiIntegration] = {
            i.name: i for i in catalog.integrations if isinstance(i, ApiIntegration)
        }
        self.mappings: dict[str, CompiledMapping] = {
            n: compile_mapping(i) for n, i in self.integrations.items()
        }
        if getattr(self, "landing", None) != catalog.landing:
            if not catalog.landing_on_s3:
                catalog.landing_path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.landing = catalog.landing
            self.batches = batch_store(catalog)
            self.tokens = token_store(catalog)
        for name, integration in self.integrations.items():
            self.enabled.setdefault(name, integration.enabled)

    def _mtime(self) -> float:
        try:
            return self.catalog_path.stat().st_mtime
        except OSError:
            return 0.0

    def maybe_reload_catalog(self) -> None:
        """Pick up an edited catalog (checked at most every 2 s); a broken edit keeps the old one."""
        now = time.monotonic()
        if now - self._catalog_checked < CATALOG_CHECK_SECONDS:
            return
        self._catalog_checked = now
        if self._mtime() == self._catalog_mtime:
            return
        try:
            self._load(load_catalog(self.catalog_path))
            log.info("catalog reloaded: %d API integration(s)", len(self.integrations))
        except CatalogError as exc:
            self._catalog_mtime = self._mtime()
            log.error("the edited catalog is invalid, still serving the previous one: %s", exc)

    # -- enabled states (from the Dagster instance, never DuckDB) ---------------------
    def refresh_enabled(self) -> None:
        """Read each API integration's enabled state (the sensor/schedule toggles) from Dagster."""
        from ..core.state import is_enabled

        try:
            if self._instance is None:
                self._instance = _instigator_states(self.catalog)
            if self._instance is None:  # nothing was ever toggled: the catalog's `enabled:` holds
                self.enabled = {name: i.enabled for name, i in self.integrations.items()}
                return
            self.enabled = {name: is_enabled(self._instance, i) for name, i in self.integrations.items()}
        except Exception as exc:  # the Dagster instance is unreadable: keep the last known states
            log.warning("cannot read integration states from the Dagster instance: %s", exc)

    def close(self) -> None:
        dispose = getattr(self._instance, "dispose", None)
        if dispose is not None:
            with contextlib.suppress(Exception):
                dispose()
        self.tokens.close()

    # -- per request ----------------------------------------------------------------
    def authenticate(self, request: Request) -> str | Response:
        header = request.headers.get("authorization")
        challenge = {"WWW-Authenticate": 'Bearer realm="integration_hub"'}
        scheme, _, token = (header or "").partition(" ")
        if not header or scheme.lower() != "bearer" or not token.strip():
            return error(
                401,
                "unauthorized",
                "missing bearer token: send the header 'Authorization: Bearer <token>' "
                "(create a token with: integration-hub tokens create NAME)",
                challenge,
            )
        name = self.tokens.authenticate(token.strip())
        if name is None:
            challenge["WWW-Authenticate"] += ', error="invalid_token"'
            return error(
                401,
                "unauthorized",
                "the bearer token is not valid (unknown or revoked): check it, or create a new one "
                "with: integration-hub tokens create NAME",
                challenge,
            )
        wait = self.limiter.wait_seconds(name)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            return error(
                429,
                "rate_limited",
                f"more than {self.settings.rate_limit:g} requests/s with this token: retry after {retry} s, "
                "or send more records per request",
                {"Retry-After": str(retry)},
            )
        return name

    def integration_for(self, token: Any) -> ApiIntegration | None:
        """The enabled API integration of an integration token, else None (one answer for all cases)."""
        if not isinstance(token, str):
            return None
        name = self.tokens.integration_for(token)
        if name is None:
            return None
        integration = self.integrations.get(name)
        if integration is None or not self.enabled.get(name, integration.enabled):
            return None
        return integration


def _stamped(database: Path) -> bool:
    """A Dagster SQLite storage that exists and is fully initialised (its alembic revision stamped)."""
    if not database.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)
        try:
            return bool(con.execute("SELECT count(*) FROM alembic_version").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return False


def _instigator_states(catalog: Catalog) -> Any | None:
    """What `core.state.is_enabled` reads: an object with the instance's `schedule_storage`.

    The API only reads this state; it must not create Dagster's storage, or it would race
    `dagster dev` starting at the same moment on a fresh $DAGSTER_HOME (two processes
    stamping the same SQLite database). With the default SQLite storage, the schedule
    database is opened once Dagster has created it (None until then: nothing can have been
    toggled); a dagster.yaml configuring storage (e.g. Postgres) gets the full instance.
    """

    from ..core.state import configures_storage, ensure_dagster_home

    home = ensure_dagster_home(catalog)
    if configures_storage(home):
        from dagster import DagsterInstance

        return DagsterInstance.get()
    database = home / "schedules" / "schedules.db"
    if not _stamped(database):
        return None
    # No public API opens only the schedule storage; DagsterInstance.get() would create every storage (the race above).
    from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage

    return SimpleNamespace(schedule_storage=SqliteScheduleStorage.from_local(str(database.parent)))


# ---------------------------------------------------------------------------- handlers


def _shape_problem(document: Any, max_records: int) -> str | None:
    if not isinstance(document, dict):
        return 'the body must be a JSON object: {"integration_token": "...", "data": [ ... ]}'
    unknown = [k for k in document if k not in ("integration_token", "data")]
    if unknown:
        return (
            f"unknown field {shown_key(unknown[0])} in the body: only integration_token and data are allowed"
        )
    if "integration_token" not in document:
        return "missing integration_token: get it with integration-hub endpoint NAME"
    token = document["integration_token"]
    if not isinstance(token, str) or len(token) > MAX_INTEGRATION_TOKEN_CHARS:
        return f"integration_token must be a string of at most {MAX_INTEGRATION_TOKEN_CHARS} characters"
    if "data" not in document:
        return f"missing data: an array of 1 to {max_records:,} records"
    if not isinstance(document["data"], list):
        return "data must be an array of records (JSON objects)"
    if not document["data"]:
        return f"data is empty: send 1 to {max_records:,} records"
    return None


def _idempotency_key(request: Request) -> str | None | Response:
    """The request's Idempotency-Key (None without one), or the 400 answer to a malformed one."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable() or not key.isascii():
        return error(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1 to 255 printable ASCII characters"
        )
    return key


async def post_end_users(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    settings = hub.settings
    bearer = hub.authenticate(request)
    if isinstance(bearer, Response):
        return bearer
    key = _idempotency_key(request)
    if isinstance(key, Response):
        return key
    try:
        check_media_type(request.headers.get("content-type"))
        body = await read_body(request, settings.max_body_bytes, settings.body_timeout)
    except BodyRefused as refused:
        return error(refused.status, refused.code, refused.message, refused.headers)
    except ClientDisconnect:
        return error(400, "client_disconnected", "the client went away before the body was complete")
    if key is None:
        return await _process(hub, body, None)
    key_hash = idempotency_hash(bearer, key)
    request_sha = hashlib.sha256(body).hexdigest()  # decompressed: gzip or not, the same request
    try:
        # Across replicas (S3 landing) or processes (a local folder), one request per key at a time.
        async with _idempotency_claim(hub, key_hash) as first:
            if first is not None:
                if first.get("request_sha256") != request_sha:
                    return error(
                        422,
                        "idempotency_key_reused",
                        "this Idempotency-Key was already used with a different body in the last 24 h: "
                        "use a new key for a new request",
                    )
                return json_response(first["status_code"], first["body"], {"Idempotent-Replayed": "true"})
            return await _process(hub, body, (key_hash, request_sha))
    except IdempotencyBusy:
        return error(
            409,
            "idempotency_key_in_use",
            "a request with this Idempotency-Key is still being processed: retry in a moment",
            {"Retry-After": "1"},
        )
    except OSError as exc:  # the key's claim or record could not be read or written
        return _storage_unavailable(exc)


@contextlib.asynccontextmanager
async def _idempotency_claim(hub: Hub, key_hash: str) -> AsyncIterator[dict[str, Any] | None]:
    """The landing store's claim on a key, taken and released in a worker thread: with an S3
    landing both are requests to S3, which must not hold up the event loop."""
    claim = hub.batches.claim_idempotency(key_hash)
    first = await run_in_threadpool(claim.__enter__)
    try:
        yield first
    finally:
        await run_in_threadpool(claim.__exit__, None, None, None)


@dataclass
class Prepared:
    """A request ready to land: its integration, the batch file's content and the answers."""

    integration: ApiIntegration
    batch_id: str
    data: bytes
    answer: dict[str, Any]
    status: dict[str, Any]


def prepare(hub: Hub, body: bytes) -> Prepared | Response:
    """Parse, check the shape, pick the integration, validate: CPU only, no I/O but token lookups."""
    settings = hub.settings
    try:
        document = parse_document(body, settings.max_containers)
    except DocumentRefused as refused:
        return error(400, refused.code, refused.message)
    problem = _shape_problem(document, settings.max_records)
    if problem:
        return error(400, "invalid_request", problem)
    records = document["data"]
    if len(records) > settings.max_records:
        return error(
            413,
            "too_many_records",
            f"{len(records):,} records, over the limit of {settings.max_records:,} per request: "
            "split them into several requests",
        )
    integration = hub.integration_for(document["integration_token"])
    if integration is None:
        return error(
            404,
            "unknown_integration_token",
            "the integration token is not valid: it is unknown, was rotated, or its integration is disabled; "
            "get the current one with: integration-hub endpoint NAME",
        )
    validated = hub.mappings[integration.name].validate(records)
    if validated.accepted == 0:
        return error(
            422,
            "no_valid_records",
            f"none of the {len(records):,} records is valid: fix the problems listed in rejected and send them again",
            accepted=0,
            rejected=validated.problems,
            rejected_count=validated.rejected_records,
        )
    batch_id = new_batch_id()
    answer = {
        "batch_id": batch_id,
        "accepted": validated.accepted,
        "rejected": validated.problems,
        "rejected_count": validated.rejected_records,
    }
    status = {
        "batch_id": batch_id,
        "integration": integration.name,
        "received_at": utc_now_iso(),
        "accepted": validated.accepted,
        "users": len(validated.rows),
        "rejected": validated.problems,
        "rejected_count": validated.rejected_records,
    }
    return Prepared(integration, batch_id, validated.ndjson(), answer, status)


async def _process(hub: Hub, body: bytes, idempotency: tuple[str, str] | None) -> Response:
    hub.maybe_reload_catalog()
    # Parsing and validating take CPU: in a worker thread, the event loop keeps answering others.
    prepared = await run_in_threadpool(prepare, hub, body)
    if isinstance(prepared, Response):
        return prepared
    record = None
    if idempotency is not None:
        key_hash, request_sha = idempotency
        record = (
            key_hash,
            {
                "created": time.time(),
                "request_sha256": request_sha,
                "batch_id": prepared.batch_id,
                "integration": prepared.integration.name,
                "status_code": 202,
                "body": prepared.answer,
            },
        )
    name = prepared.integration.name
    try:
        await run_in_threadpool(
            hub.batches.land, name, prepared.batch_id, prepared.data, prepared.status, record
        )
    except OSError as exc:
        log.error("could not land batch %s for %s: %s", prepared.batch_id, name, exc)
        return _storage_unavailable(exc)
    return json_response(202, prepared.answer)


def _storage_unavailable(exc: OSError) -> Response:
    return error(
        503,
        "storage_unavailable",
        f"the records could not be stored durably ({exc.strerror or type(exc).__name__}): "
        "nothing was accepted; retry later",
        {"Retry-After": "5"},
    )


async def get_batch(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    bearer = hub.authenticate(request)
    if isinstance(bearer, Response):
        return bearer
    batch_id = request.path_params["batch_id"]
    hub.maybe_reload_catalog()
    location = await run_in_threadpool(hub.batches.locate, batch_id, list(hub.integrations))
    if location is None:
        return error(
            404, "batch_not_found", f"no batch {shown_key(batch_id)}: check the batch_id of the 202 answer"
        )
    status = await run_in_threadpool(hub.batches.read_status, location)
    keys = (
        "batch_id", "integration", "status", "received_at", "accepted", "rejected", "rejected_count",
        "applied_at", "rows_applied", "rows_rejected_at_apply", "rejected_at_apply", "message",
    )  # fmt: skip
    return json_response(200, {k: status[k] for k in keys if k in status})


async def healthz(request: Request) -> Response:
    hub: Hub = request.app.state.hub
    problem = await run_in_threadpool(hub.batches.problem)
    if problem is None:
        return json_response(200, {"status": "ok", "integrations": len(hub.integrations)})
    return error(
        503,
        "landing_not_writable",
        f"requests cannot be stored: {problem}",
        status="degraded",
        integrations=len(hub.integrations),
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from routing (and any other HTTPException) in the API's error shape."""
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {shown_key(request.url.path)[1:-1]}"
    if exc.status_code == 404:
        return error(
            404,
            "not_found",
            f"no such endpoint: {where}; the API serves POST /v1/end-users, GET /v1/batches/{{batch_id}} "
            "and GET /healthz (see /docs)",
        )
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return error(405, "method_not_allowed", f"{where} is not allowed: use {allow}", {"Allow": allow})
    return error(exc.status_code, "http_error", str(exc.detail), exc.headers)


async def internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected failure: the traceback goes to the log (uvicorn prints it), the client gets JSON."""
    return error(
        500,
        "internal_error",
        "the server failed unexpectedly (the server log has the details); retrying with the same "
        "Idempotency-Key is safe",
    )


# ---------------------------------------------------------------------------- the app


async def _background(hub: Hub) -> None:
    """Refresh enabled states every 2 s; forget idempotency keys past their 24 h window."""
    pruned = 0.0
    while True:
        await asyncio.sleep(ENABLED_REFRESH_SECONDS)
        with contextlib.suppress(Exception):
            hub.maybe_reload_catalog()
            await run_in_threadpool(hub.refresh_enabled)
            if time.monotonic() - pruned > IDEMPOTENCY_PRUNE_SECONDS:
                pruned = time.monotonic()
                await run_in_threadpool(hub.batches.prune_idempotency)


def create_app(
    catalog_path: str | os.PathLike[str] | None = None, settings: ApiSettings | None = None
) -> FastAPI:
    """The ASGI app for a catalog (default: $INTEGRATION_HUB_CATALOG, else ./integrations.yaml)."""
    from ..core.catalog import default_catalog_path

    settings = settings or ApiSettings.from_env()
    hub = Hub(default_catalog_path(catalog_path).resolve(), settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(hub.refresh_enabled)
        # Importing Dagster leaves ~200k objects; a full garbage collection walking them all
        # would pause every request for a few hundred ms. They live as long as the process.
        gc.collect()
        gc.freeze()
        task = asyncio.create_task(_background(hub))
        log.info(
            "End User Update API ready: %d API integration(s) (%s), landing %s, limits %s bytes / %s records / "
            "%s requests/s per token",
            len(hub.integrations),
            ", ".join(hub.integrations) or "none",
            hub.batches.description,
            f"{settings.max_body_bytes:,}",
            f"{settings.max_records:,}",
            f"{settings.rate_limit:g}" if settings.rate_limit > 0 else "unlimited",
        )
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            hub.close()

    app = FastAPI(
        title="integration_hub End User Update API",
        version="1",
        description=(
            "Push user attributes to integration_hub. Authenticate with `Authorization: Bearer <token>` "
            "(`integration-hub tokens create NAME`); the `integration_token` in the body picks the API "
            "integration (`integration-hub endpoint NAME`). A 202 means the accepted records are stored "
            "durably; they are applied to the attribute store by a Dagster run within about a minute."
        ),
        lifespan=lifespan,
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        redirect_slashes=False,  # /healthz/ is 404 JSON, not a redirect outside the document
    )
    app.state.hub = hub
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    secured = {"security": [{"bearerAuth": []}]}
    app.add_api_route(
        "/v1/end-users",
        post_end_users,
        methods=["POST"],
        status_code=202,
        summary="Send user attributes",
        description=(
            "Validates each record against the integration's mapping; valid records are accepted, invalid ones "
            "are listed with index, field and message. Send `Idempotency-Key: <unique string>` to make retries "
            "safe: a retried request returns the first answer for 24 h without accepting the records twice.\n\n"
            "The body is JSON in UTF-8 (`Content-Type: application/json`), at most "
            f"{settings.max_body_bytes:,} bytes, optionally `Content-Encoding: gzip` (the limit then also holds "
            f"once decompressed). Nothing may nest deeper than {MAX_JSON_DEPTH} levels and no object may "
            "repeat a key, anywhere in the body."
        ),
        responses={},
        openapi_extra={
            **secured,
            "requestBody": {"required": True, "content": {JSON: {"schema": request_schema(settings)}}},
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                        "pattern": IDEMPOTENCY_KEY_PATTERN,
                    },
                    "description": "A unique key per logical request (printable ASCII); retries with the same "
                    "key get the first answer.",
                }
            ],
        },
    )
    app.add_api_route(
        "/v1/batches/{batch_id}",
        get_batch,
        methods=["GET"],
        summary="The status of an accepted batch",
        description="accepted (stored, waiting to be applied) | applied | failed, with counts and rejected records.",
        openapi_extra={
            **secured,
            "parameters": [
                {
                    "name": "batch_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": BATCH_ID_PATTERN, "maxLength": 34},
                    "description": "The batch_id of a 202 answer.",
                }
            ],
        },
    )
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness and a writable landing folder")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            app.openapi_schema = finish_openapi(schema, settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _configure_logging(level: str) -> None:
    """Our own messages at `level` beside uvicorn's; other libraries stay at warnings."""
    logger = logging.getLogger("integration_hub")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


def app_from_env() -> FastAPI:
    """uvicorn factory (`--workers` > 1 imports the app by name): catalog and limits from the environment."""
    _configure_logging(os.environ.get(LOG_LEVEL_ENV, "info"))
    return create_app(os.environ.get(CATALOG_ENV) or None, ApiSettings.from_env())


def serve(
    catalog_path: str | os.PathLike[str] | None,
    host: str = "127.0.0.1",
    port: int = 8080,
    workers: int = 1,
    settings: ApiSettings | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Run the API with uvicorn (blocks until stopped)."""
    import uvicorn

    from ..core.catalog import default_catalog_path

    path = default_catalog_path(catalog_path).resolve()
    load_catalog(path)  # an invalid catalog stops here with every problem listed
    os.environ[CATALOG_ENV] = str(path)
    os.environ.update((settings or ApiSettings()).to_env())
    os.environ[LOG_LEVEL_ENV] = log_level
    uvicorn.run(
        "integration_hub.api.server:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
        http="integration_hub.api.protocol:ApiHttpProtocol",  # head size limit and deadline
        ws="none",
    )

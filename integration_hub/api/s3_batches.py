"""The API's landing store in an S3 bucket (scale-out): what `batches.BatchStore` does on a local
disk, with objects, so every API replica and every run worker sees the same batches.

Layout under `s3://<bucket>/<connection prefix>/<landing prefix>/`, as on disk:

```
<integration>/pending/<batch>.ndjson   accepted records, waiting for a Dagster run
<integration>/pending/<batch>.json     the batch's status
<integration>/applied/...  failed/...  where the run that applied them moved them
_idempotency/<sha256>.json             claims and first answers of Idempotency-Keys
```

A PUT that S3 answered with 200 is durable, so the API answers 202 after the data object's PUT.
Idempotency keys are honoured across replicas with conditional writes: a replica claims a key
by creating its object with `If-None-Match: *` (exactly one replica can), writes the answer
into it (`If-Match` its claim) before landing the batch, and any replica replays that answer
once the batch exists. A claim that never led to a batch (a replica died) is taken over after
the server's `--claim-timeout` (default 60 s), again conditionally, so two replicas never both take it.
"""

from __future__ import annotations

import errno
import json
import posixpath
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

import duckdb

from ..core.catalog import Catalog, S3ApiLanding, S3Connection
from ..core.landing import s3_client
from ..core.s3_errors import S3_NOT_FOUND, explain_s3_error, s3_code
from .batches import (
    APPLIED,
    APPLIED_RETENTION_SECONDS,
    BATCH_ID,
    DATA_SUFFIX,
    FAILED,
    IDEMPOTENCY_DIR,
    IDEMPOTENCY_WINDOW_SECONDS,
    ORPHAN_SECONDS,
    PENDING,
    STATUS_NAMES,
    STATUS_SUFFIX,
    BatchLocation,
    IdempotencyBusy,
    _dumps,
)
from .settings import process_settings

MOVE_THREADS = 16  # finishing a group of small batches: copies and PUTs in parallel
HEALTH_SECONDS = 5.0  # /healthz asks S3 at most this often


class LandingUnavailable(OSError):
    """S3 refused or could not be reached: the request is not accepted (503), the run fails."""


class S3BatchStore:
    """Accepted API batches under an S3 prefix; the same methods as the local `BatchStore`."""

    def __init__(self, connection: S3Connection, prefix: str) -> None:
        self.connection = connection
        self.bucket = connection.bucket
        self.prefix = "/".join(p for p in (connection.prefix, prefix.strip("/")) if p)
        self.description = f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        self._claims: dict[str, str] = {}  # key hash -> ETag of this replica's claim
        # Keys a request of this replica is answering: the others with the key wait (409), so
        # only the holder ever reads or changes its entry in _claims.
        self._held: set[str] = set()
        self._claims_lock = threading.Lock()
        self._health: tuple[float, str | None] = (0.0, None)
        # An idempotency claim without its batch this old belongs to a replica that died.
        self.claim_timeout = process_settings().claim_timeout

    @cached_property
    def client(self) -> Any:
        """Made on first use: building the Dagster definitions makes a store per API integration."""
        return s3_client(self.connection)

    @classmethod
    def of(cls, catalog: Catalog) -> S3BatchStore:
        landing = catalog.landing
        assert isinstance(landing, S3ApiLanding)
        connection = catalog.connection(landing.connection)
        assert isinstance(connection, S3Connection)  # the catalog's rules say so
        return cls(connection, landing.prefix)

    # -- keys and errors ----------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return posixpath.join(self.prefix, *parts) if self.prefix else posixpath.join(*parts)

    def _object(self, integration: str, state: str, batch_id: str, suffix: str) -> str:
        return self._key(integration, state, f"{batch_id}{suffix}")

    def location(self, integration: str) -> str:
        return f"s3://{self.bucket}/{self._key(integration, PENDING)}/"

    def data_url(self, integration: str, batch_id: str) -> str:
        return f"s3://{self.bucket}/{self._object(integration, PENDING, batch_id, DATA_SUFFIX)}"

    def _unavailable(self, exc: Exception, action: str, permission: str) -> LandingUnavailable:
        message, _ = explain_s3_error(
            exc,
            action=action,
            target=self.description,
            bucket=self.bucket,
            endpoint=self.client.meta.endpoint_url,
            region=self.client.meta.region_name,
            permission=permission,
        )
        return LandingUnavailable(errno.EIO, message)

    def _call(self, action: str, permission: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # botocore raises many kinds; each becomes one clear line
            raise self._unavailable(exc, action, permission) from None

    def _get_json(self, key: str) -> tuple[dict[str, Any], str] | None:
        """An object's JSON document and ETag, or None when there is no such object."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return json.loads(response["Body"].read()), response["ETag"]
        except ValueError:
            return {}, ""
        except Exception as exc:
            if s3_code(exc) in S3_NOT_FOUND:
                return None
            raise self._unavailable(exc, "read", "s3:GetObject") from None

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except Exception as exc:
            if s3_code(exc) in S3_NOT_FOUND:
                return False
            raise self._unavailable(exc, "read", "s3:GetObject") from None

    def _put(self, key: str, body: bytes, **conditions: str) -> str:
        response = self._call("write", "s3:PutObject", self.client.put_object, Key=key, Body=body, **conditions)
        return response["ETag"]

    def _list(self, folder: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=folder.rstrip("/") + "/"):
                yield from page.get("Contents", [])
        except Exception as exc:
            raise self._unavailable(exc, "list", "s3:ListBucket") from None

    def _delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys per call
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(
                "delete", "s3:DeleteObject", self.client.delete_objects, Delete={"Objects": chunk, "Quiet": True}
            )

    def problem(self) -> str | None:
        """Why batches cannot be stored right now (for /healthz), or None; S3 is asked every few seconds."""
        checked, problem = self._health
        if time.monotonic() - checked < HEALTH_SECONDS:
            return problem
        try:
            self.client.head_bucket(Bucket=self.bucket)
            problem = None
        except Exception as exc:
            problem = str(self._unavailable(exc, "reach", "s3:ListBucket").strerror)
        self._health = (time.monotonic(), problem)
        return problem

    def probe_write(self) -> None:
        """Write and delete a small object (for `check`): LandingUnavailable with the reason and fix."""
        key = self._key(f".check-{secrets.token_hex(6)}")
        try:
            self._put(key, b"integration-hub check\n")
            self._call("delete", "s3:DeleteObject", self.client.delete_object, Key=key)
        except LandingUnavailable as exc:
            raise LandingUnavailable(errno.EIO, f"the API landing {self.description}: {exc.strerror}") from None

    # -- landing (API server) -----------------------------------------------------
    def land(
        self,
        integration: str,
        batch_id: str,
        data: bytes,
        status: dict[str, Any],
        idempotency: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """Make an accepted batch durable: the idempotency answer, the status, then the data.

        The batch exists once its data object does; an idempotency answer whose batch is missing
        is an attempt still under way, or one that died (taken over after `claim_timeout`).
        """
        if idempotency is not None:
            key_hash, record = idempotency
            with self._claims_lock:
                claim = self._claims.get(key_hash)
            conditions = {"IfMatch": claim} if claim else {}
            try:
                self._put(self._key(IDEMPOTENCY_DIR, f"{key_hash}.json"), _dumps(record), **conditions)
            except LandingUnavailable as exc:
                raise LandingUnavailable(errno.EIO, f"{exc.strerror} (the Idempotency-Key claim was lost)") from None
        self._put(self._object(integration, PENDING, batch_id, STATUS_SUFFIX), _dumps(status))
        self._put(self._object(integration, PENDING, batch_id, DATA_SUFFIX), data)
        if idempotency is not None:
            with self._claims_lock:  # landed: the answer stays for replays
                self._claims.pop(idempotency[0], None)

    # -- idempotency --------------------------------------------------------------
    def claim_idempotency(self, key_hash: str) -> Any:
        return _S3Claim(self, key_hash)

    def _take(self, key_hash: str) -> dict[str, Any] | None:
        """Claim a key (None) or find its first answer; IdempotencyBusy while another attempt runs."""
        key = self._key(IDEMPOTENCY_DIR, f"{key_hash}.json")
        now = time.time()
        found = self._get_json(key)
        if found is None:
            conditions = {"IfNoneMatch": "*"}
        else:
            record, etag = found
            created = float(record.get("created", 0))
            if now - created <= IDEMPOTENCY_WINDOW_SECONDS and "batch_id" in record:
                batch_id, integration = record["batch_id"], record.get("integration", "")
                if isinstance(batch_id, str) and self.locate(batch_id, [integration]) is not None:
                    return record
            if now - created < self.claim_timeout:
                raise IdempotencyBusy()
            conditions = {"IfMatch": etag}  # a dead attempt's claim, or a key past its window
        try:
            etag = self._put(key, _dumps({"created": now, "claimed": True}), **conditions)
        except LandingUnavailable:
            if self._get_json(key) is not None:  # another replica claimed it first (412)
                raise IdempotencyBusy() from None
            raise
        with self._claims_lock:
            self._claims[key_hash] = etag
        return None

    def _hold(self, key_hash: str) -> None:
        """Take the key within this replica, or IdempotencyBusy if another of its requests has it."""
        with self._claims_lock:
            if key_hash in self._held:
                raise IdempotencyBusy()
            self._held.add(key_hash)

    def _release(self, key_hash: str) -> None:
        with self._claims_lock:
            etag = self._claims.pop(key_hash, None)
            self._held.discard(key_hash)
        if etag is not None:
            # Still claimed, so nothing was landed (a 4xx answer, or storage failed): free the key
            # now. Only while the claim is still ours: one taken over after claim_timeout belongs
            # to another replica, which may have landed its batch under the key.
            try:
                self.client.delete_object(
                    Bucket=self.bucket, Key=self._key(IDEMPOTENCY_DIR, f"{key_hash}.json"), IfMatch=etag
                )
            except Exception:  # noqa: BLE001 - the claim then expires after claim_timeout
                pass

    def prune_idempotency(self, now: float | None = None) -> int:
        """Forget keys older than the 24 h window."""
        now = now or time.time()
        old = [
            item["Key"]
            for item in self._list(self._key(IDEMPOTENCY_DIR))
            if now - item["LastModified"].timestamp() > IDEMPOTENCY_WINDOW_SECONDS + 60
        ]
        self._delete(old)
        return len(old)

    # -- reading ------------------------------------------------------------------
    def pending_batches(self, integration: str) -> dict[str, int]:
        """Landed, not yet applied batches and their sizes in bytes (one listing)."""
        found = {}
        for item in self._list(self._key(integration, PENDING)):
            name = posixpath.basename(item["Key"])
            if name.endswith(DATA_SUFFIX) and BATCH_ID.match(name[: -len(DATA_SUFFIX)]):
                found[name[: -len(DATA_SUFFIX)]] = int(item["Size"])
        return dict(sorted(found.items()))

    def pending_batch_ids(self, integration: str) -> list[str]:
        return list(self.pending_batches(integration))

    def locate(self, batch_id: str, integrations: list[str]) -> BatchLocation | None:
        if not BATCH_ID.match(batch_id):
            return None
        for integration in filter(None, integrations):
            for state in (PENDING, APPLIED, FAILED):
                status_key = self._object(integration, state, batch_id, STATUS_SUFFIX)
                data_key = self._object(integration, state, batch_id, DATA_SUFFIX)
                if self._exists(data_key if state == PENDING else status_key):
                    return BatchLocation(integration, state, status_key, data_key)  # type: ignore[arg-type]
        return None

    def read_status(self, location: BatchLocation) -> dict[str, Any]:
        found = self._get_json(str(location.status_path))
        status = found[0] if found else {}
        if not status:
            status = {"batch_id": posixpath.basename(str(location.data_path))[: -len(DATA_SUFFIX)]}
            status["integration"] = location.integration
        status["status"] = STATUS_NAMES[location.state]
        return status

    def accepted_status(self, integration: str, batch_id: str) -> dict[str, Any]:
        found = self._get_json(self._object(integration, PENDING, batch_id, STATUS_SUFFIX))
        return (found[0] if found else None) or {"batch_id": batch_id, "integration": integration}

    def prepare_reading(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let DuckDB read the batch objects: a secret scoped to this landing prefix."""
        from ..core.warehouse import S3DataAccess

        S3DataAccess.of(self.connection).setup(con, name="api_landing", scope=self.description)

    # -- finishing (Dagster run) ----------------------------------------------------
    def finish(self, integration: str, items: list[tuple[str, dict[str, Any]]], failed: bool) -> None:
        """After the commit: each batch's outcome into applied/ (or failed/), its data copied there,
        then the pending objects deleted (the batch leaves pending only when all that is done)."""
        target = FAILED if failed else APPLIED

        def move(item: tuple[str, dict[str, Any]]) -> None:
            batch_id, status = item
            self._put(self._object(integration, target, batch_id, STATUS_SUFFIX), _dumps(status))
            source = {"Bucket": self.bucket, "Key": self._object(integration, PENDING, batch_id, DATA_SUFFIX)}
            try:
                self.client.copy_object(
                    Bucket=self.bucket, Key=self._object(integration, target, batch_id, DATA_SUFFIX), CopySource=source
                )
            except Exception as exc:
                if s3_code(exc) not in S3_NOT_FOUND:  # already moved by an earlier attempt
                    raise self._unavailable(exc, "move", "s3:GetObject and s3:PutObject") from None

        with ThreadPoolExecutor(min(MOVE_THREADS, max(1, len(items)))) as pool:
            list(pool.map(move, items))
        self._delete(
            [
                self._object(integration, PENDING, batch_id, suffix)
                for batch_id, _ in items
                for suffix in (DATA_SUFFIX, STATUS_SUFFIX)
            ]
        )

    def prune(self, integration: str, now: float | None = None, every_seconds: float = 0.0) -> int:
        """Forget applied batches after 7 days and unfinished attempts (no data) after an hour."""
        now = now or time.time()
        marker = self._key(integration, ".pruned")
        if every_seconds:
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=marker)
                if now - head["LastModified"].timestamp() < every_seconds:
                    return 0
            except Exception as exc:
                if s3_code(exc) not in S3_NOT_FOUND:
                    raise self._unavailable(exc, "read", "s3:GetObject") from None
            self._put(marker, datetime.now(timezone.utc).isoformat().encode())
        old = [
            item["Key"]
            for item in self._list(self._key(integration, APPLIED))
            if now - item["LastModified"].timestamp() > APPLIED_RETENTION_SECONDS
        ]
        pending = {item["Key"]: item for item in self._list(self._key(integration, PENDING))}
        for key, item in pending.items():
            if (
                key.endswith(STATUS_SUFFIX)
                and key[: -len(STATUS_SUFFIX)] + DATA_SUFFIX not in pending
                and now - item["LastModified"].timestamp() > ORPHAN_SECONDS
            ):
                old.append(key)
        self._delete(old)
        return len(old)


class _S3Claim:
    """`with store.claim_idempotency(key_hash) as first:` the first answer, or None and the key is ours."""

    def __init__(self, store: S3BatchStore, key_hash: str) -> None:
        self.store, self.key_hash = store, key_hash

    def __enter__(self) -> dict[str, Any] | None:
        self.store._hold(self.key_hash)
        try:
            return self.store._take(self.key_hash)
        except BaseException:
            self.store._release(self.key_hash)
            raise

    def __exit__(self, *exc: object) -> None:
        self.store._release(self.key_hash)

"""simple-salesforce with explicit timeouts, retries with backoff, and a count of calls by kind.

Every call goes through `SalesforceClient.call`, which

* retries timeouts, connection errors, HTTP 5xx and REQUEST_LIMIT_EXCEEDED with exponential
  backoff (`retry_backoff_seconds`, doubling, at most `max_retries` times),
* logs in again once when the session expired mid-run, and
* turns every failure into `SalesforceApiError` whose message holds Salesforce's error code and
  message but never a token, a URL with record data, or a raw response dump.

Only updates are ever sent: there is no insert, upsert or delete here (tests assert the fake
sees no 'create' call).
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests

from ..core.catalog import Catalog, SalesforceConnection
from .auth import SalesforceAuthError, authenticate, build_session, redact

T = TypeVar("T")
RETRYABLE_CODES = {"REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW", "UNKNOWN_EXCEPTION"}
COMPOSITE_BATCH = 200  # sObject Collections takes at most 200 records per call
BULK_MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # Bulk API 2.0: 150 MB base64-encoded ~ 100 MB raw
BULK_QUERY_PAGE = 250_000  # rows per results page of a Bulk API 2.0 query
POLL_FIRST_SECONDS = 0.2
POLL_MAX_SECONDS = 10.0
BULK_JOB_TIMEOUT_SECONDS = 4 * 3600


class SalesforceApiError(Exception):
    """A Salesforce call failed for good; the message is safe to show and log."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(redact(message))
        self.status = status
        self.code = code


@dataclass
class SaveError:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass
class BulkIngestResult:
    job_id: str
    records: int
    failed: dict[str, SaveError] = field(default_factory=dict)  # record Id -> why
    succeeded: set[str] | None = None  # only when Salesforce left rows unprocessed: the ones it did


def _first_error(content: Any) -> tuple[str | None, str]:
    """(errorCode, message) from a Salesforce error body (a list of errors, or OAuth's dict)."""
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return content[0].get("errorCode"), str(content[0].get("message", "")).strip()
    if isinstance(content, dict):
        return content.get("errorCode") or content.get("error"), str(
            content.get("message") or content.get("error_description") or ""
        ).strip()
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    text = str(content or "").strip()
    return None, (text[:200] + "...") if len(text) > 200 else text


def describe_failure(exc: BaseException) -> tuple[str, int | None, str | None, bool]:
    """(message, status, code, retryable) of a failed call, without URLs, payloads or tokens."""
    from simple_salesforce.exceptions import SalesforceError

    if isinstance(exc, requests.ConnectTimeout):
        return "cannot connect to Salesforce within connect_timeout_seconds (network or firewall)", None, "TIMEOUT", True
    if isinstance(exc, requests.Timeout):
        return "Salesforce did not answer in time (timeout_seconds)", None, "TIMEOUT", True
    if isinstance(exc, requests.ConnectionError):
        return "cannot connect to Salesforce (network error)", None, "CONNECTION_ERROR", True
    if isinstance(exc, requests.RequestException):
        return f"HTTP request to Salesforce failed ({type(exc).__name__})", None, None, False
    if isinstance(exc, SalesforceError):
        code, message = _first_error(exc.content)
        status = exc.status
        retryable = status >= 500 or code in RETRYABLE_CODES
        text = f"{code}: {message}" if code else f"HTTP {status}: {message}"
        return text, status, code, retryable
    return f"{type(exc).__name__}: {exc}", None, None, False


class SalesforceClient:
    """One logged-in org. `calls` counts the API calls made, by kind."""

    def __init__(
        self,
        catalog: Catalog,
        connection: SalesforceConnection,
        *,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        log: Any = None,
    ) -> None:
        self.catalog = catalog
        self.connection = connection
        self.session = session or build_session(catalog, connection)
        self.sleep = sleep
        self.log = log
        self.calls: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self._login()

    # -- session ------------------------------------------------------------------------
    def _login(self) -> None:
        from simple_salesforce import Salesforce

        self.calls["login"] += 1
        login = authenticate(self.catalog, self.connection, self.session)
        self.instance_url = (self.connection.instance_url or login.instance_url).rstrip("/")
        self.username = login.username
        self.sf = Salesforce(
            instance_url=self.instance_url,
            session_id=login.access_token,
            session=self.session,
            version=self.connection.api_version,
        )

    @property
    def data_url(self) -> str:
        return f"{self.instance_url}/services/data/v{self.connection.api_version}/"

    def backoff(self, attempt: int) -> float:
        base = self.connection.retry_backoff_seconds * (2**attempt)
        return min(base, 120.0) * random.uniform(0.8, 1.2)

    def call(self, kind: str, fn: Callable[[], T], *, what: str = "") -> T:
        """Run one API call with retries; `kind` names it in `calls`."""
        from simple_salesforce.exceptions import SalesforceExpiredSession

        relogged = False
        attempt = 0
        while True:
            self.calls[kind] += 1
            try:
                return fn()
            except SalesforceExpiredSession:
                if relogged:
                    raise SalesforceApiError(
                        f"{what or kind}: the Salesforce session was refused even after logging in again "
                        "(INVALID_SESSION_ID): check the user's permissions and the connected app's policies",
                        status=401, code="INVALID_SESSION_ID",
                    ) from None
                relogged = True
                self._relogin()
                continue
            except SalesforceAuthError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below, never re-raised verbatim
                message, status, code, retryable = describe_failure(exc)
            if not retryable or attempt >= self.connection.max_retries:
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                raise SalesforceApiError(f"{what or kind} failed{tries}: {message}", status=status, code=code) from None
            delay = self.backoff(attempt)
            self.retries[code or str(status)] += 1
            if self.log is not None:
                self.log.warning(f"{what or kind}: {message}; retrying in {delay:.1f} s")
            self.sleep(delay)
            attempt += 1

    def _relogin(self) -> None:
        self._login()

    def _raw(self, method: str, path: str, *, expected: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        """A request on the data API outside simple-salesforce's JSON helpers (CSV bodies)."""
        from simple_salesforce.util import exception_handler

        headers = {"Authorization": f"Bearer {self.sf.session_id}", **kwargs.pop("headers", {})}
        response = self.session.request(method, self.data_url + path, headers=headers, **kwargs)
        if response.status_code >= 300 or response.status_code not in expected:
            exception_handler(response, name=path)
        return response

    # -- REST -----------------------------------------------------------------------------
    def describe(self, object_name: str) -> dict[str, Any]:
        return self.call("describe", lambda: getattr(self.sf, object_name).describe(), what=f"describe {object_name}")

    def query_all(self, soql: str) -> Iterator[dict[str, Any]]:
        """Every record of a SOQL query, page by page (each page one retried call)."""
        result = self.call("query", lambda: self.sf.query(soql), what="query")
        while True:
            yield from result.get("records", [])
            if result.get("done", True) or not result.get("nextRecordsUrl"):
                return
            next_url = result["nextRecordsUrl"]
            result = self.call("query", lambda url=next_url: self.sf.query_more(url, identifier_is_url=True),
                               what="query")

    def composite_update(self, object_name: str, records: list[dict[str, Any]]) -> list[SaveError | None]:
        """PATCH composite/sobjects (allOrNone false): one result per record, None for success."""
        if len(records) > COMPOSITE_BATCH:
            raise ValueError(f"at most {COMPOSITE_BATCH} records per sObject Collections call")
        body = {"allOrNone": False,
                "records": [{"attributes": {"type": object_name}, **record} for record in records]}
        results = self.call(
            "composite_update",
            lambda: self.sf.restful("composite/sobjects", method="PATCH", data=json.dumps(body)),
            what=f"update {object_name}",
        )
        if not isinstance(results, list) or len(results) != len(records):
            raise SalesforceApiError(f"update {object_name}: Salesforce answered with an unexpected result list")
        out: list[SaveError | None] = []
        for result in results:
            if result.get("success"):
                out.append(None)
            else:
                errors = result.get("errors") or [{}]
                out.append(SaveError(str(errors[0].get("statusCode") or "UNKNOWN"), str(errors[0].get("message") or "")))
        return out

    # -- Bulk API 2.0 ---------------------------------------------------------------------
    def _wait_for_job(self, kind: str, job_id: str) -> dict[str, Any]:
        """Poll a job until it ends; backoff from 0.2 s up to 10 s between polls."""
        path = f"jobs/{kind}/{job_id}"
        delay = POLL_FIRST_SECONDS
        deadline = time.monotonic() + BULK_JOB_TIMEOUT_SECONDS
        while True:
            info = self.call(f"bulk_{kind}_status", lambda: self.sf.restful(path), what=f"bulk {kind} job status")
            if info.get("state") in ("JobComplete", "Failed", "Aborted"):
                return info
            if time.monotonic() > deadline:
                raise SalesforceApiError(f"bulk {kind} job {job_id} did not finish within {BULK_JOB_TIMEOUT_SECONDS} s")
            self.sleep(delay)
            delay = min(delay * 2, POLL_MAX_SECONDS)

    def _abort(self, kind: str, job_id: str) -> None:
        try:
            self.sf.restful(f"jobs/{kind}/{job_id}", method="PATCH", data=json.dumps({"state": "Aborted"}))
            self.calls[f"bulk_{kind}_abort"] += 1
        except Exception:  # noqa: BLE001 - best effort; the real failure is reported by the caller
            pass

    def bulk_query_csv(self, soql: str) -> Iterator[bytes]:
        """Run a Bulk API 2.0 query job; yield the CSV pages (each with its header row)."""
        job = self.call(
            "bulk_query_create",
            lambda: self.sf.restful("jobs/query", method="POST", data=json.dumps(
                {"operation": "query", "query": soql, "contentType": "CSV", "columnDelimiter": "COMMA",
                 "lineEnding": "LF"})),
            what="bulk query",
        )
        job_id = job["id"]
        info = self._wait_for_job("query", job_id)
        if info.get("state") != "JobComplete":
            raise SalesforceApiError(f"bulk query job {job_id} ended {info.get('state')}: {info.get('errorMessage', '')}")
        locator = ""
        while True:
            params: dict[str, Any] = {"maxRecords": BULK_QUERY_PAGE}
            if locator:
                params["locator"] = locator
            response = self.call(
                "bulk_query_results",
                lambda p=params: self._raw("GET", f"jobs/query/{job_id}/results", params=p,
                                           headers={"Accept": "text/csv"}),
                what="bulk query results",
            )
            yield response.content
            locator = response.headers.get("Sforce-Locator", "")
            if not locator or locator == "null":
                return

    def bulk_update(self, object_name: str, csv_data: bytes, records: int) -> BulkIngestResult:
        """One Bulk API 2.0 `update` job for a CSV (header `Id,<fields>`); per-record failures back.

        A failure before the job is closed aborts it and starts a new job (updates are
        idempotent); a job Salesforce fails as a whole raises SalesforceApiError.
        """
        if len(csv_data) > BULK_MAX_UPLOAD_BYTES:
            raise ValueError("a Bulk API 2.0 upload holds at most 100 MB: split it")
        attempt = 0
        while True:
            job_id = None
            try:
                job = self.call(
                    "bulk_ingest_create",
                    lambda: self.sf.restful("jobs/ingest", method="POST", data=json.dumps(
                        {"object": object_name, "operation": "update", "contentType": "CSV",
                         "columnDelimiter": "COMMA", "lineEnding": "LF"})),
                    what=f"bulk update {object_name}",
                )
                job_id = job["id"]
                self.calls["bulk_ingest_upload"] += 1
                self._raw("PUT", f"jobs/ingest/{job_id}/batches", expected=(201,), data=csv_data,
                          headers={"Content-Type": "text/csv", "Accept": "application/json"})
                self.call(
                    "bulk_ingest_close",
                    lambda job_id=job_id: self.sf.restful(
                        f"jobs/ingest/{job_id}", method="PATCH", data=json.dumps({"state": "UploadComplete"})),
                    what="bulk update close",
                )
                break
            except SalesforceApiError:
                if job_id is not None:
                    self._abort("ingest", job_id)
                raise
            except Exception as exc:  # noqa: BLE001 - the upload itself: retried as a new job
                if job_id is not None:
                    self._abort("ingest", job_id)
                message, status, code, retryable = describe_failure(exc)
                if not retryable or attempt >= self.connection.max_retries:
                    raise SalesforceApiError(f"bulk update {object_name}: upload failed: {message}",
                                             status=status, code=code) from None
                self.retries[code or str(status)] += 1
                self.sleep(self.backoff(attempt))
                attempt += 1
        info = self._wait_for_job("ingest", job_id)
        if info.get("state") != "JobComplete":
            raise SalesforceApiError(
                f"bulk update job {job_id} on {object_name} ended {info.get('state')}: "
                f"{info.get('errorMessage') or 'see Setup > Bulk Data Load Jobs'}"
            )
        result = BulkIngestResult(job_id, records)
        if int(info.get("numberRecordsFailed") or 0):
            text = self.call(
                "bulk_ingest_results",
                lambda: self._raw("GET", f"jobs/ingest/{job_id}/failedResults", headers={"Accept": "text/csv"}),
                what="bulk update results",
            ).content.decode("utf-8-sig")
            for row in csv.DictReader(io.StringIO(text, newline="")):
                record_id = row.get("Id") or row.get("sf__Id") or ""
                result.failed[record_id] = parse_bulk_error(row.get("sf__Error", ""))
        processed = int(info.get("numberRecordsProcessed") or 0)
        if processed < records:
            # Rows Salesforce never processed: fetch the successes; everything else counts as failed.
            text = self.call(
                "bulk_ingest_results",
                lambda: self._raw("GET", f"jobs/ingest/{job_id}/successfulResults", headers={"Accept": "text/csv"}),
                what="bulk update results",
            ).content.decode("utf-8-sig")
            reader = csv.DictReader(io.StringIO(text, newline=""))
            result.succeeded = {row.get("Id") or row.get("sf__Id") or "" for row in reader}
        return result


def parse_bulk_error(text: str) -> SaveError:
    """Bulk 2.0 `sf__Error`: "CODE:message:Field1,Field2 --" (fields may be empty: "CODE:message:--")."""
    code, _, rest = text.partition(":")
    rest = rest.strip()
    if rest.endswith("--"):
        rest = rest[:-2].rstrip()
        head, sep, _fields = rest.rpartition(":")
        rest = head if sep else rest
    return SaveError(code.strip() or "UNKNOWN", rest.strip())

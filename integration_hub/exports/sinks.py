"""Atomic, streaming file writers for S3, Azure Blob Storage and a local folder.

A sink writes one file per ``open_write`` call. Data is buffered in parts of
``part_size`` bytes (8 MiB by default); at most one part is being filled while
the previous one uploads in a background thread (or up to ``max_concurrency``
previous ones, if the sink was given more), so memory stays bounded no matter
how large the file is. The file only becomes visible when the ``with``
block exits cleanly:

* S3: a single ``PutObject`` for files smaller than one part, otherwise a
  multipart upload that is completed at the end or aborted on error.
* Azure: ``Put Block`` per part and ``Put Block List`` at the end (also for
  small files: one block, one commit). On error nothing is committed; the
  service garbage-collects uncommitted blocks after 7 days.
* Local folder: a hidden temporary file in the target's own folder, fsync'ed,
  then renamed to its name (a hard link when it must not replace a file), so
  a reader sees the whole file or none; on error the temporary file is removed.

Every error that is the service's (or the configuration's) fault is raised as
:class:`SinkError` with a one-line message that says what failed and how to
fix it, and never contains credentials.
"""

from __future__ import annotations

import errno
import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from ..core.s3_errors import (
    S3_NOT_FOUND,
    explain_s3_error,
    one_line,
    s3_code,
    scrub,
)

if TYPE_CHECKING:
    from azure.storage.blob import ContainerClient

__all__ = [
    "DEFAULT_PART_SIZE",
    "AzureBlobSink",
    "FileSink",
    "LocalFolderSink",
    "S3Sink",
    "SinkError",
    "SinkWriter",
]

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
# S3 rejects non-final multipart parts smaller than 5 MiB.
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_PARTS = 10_000
AZURE_MAX_BLOCKS = 50_000
WRITE_TEST_MARKER = ".integration_hub_write_test-"
# HEAD answers carry no body: botocore then knows only the status.
S3_BARE_FORBIDDEN = {"403", "Forbidden"}
EXISTS_PERMISSION = "s3:GetObject and s3:ListBucket (needed unless `overwrite: true`)"


class SinkError(Exception):
    """A storage operation failed; the message says what failed and how to fix it."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(one_line(message))
        self.code = code


@runtime_checkable
class SinkWriter(Protocol):
    """The object returned by ``FileSink.open_write(...).__enter__``."""

    @property
    def bytes_written(self) -> int: ...

    def write(self, data: bytes) -> None: ...


@runtime_checkable
class FileSink(Protocol):
    """A destination that stores whole files under a prefix."""

    def url(self, key: str) -> str:
        """Public URL of ``key`` (prefix applied), without any credentials."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` (prefix applied) already exists."""
        ...

    def open_write(
        self,
        key: str,
        *,
        overwrite: bool = False,
        content_type: str = "text/csv",
        content_encoding: str | None = None,
    ) -> AbstractContextManager[SinkWriter]:
        """Context manager that streams a file and publishes it atomically on clean exit."""
        ...

    def check_write_permission(self) -> None:
        """Write and delete a marker object; raise :class:`SinkError` if that fails."""
        ...


# --------------------------------------------------------------------------- helpers


def _strip_query(url: str) -> str:
    """Drop query string, fragment and userinfo: SAS tokens live in the query."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _join_key(prefix: str, key: str) -> str:
    key = key.lstrip("/")
    if not key:
        raise ValueError("file key must not be empty")
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key


def _exists_message(url: str) -> str:
    return f"{url} already exists; set `overwrite: true` to replace it or change `file_name`."


def _marker_key(prefix: str) -> str:
    return _join_key(prefix, f"{WRITE_TEST_MARKER}{uuid.uuid4().hex}")


PartT = TypeVar("PartT")


class _WriterLifecycle(ABC):
    """What every sink writer promises: entered once, written only while open, and on a clean
    exit the file appears whole (`_commit`); on an error nothing of it is left (`_discard`)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._state = "new"
        self._bytes_written = 0

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _write(self, view: memoryview) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _discard(self) -> None: ...

    @abstractmethod
    def _release(self) -> None:
        """Always last, after `_commit` or `_discard`."""

    @property
    def bytes_written(self) -> int:
        """Bytes accepted by :meth:`write` so far."""
        return self._bytes_written

    @property
    def url(self) -> str:
        """URL of the file being written."""
        return self._url

    def __enter__(self) -> _WriterLifecycle:
        if self._state != "new":
            raise RuntimeError("a sink writer can only be entered once")
        # Fail before the caller produces any data if the target is taken.
        self._open()
        self._state = "open"
        return self

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        if self._state != "open":
            raise ValueError(f"writer for {self._url} is not open (use it inside `with`)")
        view = memoryview(data).cast("B")
        self._write(view)
        self._bytes_written += len(view)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._state != "open":
            return False
        self._state = "closed"
        try:
            if exc_type is None:
                try:
                    self._commit()
                except BaseException:
                    self._discard()
                    raise
            else:
                self._discard()
        finally:
            self._release()
        return False


class _StreamingWriter(_WriterLifecycle, Generic[PartT]):
    """Buffers writes into fixed-size parts and uploads them one at a time in the background.

    Subclasses implement the service calls; this class owns buffering, the
    single in-flight upload, and commit/cleanup ordering.
    """

    def __init__(self, url: str, part_size: int, max_parts: int, max_concurrency: int = 1) -> None:
        super().__init__(url)
        self._max_concurrency = max(1, int(max_concurrency))
        self._part_size = part_size
        self._max_parts = max_parts
        self._buf = bytearray()
        self._parts: list[PartT] = []
        self._part_count = 0
        self._inflight: deque[Future[PartT]] = deque()  # oldest first
        self._pool: ThreadPoolExecutor | None = None
        self._multipart = False

    # -- service hooks (and `_open`: check that the target may be written)
    @abstractmethod
    def _put_single(self, data: bytes | bytearray) -> None: ...

    @abstractmethod
    def _begin_multipart(self) -> None: ...

    @abstractmethod
    def _upload_part(self, number: int, data: bytes | bytearray) -> PartT: ...

    @abstractmethod
    def _complete(self, parts: list[PartT]) -> None: ...

    @abstractmethod
    def _abort(self) -> None: ...

    # -- the lifecycle
    def _write(self, view: memoryview) -> None:
        """Buffer ``view``; upload a part whenever the buffer is full."""
        while len(view):
            # Flush only when more data arrives for a full buffer, so a file of
            # exactly one part still goes out as a single PutObject.
            if len(self._buf) >= self._part_size:
                self._flush_part()
            room = self._part_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]

    def _release(self) -> None:
        self._buf = bytearray()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # -- internals
    def _flush_part(self) -> None:
        if self._part_count >= self._max_parts:
            raise SinkError(
                f"{self._url} is too large: more than {self._max_parts} parts of "
                f"{self._part_size // MiB} MiB; configure a larger part size."
            )
        if not self._multipart:
            self._begin_multipart()
            self._multipart = True
            self._pool = ThreadPoolExecutor(max_workers=self._max_concurrency, thread_name_prefix="sink-upload")
        # Wait for the oldest part first: at most max_concurrency parts in flight
        # (one by default), one buffered.
        while len(self._inflight) >= self._max_concurrency:
            self._parts.append(self._inflight.popleft().result())
        self._part_count += 1
        # Hand the buffer itself to the upload (no copy) and start a fresh one.
        data, self._buf = self._buf, bytearray()
        assert self._pool is not None
        self._inflight.append(self._pool.submit(self._upload_part, self._part_count, data))

    def _collect_inflight(self) -> None:
        # In submission order, so the part list stays ordered.
        while self._inflight:
            self._parts.append(self._inflight.popleft().result())

    def _commit(self) -> None:
        if not self._multipart:
            self._put_single(self._buf)
            return
        if self._buf:
            self._flush_part()
        self._collect_inflight()
        self._complete(self._parts)

    def _discard(self) -> None:
        # Let a running part upload finish first, otherwise it could land after
        # the abort and leave storage behind.
        while self._inflight:
            future = self._inflight.popleft()
            try:
                future.result()
            except BaseException:
                pass  # already failing; the original error is what the caller sees
        if self._multipart:
            try:
                self._abort()
            except Exception as abort_exc:
                # Never mask the original error; the lifecycle rule / GC is the backstop.
                logger.warning("could not clean up partial upload of %s: %s", self._url, abort_exc)


# --------------------------------------------------------------------------- S3



class S3Sink:
    """Writes files to ``s3://bucket/prefix/...`` with a boto3 S3 client."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 1,
        limits: str = "",
    ) -> None:
        if part_size < S3_MIN_PART_SIZE:
            raise ValueError(f"S3 part_size must be at least {S3_MIN_PART_SIZE} bytes")
        self.client = client
        self.limits = limits  # the client's timeouts and retries, named when it gives up
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.max_concurrency = max_concurrency  # part uploads in flight at once
        # None = not yet known; False once the service rejected If-None-Match.
        self._conditional_writes: bool | None = None
        # Mirror s3transfer: with the botocore default ("when_supported") send CRC32
        # per part and list the part checksums on completion.
        calc = getattr(client.meta.config, "request_checksum_calculation", None)
        self._checksum_args: dict[str, str] = (
            {"ChecksumAlgorithm": "CRC32"} if calc == "when_supported" else {}
        )

    def __repr__(self) -> str:
        return f"S3Sink(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, key: str) -> str:
        """Object key for ``key`` with the prefix applied."""
        return _join_key(self.prefix, key)

    def url(self, key: str) -> str:
        """``s3://bucket/prefix/key``."""
        return f"s3://{self.bucket}/{self.key(key)}"

    def exists(self, key: str) -> bool:
        """Whether the object exists (HeadObject)."""
        return self._exists_full(self.key(key))

    def open_write(
        self,
        key: str,
        *,
        overwrite: bool = False,
        content_type: str = "text/csv",
        content_encoding: str | None = None,
    ) -> _S3Writer:
        """Stream an object; it appears atomically when the ``with`` block exits cleanly."""
        return _S3Writer(self, self.key(key), overwrite, content_type, content_encoding)

    def check_write_permission(self) -> None:
        """Put and delete ``<prefix>/.integration_hub_write_test-<uuid>``."""
        marker = _marker_key(self.prefix)
        self._call(
            "put_object",
            "write a test object to",
            marker,
            "s3:PutObject",
            Bucket=self.bucket,
            Key=marker,
            Body=b"",
            ContentType="text/plain",
        )
        self._call(
            "delete_object",
            "delete the test object from",
            marker,
            "s3:DeleteObject",
            Bucket=self.bucket,
            Key=marker,
        )

    # -- internals
    @property
    def _endpoint(self) -> str:
        return _strip_query(str(self.client.meta.endpoint_url))

    def _exists_full(self, full_key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            code = s3_code(exc)
            if code in S3_NOT_FOUND:
                return False
            if code in S3_BARE_FORBIDDEN:
                # A HEAD answer has no body, so a 403 does not say whether the signature (wrong
                # secret or key id) or a permission was refused: ask with a GET, whose error names it.
                return self._exists_by_get(full_key)
            raise self._error(exc, "check whether an object exists at", full_key, EXISTS_PERMISSION) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "check whether an object exists at", full_key, "s3:GetObject") from exc
        return True

    def _exists_by_get(self, full_key: str) -> bool:
        """Existence by a one-byte GET: its error body has S3's code (SignatureDoesNotMatch, AccessDenied, ...)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.get_object(Bucket=self.bucket, Key=full_key, Range="bytes=0-0")["Body"].close()
        except ClientError as exc:
            code = s3_code(exc)
            if code in S3_NOT_FOUND:
                return False
            if code == "InvalidRange":  # an empty object: it exists
                return True
            # Without s3:ListBucket, S3 answers AccessDenied (not NoSuchKey) for a missing key.
            raise self._error(exc, "check whether an object exists at", full_key, EXISTS_PERMISSION) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "check whether an object exists at", full_key, "s3:GetObject") from exc
        return True

    def _call(self, op: str, action: str, full_key: str, permission: str, **kwargs: Any) -> Any:
        """Call a client method and translate failures into :class:`SinkError`."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, op)(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, action, full_key, permission) from exc

    def _conditional_call(self, op: str, full_key: str, conditional: bool, **kwargs: Any) -> Any:
        """Run the final PutObject/CompleteMultipartUpload, with ``If-None-Match: *`` when asked.

        Falls back to an unconditional call (with a warning) if the service or the
        installed botocore does not support conditional writes.
        """
        from botocore.exceptions import ClientError, ParamValidationError

        url = f"s3://{self.bucket}/{full_key}"
        if conditional and self._conditional_writes is not False:
            try:
                result = getattr(self.client, op)(IfNoneMatch="*", **kwargs)
                self._conditional_writes = True
                return result
            except ParamValidationError as exc:
                if "IfNoneMatch" not in str(exc):
                    raise self._error(exc, "write", full_key, "s3:PutObject") from exc
                self._disable_conditional_writes("the installed botocore does not know IfNoneMatch")
            except ClientError as exc:
                code = s3_code(exc)
                if code in {"PreconditionFailed", "412"}:
                    # Someone created the object after our existence check.
                    raise FileExistsError(_exists_message(url)) from exc
                if code == "ConditionalRequestConflict":
                    raise SinkError(
                        f"Another writer was writing {url} at the same time; re-run the export.", code=code
                    ) from exc
                if code not in {"NotImplemented", "501"}:
                    raise self._error(exc, "write", full_key, "s3:PutObject") from exc
                self._disable_conditional_writes(f"the service answered {code}")
        return self._call(op, "write", full_key, "s3:PutObject", **kwargs)

    def _disable_conditional_writes(self, why: str) -> None:
        self._conditional_writes = False
        logger.warning(
            "S3 endpoint %s does not support conditional writes (If-None-Match: *) because %s; "
            "overwrite protection relies on the existence check only and a concurrent writer could win",
            self._endpoint,
            why,
        )

    def _error(self, exc: BaseException, action: str, full_key: str, permission: str) -> SinkError:
        return _s3_error(
            exc,
            action=action,
            target=f"s3://{self.bucket}/{full_key}",
            bucket=self.bucket,
            endpoint=self._endpoint,
            region=getattr(self.client.meta, "region_name", None),
            permission=permission,
            limits=self.limits,
        )


def _s3_error(exc: BaseException, **context: Any) -> SinkError:
    message, code = explain_s3_error(exc, **context)
    return SinkError(message, code=code)




class _S3Writer(_StreamingWriter[dict[str, Any]]):
    def __init__(
        self, sink: S3Sink, full_key: str, overwrite: bool, content_type: str, content_encoding: str | None
    ) -> None:
        super().__init__(f"s3://{sink.bucket}/{full_key}", sink.part_size, S3_MAX_PARTS, sink.max_concurrency)
        self._sink = sink
        self._key = full_key
        self._overwrite = overwrite
        self._extra: dict[str, str] = {"ContentType": content_type}
        if content_encoding:
            self._extra["ContentEncoding"] = content_encoding
        self._upload_id: str | None = None

    def _open(self) -> None:
        if not self._overwrite and self._sink._exists_full(self._key):
            raise FileExistsError(_exists_message(self._url))

    def _put_single(self, data: bytes | bytearray) -> None:
        self._sink._conditional_call(
            "put_object",
            self._key,
            not self._overwrite,
            Bucket=self._sink.bucket,
            Key=self._key,
            Body=data,
            **self._extra,
        )

    def _begin_multipart(self) -> None:
        resp = self._sink._call(
            "create_multipart_upload",
            "start a multipart upload for",
            self._key,
            "s3:PutObject",
            Bucket=self._sink.bucket,
            Key=self._key,
            **self._extra,
            **self._sink._checksum_args,
        )
        self._upload_id = resp["UploadId"]

    def _upload_part(self, number: int, data: bytes | bytearray) -> dict[str, Any]:
        resp = self._sink._call(
            "upload_part",
            f"upload part {number} of",
            self._key,
            "s3:PutObject",
            Bucket=self._sink.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
            **self._sink._checksum_args,
        )
        part: dict[str, Any] = {"PartNumber": number, "ETag": resp["ETag"]}
        for name, value in resp.items():
            if name.startswith("Checksum") and name != "ChecksumType":
                part[name] = value
        return part

    def _complete(self, parts: list[dict[str, Any]]) -> None:
        self._sink._conditional_call(
            "complete_multipart_upload",
            self._key,
            not self._overwrite,
            Bucket=self._sink.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": parts},
        )

    def _abort(self) -> None:
        if self._upload_id is not None:
            self._sink._call(
                "abort_multipart_upload",
                "abort the multipart upload of",
                self._key,
                "s3:AbortMultipartUpload",
                Bucket=self._sink.bucket,
                Key=self._key,
                UploadId=self._upload_id,
            )


# --------------------------------------------------------------------------- Azure

_AZ_AUTH_FAILED = {"AuthenticationFailed", "InvalidAuthenticationInfo", "NoAuthenticationInformation"}
_AZ_FORBIDDEN = {
    "AuthorizationFailure",
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
    "InsufficientAccountPermissions",
}
_AZ_EXISTS = {"BlobAlreadyExists", "ConditionNotMet"}


class AzureBlobSink:
    """Writes block blobs into one container (``ContainerClient``) under a prefix."""

    def __init__(
        self,
        container_client: ContainerClient,
        prefix: str = "",
        *,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrency: int = 1,
        limits: str = "",
    ) -> None:
        if part_size <= 0:
            raise ValueError("part_size must be positive")
        self.container_client = container_client
        self.limits = limits  # the client's timeouts and retries, named when it gives up
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.max_concurrency = max_concurrency  # block uploads in flight at once

    @classmethod
    def from_settings(
        cls,
        container: str,
        prefix: str = "",
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: str | None = None,
        max_concurrency: int = 1,
        limits: str = "",
        **client_kwargs: Any,
    ) -> AzureBlobSink:
        """Build from a connection string (incl. Azurite's) or an account URL + key/SAS credential.

        ``client_kwargs`` are passed to the ``ContainerClient`` (timeouts, ``retry_policy``: see
        core/timeouts.py); ``limits`` describes them for messages.
        """
        from azure.storage.blob import ContainerClient

        if connection_string:
            try:
                client = ContainerClient.from_connection_string(
                    connection_string, container_name=container, credential=credential, **client_kwargs
                )
            except ValueError as exc:
                # The SDK's message is generic; never echo the string itself (it holds the key).
                raise SinkError(
                    "The Azure Storage connection string is malformed; expected "
                    "'DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...' or "
                    "'BlobEndpoint=...;SharedAccessSignature=...'.",
                    code="InvalidConnectionString",
                ) from exc
        elif account_url:
            try:
                client = ContainerClient(
                    account_url, container_name=container, credential=credential, **client_kwargs
                )
            except ValueError as exc:
                raise SinkError(
                    f"Invalid Azure account URL {_strip_query(account_url)!r}: expected "
                    "'https://<account>.blob.core.windows.net'.",
                    code="InvalidAccountUrl",
                ) from exc
        else:
            raise SinkError(
                "Azure Blob destination needs `connection_string` or `account_url` (+ `credential`).",
                code="MissingSettings",
            )
        return cls(client, prefix, max_concurrency=max_concurrency, limits=limits)

    def __repr__(self) -> str:
        return f"AzureBlobSink(container={self.container_name!r}, prefix={self.prefix!r})"

    @property
    def container_name(self) -> str:
        """Name of the container."""
        return str(self.container_client.container_name)

    def key(self, key: str) -> str:
        """Blob name for ``key`` with the prefix applied."""
        return _join_key(self.prefix, key)

    def url(self, key: str) -> str:
        """Blob URL as the SDK reports it, without any SAS token."""
        return _strip_query(self.container_client.get_blob_client(self.key(key)).url)

    def exists(self, key: str) -> bool:
        """Whether the blob exists."""
        return self._exists_full(self.key(key))

    def open_write(
        self,
        key: str,
        *,
        overwrite: bool = False,
        content_type: str = "text/csv",
        content_encoding: str | None = None,
    ) -> _AzureWriter:
        """Stream a block blob; it is committed when the ``with`` block exits cleanly."""
        return _AzureWriter(self, self.key(key), overwrite, content_type, content_encoding)

    def check_write_permission(self) -> None:
        """Upload and delete ``<prefix>/.integration_hub_write_test-<uuid>``."""
        marker = _marker_key(self.prefix)
        blob = self.container_client.get_blob_client(marker)
        self._call(
            lambda: blob.upload_blob(b"", overwrite=True),
            "write a test blob to",
            marker,
            "create/write (c,w)",
        )
        self._call(blob.delete_blob, "delete the test blob from", marker, "delete (d)")

    # -- internals
    @property
    def _account(self) -> str:
        return _strip_query(str(self.container_client.primary_endpoint)).rsplit("/", 1)[0]

    def _exists_full(self, name: str) -> bool:
        """Whether the blob exists; a missing container is an error (the SDK's ``exists`` says False)."""
        return self._probe(name, need_read=True) is True  # with need_read, never None

    def _probe(self, name: str, *, need_read: bool) -> bool | None:
        """Blob properties (a HEAD): True/False for exists, None when reading is not permitted.

        Raises for a missing container and rejected credentials, so a run fails before it
        streams anything; a missing read permission raises only when ``need_read``.
        """
        from azure.core.exceptions import AzureError, HttpResponseError

        blob = self.container_client.get_blob_client(name)
        try:
            blob.get_blob_properties()
            return True
        except HttpResponseError as exc:
            code = _azure_code(exc)
            if code == "BlobNotFound" or (exc.status_code == 404 and code != "ContainerNotFound"):
                return False
            if not need_read and exc.status_code == 403 and not _credentials_rejected(exc):
                return None  # a write-only SAS: the upload itself will tell
            raise self._error(exc, "check whether a blob exists at", name, "read (r)") from exc
        except AzureError as exc:
            raise self._error(exc, "check whether a blob exists at", name, "read (r)") from exc

    def _call(self, fn: Callable[[], Any], action: str, name: str, permission: str) -> Any:
        from azure.core.exceptions import AzureError

        try:
            return fn()
        except AzureError as exc:
            raise self._error(exc, action, name, permission) from exc

    def _error(self, exc: BaseException, action: str, name: str, permission: str) -> SinkError:
        return _azure_error(
            exc,
            action=action,
            target=_strip_query(self.container_client.get_blob_client(name).url),
            container=self.container_name,
            account=self._account,
            permission=permission,
            limits=self.limits,
        )


def _azure_code(exc: BaseException) -> str:
    raw_code = getattr(exc, "error_code", None) or ""
    return str(getattr(raw_code, "value", raw_code))  # the SDK sometimes returns a StorageErrorCode enum


def _azure_reason(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or getattr(exc, "reason", None) or "")


def _credentials_rejected(exc: BaseException) -> bool:
    """The account key / SAS was refused (not a missing permission)."""
    code = _azure_code(exc)
    # Azurite reports a bad signature as AuthorizationFailure with this text.
    bad_signature = code in _AZ_FORBIDDEN and "failed to authenticate" in _azure_reason(exc).lower()
    return code in _AZ_AUTH_FAILED or bad_signature


def _azure_error(
    exc: BaseException, *, action: str, target: str, container: str, account: str, permission: str, limits: str = ""
) -> SinkError:
    """Map an azure-core exception to a one-line, secret-free :class:`SinkError`."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    what = f"Could not {action} {target}"
    gave_up = f" (gave up after {limits})" if limits else ""
    if isinstance(exc, ServiceRequestError):
        return SinkError(
            f"{what}: the Azure Blob endpoint {account} is unreachable{gave_up}; check `account_url`/BlobEndpoint, "
            "DNS, firewall and proxy settings.",
            code="EndpointUnreachable",
        )
    if isinstance(exc, ServiceResponseError):
        return SinkError(
            f"{what}: the connection to {account} timed out or was dropped{gave_up}; retry, and check the network.",
            code="ConnectionDropped",
        )
    if not isinstance(exc, HttpResponseError):
        return SinkError(f"{what}: {type(exc).__name__}: {scrub(str(exc.args[0]) if exc.args else '')}")

    code = _azure_code(exc)
    status = getattr(exc, "status_code", None)
    reason = _azure_reason(exc)
    if status is None and type(exc).__name__ == "AzureSigningError":
        # Raised before sending anything, e.g. the account key is not valid base64.
        return SinkError(
            f"{what}: the Azure account key cannot be used to sign requests; copy the base64 access key "
            "from the storage account's 'Access keys' page into the connection string or `credential`.",
            code="InvalidAccountKey",
        )
    if code == "ContainerNotFound":
        return SinkError(
            f"{what}: container '{container}' does not exist in {account}; create it or fix `container` "
            "on the connection.",
            code=code,
        )
    if _credentials_rejected(exc):
        return SinkError(
            f"{what}: Azure rejected the credentials for {account}; check the account key / SAS token in the "
            "connection string or `credential` (wrong key, expired SAS, or clock skew).",
            code=code,
        )
    if code in _AZ_FORBIDDEN or (status == 403 and not code):
        return SinkError(
            f"{what}: access denied; give the identity 'Storage Blob Data Contributor' on container "
            f"'{container}' or use a SAS with {permission} permission (and check the firewall/IP rules).",
            code=code or "403",
        )
    if code == "AccountIsDisabled":
        return SinkError(
            f"{what}: the storage account {account} is disabled; re-enable it in Azure.", code=code
        )
    message = scrub(reason.splitlines()[0] if reason else "")
    hint = "retry later" if status is not None and status >= 500 else "see the Azure error code"
    return SinkError(
        f"{what}: Azure returned {code or 'an error'} (HTTP {status}) {message}; {hint}.", code=code or None
    )


class _AzureWriter(_StreamingWriter[str]):
    def __init__(
        self,
        sink: AzureBlobSink,
        name: str,
        overwrite: bool,
        content_type: str,
        content_encoding: str | None,
    ) -> None:
        from azure.storage.blob import ContentSettings

        self._sink = sink
        self._name = name
        self._blob = sink.container_client.get_blob_client(name)
        super().__init__(_strip_query(self._blob.url), sink.part_size, AZURE_MAX_BLOCKS, sink.max_concurrency)
        self._overwrite = overwrite
        self._content_settings = ContentSettings(content_type=content_type, content_encoding=content_encoding)
        # Random per-write block id prefix so two concurrent writers of the same
        # blob never stage over each other's blocks; fixed length as Azure requires.
        self._block_prefix = uuid.uuid4().hex

    def _open(self) -> None:
        # Always ask (a HEAD), also with overwrite: a missing container or rejected credentials
        # then fail the run before DuckDB writes anything, not at the first block upload.
        exists = self._sink._probe(self._name, need_read=not self._overwrite)
        if exists and not self._overwrite:
            raise FileExistsError(_exists_message(self._url))

    def _final(self, fn: Callable[[], Any]) -> None:
        """Run the call that makes the blob visible; a lost race becomes FileExistsError."""
        from azure.core.exceptions import AzureError, HttpResponseError

        try:
            fn()
        except AzureError as exc:
            lost_race = isinstance(exc, HttpResponseError) and (
                exc.error_code in _AZ_EXISTS or exc.status_code == 412
            )
            if lost_race and not self._overwrite:
                # Someone created the blob after our existence check.
                raise FileExistsError(_exists_message(self._url)) from exc
            raise self._sink._error(exc, "write", self._name, "create/write (c,w)") from exc

    def _put_single(self, data: bytes | bytearray) -> None:
        # Stage + commit even for small files instead of one Put Blob: Azurite treats
        # leftover uncommitted blocks (from an earlier failed attempt) as an existing
        # blob for Put Blob's If-None-Match, but not for Put Block List's.
        blocks = [self._upload_part(1, data)] if data else []
        self._complete(blocks)

    def _begin_multipart(self) -> None:
        pass  # block blobs need no "create" call; blocks are staged against the name

    def _upload_part(self, number: int, data: bytes | bytearray) -> str:
        block_id = f"{self._block_prefix}-{number:06d}"
        self._sink._call(
            lambda: self._blob.stage_block(block_id, data, length=len(data)),
            f"upload block {number} of",
            self._name,
            "write (w)",
        )
        return block_id

    def _complete(self, parts: list[str]) -> None:
        from azure.core import MatchConditions

        conditions: dict[str, Any] = {}
        if not self._overwrite:
            conditions = {"match_condition": MatchConditions.IfMissing}  # If-None-Match: *
        self._final(
            lambda: self._blob.commit_block_list(parts, content_settings=self._content_settings, **conditions)
        )

    def _abort(self) -> None:
        # Uncommitted blocks cannot be deleted individually; the service drops
        # them after 7 days (or when the next commit to this name happens).
        logger.debug("discarding %d uncommitted block(s) for %s", len(self._parts), self._url)


# --------------------------------------------------------------------------- local folder

TEMP_MARKER = ".integration_hub_partial-"  # a file being written: ignored by readers, removed on error


class LocalFolderSink:
    """Writes files under a folder on this machine (a `local` connection's `path`)."""

    def __init__(self, root: str | os.PathLike[str], prefix: str = "") -> None:
        self.root = Path(root)
        self.prefix = prefix.strip("/")

    def __repr__(self) -> str:
        return f"LocalFolderSink(root={str(self.root)!r}, prefix={self.prefix!r})"

    def path(self, key: str) -> Path:
        """The file's path for ``key`` (prefix applied); never outside the root."""
        relative = _join_key(self.prefix, key)
        if any(part in ("", ".", "..") for part in relative.split("/")):
            raise ValueError(f"file key {key!r} must not contain empty, '.' or '..' parts")
        return self.root.joinpath(*relative.split("/"))

    def url(self, key: str) -> str:
        """The file's path, as the user knows the folder."""
        return str(self.path(key))

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def open_write(
        self,
        key: str,
        *,
        overwrite: bool = False,
        content_type: str = "text/csv",
        content_encoding: str | None = None,
    ) -> _LocalWriter:
        """Stream a file; it appears under its name when the ``with`` block exits cleanly.

        A folder has no content type or encoding: the file's name says what it is (``.csv.gz``).
        """
        return _LocalWriter(self.path(key), overwrite)

    def check_write_permission(self) -> None:
        """Create the folder if needed, then write, fsync and delete a marker file in it."""
        folder = self.path("x").parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f"{WRITE_TEST_MARKER}{uuid.uuid4().hex}"
            with open(marker, "xb") as handle:
                os.fsync(handle.fileno())
            marker.unlink()
        except OSError as exc:
            raise _local_error(exc, "write a test file in", folder) from exc


def _local_error(exc: OSError, action: str, path: Path) -> SinkError:
    """One line: what failed, where (the folder path as configured) and how to fix it."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "give the user running integration_hub write access to it, or change the connection's `path`"
    elif exc.errno == errno.ENOSPC:
        hint = "free disk space there, or change the connection's `path`"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        reason = "a file stands where a folder is needed"
        hint = "move it, or change the connection's `path` or the export's `folder`"
    else:
        hint = "check the connection's `path`"
    return SinkError(f"Could not {action} {path}: {reason}; {hint}.", code=errno.errorcode.get(exc.errno or 0))


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); not possible on every platform or filesystem."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _LocalWriter(_WriterLifecycle):
    def __init__(self, path: Path, overwrite: bool) -> None:
        super().__init__(str(path))
        self._path = path
        self._overwrite = overwrite
        self._temp = path.with_name(f"{TEMP_MARKER}{uuid.uuid4().hex}-{path.name}")
        self._handle: Any = None

    def _open(self) -> None:
        if not self._overwrite and self._path.exists():
            raise FileExistsError(_exists_message(self.url))
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(self._temp, "xb")
        except OSError as exc:
            raise _local_error(exc, "create a file in", self._path.parent) from exc

    def _write(self, view: memoryview) -> None:
        try:
            self._handle.write(view)
        except OSError as exc:
            raise _local_error(exc, "write", self._path) from exc

    def _discard(self) -> None:
        pass  # the temporary file goes in _release, whatever happened

    def _release(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        self._temp.unlink(missing_ok=True)

    def _commit(self) -> None:
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        except OSError as exc:
            raise _local_error(exc, "write", self._path) from exc
        try:
            if self._overwrite:
                os.replace(self._temp, self._path)
            else:
                # A hard link never replaces a file: a file created since the check wins.
                os.link(self._temp, self._path)
        except FileExistsError:
            raise FileExistsError(_exists_message(self.url)) from None
        except OSError as exc:
            if self._overwrite or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise _local_error(exc, "publish", self._path) from exc
            # No hard links on this filesystem: check again, then rename (a narrow race remains).
            if self._path.exists():
                raise FileExistsError(_exists_message(self.url)) from None
            try:
                os.replace(self._temp, self._path)
            except OSError as again:
                raise _local_error(again, "publish", self._path) from again
        _fsync_folder(self._path.parent)

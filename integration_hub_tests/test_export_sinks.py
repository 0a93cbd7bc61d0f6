"""The sinks against real storage: moto in-process, moto over HTTP, Azurite and a local folder."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import pytest
from azure.storage.blob import BlobServiceClient, generate_container_sas
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from integration_hub.exports.sinks import AzureBlobSink, FileSink, LocalFolderSink, S3Sink, SinkError
from integration_hub_tests.fakes.azurite import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    AzuriteServer,
    connection_string,
    free_port,
)
from integration_hub_tests.fakes.moto_server import MotoServer
from integration_hub_tests.test_exports_support import SlowPartUploads

MiB = 1024 * 1024
BACKENDS = ["moto", "moto_server", "azurite", "local"]


@pytest.fixture(scope="module")
def big_payload() -> bytes:
    """20 MiB + a few bytes: three S3 parts / Azure blocks of 8 MiB, the last one short."""
    return os.urandom(20 * MiB + 7)


@dataclass
class Backend:
    """A sink plus direct SDK access to check what really landed in storage."""

    name: str
    sink: FileSink
    read: Callable[[str], bytes]  # full key -> content
    put: Callable[[str, bytes], None]  # write behind the sink's back
    names: Callable[[], list[str]]  # committed object names
    pending_uploads: Callable[[], int]  # unfinished multipart uploads (S3); 0 for Azure
    # (content type, content encoding) and the number of parts/blocks: object stores only.
    content_meta: Callable[[str], tuple[str | None, str | None]] | None
    parts: Callable[[str], int] | None


def _s3_backend(name: str, client: Any, bucket: str) -> Backend:
    client.create_bucket(Bucket=bucket)

    def names() -> list[str]:
        return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def meta(key: str) -> tuple[str | None, str | None]:
        head = client.head_object(Bucket=bucket, Key=key)
        return head.get("ContentType"), head.get("ContentEncoding")

    def parts(key: str) -> int:
        etag = client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
        return int(etag.split("-")[1]) if "-" in etag else 1

    return Backend(
        name=name,
        sink=S3Sink(client, bucket, "exports/daily"),
        read=lambda key: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
        put=lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
        names=names,
        pending_uploads=lambda: len(client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])),
        content_meta=meta,
        parts=parts,
    )


def _azure_backend(server: AzuriteServer) -> Backend:
    service = BlobServiceClient.from_connection_string(server.connection_string)
    container = service.create_container(f"exports-{uuid.uuid4().hex[:12]}")

    def meta(key: str) -> tuple[str | None, str | None]:
        settings = container.get_blob_client(key).get_blob_properties().content_settings
        return settings.content_type, settings.content_encoding

    return Backend(
        name="azurite",
        sink=AzureBlobSink.from_settings(
            container.container_name, "exports/daily", connection_string=server.connection_string
        ),
        read=lambda key: container.download_blob(key, decompress=False).readall(),
        put=lambda key, data: container.upload_blob(key, data, overwrite=True),
        names=lambda: [b.name for b in container.list_blobs()],
        pending_uploads=lambda: 0,
        content_meta=meta,
        parts=lambda key: len(container.get_blob_client(key).get_block_list("committed")[0]),
    )


def _local_backend(root: Path) -> Backend:
    def put(key: str, data: bytes) -> None:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(data)

    return Backend(
        name="local",
        sink=LocalFolderSink(root, "exports/daily"),
        read=lambda key: (root / key).read_bytes(),
        put=put,
        # Every file, hidden temporary ones included: nothing may be left behind.
        names=lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        pending_uploads=lambda: 0,
        content_meta=None,
        parts=None,
    )


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    if request.param == "local":
        yield _local_backend(tmp_path / "outbox")
    elif request.param == "moto":
        with mock_aws():
            yield _s3_backend("moto", boto3.client("s3", region_name="us-east-1"), bucket)
    elif request.param == "moto_server":
        server: MotoServer = request.getfixturevalue("moto_server")
        yield _s3_backend("moto_server", server.client(), bucket)
        server.reset()
    else:
        yield _azure_backend(request.getfixturevalue("azurite"))


def _write(sink: FileSink, key: str, data: bytes, chunk: int = 1_000_003, **kwargs: Any) -> int:
    """Write in odd-sized chunks so part boundaries never line up with write calls."""
    with sink.open_write(key, **kwargs) as writer:
        for start in range(0, len(data), chunk):
            writer.write(data[start : start + chunk])
    return writer.bytes_written


# --------------------------------------------------------------------------- round trips


def test_small_file_round_trip(backend: Backend) -> None:
    data = b"id,name\n1,Ada\n2,Grace\n"
    assert _write(backend.sink, "small.csv", data) == len(data)
    assert backend.read("exports/daily/small.csv") == data
    assert backend.names() == ["exports/daily/small.csv"]
    if backend.parts and backend.content_meta:
        assert backend.parts("exports/daily/small.csv") == 1
        assert backend.content_meta("exports/daily/small.csv") == ("text/csv", None)
    assert backend.sink.exists("small.csv")
    assert not backend.sink.exists("other.csv")


def test_multipart_file_round_trip(backend: Backend, big_payload: bytes) -> None:
    written = _write(backend.sink, "big.csv.gz", big_payload, content_encoding="gzip")
    assert written == len(big_payload)
    assert backend.read("exports/daily/big.csv.gz") == big_payload
    if backend.parts and backend.content_meta:
        assert backend.parts("exports/daily/big.csv.gz") == 3
        assert backend.content_meta("exports/daily/big.csv.gz") == ("text/csv", "gzip")
    assert backend.pending_uploads() == 0


def test_empty_file(backend: Backend) -> None:
    with backend.sink.open_write("empty.csv") as writer:
        pass
    assert writer.bytes_written == 0
    assert backend.read("exports/daily/empty.csv") == b""


def test_url_reports_bucket_container_and_prefix(backend: Backend) -> None:
    assert isinstance(backend.sink, FileSink)
    url = backend.sink.url("a/b.csv")
    if backend.name == "local":
        assert url == str(backend.sink.root / "exports" / "daily" / "a" / "b.csv")  # type: ignore[attr-defined]
    elif backend.name == "azurite":
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/devstoreaccount1/" + backend.sink.container_name + "/exports/daily/a/b.csv")  # type: ignore[attr-defined]
    else:
        assert url == f"s3://{backend.sink.bucket}/exports/daily/a/b.csv"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- overwrite semantics


def test_existing_file_without_overwrite_raises_and_keeps_old_content(backend: Backend) -> None:
    backend.put("exports/daily/out.csv", b"old")
    with pytest.raises(FileExistsError) as info:
        _write(backend.sink, "out.csv", b"new")
    message = str(info.value)
    assert backend.sink.url("out.csv") in message
    assert "overwrite: true" in message and "file_name" in message
    assert backend.read("exports/daily/out.csv") == b"old"


def test_overwrite_true_replaces(backend: Backend, big_payload: bytes) -> None:
    backend.put("exports/daily/out.csv", b"old")
    _write(backend.sink, "out.csv", b"new", overwrite=True)
    assert backend.read("exports/daily/out.csv") == b"new"
    _write(backend.sink, "out.csv", big_payload, overwrite=True)
    assert backend.read("exports/daily/out.csv") == big_payload


@pytest.mark.parametrize("size", [100, 17 * MiB], ids=["single", "multipart"])
def test_file_created_during_write_is_not_overwritten(backend: Backend, size: int) -> None:
    """The existence check passed, then someone else wrote the file: the conditional commit must lose."""
    writer = backend.sink.open_write("race.csv")
    with pytest.raises(FileExistsError, match="overwrite: true"):
        with writer as w:
            w.write(b"x" * size)
            backend.put("exports/daily/race.csv", b"winner")
    assert backend.read("exports/daily/race.csv") == b"winner"
    assert backend.pending_uploads() == 0


# --------------------------------------------------------------------------- failure cleanup


class Boom(Exception):
    pass


@pytest.mark.parametrize("size", [100, 17 * MiB], ids=["single", "multipart"])
def test_exception_inside_with_leaves_nothing(backend: Backend, size: int) -> None:
    with pytest.raises(Boom):
        with backend.sink.open_write("broken.csv") as writer:
            writer.write(b"y" * size)
            raise Boom
    assert backend.names() == []
    assert backend.pending_uploads() == 0
    assert not backend.sink.exists("broken.csv")
    # A retry of the same export (overwrite=False) is not blocked by leftovers.
    _write(backend.sink, "broken.csv", b"retry")
    assert backend.read("exports/daily/broken.csv") == b"retry"


def test_writer_rejects_use_outside_with(backend: Backend) -> None:
    writer = backend.sink.open_write("x.csv")
    with pytest.raises(ValueError, match="not open"):
        writer.write(b"x")  # type: ignore[attr-defined]
    with writer as w:
        with pytest.raises(TypeError):
            w.write("text, not bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not open"):
        w.write(b"late")


# --------------------------------------------------------------------------- permission check


def test_check_write_permission_passes_and_cleans_up(backend: Backend) -> None:
    backend.sink.check_write_permission()  # type: ignore[attr-defined]
    assert backend.names() == []


# --------------------------------------------------------------------------- local folder


def test_local_file_is_written_under_a_temporary_name_then_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    sink = LocalFolderSink(tmp_path / "not" / "there" / "yet")
    folder = tmp_path / "not" / "there" / "yet" / "daily"
    with sink.open_write("daily/out.csv") as writer:
        writer.write(b"id\r\n1\r\n")
        [partial] = list(folder.iterdir())  # same folder, so the rename is atomic
        assert partial.name.startswith(".") and partial.name.endswith("-out.csv")
        assert not (folder / "out.csv").exists()  # nobody sees a half-written file
    assert [p.name for p in folder.iterdir()] == ["out.csv"]
    assert (folder / "out.csv").read_bytes() == b"id\r\n1\r\n"
    assert synced[0] == str(partial) and synced[-1] == str(folder)  # the data, then the folder entry


def test_local_errors_name_the_folder_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file, not a folder")
    sink = LocalFolderSink(tmp_path / "blocked")
    with pytest.raises(SinkError) as info:
        _write(sink, "out.csv", b"x")
    assert str(info.value) == (
        f"Could not create a file in {tmp_path / 'blocked'}: a file stands where a folder is needed; "
        "move it, or change the connection's `path` or the export's `folder`."
    )
    with pytest.raises(SinkError, match="Could not write a test file in"):
        sink.check_write_permission()
    with pytest.raises(ValueError, match="'..'"):
        LocalFolderSink(tmp_path).open_write("../escape.csv")


def test_s3_missing_bucket(moto_server: MotoServer) -> None:
    sink = S3Sink(moto_server.client(), "no-such-bucket-here", "exports")
    with pytest.raises(SinkError) as info:
        sink.check_write_permission()
    assert info.value.code == "NoSuchBucket"
    assert "bucket 'no-such-bucket-here' does not exist" in str(info.value)
    assert "create it or fix `bucket`" in str(info.value)


def test_s3_missing_bucket_in_process() -> None:
    with mock_aws():
        sink = S3Sink(boto3.client("s3", region_name="us-east-1"), "no-such-bucket-here", "exports")
        with pytest.raises(SinkError, match="does not exist"):
            sink.check_write_permission()


def _iam_user(server: MotoServer, policy: dict[str, Any] | None = None) -> tuple[str, str]:
    iam = server.client("iam")
    user = f"exporter-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    if policy is not None:
        iam.put_user_policy(UserName=user, PolicyName="exports", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


@pytest.fixture
def auth_bucket(moto_server: MotoServer) -> Iterator[str]:
    bucket = f"bkt-{uuid.uuid4().hex[:12]}"
    moto_server.client().create_bucket(Bucket=bucket)
    yield bucket
    moto_server.reset()


def test_s3_credentials_and_access_denied(moto_server: MotoServer, auth_bucket: str) -> None:
    """moto enforces IAM (signatures + identity policies) once `iam_auth` is on."""
    no_policy = _iam_user(moto_server)
    put_only = _iam_user(
        moto_server,
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"arn:aws:s3:::{auth_bucket}/*"}
            ],
        },
    )
    cases = [
        (no_policy, "AccessDenied", "grant s3:PutObject"),
        (put_only, "AccessDenied", "grant s3:DeleteObject"),
        (
            ("AKIAIOSFODNN7EXAMPLE", "not-a-real-secret-123"),
            "InvalidAccessKeyId",
            "access key id is not valid",
        ),
        ((no_policy[0], "wrong-secret-456"), "SignatureDoesNotMatch", "secret access key is wrong"),
    ]
    with moto_server.iam_auth():
        for (key_id, secret), code, hint in cases:
            client = moto_server.client(aws_access_key_id=key_id, aws_secret_access_key=secret)
            with pytest.raises(SinkError) as info:
                S3Sink(client, auth_bucket, "exports").check_write_permission()
            message = str(info.value)
            assert info.value.code == code, message
            assert hint in message
            assert "\n" not in message
            assert secret not in message and key_id not in message


def test_s3_endpoint_unreachable() -> None:
    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2),
    )
    with pytest.raises(SinkError, match="unreachable; check `endpoint_url`") as info:
        S3Sink(client, "bucket", "exports").check_write_permission()
    assert info.value.code == "EndpointUnreachable"


def test_azure_missing_container(azurite: AzuriteServer) -> None:
    sink = AzureBlobSink.from_settings(
        "no-such-container", "exports", connection_string=azurite.connection_string
    )
    with pytest.raises(SinkError) as info:
        sink.check_write_permission()
    assert info.value.code == "ContainerNotFound"
    assert "container 'no-such-container' does not exist" in str(info.value)
    assert ACCOUNT_KEY not in str(info.value)


def test_azure_wrong_account_key(azurite: AzuriteServer) -> None:
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container("authcheck")
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    bad = connection_string(azurite.account_url, account_key=wrong_key)
    sink = AzureBlobSink.from_settings("authcheck", "exports", connection_string=bad)
    with pytest.raises(SinkError) as info:
        sink.check_write_permission()
    message = str(info.value)
    assert "rejected the credentials" in message and "account key" in message
    assert wrong_key not in message and bad not in message and "\n" not in message


def test_azure_account_key_not_base64(azurite: AzuriteServer) -> None:
    bad = connection_string(azurite.account_url, account_key="not base64 !!")
    with pytest.raises(SinkError, match="cannot be used to sign requests") as info:
        AzureBlobSink.from_settings("authcheck", connection_string=bad).check_write_permission()
    assert info.value.code == "InvalidAccountKey"
    assert "not base64" not in str(info.value)


@pytest.mark.parametrize(
    ("permission", "hint"),
    [("rl", "SAS with create/write (c,w) permission"), ("rcwl", "SAS with delete (d) permission")],
    ids=["read-only", "no-delete"],
)
def test_azure_sas_without_permission(azurite: AzuriteServer, permission: str, hint: str) -> None:
    """Azurite enforces SAS permissions, which gives a realistic 403 AuthorizationPermissionMismatch."""
    container = f"sas-{uuid.uuid4().hex[:8]}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    sas = generate_container_sas(
        ACCOUNT_NAME,
        container,
        account_key=ACCOUNT_KEY,
        permission=permission,
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    sink = AzureBlobSink.from_settings(container, "exports", account_url=azurite.account_url, credential=sas)
    with pytest.raises(SinkError) as info:
        sink.check_write_permission()
    message = str(info.value)
    assert info.value.code == "AuthorizationPermissionMismatch", message
    assert "access denied" in message and hint in message
    assert sas not in message and "sig=" not in message


def test_azure_endpoint_unreachable() -> None:
    bad = connection_string(f"http://127.0.0.1:{free_port()}/devstoreaccount1")
    sink = AzureBlobSink.from_settings("exports", "", connection_string=bad, retry_total=0)
    with pytest.raises(SinkError, match="unreachable") as info:
        sink.check_write_permission()
    assert info.value.code == "EndpointUnreachable"
    assert ACCOUNT_KEY not in str(info.value)


def test_azure_settings_errors_do_not_leak_secrets() -> None:
    with pytest.raises(SinkError, match="malformed") as info:
        AzureBlobSink.from_settings("c", connection_string="AccountKey=s3cr3t-value;garbage")
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(SinkError, match="connection_string"):
        AzureBlobSink.from_settings("c")


def test_azure_url_hides_sas_token() -> None:
    sink = AzureBlobSink.from_settings(
        "reports",
        "daily",
        account_url="https://acct.blob.core.windows.net",
        credential="?sv=2024-01-01&sig=SECRETSIGNATURE",
    )
    assert sink.url("a.csv") == "https://acct.blob.core.windows.net/reports/daily/a.csv"


# --------------------------------------------------------------------------- service errors during writes


@pytest.mark.parametrize("size", [100, 17 * MiB], ids=["single", "multipart"])
def test_s3_service_error_during_write_is_sink_error(moto_server: MotoServer, size: int) -> None:
    sink = S3Sink(moto_server.client(), "vanished-bucket", "exports")
    with pytest.raises(SinkError, match="bucket 'vanished-bucket' does not exist") as info:
        with sink.open_write("a.csv", overwrite=True) as writer:
            writer.write(b"z" * size)
    assert info.value.code == "NoSuchBucket"


@pytest.mark.parametrize("size", [100, 17 * MiB], ids=["single", "multipart"])
def test_azure_service_error_during_write_is_sink_error(azurite: AzuriteServer, size: int) -> None:
    sink = AzureBlobSink.from_settings("vanished", "exports", connection_string=azurite.connection_string)
    with pytest.raises(SinkError, match="container 'vanished' does not exist"):
        with sink.open_write("a.csv", overwrite=True) as writer:
            writer.write(b"z" * size)


def test_s3_failed_part_upload_aborts_multipart(moto_server: MotoServer) -> None:
    """A part upload failing in the background thread surfaces as SinkError and aborts the upload."""
    client = moto_server.client()
    client.create_bucket(Bucket="flaky-bucket")
    real_upload_part = client.upload_part
    calls = 0

    def flaky_upload_part(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ClientError(
                {
                    "Error": {"Code": "InternalError", "Message": "We encountered an internal error."},
                    "ResponseMetadata": {"HTTPStatusCode": 500},
                },
                "UploadPart",
            )
        return real_upload_part(**kwargs)

    client.upload_part = flaky_upload_part
    sink = S3Sink(client, "flaky-bucket", "exports")
    with pytest.raises(SinkError, match=r"InternalError \(HTTP 500\).*retry later"):
        _write(sink, "a.csv", b"q" * (30 * MiB))
    assert client.list_multipart_uploads(Bucket="flaky-bucket").get("Uploads", []) == []
    assert client.list_objects_v2(Bucket="flaky-bucket").get("Contents", []) == []
    moto_server.reset()


def test_s3_parts_are_bounded_and_uploaded_one_at_a_time() -> None:
    """Non-final parts are exactly part_size, at most one upload runs while the next part fills."""
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="bounded")
        uploads = SlowPartUploads(client, lambda _: 0.05)  # let the writer race ahead if it could
        sink = S3Sink(client, "bounded", "")
        _write(sink, "exact.csv", b"e" * (8 * MiB))  # exactly one part: still a single PutObject
        assert uploads.sizes == []
        _write(sink, "big.csv", b"b" * (25 * MiB), chunk=3 * MiB)
        assert uploads.sizes == [8 * MiB, 8 * MiB, 8 * MiB, 1 * MiB]
        assert uploads.max_active == 1
        assert client.head_object(Bucket="bounded", Key="big.csv")["ContentLength"] == 25 * MiB


# --------------------------------------------------------------------------- conditional-write fallback


class _NoConditionalWrites:
    """A client proxy that behaves like an S3-compatible store without If-None-Match support."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.meta = inner.meta

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _reject(self, operation: str, kwargs: dict[str, Any]) -> None:
        if "IfNoneMatch" in kwargs:
            raise ClientError(
                {
                    "Error": {"Code": "NotImplemented", "Message": "If-None-Match is not implemented"},
                    "ResponseMetadata": {"HTTPStatusCode": 501},
                },
                operation,
            )

    def put_object(self, **kwargs: Any) -> Any:
        self._reject("PutObject", kwargs)
        return self._inner.put_object(**kwargs)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        self._reject("CompleteMultipartUpload", kwargs)
        return self._inner.complete_multipart_upload(**kwargs)


def test_s3_falls_back_when_conditional_writes_unsupported(caplog: pytest.LogCaptureFixture) -> None:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="legacy-store")
        sink = S3Sink(_NoConditionalWrites(client), "legacy-store", "")
        with caplog.at_level(logging.WARNING, logger="integration_hub.exports.sinks"):
            _write(sink, "a.csv", b"small")
            _write(sink, "b.csv", b"m" * (9 * MiB))
        assert client.get_object(Bucket="legacy-store", Key="a.csv")["Body"].read() == b"small"
        assert len(client.get_object(Bucket="legacy-store", Key="b.csv")["Body"].read()) == 9 * MiB
        assert "does not support conditional writes" in caplog.text
        # The existence check still protects against the ordinary case.
        with pytest.raises(FileExistsError):
            _write(sink, "a.csv", b"again")

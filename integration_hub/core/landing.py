"""Landing storage: the folders inbound files are dropped into, on S3 or on this machine.

Both kinds behave the same: `*.csv` / `*.csv.gz` directly in an integration's folder are
pending; processed files move to `<folder>/success/` or `<folder>/failed/` and are never
picked up again. Listing only looks at the folder level, so a folder holding many processed
files stays cheap to watch.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .catalog import Catalog, Connection, LocalConnection, S3Connection
from .s3_errors import S3_NOT_FOUND, explain_s3_error, s3_code

if TYPE_CHECKING:  # boto3 is imported only when S3 is used
    from boto3.s3.transfer import TransferConfig

PENDING_SUFFIXES = (".csv", ".csv.gz")
CHUNK = 8 * 1024 * 1024
LARGE_PART = 128 * 1024 * 1024
COPY_OBJECT_LIMIT = 5 * 1024**3 - 1
DOWNLOAD_STREAMS = 4  # ranged GETs in flight at once


class LandingError(Exception):
    """Storage could not be reached or used; the message says what and how to fix it."""


@dataclass(frozen=True)
class LandingFile:
    key: str  # the full key (S3) or path relative to the connection root (local)
    name: str
    size: int
    modified: datetime

    @property
    def fingerprint(self) -> str:
        """Identity of this upload: a re-upload under the same name is a new file."""
        return f"{self.key}|{self.size}|{self.modified.timestamp():.6f}"


def is_pending_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(PENDING_SUFFIXES) and not lower.endswith(".errors.csv")


def stem(name: str) -> str:
    lower = name.lower()
    for suffix in (".csv.gz", ".csv"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _dated_name(name: str, attempt: int) -> str:
    """users.csv -> users.20240501T101500Z.csv (and -2, -3 ... if that is taken too)."""
    suffix = name[len(stem(name)) :]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    extra = f"-{attempt}" if attempt > 1 else ""
    return f"{stem(name)}.{stamp}{extra}{suffix}"


class LandingStore(Protocol):
    """What inbound processing needs from a landing area."""

    description: str
    # Whether a move is a copy and a delete (S3), so that copying early saves time (FileMoves.copy_ahead).
    moves_by_copy: bool

    def list_pending(self, folder: str) -> list[LandingFile]: ...

    def fetch(self, file: LandingFile, work_dir: Path) -> Path: ...

    def read_head(self, file: LandingFile, size: int) -> bytes: ...

    def move(self, file: LandingFile, subfolder: str) -> str: ...

    def copy(self, file: LandingFile, subfolder: str) -> str:
        """Copy the file into `subfolder` beside it (never over another file); the copy's key."""
        ...

    def delete(self, key: str) -> None: ...

    def write_text(self, key: str, text: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def url(self, key: str) -> str: ...


def _sorted(files: list[LandingFile]) -> list[LandingFile]:
    """Oldest first, so a later file wins."""
    return sorted(files, key=lambda f: (f.modified, f.key))


def _destination(
    store: LandingStore, file: LandingFile, subfolder: str, reusable: Callable[[str], bool] | None = None
) -> tuple[str, bool]:
    """Where the file goes in `subfolder`: its name, else a dated one; and whether a file already
    there is this file's own copy (`reusable(key)`), which the caller takes as done."""
    folder = posixpath.dirname(file.key)
    target = posixpath.join(folder, subfolder, file.name)
    attempt = 1
    while store.exists(target):  # never overwrite an earlier file of the same name
        if reusable is not None and reusable(target):
            return target, True
        target = posixpath.join(folder, subfolder, _dated_name(file.name, attempt))
        attempt += 1
    return target, False


class LocalLandingStore:
    """A folder on this machine."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.description = f"local folder {root}"
        self.moves_by_copy = False

    def _path(self, key: str) -> Path:
        return self.root / key

    def url(self, key: str) -> str:
        return str(self._path(key))

    def list_pending(self, folder: str) -> list[LandingFile]:
        directory = self._path(folder)
        if not self.root.exists():
            raise LandingError(
                f"the folder {self.root} does not exist: create it or fix the connection's path"
            )
        if not directory.exists():
            return []
        files = []
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file() and is_pending_name(entry.name):
                    stat = entry.stat()
                    files.append(
                        LandingFile(
                            key=posixpath.join(folder, entry.name),
                            name=entry.name,
                            size=stat.st_size,
                            modified=datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc),
                        )
                    )
        return _sorted(files)

    def fetch(self, file: LandingFile, work_dir: Path) -> Path:
        # DuckDB reads the file where it lies: no copy.
        path = self._path(file.key)
        if not path.exists():
            raise FileNotFoundError(file.key)
        return path

    def read_head(self, file: LandingFile, size: int) -> bytes:
        with open(self._path(file.key), "rb") as handle:
            return handle.read(size)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def move(self, file: LandingFile, subfolder: str) -> str:
        return self._place(file, subfolder, os.replace, "move")

    def copy(self, file: LandingFile, subfolder: str) -> str:
        return self._place(file, subfolder, shutil.copyfile, "copy")

    def _place(self, file: LandingFile, subfolder: str, how: Callable[[Path, Path], object], verb: str) -> str:
        """Move or copy (`how`) the file into `subfolder` under a name no other file has; its new key."""
        target, _ = _destination(self, file, subfolder)
        source, destination = self._path(file.key), self._path(target)
        try:
            destination.parent.mkdir(parents=True, exist_ok=True)
            how(source, destination)
        except OSError as exc:
            pending = ": it stays pending;" if verb == "move" else ":"
            then = ", and the next run moves it" if verb == "move" else ""
            raise LandingError(
                f"cannot {verb} {source} to {destination.parent}/ ({exc.strerror}){pending} "
                f"make {destination.parent} a folder this process can write{then}"
            ) from None
        return target

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def write_text(self, key: str, text: str) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


_PERMISSIONS = {
    "cannot list": "s3:ListBucket",
    "cannot download": "s3:GetObject",
    "cannot read": "s3:GetObject",
    "cannot move": "s3:GetObject, s3:PutObject and s3:DeleteObject",
    "cannot write": "s3:PutObject",
}


class S3LandingStore:
    """A bucket prefix on S3 or an S3-compatible store."""

    def __init__(self, client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.description = f"s3://{bucket}/{self.prefix}"
        self.moves_by_copy = True

    def _key(self, key: str) -> str:
        return posixpath.join(self.prefix, key) if self.prefix else key

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, action: str, fn, **kwargs):
        try:
            return fn(**kwargs)
        except Exception as exc:  # botocore raises many kinds; each gets a clear message
            if s3_code(exc) in ("NoSuchKey", "404") and action != "list":
                raise FileNotFoundError(kwargs.get("Key")) from None
            raise self._error(exc, action) from None

    def _error(self, exc: Exception, action: str) -> LandingError:
        """One line: what failed, why, and the fix; never a credential."""
        message, _ = explain_s3_error(
            exc,
            action=action.removeprefix("cannot "),
            target=self.description,
            bucket=self.bucket,
            endpoint=self.client.meta.endpoint_url,
            region=self.client.meta.region_name,
            permission=_PERMISSIONS.get(action, "s3:GetObject and s3:PutObject"),
        )
        return LandingError(message)

    def _list_level(self, folder: str) -> Iterator[dict]:
        prefix = self._key(folder).rstrip("/") + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        try:
            for page in pages:
                yield from page.get("Contents", [])
        except Exception as exc:
            raise self._error(exc, "cannot list") from None

    def list_pending(self, folder: str) -> list[LandingFile]:
        files = []
        for item in self._list_level(folder):
            name = posixpath.basename(item["Key"])
            if is_pending_name(name):
                relative = item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"]
                files.append(LandingFile(relative, name, int(item["Size"]), item["LastModified"]))
        return _sorted(files)

    def fetch(self, file: LandingFile, work_dir: Path) -> Path:
        target = work_dir / file.name
        self._call(
            "cannot download",
            self.client.download_file,
            Bucket=self.bucket,
            Key=self._key(file.key),
            Filename=str(target),
            Config=download_config(file.size),
        )
        return target

    def read_head(self, file: LandingFile, size: int) -> bytes:
        response = self._call(
            "cannot read", self.client.get_object, Bucket=self.bucket, Key=self._key(file.key), Range=f"bytes=0-{size - 1}"
        )
        return response["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if s3_code(exc) in S3_NOT_FOUND:
                return False
            raise self._error(exc, "cannot read") from None

    def move(self, file: LandingFile, subfolder: str) -> str:
        target = self.copy(file, subfolder)
        self.delete(file.key)
        return target

    def copy(self, file: LandingFile, subfolder: str) -> str:
        from boto3.s3.transfer import TransferConfig

        source = {"Bucket": self.bucket, "Key": self._key(file.key)}
        original: dict[str, Any] = {}

        def own_copy(key: str) -> bool:
            # A copy that a killed run left behind (same size and ETag, made since) is this file's: it
            # is reused. Asked only when a file of the name is there, so only then is the original read.
            if not original:
                original.update(self._call("cannot move", self.client.head_object, **source))
            return self._same_object(key, original)

        target, reused = _destination(self, file, subfolder, own_copy)
        if not reused:
            # One server-side CopyObject up to 5 GB (multipart copy only beyond).
            config = TransferConfig(multipart_threshold=COPY_OBJECT_LIMIT, multipart_chunksize=LARGE_PART * 4)
            self._call(
                "cannot move", self.client.copy, CopySource=source, Bucket=self.bucket, Key=self._key(target), Config=config
            )
        return target

    def _same_object(self, key: str, original: dict[str, Any]) -> bool:
        try:
            other = self._call("cannot move", self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        except FileNotFoundError:
            return False
        # Made after the original was uploaded: not an earlier upload of the same content, which is kept.
        # (Within the same second it cannot tell, and the file gets a copy of its own.)
        return (other["ContentLength"], other["ETag"]) == (original["ContentLength"], original["ETag"]) and (
            other["LastModified"] > original["LastModified"]
        )

    def delete(self, key: str) -> None:
        self._call("cannot move", self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def write_text(self, key: str, text: str) -> None:
        self._call(
            "cannot write",
            self.client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=text.encode("utf-8"),
            ContentType="text/csv; charset=utf-8",
        )


def download_config(size: int) -> TransferConfig:
    """Ranged GETs of at least LARGE_PART, one wave of DOWNLOAD_STREAMS for a file of any size.

    Few large ranges are fast on S3, and S3-compatible servers that reread the whole object for
    every range (moto, some gateways) are not punished with dozens of reads.
    """
    from boto3.s3.transfer import TransferConfig

    mib = 1024 * 1024
    per_stream = -(-size // DOWNLOAD_STREAMS)
    part = max(LARGE_PART, -(-per_stream // mib) * mib)
    return TransferConfig(multipart_threshold=LARGE_PART, multipart_chunksize=part, max_concurrency=DOWNLOAD_STREAMS)


def s3_client(connection: S3Connection) -> Any:
    """A boto3 S3 client for a connection, with its connect/read timeouts and bounded retries."""
    import boto3

    from .timeouts import s3_config

    # A session per client: boto3's default session is not safe to share between threads.
    return boto3.session.Session().client(
        "s3",
        region_name=connection.region,
        endpoint_url=connection.endpoint_url,
        aws_access_key_id=connection.access_key_id,
        aws_secret_access_key=connection.secret_access_key.get_secret_value() if connection.secret_access_key else None,
        aws_session_token=connection.session_token.get_secret_value() if connection.session_token else None,
        config=s3_config(connection),
    )


def landing_store(catalog: Catalog, connection: Connection) -> LandingStore:
    if isinstance(connection, LocalConnection):
        return LocalLandingStore(catalog.resolve_path(connection.path))
    if isinstance(connection, S3Connection):
        return S3LandingStore(s3_client(connection), connection.bucket, connection.prefix)
    raise LandingError(f"connection {connection.name!r} ({connection.type}) does not hold inbound files")


"""What a landed file holds, judged from its first bytes: text or a known binary format, gzip or not.

Only the head of a file is looked at here (and, for `.csv.gz`, the whole gzip stream is checked
for completeness while it is hashed), so the large-file path pays for none of it.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..core.landing import CHUNK

GZIP_MAGIC = b"\x1f\x8b"

# (leading bytes, what the file is, what to do instead). The first match wins.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "upload the data as a CSV file instead"),
    (b"\xff\xd8\xff", "a JPEG image", "upload the data as a CSV file instead"),
    (b"GIF87a", "a GIF image", "upload the data as a CSV file instead"),
    (b"GIF89a", "a GIF image", "upload the data as a CSV file instead"),
    (b"%PDF-", "a PDF document", "export the data as CSV from the system that made the PDF"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "a legacy Microsoft Office file (an .xls workbook or similar)",
        "open it in Excel and save it as CSV UTF-8 (File > Save As), then upload the .csv",
    ),
    (b"PAR1", "a Parquet file", "export the data as CSV (e.g. DuckDB: COPY (FROM 'file.parquet') TO 'file.csv')"),
    (b"Obj\x01", "an Avro file", "export the data as CSV"),
    (b"ORC", "an ORC file", "export the data as CSV"),
    (b"SQLite format 3\x00", "a SQLite database", "export the table as CSV"),
    (b"BZh", "bzip2-compressed data", "decompress it, or compress it with gzip and name it .csv.gz"),
    (b"\xfd7zXZ\x00", "xz-compressed data", "decompress it, or compress it with gzip and name it .csv.gz"),
    (b"(\xb5/\xfd", "zstd-compressed data", "decompress it, or compress it with gzip and name it .csv.gz"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract the CSV file from it and upload that"),
    (b"Rar!\x1a\x07", "a RAR archive", "extract the CSV file from it and upload that"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _zip_kind(head: bytes) -> tuple[str, str]:
    """A zip archive: an Office document is one, so the member names tell which it is."""
    if b"xl/" in head:
        return "an Excel workbook (.xlsx)", "open it in Excel and save it as CSV UTF-8 (File > Save As), then upload the .csv"
    if b"opendocument.spreadsheet" in head:
        return "an OpenDocument spreadsheet (.ods)", "save it as CSV (File > Save As > Text CSV), then upload the .csv"
    if b"word/" in head:
        return "a Word document (.docx)", "export the data as CSV instead"
    return "a zip archive", "extract the CSV file from it and upload that (only .csv and .csv.gz are read)"


def binary_kind(head: bytes) -> tuple[str, str] | None:
    """(what the file is, how to fix it) when its first bytes are a known binary format."""
    if head.startswith(_ZIP_MAGIC):
        return _zip_kind(head)
    if head.startswith(GZIP_MAGIC):
        return "gzip-compressed data", "rename it to end in .csv.gz (or upload the uncompressed CSV)"
    for magic, what, fix in _SIGNATURES:
        if head.startswith(magic):
            return what, fix
    return None


def not_text_problem(head: bytes, encoding: str) -> str | None:
    """What the content is, when it is not CSV text in `encoding`, and what to do (to follow the file's name)."""
    known = binary_kind(head)
    if known is not None:
        what, fix = known
        return f"is not CSV text: it is {what}; {fix}"
    utf16_fix = "set `encoding: utf-16` on the integration, or save the file as UTF-8"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None if encoding == "utf-16" else f"is UTF-16 text (it starts with a UTF-16 byte order mark): {utf16_fix}"
    sample = head[:4096]
    if encoding != "utf-16" and b"\x00" in sample:
        if sample[1::2].count(0) > len(sample) // 4 or sample[0::2].count(0) > len(sample) // 4:
            return f"is UTF-16 text without a byte order mark, not {encoding}: {utf16_fix}"
        return "is not CSV text: it holds binary data (NUL bytes); upload the data as a CSV text file"
    return None


class GzipProblem(Exception):
    """A `.csv.gz` file whose gzip data is broken; the message says what and how to fix it."""


def gunzip_head(data: bytes, limit: int) -> tuple[bytes, bool]:
    """The first `limit` decompressed bytes of gzip `data`, and whether that is all of the content."""
    if not data.startswith(GZIP_MAGIC):
        raise GzipProblem("not_gzip")
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = decompressor.decompress(data, limit)
    except zlib.error as exc:
        raise GzipProblem(f"corrupt ({exc})") from None
    return head, decompressor.eof and not decompressor.unconsumed_tail


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    gzip_problem: str | None = None  # why the gzip stream is unusable, if it is


class _GzipCheck:
    """Feeds a gzip stream through zlib in bounded pieces: complete, CRC and length checked."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self.problem: str | None = None

    def feed(self, data: bytes) -> None:
        while self.problem is None:
            try:
                out = self._decompressor.decompress(data, CHUNK)  # bounded: a zip bomb stays harmless
            except zlib.error as exc:
                self.problem = f"corrupt ({exc})"
                return
            data = self._decompressor.unconsumed_tail
            if self._decompressor.eof:
                data = self._decompressor.unused_data + data
                if not data:
                    return
                # Several gzip members one after another are one valid gzip file.
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif not data and len(out) < CHUNK:
                return

    def finish(self) -> str | None:
        if self.problem is None and not self._decompressor.eof:
            self.problem = "truncated"
        return self.problem


def digest_file(path: Path, gzipped: bool) -> FileDigest:
    """The sha256 of the file and, for gzip, a full check of the stream.

    DuckDB reads a truncated gzip file without complaint up to where it ends, so an interrupted
    upload would otherwise be applied as if it were the whole file. zlib and hashlib release the
    GIL, so this runs beside DuckDB's own work.
    """
    digest = hashlib.sha256()
    check = _GzipCheck() if gzipped else None
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            if check is not None:
                check.feed(chunk)
    return FileDigest(digest.hexdigest(), check.finish() if check is not None else None)


def explain_gzip(problem: str, where: str, head: bytes = b"") -> str:
    """One line for a broken `.csv.gz`: what is wrong with it and how to fix it."""
    if problem == "not_gzip":
        known = binary_kind(head)
        if known is not None:
            what, fix = known
            return f"{where} is named .csv.gz but is not gzip data: it is {what}; {fix}"
        return (
            f"{where} is named .csv.gz but is not gzip data (it looks like plain text): "
            "rename it to end in .csv, or compress it with gzip"
        )
    if problem == "truncated":
        return (
            f"{where} is an incomplete gzip file: the compressed data ends early (the upload or the "
            "compression was cut off), so rows are missing; compress the whole CSV again and upload it again"
        )
    return (
        f"{where} is not valid gzip data: the compressed stream is {problem}; "
        "compress the CSV again (gzip users.csv) and upload the new users.csv.gz"
    )

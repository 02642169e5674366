"""Read an operator's labelled pairs from a zip (``POST /calibrate``), refusing hostile archives.

    pairs.csv          header a,b,same; a and b are paths inside the zip, same is 1/0/true/false
    any/path/x.png     the images the CSV names (entries the CSV does not name are never read)

Memory stays bounded whatever the zip claims: the entry count (from the end record, before the
central directory is parsed), each entry's declared size and the declared total are checked
before anything is decompressed, and every read stops one byte
past its limit, so an entry that lies about its size (a zip bomb) costs at most the limit.
Errors are :class:`ArchiveError` carrying the HTTP status and a detail that says what to fix.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from app.config import Settings

CSV_NAME = "pairs.csv"
_TRUE = {"1", "true"}
_FALSE = {"0", "false"}
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ValueError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class PairsArchive:
    images: dict[str, bytes]  # path in the zip -> its bytes, only the ones pairs.csv names
    pairs: list[tuple[str, str, bool]]  # (a, b, same)


def _unsafe(name: str) -> bool:
    parts = re.split(r"[/\\]", name)
    return name.startswith(("/", "\\")) or bool(_DRIVE.match(name)) or ".." in parts


_EOCD = b"PK\x05\x06"  # end of central directory record: 22 bytes + a comment of up to 64 KiB


def _declared_entries(file: BinaryIO) -> int | None:
    """The entry count the zip's end record declares, read before ``ZipFile`` parses (and holds
    in memory) the whole central directory; None if there is no end record."""
    file.seek(0, io.SEEK_END)
    size = file.tell()
    tail_bytes = min(size, 22 + 0xFFFF)
    file.seek(size - tail_bytes)
    tail = file.read(tail_bytes)
    file.seek(0)
    at = tail.rfind(_EOCD)
    if at < 0 or at + 22 > len(tail):
        return None
    (entries,) = struct.unpack_from("<H", tail, at + 10)  # 0xFFFF: zip64, i.e. at least that many
    return entries


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The entry's bytes, or 413 as soon as it passes ``limit`` (whatever its header claims)."""
    try:
        with zf.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ArchiveError(400, f"pairs: entry '{info.filename}' is corrupt: {e}") from e
    except (NotImplementedError, RuntimeError) as e:  # unknown compression, encrypted entry
        raise ArchiveError(400, f"pairs: entry '{info.filename}' cannot be read: {e}") from e
    if len(data) > limit:
        raise ArchiveError(
            413, f"pairs: entry '{info.filename}' unpacks to over {limit} bytes (the limit)"
        )
    return data


def _parse_same(value: str, line: int) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ArchiveError(
        422, f"pairs.csv line {line}: same must be 1, 0, true or false; got {value!r}"
    )


def read_pairs(file: BinaryIO, settings: Settings) -> PairsArchive:
    """Validate and read the archive in ``file`` (seekable); ArchiveError on anything wrong."""
    declared = _declared_entries(file)
    if declared is not None and declared > settings.max_calibrate_entries:
        raise ArchiveError(
            413, f"pairs: the zip has {declared} entries; at most {settings.max_calibrate_entries}"
        )
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ArchiveError(400, "pairs: not a zip archive; zip pairs.csv and the images") from e
    with zf:
        infos = zf.infolist()
        if len(infos) > settings.max_calibrate_entries:
            raise ArchiveError(
                413,
                f"pairs: the zip has {len(infos)} entries; at most "
                f"{settings.max_calibrate_entries}",
            )
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if _unsafe(info.filename):
                raise ArchiveError(
                    422,
                    f"pairs: unsafe path '{info.filename[:200]}' in the zip (absolute or with "
                    "'..'); use paths relative to the zip's root",
                )
            if info.is_dir():
                continue
            if info.file_size > settings.max_upload_bytes and info.filename != CSV_NAME:
                raise ArchiveError(
                    413,
                    f"pairs: entry '{info.filename}' is {info.file_size} bytes unpacked; each "
                    f"image may be at most {settings.max_upload_bytes}",
                )
            by_name[info.filename] = info
        unpacked = sum(i.file_size for i in by_name.values())
        if unpacked > settings.max_calibrate_total_bytes:
            raise ArchiveError(
                413,
                f"pairs: the zip unpacks to {unpacked} bytes; at most "
                f"{settings.max_calibrate_total_bytes}",
            )
        if CSV_NAME not in by_name:
            raise ArchiveError(422, f"pairs: no {CSV_NAME} at the root of the zip")
        pairs = _read_csv(_read_entry(zf, by_name[CSV_NAME], settings.max_upload_bytes), settings)

        missing = sorted({p for a, b, _ in pairs for p in (a, b) if p not in by_name})
        if missing:
            shown = ", ".join(f"'{m}'" for m in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ArchiveError(422, f"pairs.csv names files that are not in the zip: {shown}{more}")
        n_same = sum(s for _, _, s in pairs)
        n_diff = len(pairs) - n_same
        least = settings.min_calibrate_pairs_per_label
        if min(n_same, n_diff) < least:
            raise ArchiveError(
                422,
                f"pairs.csv has {n_same} same and {n_diff} different pairs; calibrating needs "
                f"at least {least} of each",
            )
        images: dict[str, bytes] = {}
        total = 0
        for name in dict.fromkeys(p for a, b, _ in pairs for p in (a, b)):
            data = _read_entry(zf, by_name[name], settings.max_upload_bytes)
            total += len(data)
            if total > settings.max_calibrate_total_bytes:
                raise ArchiveError(
                    413,
                    f"pairs: the images unpack to over {settings.max_calibrate_total_bytes} bytes",
                )
            images[name] = data
    return PairsArchive(images=images, pairs=pairs)


def _read_csv(raw: bytes, settings: Settings) -> list[tuple[str, str, bool]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ArchiveError(422, f"{CSV_NAME} is not UTF-8 text") from e
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if header != ["a", "b", "same"]:
        raise ArchiveError(
            422, f"{CSV_NAME}: the header must be a,b,same; got {','.join(header)!r}"
        )
    pairs: list[tuple[str, str, bool]] = []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != 3:
                raise ArchiveError(422, f"{CSV_NAME} line {line}: want 3 columns a,b,same")
            if len(pairs) >= settings.max_calibrate_pairs:
                raise ArchiveError(
                    413, f"{CSV_NAME}: more than {settings.max_calibrate_pairs} pairs (the limit)"
                )
            a, b = (cell.strip().removeprefix("./") for cell in row[:2])
            pairs.append((a, b, _parse_same(row[2], line)))
    except csv.Error as e:
        raise ArchiveError(422, f"{CSV_NAME}: not valid CSV: {e}") from e
    return pairs

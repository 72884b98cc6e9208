"""Where a contact sync reads from: a JSON Lines or CSV file, or records given inline.

A file is read chunk by chunk from a cursor (its byte offset), so a chunk costs the
same at the start and at the end of a large file and a retried chunk reads exactly the
same records. Inline records use their index as the cursor. Files are read only below
the worker's source roots (``--source-root``): a caller names a file, never an arbitrary
path on the worker's host.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regions.contacts import InvalidContact


class InvalidSource(ValueError):
    """The source cannot be read as given (missing file, outside the source roots, an
    unknown format); retrying does not help."""


@dataclass(frozen=True)
class Chunk:
    # (position in the source, the record or the InvalidContact it could not be read as)
    records: list[tuple[int, Any]]
    next_cursor: int
    done: bool


def _file(spec: Mapping[str, Any], roots: Sequence[Path]) -> Path:
    raw = spec.get("path")
    if not isinstance(raw, str) or not raw:
        raise InvalidSource("source.path: a file name is required")
    if not roots:
        raise InvalidSource("source.path: this worker reads no files (no --source-root)")
    for root in roots:
        candidate = (root / raw).resolve()
        if candidate.is_relative_to(root.resolve()) and candidate.is_file():
            return candidate
    names = ", ".join(str(r) for r in roots)
    raise InvalidSource(f"source.path: {raw!r} is not a file below the source roots ({names})")


def _format(path: Path, spec: Mapping[str, Any]) -> str:
    fmt = spec.get("format") or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    if fmt not in ("csv", "jsonl"):
        raise InvalidSource(f"source.format: {fmt!r} is not csv or jsonl")
    return str(fmt)


def _inline(spec: Mapping[str, Any]) -> list[Any] | None:
    records = spec.get("records")
    if records is None:
        return None
    if not isinstance(records, list):
        raise InvalidSource("source.records: not a list")
    return records


def check(spec: Any) -> Mapping[str, Any]:
    if not isinstance(spec, Mapping) or ("path" in spec) == ("records" in spec):
        raise InvalidSource("source: give either {'path': FILE} or {'records': [...]}")
    return spec


def count(spec: Any, roots: Sequence[Path]) -> int:
    """How many records the source holds (blank lines are not records)."""
    spec = check(spec)
    inline = _inline(spec)
    if inline is not None:
        return len(inline)
    path = _file(spec, roots)
    total = 0
    with path.open("rb") as f:
        if _format(path, spec) == "csv":
            reader = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
            next(reader, None)
            total = sum(1 for row in reader if any(cell.strip() for cell in row))
        else:
            total = sum(1 for line in f if line.strip())
    return total


def read(spec: Any, roots: Sequence[Path], cursor: int, size: int) -> Chunk:
    """Up to ``size`` records from ``cursor`` on."""
    spec = check(spec)
    inline = _inline(spec)
    if inline is not None:
        end = min(len(inline), cursor + size)
        return Chunk(
            [(i, inline[i]) for i in range(cursor, end)], next_cursor=end, done=end >= len(inline)
        )
    path = _file(spec, roots)
    with path.open("rb") as f:
        if _format(path, spec) == "csv":
            return _read_csv(f, cursor, size)
        return _read_jsonl(f, cursor, size)


def _read_jsonl(f: Any, cursor: int, size: int) -> Chunk:
    f.seek(cursor)
    out: list[tuple[int, Any]] = []
    offset = cursor
    while len(out) < size:
        line = f.readline()
        if not line:
            return Chunk(out, next_cursor=offset, done=True)
        position = offset  # a record's position is its byte offset: stable across chunks
        offset += len(line)
        if not line.strip():
            continue
        try:
            out.append((position, json.loads(line)))
        except (ValueError, UnicodeDecodeError):
            out.append((position, InvalidContact("record: not a JSON object")))
    return Chunk(out, next_cursor=offset, done=not f.read(1))


class _CountingLines:
    """Lines of a binary file, decoded, counting the bytes handed out (csv.reader pulls
    lines lazily, so after each row the count is the offset just past it)."""

    def __init__(self, f: Any) -> None:
        self.f = f
        self.offset: int = f.tell()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line: bytes = self.f.readline()
        if not line:
            raise StopIteration
        self.offset += len(line)
        return line.decode("utf-8", errors="replace")


def _read_csv(f: Any, cursor: int, size: int) -> Chunk:
    header_lines = _CountingLines(f)
    header = next(csv.reader(header_lines), None)
    if header is None:
        return Chunk([], next_cursor=0, done=True)
    names = [h.strip() for h in header]
    lines = _CountingLines(f)
    if cursor > header_lines.offset:
        f.seek(cursor)
        lines.offset = cursor
    reader = csv.reader(lines)
    out: list[tuple[int, Any]] = []
    while len(out) < size:
        position = lines.offset
        row = next(reader, None)
        if row is None:
            return Chunk(out, next_cursor=lines.offset, done=True)
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            out.append((position, InvalidContact("record: wrong number of CSV columns")))
        else:
            out.append((position, dict(zip(names, row, strict=True))))
    done = not f.read(1)
    return Chunk(out, next_cursor=lines.offset, done=done)

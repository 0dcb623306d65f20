"""Reading CRI-format container logs the way `kubectl logs` asks for them. Pure but for file reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    timestamps: bool = False
    limit_bytes: int | None = None
    since_seconds: int | None = None
    since_time: str | None = None
    previous: bool = False


@dataclass(frozen=True)
class Entry:
    timestamp: str
    stream: str
    full: bool
    content: bytes


def parse_line(line: bytes) -> Entry | None:
    """`<RFC3339Nano> <stream> <F|P> <content>`; anything else is skipped."""
    line = line.rstrip(b"\n")
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        return None
    content = parts[3] if len(parts) == 4 else b""
    return Entry(parts[0].decode(), parts[1].decode(), parts[2] == b"F", content)


def _epoch(ts: str) -> float:
    base, _, frac = ts.rstrip("Z").partition(".")
    seconds = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return seconds + (float("0." + frac) if frac else 0.0)


def since_epoch(opts: LogOptions, now: float) -> float | None:
    if opts.since_seconds is not None:
        return now - opts.since_seconds
    if opts.since_time:
        return _epoch(opts.since_time)
    return None


def render(entry: Entry, timestamps: bool) -> bytes:
    prefix = f"{entry.timestamp} ".encode() if timestamps else b""
    return prefix + entry.content + (b"\n" if entry.full else b"")


def initial_entries(data: bytes, opts: LogOptions, now: float) -> list[Entry]:
    """The entries of existing log data that the options select (since*, tailLines)."""
    entries = [e for e in (parse_line(line) for line in data.splitlines()) if e is not None]
    since = since_epoch(opts, now)
    if since is not None:
        entries = [e for e in entries if _epoch(e.timestamp) >= since]
    if opts.tail_lines is not None:
        if opts.tail_lines <= 0:
            return []
        # Count whole lines: a run of partial entries belongs to the full one that ends it.
        count = 0
        start = len(entries)
        for i in range(len(entries) - 1, -1, -1):
            if entries[i].full:
                count += 1
                if count > opts.tail_lines:
                    break
            start = i
        entries = entries[start:]
    return entries


class Limiter:
    """Applies limitBytes over a whole response."""

    def __init__(self, limit: int | None) -> None:
        self.left = limit

    def take(self, chunk: bytes) -> bytes:
        if self.left is None:
            return chunk
        out = chunk[: self.left]
        self.left -= len(out)
        return out

    @property
    def exhausted(self) -> bool:
        return self.left is not None and self.left <= 0


def complete_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Split file data into complete lines and the unterminated rest (still being written)."""
    *lines, rest = buffer.split(b"\n")
    return lines, rest


def iter_rendered(entries: list[Entry], timestamps: bool) -> Iterator[bytes]:
    for e in entries:
        yield render(e, timestamps)

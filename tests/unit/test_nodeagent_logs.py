from __future__ import annotations

from localcluster.nodeagent.logs import Limiter, LogOptions, initial_entries, parse_line, render

DATA = (
    b"2026-01-01T00:00:00.000000001Z stdout F one\n"
    b"2026-01-01T00:00:10.000000000Z stderr F two\n"
    b"2026-01-01T00:00:20.000000000Z stdout P thr\n"
    b"2026-01-01T00:00:20.500000000Z stdout F ee\n"
    b"2026-01-01T00:00:30.000000000Z stdout F \n"
)
T0 = 1767225600.0  # 2026-01-01T00:00:00Z


def text(opts: LogOptions, now: float = T0 + 60) -> bytes:
    return b"".join(render(e, opts.timestamps) for e in initial_entries(DATA, opts, now))


def test_parse_line() -> None:
    e = parse_line(b"2026-01-01T00:00:00Z stderr P partial content\n")
    assert e is not None
    assert (e.timestamp, e.stream, e.full, e.content) == (
        "2026-01-01T00:00:00Z",
        "stderr",
        False,
        b"partial content",
    )
    assert parse_line(b"garbage") is None


def test_all_lines_join_partials() -> None:
    assert text(LogOptions()) == b"one\ntwo\nthree\n\n"


def test_tail_counts_whole_lines() -> None:
    assert text(LogOptions(tail_lines=2)) == b"three\n\n"
    assert text(LogOptions(tail_lines=0)) == b""
    assert text(LogOptions(tail_lines=100)) == b"one\ntwo\nthree\n\n"


def test_timestamps_prefix_each_entry() -> None:
    assert text(LogOptions(timestamps=True, tail_lines=1)) == b"2026-01-01T00:00:30.000000000Z \n"
    assert text(LogOptions(timestamps=True)).startswith(b"2026-01-01T00:00:00.000000001Z one\n")


def test_since_seconds_and_since_time() -> None:
    assert text(LogOptions(since_seconds=45), now=T0 + 60) == b"three\n\n"
    assert text(LogOptions(since_time="2026-01-01T00:00:10Z")) == b"two\nthree\n\n"


def test_limiter() -> None:
    lim = Limiter(5)
    assert lim.take(b"abc") == b"abc"
    assert lim.take(b"defg") == b"de"
    assert lim.exhausted
    assert Limiter(None).take(b"xyz") == b"xyz"

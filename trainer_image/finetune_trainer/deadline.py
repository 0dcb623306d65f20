"""A time limit on Python code that has no timeout of its own (a model's Jinja chat template).

SIGALRM interrupts the main thread between bytecodes, so a template that loops for ever ends with
`DeadlineExceeded` where it is. Off the main thread (where signals cannot be handled) the limit is not
applied; the validation pod's own deadline still bounds the whole run.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class DeadlineExceeded(Exception):
    pass


class Deadlines:
    """Arms one timer per call of `limit`; the handler is installed once for the whole block."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.active = threading.current_thread() is threading.main_thread() and seconds > 0

    @contextmanager
    def limit(self) -> Iterator[None]:
        if not self.active:
            yield
            return
        signal.setitimer(signal.ITIMER_REAL, self.seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


@contextmanager
def deadlines(seconds: float) -> Iterator[Deadlines]:
    d = Deadlines(seconds)
    if not d.active:
        yield d
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise DeadlineExceeded(f"took more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        yield d
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

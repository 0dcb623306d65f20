"""A memory budget on Python code that allocates without bound (a model's Jinja chat template).

Jinja's sandbox limits `range()` but not `'x' * 10**10` or a loop that grows a list, so a hostile
template would otherwise end in the kernel's OOM kill of the whole validation pod, with no line and a
misleading "raise the memory" message. For the duration of the block the process's data limit
(RLIMIT_DATA: heap and anonymous mappings) is set to what it uses now plus the budget; an allocation
past it fails as Python's MemoryError, which ends here as `MemoryBudgetExceeded`, and the previous
limit is restored on the way out.

Only pure-Python code belongs inside: native libraries that abort on a failed allocation (the Rust
tokenizers) must run outside the block, which is why only rendering, not tokenizing, is budgeted.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MIB = 1024**2


class MemoryBudgetExceeded(Exception):
    pass


def data_bytes(status: Path = Path("/proc/self/status")) -> int | None:
    """The process's data segment + anonymous mappings (VmData), what RLIMIT_DATA counts."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@contextmanager
def memory_budget(budget: int) -> Iterator[None]:
    """Allow the block `budget` more bytes than the process uses now (no limit where /proc is missing)."""
    used = data_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if used is None or budget <= 0:
        yield
        return
    limit = used + budget
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY:
        limit = min(limit, soft)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    except MemoryError:
        raise MemoryBudgetExceeded(f"needed more than {budget // MIB} MiB") from None
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

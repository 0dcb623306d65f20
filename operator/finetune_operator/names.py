"""Names of a FineTuneJob's children, as pure functions.

Every child name must be a DNS label (at most 63 characters); the trainer Job's name also becomes the
prefix of its indexed pods' hostnames (<job>-<index>) and of a per-attempt Service, so it must be an
RFC 1035 label with room for "-<index>". The CRD limits metadata.name to MAX_NAME_LENGTH = 40:

    <name>-validate-<8 hex>   40 + 10 + 8           = 58  (retries: -r<N>, N < 100: 62)
    <name>-train-a<N>         40 + 8 + digits(N)     <= 60 for N < 10**12 (3 left for "-<index>", nodes <= 64)
    <name>-config             40 + 7                 = 47

The 5 to 15 characters to spare leave room for a future child without a breaking change.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Final

MAX_NAME_LENGTH: Final = 40
DNS_LABEL_MAX: Final = 63
# A trainer Job name leaves room for "-<index>" (index < 64) in its indexed pods' hostnames.
TRAINER_JOB_NAME_MAX: Final = DNS_LABEL_MAX - 3
SPEC_HASH_LENGTH: Final = 8
_RFC1035_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check_job_name(name: str) -> None:
    """Raise ValueError unless `name` is a FineTuneJob name the CRD accepts."""
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"FineTuneJob name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    if not _RFC1035_LABEL.match(name):
        raise ValueError(f"FineTuneJob name {name!r} is not an RFC 1035 label")


def spec_hash(spec: Mapping[str, Any]) -> str:
    """A short, stable hash of a spec: a changed spec gets a new validation pod, an unchanged one never."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:SPEC_HASH_LENGTH]


def _checked(name: str, limit: int = DNS_LABEL_MAX) -> str:
    if len(name) > limit:
        raise ValueError(f"child name {name!r} is longer than {limit} characters")
    return name


# Tries of one validation (the first and its retries after transient failures).
MAX_VALIDATION_TRIES: Final = 100


def validation_pod_name(job_name: str, hash_: str, try_: int = 0) -> str:
    """The CPU-only validation pod: <name>-validate-<hash>, and <name>-validate-<hash>-r<N> for retry N."""
    check_job_name(job_name)
    if not re.fullmatch(rf"[0-9a-f]{{{SPEC_HASH_LENGTH}}}", hash_):
        raise ValueError(f"hash must be {SPEC_HASH_LENGTH} lowercase hex digits (spec_hash), not {hash_!r}")
    if not 0 <= try_ < MAX_VALIDATION_TRIES:
        raise ValueError(f"validation try must be 0-{MAX_VALIDATION_TRIES - 1}, not {try_}")
    return _checked(f"{job_name}-validate-{hash_}" + (f"-r{try_}" if try_ else ""))


def validation_try(pod_name: str, job_name: str, hash_: str) -> int | None:
    """Which try of this validation `pod_name` is; None for another job's or another spec's pod."""
    base = f"{job_name}-validate-{hash_}"
    if pod_name == base:
        return 0
    rest = pod_name.removeprefix(base + "-r")
    if rest != pod_name and rest.isdigit() and not rest.startswith("0"):
        return int(rest)
    return None


def trainer_job_name(job_name: str, attempt: int) -> str:
    """The batch/v1 Job of one attempt (1, 2, ...): <name>-train-a<attempt>. One name per attempt makes
    creation idempotent: a restarted operator gets AlreadyExists, never a second Job."""
    check_job_name(job_name)
    if attempt < 1:
        raise ValueError(f"attempt numbers start at 1, not {attempt}")
    return _checked(f"{job_name}-train-a{attempt}", TRAINER_JOB_NAME_MAX)


def config_map_name(job_name: str) -> str:
    """The ConfigMap with the trainer's config.json: <name>-config. One per job, since the parts of the
    spec it renders are immutable; the trainer finds the checkpoint to resume from in output.uri."""
    check_job_name(job_name)
    return _checked(f"{job_name}-config")

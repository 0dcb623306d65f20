"""One output prefix, one job: the claim marker `owner.json` under output.uri.

Validation claims the prefix for the job (namespace, name, UID). A prefix claimed by another job, or
holding a published adapter that is not this job's, is refused with the owner named, unless the spec
says `output.overwrite: true`. A job recreated under the same name is a new UID: it may take over its
predecessor's claim (nothing was published), but it never resumes the predecessor's checkpoints,
which carry the UID that wrote them (`checkpoints.py`).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Final

from finetune_contract.config import TrainerConfig
from finetune_contract.outcomes import FailureReason
from finetune_contract.spec import TrainingSpec
from finetune_contract.uris import S3Uri

from .exitcodes import InvalidInputError
from .s3io import PreconditionFailedError

OWNER_FILE: Final = "owner.json"
# Where a finished job's weights are: a prefix holding either is published output.
PUBLISHED: Final = ("adapter/", "model/")
# Conditional writes lost in a row before the claim gives up (each loss is another job's write).
CLAIM_ATTEMPTS: Final = 5


def identity(cfg: TrainerConfig) -> dict[str, str]:
    return {"namespace": cfg.job.namespace, "name": cfg.job.name, "uid": cfg.job.uid}


def run_owner(cfg: TrainerConfig) -> dict[str, str]:
    """What checkpoints, best weights and cached reports of this run carry, and are checked for."""
    return {"jobUID": cfg.job.uid, "configHash": config_hash(cfg)}


def config_hash(cfg: TrainerConfig) -> str:
    """A hash of what training reads (the spec's training part): a checkpoint resumes only a run of it."""
    body = cfg.model_dump(mode="json", by_alias=True, include=set(TrainingSpec.model_fields))
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _owner_text(owner: dict[str, Any]) -> str:
    return f"FineTuneJob {owner.get('namespace')}/{owner.get('name')} (uid {owner.get('uid')})"


def check_and_claim(s3: Any, cfg: TrainerConfig) -> str | None:
    """Claim the output prefix; the problem (for an InvalidOutput issue) when it is another job's.

    The claim is a conditional write: created only where no claim exists, replaced only over the claim
    that was read. Two jobs validating at once cannot both take one prefix: the loser reads again and
    is refused by the winner's claim (or, with overwrite, takes it over knowingly)."""
    prefix = S3Uri.parse(cfg.output_prefix)
    marker = prefix.join(OWNER_FILE)
    me = identity(cfg)
    for _ in range(CLAIM_ATTEMPTS):
        owner, etag = _read(s3, marker)
        if owner is not None and owner.get("uid") == me["uid"]:
            return None
        problem = _refusal(s3, cfg, prefix, me, owner)
        if problem is not None:
            return problem
        claim: dict[str, Any] = {**me, "claimedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if owner is not None:
            claim["previousOwner"] = {k: owner.get(k) for k in ("namespace", "name", "uid")}
        try:
            s3.put_bytes(
                marker,
                json.dumps(claim).encode(),
                "application/json",
                if_none_match=etag is None,
                if_match=etag,
            )
        except PreconditionFailedError:
            continue  # another job wrote a claim between the read and the write
        return None
    return (
        f"output.uri {cfg.output.uri} is being claimed by other jobs at the same time ({CLAIM_ATTEMPTS} "
        "tries); give each job its own output.uri"
    )


def verify_claim(s3: Any, cfg: TrainerConfig) -> None:
    """Before publishing: the prefix is still this job's. A job that took it over meanwhile
    (output.overwrite) owns what is published there; this one stops without writing over it."""
    owner, _ = _read(s3, S3Uri.parse(cfg.output_prefix).join(OWNER_FILE))
    if owner is not None and owner.get("uid") != cfg.job.uid:
        raise InvalidInputError(
            f"output.uri {cfg.output.uri} was taken over by {_owner_text(owner)} while this job trained; "
            "this job's result is not published there. Rerun it with its own output.uri",
            reason=FailureReason.INVALID_OUTPUT,
        )


def _refusal(
    s3: Any, cfg: TrainerConfig, prefix: S3Uri, me: dict[str, str], owner: dict[str, Any] | None
) -> str | None:
    if cfg.output.overwrite:
        return None
    if owner is not None and (owner.get("namespace"), owner.get("name")) != (me["namespace"], me["name"]):
        return (
            f"output.uri {cfg.output.uri} belongs to {_owner_text(owner)}; choose another output.uri, or "
            "set output.overwrite: true to take it over (its checkpoints are not resumed, its adapter is "
            "replaced)"
        )
    published = [p for p in PUBLISHED if s3.list_keys(prefix.join(p))]
    if published:
        whose = f" of {_owner_text(owner)}" if owner is not None else ""
        return (
            f"output.uri {cfg.output.uri} already holds a published {published[0].rstrip('/')}{whose}; "
            "choose another output.uri, or set output.overwrite: true to replace it"
        )
    return None


def _read(s3: Any, uri: S3Uri) -> tuple[dict[str, Any] | None, str | None]:
    """The claim at uri and its ETag; (None, None) where there is none."""
    try:
        body, etag = s3.get_with_etag(uri)
    except InvalidInputError:
        return None, None  # no claim yet
    try:
        value = json.loads(body)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        return {"namespace": "?", "name": "?", "uid": "unreadable owner.json"}, etag
    return value, etag

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
from finetune_contract.spec import TrainingSpec
from finetune_contract.uris import S3Uri

from .exitcodes import InvalidInputError

OWNER_FILE: Final = "owner.json"
# Where a finished job's weights are: a prefix holding either is published output.
PUBLISHED: Final = ("adapter/", "model/")


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
    """Claim the output prefix; the problem (for an InvalidOutput issue) when it is another job's."""
    prefix = S3Uri.parse(cfg.output_prefix)
    marker = prefix.join(OWNER_FILE)
    me = identity(cfg)
    owner = _read(s3, marker)
    if owner is not None and owner.get("uid") == me["uid"]:
        return None
    if not cfg.output.overwrite:
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
    claim: dict[str, Any] = {**me, "claimedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if owner is not None:
        claim["previousOwner"] = {k: owner.get(k) for k in ("namespace", "name", "uid")}
    s3.put_bytes(marker, json.dumps(claim).encode(), "application/json")
    return None


def _read(s3: Any, uri: S3Uri) -> dict[str, Any] | None:
    try:
        value = json.loads(s3.get_bytes(uri))
    except InvalidInputError:
        return None  # no claim yet
    except ValueError:
        return {"namespace": "?", "name": "?", "uid": "unreadable owner.json"}
    return value if isinstance(value, dict) else None

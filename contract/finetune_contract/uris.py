"""The URIs of the API: their patterns (the CRD's CEL rules use the same strings) and their parsers.

    s3://<bucket>/<key-or-prefix>              datasets, outputs, base models in S3
    pvc://<claim>/<path>                       a base model on a PersistentVolumeClaim (mounted read-only)
    hf://<org>/<name>[@<revision>][/<f>.gguf]  a base model from a Hugging Face Hub (or an on-prem mirror)

Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

BUCKET: Final = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
S3_PREFIX_OR_KEY: Final = rf"^s3://{BUCKET}/\S+$"
S3_OBJECT: Final = rf"^s3://{BUCKET}/\S*[^/\s]$"
S3_OUTPUT_PREFIX: Final = rf"^s3://{BUCKET}/\S*[^/\s]/?$"
PVC_URI: Final = r"^pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(/\S*)?$"
# A Hub name: letters, digits, "-", "_", "."; no "--" or ".." and no "-" or "." at either end. A revision
# is a branch, tag or commit without "/", or a pull request ref (refs/pr/<N>): the same split as
# huggingface_hub's own hf:// URIs, so "@main/model.gguf" is revision main, file model.gguf. A path in the
# repository has no empty, "." or hidden segments ("/" is never followed by "/" or ".").
HF_NAME: Final = r"[A-Za-z0-9](?:[-._]?[A-Za-z0-9_]){0,95}"
HF_REVISION: Final = r"refs/pr/[0-9]{1,10}|[-A-Za-z0-9_.]{1,255}"
HF_FILE: Final = r"[-A-Za-z0-9_](?:[-A-Za-z0-9_.]|/[-A-Za-z0-9_])*\.gguf"
HF_URI: Final = rf"^hf://{HF_NAME}/{HF_NAME}(@({HF_REVISION}))?(/{HF_FILE})?$"
_HF_URI: Final = re.compile(rf"hf://({HF_NAME})/({HF_NAME})(?:@({HF_REVISION}))?(?:/({HF_FILE}))?")
_PVC_URI: Final = re.compile(r"pvc://([a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?)(/.*)?")

# Characters that make a URI a pattern or a URL with a query instead of one object or prefix.
URI_WILDCARDS: Final = r"[*?#\[\]{}]"
EMPTY_SEGMENT: Final = r"^[a-z0-9]+://.*//"
# Files that are not JSONL; a model file or a config is not a model directory; an output is a prefix.
NOT_JSONL: Final = (
    r"(?i)\.(csv|tsv|parquet|arrow|feather|xlsx|xls|avro|orc|pkl|pickle|npy|npz|safetensors|gguf"
    r"|zip|gz|tgz|tar|bz2|xz|zst|7z)$"
)
MODEL_FILE: Final = r"(?i)\.(safetensors|bin|pt|pth|ckpt|json|onnx|h5|msgpack|zip|gz|tgz|tar|bz2|xz|zst|7z)$"
OUTPUT_FILE: Final = r"(?i)\.(safetensors|bin|gguf|pt|pth|ckpt|onnx|json|jsonl|csv|parquet|zip|gz|tgz|tar)$"

HF_SCHEME: Final = "hf://"
HF_DEFAULT_REVISION: Final = "main"
# Where the operator mounts the claim of a pvc:// base model (read-only) in the validation and trainer
# pods; the trainer reads the model at <this>/<path>.
PVC_MOUNT_PATH: Final = "/mnt/base-model"


@dataclass(frozen=True)
class HfUri:
    repo_id: str
    revision: str | None = None  # None: the default branch, main
    filename: str | None = None  # one .gguf file in the repository

    @property
    def ref(self) -> str:
        return self.revision or HF_DEFAULT_REVISION

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        file = f"/{self.filename}" if self.filename else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}{file}"


def parse_hf_uri(uri: str) -> HfUri:
    """`hf://<org>/<name>[@<revision>][/<file>.gguf]` -> HfUri; ValueError saying what is wrong."""
    m = _HF_URI.fullmatch(uri)
    if m is None or ".." in uri:
        raise ValueError(
            f"baseModel.uri {uri!r} must be hf://<org>/<name>[@<revision>][/<file>.gguf]: names of letters, "
            "digits, '-', '_' and '.' (no '--', no '-' or '.' at either end), a revision that is a branch, tag "
            "or commit hash without '/' (or refs/pr/<N>), and after it at most one lowercase .gguf file"
        )
    org, name, revision, filename = m.groups()
    return HfUri(f"{org}/{name}", revision, filename)


def parse_pvc_uri(uri: str) -> tuple[str, str]:
    """`pvc://<claim>/<path>` -> (claim, path inside the claim; "" for its root)."""
    m = _PVC_URI.fullmatch(uri)
    if m is None:
        raise ValueError(
            f"baseModel.uri {uri!r} must be pvc://<claim>/<path> with the claim's name a DNS label "
            "(lowercase letters, digits and '-')"
        )
    rest = (m.group(2) or "/")[1:].removesuffix("/")
    parts = rest.split("/") if rest else []
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"baseModel.uri {uri!r}: the path must not contain empty, '.' or '..' segments")
    return m.group(1), "/".join(parts)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        """`s3://<bucket>/<key>`; ValueError for anything else."""
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri!r} is not an s3:// URI")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"{uri!r} has no bucket name")
        return cls(bucket, key)

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            key = (key.rstrip("/") + "/" + part.lstrip("/")) if key else part.lstrip("/")
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

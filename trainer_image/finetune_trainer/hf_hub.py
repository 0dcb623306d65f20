"""Base models from a Hugging Face Hub: `hf://<org>/<name>[@<revision>][/<file>.gguf]`.

The Hub is the only thing the trainer ever fetches over the network besides S3, and only for an
`hf://` base model: the operator lifts `HF_HUB_OFFLINE` for those jobs alone (a pod that is still
offline refuses the job), the download is the first thing the trainer does with the Hub, and
huggingface_hub's offline switch is set again after each call here, so tokenizer, model loading,
training and evaluation run offline from the local copy. `HF_ENDPOINT` points it at an on-prem
mirror or proxy (what air-gapped sites use); `HF_TOKEN` (the Secret of `baseModel.tokenSecretRef`)
authenticates when set, and no stored token is ever used otherwise.

What is downloaded (`huggingface_hub.snapshot_download` into the scratch dir, nothing else):

- a repository: its top-level config, tokenizer and chat-template files (`*.json`, `*.txt`,
  `*.model`, `*.jinja`, `additional_chat_templates/*.jinja`) and the safetensors weights the model
  loads (`model.safetensors`, or the shards `model.safetensors.index.json` lists; never a second
  copy such as `consolidated.safetensors`, nor subfolders like `original/` or `onnx/`). A
  repository with only pickle weights (`*.bin`, `*.pt`, ...) is refused: safetensors only.
- `/<file>.gguf` after the repository (and revision) names one GGUF file: only that file.

Validate-only mode downloads the small files and reads each safetensors header with a ranged GET,
never the weights. Errors: repository, revision or file not found, gated, 401/403 -> InvalidInput
(exit 42, naming the repository and what to change); connection errors, timeouts, 408/429/5xx ->
retried, then TransientIO (exit 75).

The URI parser is the contract's (`finetune_contract.uris.parse_hf_uri`): the operator checks the same
syntax without importing this module.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from finetune_contract.outcomes import FailureReason
from finetune_contract.uris import HfUri, parse_hf_uri

from .exitcodes import InvalidModelError, TransientIOError
from .local_model import LocalModel
from .safepaths import escapes

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_ENDPOINT: Final = "https://huggingface.co"
# The files a transformers model needs besides its weights: config, generation config, tokenizer
# (tokenizer.json, vocab.txt, merges.txt, SentencePiece *.model) and chat template.
_SMALL_SUFFIXES: Final = (".json", ".txt", ".model", ".jinja")
_EXTRA_TEMPLATES: Final = "additional_chat_templates/"
_PICKLE_SUFFIXES: Final = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAFETENSORS_SINGLE: Final = "model.safetensors"
SAFETENSORS_INDEX: Final = "model.safetensors.index.json"


# --- file selection (pure) -------------------------------------------------------------------------


def small_files(src: HfUri, names: list[str]) -> list[str]:
    """The config, tokenizer and template files to download; InvalidInputError when the repository
    is not a transformers model with safetensors weights."""
    top = [n for n in names if "/" not in n]
    where = f"{src.repo_id} at revision {src.ref}"
    has_weights = any(n.endswith(".safetensors") for n in top)
    if not has_weights:
        pickles = sorted(n for n in top if n.endswith(_PICKLE_SUFFIXES))
        ggufs = sorted(n for n in names if n.endswith(".gguf"))
        if pickles:
            raise InvalidModelError(
                f"baseModel.uri {src}: {where} has only pickle weights ({', '.join(pickles[:3])}), which can run "
                "code when loaded and are refused; use a revision with .safetensors weights (the Hub's "
                "conversion bot often offers one as a pull request: @refs/pr/<N>) or convert the model"
            )
        if ggufs:
            raise InvalidModelError(
                f"baseModel.uri {src}: {where} has no .safetensors weights, only GGUF files; name one of them: "
                f"hf://{src.repo_id}@{src.ref}/{ggufs[0]}"
            )
    if "config.json" not in top:
        raise InvalidModelError(
            f"baseModel.uri {src}: {where} has no config.json, so it is not a transformers model repository; "
            "choose the repository of the model itself, not of an adapter"
        )
    if not has_weights:
        raise InvalidModelError(f"baseModel.uri {src}: {where} has no .safetensors weights")
    return sorted(
        n
        for n in names
        if ("/" not in n and n.endswith(_SMALL_SUFFIXES))
        or (n.startswith(_EXTRA_TEMPLATES) and n.count("/") == 1 and n.endswith(".jinja"))
    )


def weight_files(src: HfUri, names: list[str], index: dict[str, Any] | None) -> list[str]:
    """The safetensors files transformers loads: model.safetensors, or the shards of the index."""
    where = f"{src.repo_id} at revision {src.ref}"
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelError(f"baseModel.uri {src}: {SAFETENSORS_INDEX} of {where} has no weight_map")
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if s not in names]
        if missing or any("/" in s or not s.endswith(".safetensors") for s in shards):
            raise InvalidModelError(
                f"baseModel.uri {src}: {SAFETENSORS_INDEX} of {where} lists shards that are not top-level "
                f".safetensors files of the repository ({', '.join((missing or shards)[:3])})"
            )
        return shards
    if SAFETENSORS_SINGLE in names:
        return [SAFETENSORS_SINGLE]
    raise InvalidModelError(
        f"baseModel.uri {src}: {where} has neither {SAFETENSORS_SINGLE} nor {SAFETENSORS_INDEX}, which "
        "transformers needs to load safetensors weights"
    )


# --- the Hub -------------------------------------------------------------------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class Hub:
    """huggingface_hub calls with the endpoint and token of this pod, errors mapped to exit codes."""

    def __init__(
        self, src: HfUri, endpoint: str | None = None, token: str | None = None, attempts: int = 3
    ) -> None:
        self.src = src
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        # False, not None: huggingface_hub would otherwise fall back to a token stored on disk.
        self.token: str | bool = token or os.environ.get("HF_TOKEN") or False
        self.attempts = attempts
        self.base_delay = 1.0

    def _where(self) -> str:
        return f"{self.src.repo_id} on {self.endpoint}"

    def _permanent(self, exc: BaseException) -> tuple[FailureReason, str] | None:
        """Why and what the user must change, if exc (or what it wraps) is a permanent error."""
        from huggingface_hub import errors

        src, where = self.src, self._where()
        token_hint = (
            "check that the token in baseModel.tokenSecretRef belongs to an account with access"
            if self.token
            else "for a private or gated repository set baseModel.tokenSecretRef to a Secret with a read token"
        )
        for e in _chain(exc):
            if isinstance(e, errors.GatedRepoError):
                return FailureReason.ACCESS_DENIED, (
                    f"baseModel.uri {src}: access denied: {where} is gated; accept its conditions on the Hub "
                    f"with the account whose token is in baseModel.tokenSecretRef ({token_hint})"
                )
            if isinstance(e, errors.RepositoryNotFoundError):
                return FailureReason.INVALID_MODEL, (
                    f"baseModel.uri {src}: no repository {where}, or it is private and this pod may not read "
                    f"it: check the name; {token_hint}"
                )
            if isinstance(e, errors.RevisionNotFoundError):
                return FailureReason.INVALID_MODEL, (
                    f"baseModel.uri {src}: {where} has no revision {src.ref!r}: use an existing branch, tag or "
                    "commit hash"
                )
            if isinstance(e, errors.RemoteEntryNotFoundError):
                return (
                    FailureReason.INVALID_MODEL,
                    f"baseModel.uri {src}: a file is missing from {where} at revision {src.ref}: {_first_line(e)}",
                )
            if isinstance(e, errors.DisabledRepoError):
                return FailureReason.INVALID_MODEL, f"baseModel.uri {src}: {where} is disabled on the Hub"
            if isinstance(e, errors.HfHubHTTPError) and e.response is not None:
                status = e.response.status_code
                if status == 401:
                    given = "rejected the token" if self.token else "requires a token"
                    return (
                        FailureReason.ACCESS_DENIED,
                        f"baseModel.uri {src}: access denied: {where} {given} (HTTP 401); {token_hint}",
                    )
                if status == 403:
                    return (
                        FailureReason.ACCESS_DENIED,
                        f"baseModel.uri {src}: access denied to {where} (HTTP 403); {token_hint}",
                    )
                if 400 <= status < 500 and status not in (408, 429):
                    return (
                        FailureReason.INVALID_MODEL,
                        f"baseModel.uri {src}: {where} refused the request: {_first_line(e)}",
                    )
                return None
            if isinstance(e, errors.FileMetadataError):
                return FailureReason.INVALID_MODEL, (
                    f"baseModel.uri {src}: {self.endpoint} did not answer like a Hugging Face Hub (no commit or "
                    f"ETag headers); check the operator's Hub endpoint (HF_ENDPOINT): {_first_line(e)}"
                )
            if isinstance(e, errors.SafetensorsParsingError | errors.NotASafetensorsRepoError):
                return FailureReason.INVALID_MODEL, f"baseModel.uri {src}: {_first_line(e)}"
            if isinstance(e, errors.HFValidationError):
                return FailureReason.INVALID_MODEL, f"baseModel.uri {src}: {_first_line(e)}"
            if isinstance(e, errors.OfflineModeIsEnabled):
                return FailureReason.INVALID_MODEL, (
                    f"baseModel.uri {src}: the Hugging Face Hub is switched off in this pod (HF_HUB_OFFLINE)"
                )
        return None

    @staticmethod
    def _transient(exc: BaseException) -> bool:
        import httpx2
        from huggingface_hub import errors

        for e in _chain(exc):
            if isinstance(e, errors.HfHubHTTPError):
                return (
                    e.response is None
                    or e.response.status_code in (408, 429)
                    or e.response.status_code >= 500
                )
            if isinstance(e, httpx2.TransportError | OSError):
                return True
        return False

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """fn() online, retried with backoff; InvalidInputError or TransientIOError when it fails."""
        from huggingface_hub import constants

        if _truthy(os.environ.get("HF_HUB_OFFLINE")):
            raise InvalidModelError(
                f"baseModel.uri {self.src} needs the Hugging Face Hub, but this pod is offline (HF_HUB_OFFLINE=1)"
            )
        for attempt in range(1, self.attempts + 1):
            constants.HF_HUB_OFFLINE = False
            try:
                return fn()
            except Exception as exc:
                permanent = self._permanent(exc)
                if permanent is not None:
                    reason, message = permanent
                    raise InvalidModelError(message, reason=reason) from exc
                if not self._transient(exc):
                    raise
                if attempt == self.attempts:
                    raise TransientIOError(
                        f"{what} from {self.endpoint}: {_first_line(exc)} (after {attempt} attempts)"
                    ) from exc
                delay = self.base_delay * 2 ** (attempt - 1) * (1 + random.random())  # noqa: S311
                log.warning("%s failed (%s); retrying in %.1fs", what, _first_line(exc), delay)
                time.sleep(delay)
            finally:
                # Offline again for everything else this process does.
                constants.HF_HUB_OFFLINE = True
        raise AssertionError("unreachable")

    def api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, library_name="finetune-operator")

    def resolve(self) -> tuple[str, list[str]]:
        """(commit hash of the revision, every file of the repository at that commit)."""
        info = self.call(
            f"look up {self.src}", lambda: self.api().model_info(self.src.repo_id, revision=self.src.ref)
        )
        if not info.sha:
            raise InvalidModelError(
                f"baseModel.uri {self.src}: {self.endpoint} did not return the commit of revision {self.src.ref}"
            )
        return str(info.sha), [s.rfilename for s in info.siblings or []]

    def download(self, commit: str, files: list[str], dest: Path) -> None:
        from huggingface_hub import snapshot_download

        self.call(
            f"download {len(files)} files of {self.src}",
            lambda: snapshot_download(
                self.src.repo_id,
                revision=commit,
                local_dir=dest,
                cache_dir=dest.parent / "hf" / "hub",
                allow_patterns=[glob.escape(f) for f in files],
                endpoint=self.endpoint,
                token=self.token,
                library_name="finetune-operator",
            ),
        )
        missing = [f for f in files if not (dest / f).is_file()]
        if missing:
            raise TransientIOError(f"download of {self.src}: {', '.join(missing[:3])} did not arrive")

    def check_header(self, commit: str, filename: str) -> int:
        """Read one safetensors header with ranged GETs (no weights); returns its tensor count."""
        meta = self.call(
            f"read the header of {filename} in {self.src}",
            lambda: self.api().parse_safetensors_file_metadata(self.src.repo_id, filename, revision=commit),
        )
        return len(meta.tensors)


def fetch_hf_model(uri: str, dest: Path, weights: bool = True) -> LocalModel:
    """Download an hf:// base model into dest (see the module docstring for what and how)."""
    from huggingface_hub.utils.tqdm import disable_progress_bars

    # One log line per step instead of progress bars and a line per HTTP request in the pod's log.
    disable_progress_bars()
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    src = parse_hf_uri(uri)
    hub = Hub(src)
    commit, names = hub.resolve()
    if leaving := sorted(n for n in names if escapes(n)):
        raise InvalidModelError(
            f"baseModel.uri {uri}: {src.repo_id} lists files whose names leave the repository "
            f"({', '.join(leaving[:3])}); refusing to download it"
        )
    log.info("base model %s: %s revision %s is commit %s", uri, src.repo_id, src.ref, commit)
    if src.filename is not None:
        if src.filename not in names:
            ggufs = sorted(n for n in names if n.endswith(".gguf"))
            raise InvalidModelError(
                f"baseModel.uri {uri}: {src.repo_id} at revision {src.ref} has no file {src.filename}"
                + (f"; its GGUF files: {', '.join(ggufs[:5])}" if ggufs else "")
            )
        hub.download(commit, [src.filename], dest)
        path = dest / src.filename
        return LocalModel(path.parent, path.name)
    hub.download(commit, small_files(src, names), dest)
    _check_config(src, dest)
    index_path = dest / SAFETENSORS_INDEX
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else None
    except ValueError as exc:
        raise InvalidModelError(f"baseModel.uri {uri}: {SAFETENSORS_INDEX} is not valid JSON: {exc}") from exc
    shards = weight_files(src, names, index)
    if weights:
        hub.download(commit, shards, dest)
        log.info("base model %s: downloaded %d safetensors files", uri, len(shards))
    else:
        tensors = sum(hub.check_header(commit, shard) for shard in shards)
        log.info(
            "base model %s: %d tensors in %d safetensors headers (not downloaded)", uri, tensors, len(shards)
        )
    return LocalModel(dest, None)


def _check_config(src: HfUri, dest: Path) -> None:
    """transformers must understand config.json without running code from the repository."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(str(dest), trust_remote_code=False)
    except Exception as exc:
        raise InvalidModelError(
            f"baseModel.uri {src}: its config.json cannot be loaded by transformers without remote code: "
            f"{_first_line(exc)}"
        ) from exc

"""The best evaluation's weights: kept while training runs, published instead of the last step's.

Only the trainable tensors are kept (the adapter for LoRA/QLoRA, every weight for a full fine-tune):
on each improvement of the validation loss they are written to scratch, and at the next checkpoint
they go to S3 (`checkpoints/best/`, marker `BEST` written last) before the checkpoint itself, so a
complete checkpoint never refers to a best that is not on S3. A resumed run finds the best of its
restored history there. When the weights of the best step cannot be found, the last step is published
and the summary says which step it is: the published step is always the one reported.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_contract.uris import S3Uri

from .exitcodes import TrainerError
from .s3io import S3

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"
MARKER = "BEST"
# An evaluation counts as better only by more than this (noise of a small validation set's mean).
MIN_IMPROVEMENT = 1e-4


@dataclass(frozen=True)
class Evaluation:
    step: int
    loss: float


def trainable_state(model: Any, full: bool) -> dict[str, Any]:
    """CPU copies of the tensors training changes (all of them for a full fine-tune, whose layers may be
    frozen for a while by gradual unfreezing)."""
    return {
        name: param.detach().to("cpu", copy=True).contiguous()
        for name, param in model.named_parameters()
        if full or param.requires_grad
    }


class BestWeights:
    """Tracks the best evaluation of one run and holds its weights (scratch, then S3)."""

    def __init__(
        self, s3: S3, output_prefix: str, scratch: Path, *, full: bool, owner: dict[str, str] | None = None
    ) -> None:
        self.s3 = s3
        # Written into the marker and checked on restore: a prefix taken over from another job may
        # still hold that job's best weights.
        self.owner = owner or {}
        self.prefix = S3Uri.parse(output_prefix).join("checkpoints/best/")
        self.local = scratch / "best"
        self.full = full
        self.best: Evaluation | None = None
        self._saved_step: int | None = None  # the step whose weights are in scratch
        self._uploaded_step: int | None = None

    def improves(self, loss: float) -> bool:
        """Whether an evaluation with this loss would be the best so far."""
        return self.best is None or loss < self.best.loss - MIN_IMPROVEMENT

    def observe(
        self, step: int, loss: float, model: Any | None, *, state: dict[str, Any] | None = None
    ) -> bool:
        """Record an evaluation; True when it is the best so far (the lowest loss, the earliest of
        near-ties), and then its weights are kept: `state` when given (a sharded model's weights,
        gathered), else the model's trainable tensors. `model` None replays a restored history: that
        best's weights are already on S3."""
        if not self.improves(loss):
            return False
        self.best = Evaluation(step, loss)
        if model is None:
            return True
        from safetensors.torch import save_file

        self.local.mkdir(parents=True, exist_ok=True)
        save_file(
            state if state is not None else trainable_state(model, self.full), str(self.local / WEIGHTS)
        )
        self._saved_step = step
        return True

    def upload(self) -> None:
        """Put the best weights on S3 if they changed since the last upload (before a checkpoint)."""
        if self._saved_step is None or self._saved_step == self._uploaded_step or self.best is None:
            return
        self.s3.upload_file(self.local / WEIGHTS, self.prefix.join(WEIGHTS))
        marker = {**self.owner, "step": self.best.step, "evalLoss": self.best.loss}
        self.s3.put_bytes(self.prefix.join(MARKER), json.dumps(marker).encode(), "application/json")
        self._uploaded_step = self._saved_step

    def _weights_file(self) -> Path | None:
        """Where the best step's weights are: scratch when this pod saved them, else from S3."""
        assert self.best is not None
        if self._saved_step == self.best.step:
            return self.local / WEIGHTS
        try:
            marker = json.loads(self.s3.get_bytes(self.prefix.join(MARKER)))
            if any(marker.get(k) != v for k, v in self.owner.items()):
                log.warning("S3 holds another job's best weights; not using them")
                return None
            if int(marker.get("step", -1)) != self.best.step:
                log.warning(
                    "S3 holds the best weights of step %s, not %d", marker.get("step"), self.best.step
                )
                return None
            return self.s3.download_file(self.prefix.join(WEIGHTS), self.local / "downloaded" / WEIGHTS)
        except (TrainerError, ValueError, TypeError) as exc:
            log.warning("cannot read the best weights from %s: %s", self.prefix, exc)
            return None

    def restore(self, model: Any, last_step: int) -> int:
        """Load the best evaluation's weights into `model`; the step whose weights it now holds."""
        if self.best is None or self.best.step == last_step:
            return last_step
        path = self._weights_file()
        if path is None:
            log.warning("publishing the last step %d: the best step's weights are not available", last_step)
            return last_step
        from safetensors.torch import load_file

        saved = load_file(str(path))
        params = dict(model.named_parameters())
        missing = sorted(set(saved) - set(params))
        if missing:
            log.warning("publishing the last step %d: the saved weights do not fit the model", last_step)
            return last_step
        for name, tensor in saved.items():
            params[name].data.copy_(tensor.to(params[name].device, params[name].dtype))
        log.info(
            "restored the weights of step %d (validation loss %.4f; last step %d)",
            self.best.step,
            self.best.loss,
            last_step,
        )
        return self.best.step

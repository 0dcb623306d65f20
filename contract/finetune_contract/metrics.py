"""The Prometheus names the trainer serves on `/metrics` and the operator (and dashboards) read.

The trainer serves them on $POD_IP:$METRICS_PORT; the operator scrapes the running trainer for
`status.progress`, `status.metrics` and `status.checkpoints`; a PodMonitor scrapes the same endpoint.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "finetune_trainer_"
STEP: Final = "finetune_trainer_step"
TOTAL_STEPS: Final = "finetune_trainer_total_steps"
EPOCH: Final = "finetune_trainer_epoch"
TRAIN_LOSS: Final = "finetune_trainer_train_loss"
EVAL_LOSS: Final = "finetune_trainer_eval_loss"
LEARNING_RATE: Final = "finetune_trainer_learning_rate"
TOKENS_PER_SECOND: Final = "finetune_trainer_tokens_per_second"
SAMPLES: Final = "finetune_trainer_samples_total"
TOKENS: Final = "finetune_trainer_tokens_total"
# One series per checkpoint under <output>/checkpoints/ (label `step`), value: its creation time in
# Unix seconds; `complete` is 1 once its COMPLETE marker is written. At most checkpointing.keep + 1.
CHECKPOINT_CREATED: Final = "finetune_trainer_checkpoint_created_timestamp_seconds"
CHECKPOINT_COMPLETE: Final = "finetune_trainer_checkpoint_complete"
CHECKPOINT_STEP_LABEL: Final = "step"

# name -> help text, in the order the trainer registers them.
GAUGES: Final = {
    STEP: "Optimizer steps completed",
    TOTAL_STEPS: "Optimizer steps planned",
    EPOCH: "Fractional epoch",
    TRAIN_LOSS: "Training loss (last logging interval)",
    EVAL_LOSS: "Validation loss (last evaluation)",
    LEARNING_RATE: "Learning rate (last logging interval)",
    TOKENS_PER_SECOND: "Non-padding tokens per second",
    SAMPLES: "Training examples seen",
    TOKENS: "Non-padding training tokens seen",
}
CHECKPOINT_GAUGES: Final = {
    CHECKPOINT_CREATED: "When the checkpoint of this step was saved (Unix seconds)",
    CHECKPOINT_COMPLETE: "1 once the checkpoint of this step is complete (its COMPLETE marker exists)",
}

"""Training: transformers `Trainer` + peft, with callbacks for S3 checkpoints, metrics and SIGTERM.

The well-kept library path does the heavy lifting (optimizer, scheduler, gradient
accumulation, exact resume of optimizer/scheduler/RNG/data position); this module adds what
the operator contract needs around it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from finetune_contract.config import TrainerConfig
from finetune_contract.hyperparameters import ResolvedHyperparameters
from finetune_contract.outcomes import CheckpointRef, Succeeded
from finetune_contract.uris import S3Uri
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from . import distributed, evaluate, fsdp, kernels, outputs, ownership
from .best import BestWeights
from .checkpoints import CheckpointStore
from .distributed import Rank
from .exitcodes import InvalidInputError, PreemptedError, TransientIOError
from .loss import KeepLabelledLogits, labelled_token_loss
from .metrics_server import TrainerMetrics
from .micro_batch import MicroBatch, NoMicroBatchFits, candidates, choose, probe
from .model_loading import load_model
from .packing import PackingCollator, PaddingCollator, TokenCounter
from .publishing import publish_dir
from .s3io import S3
from .step_batches import BalancedStepTrainer, Collator
from .validate import Prepared

log = logging.getLogger(__name__)


class Preemption:
    """Set by SIGTERM; the training loop saves a checkpoint and stops at the next step end."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("SIGTERM received: saving a checkpoint and exiting")
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


# --- model preparation ---------------------------------------------------------------------


def apply_method(model: Any, cfg: TrainerConfig) -> Any:
    """Wrap the base model for the chosen method (LoRA adapters, QLoRA, or all weights)."""
    # Training never uses the KV cache; with a cache object present transformers would also skip
    # the packed-sequence mask (see packing.py), letting packed examples see each other.
    model.config.use_cache = False
    if cfg.method.type == "full":
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)  # type: ignore[no-untyped-call]
    lora = cfg.method.effective_lora
    assert lora is not None  # lora and qlora always have LoRA settings
    targets: str | list[str] = (
        "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=lora.rs_lora,
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise InvalidInputError(f"method.lora.targetModules does not match the model: {exc}") from exc


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks, in order (the longest ModuleList of the model)."""
    best: list[torch.nn.Module] = []
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > len(best):
            best = list(module)
    return best


def unfrozen_layer_count(epoch: float, total_epochs: float, n_layers: int) -> int:
    """Gradual unfreezing: epoch e of E trains the top ceil((e+1)/E * n) layers."""
    groups = max(1, math.ceil(total_epochs))
    stage = min(groups - 1, int(epoch))
    return max(1, math.ceil((stage + 1) / groups * n_layers))


# --- callbacks -----------------------------------------------------------------------------


class ContractCallback(TrainerCallback):
    """Metrics, train log, S3 checkpoints, SIGTERM, best weights, early stopping, gradual unfreezing."""

    def __init__(
        self,
        cfg: TrainerConfig,
        resolved: ResolvedHyperparameters,
        *,
        store: CheckpointStore,
        best: BestWeights,
        metrics: TrainerMetrics,
        preemption: Preemption,
        n_train: int,
        log_sink: list[dict[str, Any]],
        s3: S3,
        layers: list[torch.nn.Module] | None,
        counter: TokenCounter,
        rank: Rank | None = None,
        sharded: bool = False,
    ) -> None:
        self.cfg = cfg
        self.rank = rank or Rank()
        self.sharded = sharded
        self.resolved = resolved
        self.store = store
        self.best = best
        self.metrics = metrics
        self.preemption = preemption
        self.n_train = n_train
        self.log_sink = log_sink
        self.s3 = s3
        self.layers = layers
        self.bad_evals = 0
        self.early_stopped = False
        self._last_time = time.monotonic()
        self._last_tokens = 0
        self._unfrozen = -1
        # Non-padding tokens come from the collator's counter; eval batches go through the same
        # collator, so what they add is dropped again in on_evaluate.
        self.counter = counter
        self._token_base = 0
        self._counted = 0
        # What is under checkpoints/ in S3 (reported on /metrics, and in the final summary).
        self.checkpoints: list[CheckpointRef] = []

    def on_train_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.metrics.total_steps.set(state.max_steps)
        self.metrics.step.set(state.global_step)
        self._token_base = state.num_input_tokens_seen  # restored from the checkpoint on resume
        self._counted = self.counter.tokens
        self._last_tokens = state.num_input_tokens_seen
        self._last_time = time.monotonic()
        # The best evaluation and the early-stopping count are rebuilt from the restored log history,
        # so they survive a resume (that best's weights went to S3 before its checkpoint did).
        for entry in state.log_history:
            if "eval_loss" in entry:
                self._observe_eval(int(entry.get("step", 0)), float(entry["eval_loss"]), None)

    def on_step_begin(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if not self.layers:
            return
        count = unfrozen_layer_count(state.epoch or 0.0, self.resolved.epochs, len(self.layers))
        if count == self._unfrozen:
            return
        # Frozen params keep requires_grad=False, so they get no gradient and AdamW skips them;
        # the optimizer was built before this first ran, so it already holds every parameter.
        for i, layer in enumerate(self.layers):
            trainable = i >= len(self.layers) - count
            for param in layer.parameters():
                param.requires_grad_(trainable)
        log.info("gradual unfreezing: training the top %d of %d layers", count, len(self.layers))
        self._unfrozen = count

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # Every rank counts the tokens of its own share of the batch; the run's count is their sum.
        self._token_base += distributed.total(self.rank, self.counter.tokens - self._counted)
        self._counted = self.counter.tokens
        state.num_input_tokens_seen = self._token_base
        self.metrics.step.set(state.global_step)
        self.metrics.epoch.set(state.epoch or 0.0)
        self.metrics.samples.set(round((state.epoch or 0.0) * self.n_train))
        self.metrics.tokens.set(state.num_input_tokens_seen)
        now = time.monotonic()
        if now - self._last_time >= 1.0:
            rate = (state.num_input_tokens_seen - self._last_tokens) / (now - self._last_time)
            self.metrics.tokens_per_second.set(rate)
            self._last_time, self._last_tokens = now, state.num_input_tokens_seen
        if state.global_step >= state.max_steps:
            # A final checkpoint lets a pod that dies during evaluation or upload skip retraining; a
            # final evaluation lets the last step compete for the best.
            control.should_save = True
            control.should_evaluate = args.eval_strategy != "no"
        # A SIGTERM on any rank stops every rank at this same step, each with its part of the checkpoint.
        if distributed.any_rank(self.rank, self.preemption.requested):
            self.preemption.event.set()
            control.should_save = True
            control.should_training_stop = True

    def on_log(
        self,
        args: Any,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if not logs:
            return
        entry = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), **logs}
        self.log_sink.append(entry)
        if "loss" in logs:
            self.metrics.train_loss.set(float(logs["loss"]))
        if "eval_loss" in logs:
            self.metrics.eval_loss.set(float(logs["eval_loss"]))
        if "learning_rate" in logs:
            self.metrics.learning_rate.set(float(logs["learning_rate"]))
        log.info("%s", json.dumps(entry))

    def _observe_eval(self, step: int, loss: float, model: Any | None) -> None:
        # Every rank sees the same (gathered) loss and keeps the same count; rank 0 keeps the weights.
        state = None
        if self.sharded and model is not None and self.best.improves(loss):
            state = fsdp.full_state(model)  # a collective: every rank takes the same decision here
        if self.best.observe(step, loss, model if self.rank.is_main else None, state=state):
            self.bad_evals = 0
        else:
            self.bad_evals += 1

    def on_evaluate(
        self,
        args: Any,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        self._counted = self.counter.tokens
        if not metrics or "eval_loss" not in metrics:
            return
        self._observe_eval(state.global_step, float(metrics["eval_loss"]), kw.get("model"))
        patience = self.cfg.hyperparameters.patience
        if patience and self.bad_evals >= patience:
            log.info("early stopping: validation loss has not improved for %d evaluations", self.bad_evals)
            self.early_stopped = True
            control.should_training_stop = True
            control.should_save = True

    def on_save(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # Every rank's files of this step are written (each rank saves its RNG state) before the upload.
        distributed.barrier(self.rank)
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # Each rank uploads its own files (its RNG state, its FSDP shards): on another node rank 0 does
        # not have them. Rank 0 then uploads the rest and the marker listing every file.
        own: dict[str, dict[str, object]] = {}
        if self.rank.rank != 0:
            names = [
                p.relative_to(local).as_posix()
                for p in local.rglob("*")
                if p.is_file() and fsdp.owner(p.relative_to(local).as_posix()) == self.rank.rank
            ]
            own = self.store.upload_files(local, state.global_step, names)
        gathered = distributed.gather_to_main(self.rank, own)
        if not self.rank.is_main:
            if self.rank.is_local_main:
                # The Trainer rotates local checkpoints on rank 0's node only; elsewhere the older ones
                # (this node's shards, on S3 now) would fill the scratch volume.
                for older in Path(args.output_dir).glob("checkpoint-*"):
                    if older != local and older.is_dir():
                        shutil.rmtree(older, ignore_errors=True)
            return
        uploaded = {name: digest for part in gathered or [] for name, digest in part.items()}
        uploading = CheckpointRef(step=state.global_step, complete=False)
        self.metrics.report_checkpoints([*self.checkpoints, uploading])
        # The best weights first: a complete checkpoint's history never names a best that S3 lacks.
        self.best.upload()
        self.store.upload(local, state.global_step, uploaded=uploaded)
        self.checkpoints = self.store.refs()
        self.metrics.report_checkpoints(self.checkpoints)
        # The whole history (restored on resume), not just this pod's part.
        train_log = "\n".join(json.dumps(e, default=str) for e in state.log_history).encode()
        self.s3.put_bytes(S3Uri.parse(self.cfg.output_prefix).join("reports/train_log.jsonl"), train_log)


# --- the run ---------------------------------------------------------------------------------


def training_arguments(
    cfg: TrainerConfig,
    resolved: ResolvedHyperparameters,
    scratch: Path,
    device: str,
    has_eval: bool,
    *,
    distributed_run: bool = False,
    micro: MicroBatch | None = None,
    sharded: bool = False,
) -> Any:
    """transformers' own DDP runs a distributed run (the launcher set the variables it reads): batch_size
    is per process, and tokens are counted across ranks for the loss (average_tokens_across_devices),
    so the gradients are those of one process with the whole batch."""
    hp = cfg.hyperparameters
    total = resolved.total_steps
    micro = micro or MicroBatch(
        resolved.batch_size, resolved.gradient_accumulation_steps, checkpointing=cfg.method.type == "qlora"
    )
    # Evaluations twice per epoch and at least six per run: often enough for the best step to be near
    # the true best and for early stopping to act; cheap next to training.
    eval_steps = max(1, min(resolved.steps_per_epoch // 2, math.ceil(total / 6)))
    return TrainingArguments(
        output_dir=str(scratch / "checkpoints"),
        num_train_epochs=resolved.epochs,
        # The resolved step count (epochs x steps per epoch, or maxSteps), so status and run agree.
        max_steps=total,
        per_device_train_batch_size=micro.batch_size,
        per_device_eval_batch_size=micro.batch_size,
        gradient_accumulation_steps=micro.accumulation,
        learning_rate=resolved.learning_rate,
        lr_scheduler_type=hp.lr_scheduler.transformers_name,
        warmup_steps=resolved.warmup_steps,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        data_seed=hp.seed,
        # On a GPU: bf16 autocast. A full fine-tune's weights are loaded in fp32 (model_loading), so the
        # optimizer updates fp32 master weights and small updates do not round away.
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        logging_strategy="steps",
        logging_steps=max(1, min(10, total // 20)),
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=cfg.checkpointing.every_steps,
        # S3 keeps `keep` checkpoints; locally the last one is enough (scratch is small).
        save_total_limit=1,
        # A sharded model's optimizer, scheduler and RNG states are checkpointed by fsdp.ShardedTrainer.
        save_only_model=sharded,
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        # Counted by our collators (real tokens only) and stored in the state by the callback.
        include_num_input_tokens_seen="no",
        prediction_loss_only=True,
        gradient_checkpointing=micro.checkpointing,
        # Non-reentrant: works with a frozen base whose inputs need no gradient (LoRA).
        gradient_checkpointing_kwargs={"use_reentrant": False} if micro.checkpointing else None,
        ddp_backend=("nccl" if device == "cuda" else "gloo") if distributed_run else None,
        # Gradual unfreezing changes which parameters train after DDP is built; LoRA's frozen base never does.
        ddp_find_unused_parameters=cfg.hyperparameters.gradual_unfreezing,
    )


def training_collator(
    plan: kernels.KernelPlan, counter: TokenCounter, pad_token_id: int, *, packing: bool
) -> Collator:
    """Packed rows as the kernel plan lays them out (or padded batches); with the labelled positions
    marked for loss.py unless Liger's fused loss takes the labels itself."""
    base: Collator = (
        PackingCollator(counter, pad_token_id=pad_token_id, row_tokens=plan.row_tokens)
        if packing
        else PaddingCollator(pad_token_id, counter)
    )
    return FusedLossBatches(base) if plan.fused else KeepLabelledLogits(base)


@dataclasses.dataclass
class FusedLossBatches:
    """Batches for Liger's fused loss: `skip_logits` in evaluation too, where Liger's forward would
    otherwise build the vocabulary-wide logits of the whole packed row (training skips them already)."""

    collator: Collator

    def __call__(self, features: Any) -> dict[str, Any]:
        return {**self.collator(features), "skip_logits": True}


def forward_loss(plan: kernels.KernelPlan) -> Callable[[Any, dict[str, Any]], torch.Tensor]:
    """The training loss of one collated micro-batch, computed as the Trainer will compute it."""

    def run(model: Any, batch: dict[str, Any]) -> torch.Tensor:
        inputs = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if plan.fused:
            return model(**inputs).loss  # type: ignore[no-any-return]
        labels = inputs.pop("labels")
        return labelled_token_loss(model(**inputs), labels)

    return run


def fit_micro_batch(
    model: Any,
    plan: kernels.KernelPlan,
    *,
    collator: Collator,
    train: list[dict[str, list[int]]],
    resolved: ResolvedHyperparameters,
    cfg: TrainerConfig,
    rank: Rank,
) -> MicroBatch:
    """The largest micro-batch whose worst case (copies of the longest example) trains in GPU memory,
    with the accumulation steps that keep the effective batch (micro_batch.py); under DDP every rank
    takes the smallest any rank could hold, so all run the same number of passes per step."""
    longest = max(train, key=lambda f: len(f["input_ids"]))
    options = candidates(
        resolved.batch_size, resolved.gradient_accumulation_steps, checkpointing=cfg.method.type == "qlora"
    )
    loss = forward_loss(plan)

    def fits(option: MicroBatch) -> bool:
        batch = collator([longest] * option.batch_size)
        return probe(model, batch, checkpointing=option.checkpointing, forward_loss=loss, autocast=True)

    def fits_everywhere(option: MicroBatch) -> bool:
        # In lockstep: every rank tries the same option and all take the first that fits on every rank
        # (DDP needs the same passes per step everywhere), or all give up together.
        return not distributed.any_rank(rank, not fits(option))

    try:
        return choose(options, fits_everywhere)
    except NoMicroBatchFits as exc:
        raise InvalidInputError(str(exc)) from exc


class ShardedBalancedTrainer(fsdp.ShardedTrainer, BalancedStepTrainer):
    """A sharded full fine-tune whose steps are re-cut by tokens (a distributed GPU run)."""


def trainer_class(*, sharded: bool, balance: bool) -> type[Trainer]:
    if sharded:
        return ShardedBalancedTrainer if balance else fsdp.ShardedTrainer
    return BalancedStepTrainer if balance else Trainer


def run_training(
    cfg: TrainerConfig,
    s3: S3,
    scratch: Path,
    prepared: Prepared,
    *,
    metrics: TrainerMetrics,
    preemption: Preemption,
    rank: Rank | None = None,
) -> dict[str, Any]:
    rank = rank or Rank()
    hp = cfg.hyperparameters
    resolved = prepared.resolved
    device = "cuda" if torch.cuda.is_available() else "cpu"
    set_seed(hp.seed)
    log.info("hyperparameters: %s", resolved.model_dump_json())
    log.info("loading base model %s on %s", cfg.base_model.uri, device)
    lora = cfg.method.effective_lora
    plan = kernels.plan(
        kernels.available(),
        packing=hp.packing,
        full=cfg.method.type == "full",
        lm_head_adapter=lora is not None and "lm_head" in lora.target_modules,
    )
    model = load_model(prepared.model, cfg.method.type, device, attention=plan.attention)
    plan = kernels.as_loaded(plan, model.config._attn_implementation)
    if plan.fused and not kernels.apply_fused(model):
        plan = dataclasses.replace(plan, fused=False)
    log.info("kernels: %s", plan.describe())
    model = apply_method(model, cfg)
    if preemption.requested:
        raise PreemptedError("SIGTERM before training started; nothing to save")
    tokenizer = prepared.tokenizer

    owner = ownership.run_owner(cfg)
    store = CheckpointStore(s3, cfg.output_prefix, cfg.checkpointing.keep, owner=owner)
    resume = _resume_point(store, scratch / "resume", rank)
    if resume:
        log.info("resuming from checkpoint step %d", resume[0])
    elif store.skipped:
        log.warning("no complete checkpoint verifies; starting from the base model")
    found = store.refs()
    metrics.report_checkpoints(found)

    base_full: dict[str, Any] | None = None
    if cfg.method.type == "full" and rank.is_main:
        # Full fine-tunes overwrite the base weights, so the base is measured before training
        # (once: the numbers are kept on S3 for restarts).
        base_full = _base_eval_before_training(cfg, s3, model, tokenizer, prepared, owner=owner)

    def features(examples: list[Any]) -> list[dict[str, list[int]]]:
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]

    counter = TokenCounter()
    collator = training_collator(plan, counter, tokenizer.pad_token_id, packing=hp.packing)
    micro = None
    sharded = fsdp.enabled(cfg, rank)
    if device == "cuda" and not sharded:
        # A sharded model's forward is a collective: a probe that runs out of memory on one rank would
        # leave the others waiting, so a sharded run keeps the resolved micro-batch.
        micro = fit_micro_batch(
            model,
            plan,
            collator=collator,
            train=features(prepared.train_examples),
            resolved=resolved,
            cfg=cfg,
            rank=rank,
        )
        log.info("%s (from GPU memory)", micro.describe())
    if sharded:
        model = fsdp.shard(model, decoder_layers(model), device)
    args = training_arguments(
        cfg,
        resolved,
        scratch,
        device,
        bool(prepared.val_examples),
        distributed_run=rank.distributed,
        micro=micro,
        sharded=sharded,
    )
    best = BestWeights(s3, cfg.output_prefix, scratch, full=cfg.method.type == "full", owner=owner)
    log_sink: list[dict[str, Any]] = []
    layers = decoder_layers(model) if hp.gradual_unfreezing else None
    callback = ContractCallback(
        cfg,
        resolved,
        store=store,
        best=best,
        metrics=metrics,
        preemption=preemption,
        n_train=len(prepared.train_examples),
        log_sink=log_sink,
        s3=s3,
        layers=layers,
        counter=counter,
        rank=rank,
        sharded=sharded,
    )
    callback.checkpoints = found
    trainer = trainer_class(sharded=sharded, balance=plan.balance_steps)(
        model=model,
        args=args,
        train_dataset=features(prepared.train_examples),
        eval_dataset=features(prepared.val_examples) or None,
        data_collator=collator,
        # Logits only where a token is predicted (loss.py); the same loss as the model's own. With Liger
        # the model computes the loss itself from the hidden states, never holding the logits.
        compute_loss_func=None if plan.fused else labelled_token_loss,
        callbacks=[callback],
    )
    # Our callback logs each entry as JSON; the stock printer would repeat it on stdout.
    trainer.remove_callback(PrinterCallback)
    if resume and cfg.method.type == "full":
        problem = fsdp.resume_problem(resume[1], sharded=sharded)
        if problem:
            log.warning("%s; starting from the base model", problem)
            resume = None
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=str(resume[1]) if resume else None)
    train_seconds = time.monotonic() - started
    state = trainer.state
    if preemption.requested and state.global_step < state.max_steps:
        raise PreemptedError(
            f"preempted at step {state.global_step} of {state.max_steps}; checkpoint saved",
            checkpoints=callback.checkpoints,
        )

    if sharded:
        # Every rank sends its shards; rank 0 evaluates and publishes an ordinary, unsharded model.
        weights = fsdp.full_state(model)
        # The shards and the optimizer state go before rank 0 loads the whole model for the evaluation.
        del model
        trainer.model = trainer.model_wrapped = trainer.optimizer = None  # type: ignore[assignment]
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if rank.is_main:
            model = apply_method(
                load_model(prepared.model, cfg.method.type, device, attention=plan.attention), cfg
            )
            for name, param in model.named_parameters():
                param.data.copy_(weights[name])
    if not rank.is_main:
        # Rank 0 alone evaluates and publishes; this rank's share of the work is done.
        return {"state": state, "checkpoints": callback.checkpoints}
    published_step = best.restore(model, state.global_step)
    log.info("training done at step %d; evaluating the weights of step %d", state.global_step, published_step)
    eval_report = _final_eval(cfg, model, tokenizer, prepared, base_full)
    train_losses = [e["loss"] for e in state.log_history if "loss" in e]
    trained_tokens = state.num_input_tokens_seen
    summary_metrics = {
        "trainLoss": round(float(train_losses[-1]), 4) if train_losses else None,
        "evalLoss": eval_report["validation"].get("tunedLoss"),
        "baseEvalLoss": eval_report["validation"].get("baseLoss"),
        "evalPerplexity": _perplexity(eval_report["validation"].get("tunedLoss")),
        "baseEvalPerplexity": _perplexity(eval_report["validation"].get("baseLoss")),
        "exactMatch": _em(eval_report, "tuned"),
        "baseExactMatch": _em(eval_report, "base"),
        "tokensPerSecond": round(float(result.metrics.get("train_tokens_per_second", 0.0) or 0.0), 1)
        or (round(trained_tokens / train_seconds, 1) if train_seconds > 0 else None),
        "msPerToken": eval_report.get("latency", {}).get("tunedMsPerToken"),
    }
    return {
        "state": state,
        "model": model,
        "eval": eval_report,
        "metrics": summary_metrics,
        "earlyStopped": callback.early_stopped,
        "publishedStep": published_step,
        "resumedFromStep": resume[0] if resume else None,
        "skippedCheckpoints": store.skipped,
        "trainSeconds": round(train_seconds, 1),
        "log": log_sink,
        "checkpoints": callback.checkpoints,
    }


def _resume_point(store: CheckpointStore, dest: Path, rank: Rank) -> tuple[int, Path] | None:
    """The checkpoint every rank resumes from: rank 0's choice, downloaded once per pod."""
    resume = store.download_latest(dest) if rank.is_local_main else None
    distributed.barrier(rank)
    step = distributed.from_main(rank, resume[0] if resume else None)
    if not rank.distributed:
        return resume
    if rank.is_local_main and (resume[0] if resume else None) != step:
        # Only a checkpoint written meanwhile could do this; the next attempt decides again.
        raise TransientIOError(f"rank {rank.rank} found checkpoint {resume} but rank 0 resumes from {step}")
    return (step, dest / f"checkpoint-{step}") if step is not None else None


def _perplexity(loss: float | None) -> float | None:
    # exp of a mean token cross-entropy; capped so a diverged run still reports a finite number.
    return None if loss is None else round(math.exp(min(float(loss), 50.0)), 4)


def _em(report: dict[str, Any], which: str) -> float | None:
    for section in ("heldout", "validation"):
        value = report.get("exactMatch", {}).get(section, {}).get(which, {}).get("exactMatch")
        if value is not None:
            return float(value)
    return None


def _eval_model(
    cfg: TrainerConfig,
    model: Any,
    tokenizer: Any,
    prepared: Prepared,
    sets: dict[str, list[tuple[list[int], str]]],
) -> dict[str, Any]:
    pad = tokenizer.pad_token_id
    out: dict[str, Any] = {"loss": evaluate.eval_loss(model, prepared.val_examples, pad)}
    model.config.use_cache = True
    try:
        for name, pairs in sets.items():
            out[name] = evaluate.exact_match(model, tokenizer, pairs, cfg.eval.max_new_tokens)
    finally:
        model.config.use_cache = False
    return out


def _reference_sets(cfg: TrainerConfig, prepared: Prepared) -> dict[str, list[tuple[list[int], str]]]:
    """Rows scored by exact match: the held-out set when one is given, else validation.

    Greedy generation is the slowest part of the evaluation on CPU, so only one set is scored.
    """
    limit = cfg.eval.max_examples
    tok = prepared.tokenizer
    if prepared.eval_rows:
        return {"heldout": evaluate.reference_prompts(prepared.eval_rows, prepared.fmt, tok, limit)}
    return {"validation": evaluate.reference_prompts(prepared.val_rows, prepared.fmt, tok, limit)}


def _base_eval_before_training(
    cfg: TrainerConfig, s3: S3, model: Any, tokenizer: Any, prepared: Prepared, *, owner: dict[str, str]
) -> dict[str, Any]:
    uri = S3Uri.parse(cfg.output_prefix).join("reports/base_eval.json")
    if s3.exists(uri):
        cached: dict[str, Any] = json.loads(s3.get_bytes(uri))
        # An earlier attempt of this run measured it; another job's (a prefix taken over) is not ours.
        if cached.pop("owner", None) == owner:
            return cached
    result = _eval_model(cfg, model, tokenizer, prepared, _reference_sets(cfg, prepared))
    s3.put_bytes(uri, json.dumps({**result, "owner": owner}).encode(), "application/json")
    return result


def _final_eval(
    cfg: TrainerConfig, model: Any, tokenizer: Any, prepared: Prepared, base_full: dict[str, Any] | None
) -> dict[str, Any]:
    sets = _reference_sets(cfg, prepared)
    tuned = _eval_model(cfg, model, tokenizer, prepared, sets)
    if base_full is not None:
        base = base_full
    else:
        # Same rows, same code, adapter switched off: the base model exactly as it was loaded.
        with model.disable_adapter():
            base = _eval_model(cfg, model, tokenizer, prepared, sets)
    report: dict[str, Any] = {
        "validation": {
            "rows": len(prepared.val_examples),
            "tunedLoss": _round(tuned["loss"]),
            "baseLoss": _round(base["loss"]),
        },
        "exactMatch": {name: {"tuned": tuned.get(name), "base": base.get(name)} for name in sets},
        "matchRule": evaluate.MATCH_RULE,
        "latency": {
            "unit": "ms per generated token (greedy, batched, per decoding step)",
            "tunedMsPerToken": _first_latency(tuned, sets),
            "baseMsPerToken": _first_latency(base, sets),
        },
    }
    return report


def _first_latency(result: dict[str, Any], sets: dict[str, Any]) -> float | None:
    for name in sets:
        value = (result.get(name) or {}).get("msPerToken")
        if value is not None:
            return float(value)
    return None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def publish(cfg: TrainerConfig, s3: S3, scratch: Path, prepared: Prepared, run: dict[str, Any]) -> Succeeded:
    """Upload adapter (or model), sha256, eval.json and result.json; return the summary."""
    folder = "model" if cfg.method.type == "full" else "adapter"
    local = scratch / "output" / folder
    hyperparameters = outputs.hyperparameters_in_force(cfg, prepared.resolved)
    weights, digest = outputs.save_adapter(
        run["model"],
        prepared.tokenizer,
        cfg,
        local,
        dataset_sha256=prepared.dataset_sha256,
        metrics=run["metrics"],
        hyperparameters=hyperparameters,
        published_step=run["publishedStep"],
    )
    out = S3Uri.parse(cfg.output_prefix)
    ownership.verify_claim(s3, cfg)
    # result.json, written last below, is the sign that the whole publish is done.
    s3.delete(out.join("reports/result.json"))
    publish_dir(
        s3, local, out.join(folder + "/"), f"{digest}  {weights.name}\n", out.join(f"{folder}.sha256")
    )
    outputs.write_report(s3, cfg, "eval.json", run["eval"], scratch)
    train_log = "\n".join(json.dumps(e, default=str) for e in run["state"].log_history).encode()
    s3.put_bytes(out.join("reports/train_log.jsonl"), train_log, "application/x-ndjson")
    state = run["state"]
    summary = Succeeded.model_validate(
        {
            "step": state.global_step,
            "totalSteps": state.max_steps,
            "epoch": round(state.epoch or 0.0, 3),
            **run["metrics"],
            "earlyStopped": run["earlyStopped"],
            "publishedStep": run["publishedStep"],
            "resumedFromStep": run["resumedFromStep"],
            "trainSeconds": run["trainSeconds"],
            "adapterURI": str(out.join(folder + "/")),
            "sha256": digest,
            "reportURI": str(out.join("reports/result.json")),
            "checkpoints": run["checkpoints"],
            "hyperparameters": prepared.resolved,
        }
    )
    result = {
        **summary.model_dump(mode="json", by_alias=True, exclude_none=True),
        "job": cfg.job.model_dump(by_alias=True),
        "method": cfg.method.model_dump(by_alias=True, mode="json"),
        "hyperparameters": hyperparameters,
        "datasetSha256": prepared.dataset_sha256,
        # Complete checkpoints that did not verify on resume (step, what was wrong).
        "skippedCheckpoints": run["skippedCheckpoints"],
        "eval": run["eval"],
    }
    outputs.write_report(s3, cfg, "result.json", result, scratch)
    return summary

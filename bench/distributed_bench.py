"""Data-parallel scaling: the trainer's packed LoRA loop on N ranks (DDP through transformers.Trainer,
gloo on CPU, NCCL on GPUs) vs one rank, the same global batch and data, in one run.

Each side is launched the way the trainer's launcher launches workers (torch elastic, static
rendezvous on loopback); the CPU cores are shared between the ranks as the trainer shares a pod's
(finetune_trainer.threads), so on CPU the ratio measures what DDP costs (gradient all-reduce, the
batch split in smaller pieces), not extra hardware. On a machine with N GPUs each rank has its own.

    python bench/distributed_bench.py [--model smollm2|tiny] [--ranks 2] [--steps N] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer_bench import MODEL_TITLES, best_of


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker(opts: argparse.Namespace) -> int:
    """One rank: the packed LoRA loop of trainer_bench on this rank's share of each global batch."""
    import torch
    import torch.distributed as dist
    from finetune_trainer import threads
    from finetune_trainer.loss import KeepLabelledLogits, labelled_token_loss
    from finetune_trainer.packing import PackingCollator, TokenCounter
    from finetune_trainer.tiny_model import smollm2_tokenizer
    from peft import get_peft_model
    from trainer_bench import bench_rows, lora_config, tokenized
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments, set_seed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not torch.cuda.is_available():
        threads.apply_to_torch(threads.share(os.environ, threads.host_cpus(), world))
    tokenizer = smollm2_tokenizer()
    rows = bench_rows(opts.steps * opts.batch, seed=1)
    features = tokenized(rows, tokenizer, opts.max_seq_length)
    set_seed(0)
    model = AutoModelForCausalLM.from_pretrained(opts.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        model = model.to(dtype=torch.bfloat16)
    model = get_peft_model(model, lora_config())
    counter = TokenCounter()
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="distributed-bench-"),
        per_device_train_batch_size=opts.batch // world,
        max_steps=opts.steps,
        learning_rate=2e-4,
        logging_steps=opts.steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        include_num_input_tokens_seen="no",
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        ddp_backend=("nccl" if device == "cuda" else "gloo") if world > 1 else None,
        # As the trainer sets it: every LoRA parameter takes part in each step.
        ddp_find_unused_parameters=False,
        seed=0,
        data_seed=0,
    )
    packing = KeepLabelledLogits(PackingCollator(counter, pad_token_id=tokenizer.pad_token_id))
    # The first step (lazy initialisation, DDP's first bucket rebuild) is warm-up: timed from its end,
    # its batch's tokens left out. Counted at collation, not at the step's end, because the data loader
    # collates one batch ahead of the step that trains it.
    first_batch: list[int] = []

    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = packing(rows)
        if not first_batch:
            first_batch.append(counter.tokens)
        return dict(batch)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=collate,
        compute_loss_func=labelled_token_loss,
    )
    warm: list[float] = []

    class WarmUp(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 1:
                warm.append(time.perf_counter())

    trainer.add_callback(WarmUp())
    trainer.train()
    elapsed = time.perf_counter() - warm[0]
    tokens = torch.tensor([counter.tokens - first_batch[0]], dtype=torch.int64)
    seconds = torch.tensor([elapsed], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(tokens)
        dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if rank == 0:
        result = {
            "ranks": world,
            "tokens": int(tokens.item()),
            "seconds": float(seconds.item()),
            "tokens_per_second": tokens.item() / seconds.item(),
            "threads_per_rank": torch.get_num_threads(),
        }
        Path(opts.result).write_text(json.dumps(result))
    return 0


def launch(opts: argparse.Namespace, ranks: int, model_dir: Path, result: Path) -> dict[str, Any]:
    """One side, through torch elastic as the trainer's launcher runs its workers."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={ranks}",
        "--nnodes=1",
        "--rdzv-backend=static",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        str(Path(__file__).resolve()),
        "--worker",
        f"--model-dir={model_dir}",
        f"--result={result}",
        f"--steps={opts.steps}",
        f"--batch={opts.batch}",
        f"--max-seq-length={opts.max_seq_length}",
    ]
    # The worker is this script again: its directory (and trainer_bench beside it) is on its sys.path.
    subprocess.run(command, check=True)
    return dict(json.loads(result.read_text()))


def prepare_model(name: str, directory: Path) -> Path:
    """The bench's model (trainer_bench.load) as a plain safetensors directory every rank loads."""
    from trainer_bench import load

    model, _ = load(name, directory)
    model.save_pretrained(directory / "model")
    return directory / "model"


def table(results: dict[int, dict[str, Any]], meta: dict[str, Any]) -> str:
    one, many = results[1], results[meta["ranks"]]
    ratio = many["tokens_per_second"] / one["tokens_per_second"]
    lines = [
        f"Model `{meta['model']}` (LoRA r=16 on all linear layers), {meta['device']}, global batch "
        f"{meta['batch']} rows, {meta['steps'] - 1} timed optimizer steps per side after one warm-up step (best of {meta['repeats']}), "
        "packed rows, the same data on both sides.",
        "",
        "| ranks | batch per rank | threads per rank | tokens/s (all ranks) | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in sorted(results):
        r = results[n]
        lines.append(
            f"| {n} | {meta['batch'] // n} | {r['threads_per_rank']} | {r['tokens_per_second']:.0f} "
            f"| {r['seconds']:.1f} |"
        )
    lines += ["", f"**Scaling: {ratio:.2f}x** the tokens/s of one rank with {meta['ranks']} ranks."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(MODEL_TITLES), default="smollm2")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps, the first one warm-up")
    parser.add_argument("--batch", type=int, default=8, help="global batch (rows per optimizer step)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--write-docs", action="store_true", help="update the section in docs/benchmarks.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.worker:
        return worker(opts)
    if opts.batch % opts.ranks:
        parser.error(f"--batch {opts.batch} does not split evenly over {opts.ranks} ranks")

    import torch

    scratch = Path(tempfile.mkdtemp(prefix="distributed-bench-"))
    model_dir = prepare_model(opts.model, scratch)
    gpus = torch.cuda.device_count()
    device = (
        f"{gpus} x {torch.cuda.get_device_name()}"
        if gpus
        else f"CPU ({platform.machine()}, {os.cpu_count()} cores shared by the ranks)"
    )
    if gpus and gpus < opts.ranks:
        print(f"{gpus} GPU(s) for {opts.ranks} ranks: scaling needs a GPU per rank", file=sys.stderr)
        return 2
    best = best_of(
        opts.repeats, [1, opts.ranks], lambda n: launch(opts, n, model_dir, scratch / f"result-{n}.json")
    )
    meta = {
        "model": MODEL_TITLES[opts.model],
        "device": device,
        "ranks": opts.ranks,
        "batch": opts.batch,
        "steps": opts.steps,
        "repeats": opts.repeats,
    }
    section = table(best, meta)
    print(section)
    if opts.write_docs:
        from benchdocs import write_section

        args = " ".join(a for a in sys.argv[1:] if a != "--write-docs")
        command = (
            f"python bench/distributed_bench.py {args}".strip() + "   # make bench-trainer: the defaults"
        )
        note = (
            "On CPU the ranks share the machine's cores, so this is the cost of data parallelism "
            "(the gradient all-reduce over gloo, smaller pieces of each batch), not a speed-up; "
            "multi-GPU scaling needs a machine with a GPU per rank. Absolute rates move with the shared "
            "machine's load from run to run; the ratio is measured within one run."
        )
        write_section("distributed-bench", "Data-parallel scaling", f"    {command}\n\n{section}\n\n{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two training pods on one node: do they share its cores fairly?

Each "pod" is a process running the same CPU training steps (a small random Llama, forward +
backward + AdamW, batch of 8 x 128 tokens) for a fixed time, its thread pools sized the way the
trainer sizes them (`finetune_trainer.threads.configure` with the CPU limit the downward API gives).
Three runs, one after the other, all on this machine's cores:

- alone: one pod with every core (the reference rate);
- sized: two pods at once, each with a CPU limit of half the cores (what the operator now passes);
- unsized: two pods at once, each sizing its pools from the node's cores (what happened before).

The report gives each pod's steps/s, the fairness (slower / faster pod) and the total against the
reference. Run: python bench/threads_bench.py [--seconds 60] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchdocs import write_section


def worker(seconds: float) -> None:
    """One pod: threads from the environment, then as many training steps as fit in `seconds`."""
    from finetune_trainer import threads

    count = threads.configure(os.environ)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    threads.apply_to_torch(count)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    model = LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, config.vocab_size, (8, 128))
    steps, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        steps += 1
    elapsed = time.monotonic() - started
    print(json.dumps({"threads": torch.get_num_threads(), "steps": steps, "rate": steps / elapsed}))


def run(pods: list[dict[str, str]], seconds: float) -> list[dict[str, float]]:
    procs = []
    for extra in pods:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
        env.update(extra)
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--worker", "--seconds", str(seconds)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with exit {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/threads_bench.py", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.seconds)
        return 0
    cores = len(os.sched_getaffinity(0))
    half = str(max(1, cores // 2) * 1000)
    node = str(cores * 1000)  # an unset limit, as the downward API reports it
    alone = run([{"FTO_CPU_LIMIT": node}], args.seconds)
    sized = run([{"FTO_CPU_LIMIT": half, "FTO_CPU_REQUEST": half}] * 2, args.seconds)
    # Before: nothing told the pods their share, so each sized its pools from the node's cores.
    unsized = run([{"FTO_CPU_LIMIT": node}] * 2, args.seconds)
    reference = alone[0]["rate"]
    lines = [
        f"{cores} cores, {args.seconds:.0f} s per run; steps/s of a 4-layer Llama (hidden 128), batch 8 x 128 tokens",
        "",
        "| run | threads per pod | steps/s per pod | fairness (slower / faster) | total vs one pod alone |",
        "|---|---|---|---|---|",
    ]
    for name, res in (("one pod alone", alone), ("two pods, sized", sized), ("two pods, unsized", unsized)):
        rates = [r["rate"] for r in res]
        lines.append(
            f"| {name} | {', '.join(str(r['threads']) for r in res)} | "
            f"{', '.join(f'{x:.3f}' for x in rates)} | {min(rates) / max(rates):.2f} | "
            f"{sum(rates) / reference:.2f} |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write_docs:
        command = f"python bench/threads_bench.py --seconds {args.seconds:.0f} --write-docs"
        write_section("threads", "Threads: two pods on one node", f"Command: `{command}`\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

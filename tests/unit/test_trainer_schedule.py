"""Pure helpers of the training loop: the gradual-unfreezing schedule and the thread count."""

from __future__ import annotations

import pytest
from finetune_trainer.threads import configure, thread_count
from finetune_trainer.train import unfrozen_layer_count


def test_gradual_unfreezing_goes_from_the_top_down() -> None:
    # 3 epochs, 12 layers: the top third, then two thirds, then everything.
    assert [unfrozen_layer_count(e, 3, 12) for e in (0.0, 0.5, 1.0, 2.0, 2.99)] == [4, 4, 8, 12, 12]
    # Fractional epochs count the partial last epoch as a stage of its own.
    assert unfrozen_layer_count(0.0, 1.5, 10) == 5
    assert unfrozen_layer_count(1.2, 1.5, 10) == 10
    assert unfrozen_layer_count(0.0, 1, 2) == 2


@pytest.mark.parametrize(
    ("limit_m", "request_m", "host", "threads"),
    [
        (8000, 8000, 128, 8),  # cpu: "8" on a 128-core node: 8 threads, not 128
        (128_000, 8000, 128, 8),  # no limit (the downward API reports the node's): the request
        (None, 2500, 64, 3),  # 2.5 cores requested: rounded up
        (500, 500, 16, 1),  # half a core: one thread
        (4000, None, 2, 2),  # never more than the cores this process sees
        (None, None, 6, 6),  # nothing known: the cores this process sees
    ],
)
def test_threads_follow_the_containers_cpu(
    limit_m: int | None, request_m: int | None, host: int, threads: int
) -> None:
    assert thread_count(limit_m, request_m, host) == threads


def test_thread_pools_are_sized_before_torch_starts_and_the_pods_own_setting_wins() -> None:
    env = {"FTO_CPU_LIMIT": "1000", "FTO_CPU_REQUEST": "1000"}
    assert configure(env) == 1
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == env["RAYON_NUM_THREADS"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    env = {"FTO_CPU_LIMIT": "1000", "OMP_NUM_THREADS": "3"}
    assert configure(env) == 3
    assert env["MKL_NUM_THREADS"] == "1"

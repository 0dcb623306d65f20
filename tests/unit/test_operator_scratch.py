"""The trainer pod's scratch volume: its ephemeral-storage request and sizeLimit follow the model's and
the dataset's sizes that validation measured (operator/finetune_operator/scratch.py)."""

from __future__ import annotations

import pytest
from finetune_contract.spec import MethodType
from finetune_operator.scratch import GIB, MIB, quantity, trainer_scratch

FLOOR = 10 * GIB


def sized(method: MethodType = MethodType.LORA, **kw: object) -> tuple[int, int | None]:
    args: dict[str, object] = {
        "method": method,
        "lora_rank": 16,
        "weight_bytes": 270 * MIB,
        "gguf": False,
        "downloaded": True,
        "dataset_file_bytes": 5 * MIB,
        "minimum": FLOOR,
    } | kw
    s = trainer_scratch(**args)  # type: ignore[arg-type]
    return s.request, s.size_limit


def test_a_small_lora_job_requests_its_downloads_and_gets_the_platforms_floor() -> None:
    request, limit = sized()
    assert request == 270 * MIB + 5 * MIB + GIB  # the model, one dataset file, caches
    assert limit == FLOOR


def test_a_full_fine_tune_of_an_8b_model_gets_room_for_its_training_state() -> None:
    # 16 GB of bf16 weights: 8e9 parameters; fp32 weights + two Adam moments = 12 bytes each, four
    # states on disk at once (writing, previous, resumed from, best).
    request, limit = sized(MethodType.FULL, weight_bytes=16 * 10**9)
    assert request == pytest.approx(16 * 10**9 + 5 * MIB + GIB, abs=MIB)
    assert limit is not None
    assert limit == pytest.approx(request + 4 * 12 * 8 * 10**9, abs=MIB)
    lora_request, lora_limit = sized(weight_bytes=16 * 10**9)
    assert lora_request == request  # the same downloads
    assert lora_limit is not None
    assert lora_limit < limit / 10  # an adapter's state is a few percent of the model's
    assert lora_limit > request  # ... but there is room for it
    _, rank_256 = sized(weight_bytes=16 * 10**9, lora_rank=256)
    assert rank_256 is not None
    assert rank_256 > lora_limit  # rank makes it larger


def test_a_model_used_in_place_is_not_counted_as_a_download_but_its_state_is() -> None:
    request, limit = sized(MethodType.FULL, weight_bytes=16 * 10**9, downloaded=False)
    assert request == 5 * MIB + GIB
    assert limit == pytest.approx(request + 4 * 12 * 8 * 10**9, abs=MIB)


def test_a_quantized_gguf_counts_more_parameters_per_byte() -> None:
    _, safetensors = sized(MethodType.FULL, weight_bytes=4 * 10**9)
    _, gguf = sized(MethodType.FULL, weight_bytes=4 * 10**9, gguf=True)
    assert safetensors is not None
    assert gguf is not None
    assert gguf > 3 * safetensors


def test_an_unknown_model_size_leaves_the_volume_unbounded_but_still_requests_the_dataset() -> None:
    request, limit = sized(weight_bytes=None)
    assert limit is None
    assert request == 5 * MIB + GIB


def test_sizes_are_whole_mebibytes_as_kubernetes_quantities() -> None:
    request, limit = sized(weight_bytes=123_456_789, dataset_file_bytes=1)
    assert request % MIB == 0
    assert limit is not None
    assert limit % MIB == 0
    assert quantity(MIB + 1) == "2Mi"
    # The API server's canonical form, so what status shows is what the pod's spec reads back as.
    assert quantity(10 * GIB) == "10Gi"
    assert quantity(2 * 1024 * GIB) == "2Ti"
    assert quantity(10 * GIB + MIB) == "10241Mi"

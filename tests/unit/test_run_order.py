"""The order the suite's files reach the test workers (tests/support/order.py)."""

from __future__ import annotations

from tests.support.order import run_order

IDS = [
    "tests/unit/test_a.py::test_1",
    "tests/unit/test_a.py::test_2",
    "tests/unit/test_a.py::test_3",
    "tests/integration/test_small.py::test_1",
    "tests/integration/test_big.py::test_1",
    "tests/integration/test_big.py::test_2",
    "tests/e2e/test_observability.py::test_1",
    "tests/e2e/test_finetune_e2e.py::test_1",
    "tests/unit/test_b.py::test_1",
]


def test_end_to_end_first_then_integration_then_unit_larger_files_first() -> None:
    ordered = [IDS[i] for i in run_order(IDS)]
    assert ordered == [
        # e2e files have one test each: they keep their collection order
        "tests/e2e/test_observability.py::test_1",
        "tests/e2e/test_finetune_e2e.py::test_1",
        "tests/integration/test_big.py::test_1",
        "tests/integration/test_big.py::test_2",
        "tests/integration/test_small.py::test_1",
        "tests/unit/test_a.py::test_1",
        "tests/unit/test_a.py::test_2",
        "tests/unit/test_a.py::test_3",
        "tests/unit/test_b.py::test_1",
    ]


def test_a_files_tests_stay_together_in_their_own_order_even_when_collected_apart() -> None:
    ids = ["tests/unit/x.py::b", "tests/unit/y.py::a", "tests/unit/x.py::a"]
    assert [ids[i] for i in run_order(ids)] == [
        "tests/unit/x.py::b",
        "tests/unit/x.py::a",
        "tests/unit/y.py::a",
    ]


def test_every_test_is_kept_once() -> None:
    assert sorted(run_order(IDS)) == list(range(len(IDS)))

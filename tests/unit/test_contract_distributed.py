"""The shape of a distributed run (finetune_contract.distributed), as operator and trainer both read it."""

from __future__ import annotations

import pytest
from finetune_contract.distributed import PORT_RANGE, World, rendezvous_port


def test_one_process_per_gpu_on_each_node_and_one_on_cpu() -> None:
    assert World.for_resources(gpus=4, nodes=2) == World(nodes=2, nproc_per_node=4)
    assert World.for_resources(gpus=4, nodes=2).size == 8
    assert World.for_resources(gpus=0, nodes=1) == World()
    assert not World().distributed
    assert World(nodes=2).distributed
    assert World(nproc_per_node=2).distributed


def test_the_env_round_trips_and_absent_names_mean_one() -> None:
    w = World(nodes=3, nproc_per_node=2)
    assert World.from_env(w.env()) == w
    assert World.from_env({}) == World()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PET_NNODES": "two"}, "PET_NNODES='two' is not a whole number"),
        ({"PET_NPROC_PER_NODE": "0"}, "at least one node and one process"),
    ],
)
def test_a_bad_world_says_which_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        World.from_env(env)


def test_rendezvous_ports_are_stable_per_attempt_and_differ_between_jobs() -> None:
    low, high = PORT_RANGE
    ports = {rendezvous_port(f"uid-{i}", 1) for i in range(200)}
    assert all(low <= p < high for p in ports)
    # Jobs sharing one network namespace rarely meet on one port (200 jobs, 10,000 ports).
    assert len(ports) >= 190
    assert rendezvous_port("uid-1", 2) == rendezvous_port("uid-1", 2)
    assert rendezvous_port("uid-1", 1) != rendezvous_port("uid-1", 2)

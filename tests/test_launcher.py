"""lathe's launcher: where a node's ranks sit in the job, the variables each rank gets, and a failed rank
stopping its peers (the ranks here are small Python programs, not training runs)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from lathe.core.errors import LatheError
from lathe.training.launcher import Topology, _run_ranks, topology

# A rank: writes the distributed variables it got to stdout, then exits with FAIL_RANK's status on that rank and
# sleeps on the others (a DDP peer waiting for a collective the failed rank will never join).
RANK = """
import json, os, sys, time
names = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"]
print(json.dumps({n: os.environ.get(n) for n in names}), flush=True)
if os.environ.get("RANK") == os.environ.get("FAIL_RANK", "no rank"):
    sys.exit(3)
time.sleep(float(os.environ.get("SLEEP_S", "0")))
"""


def test_a_single_node_job_takes_a_free_local_port() -> None:
    topo = topology(2, {})
    assert (topo.world_size, topo.node_rank, topo.base_rank, topo.master_addr) == (2, 0, 0, "127.0.0.1")
    assert topo.master_port > 0
    assert topo.rank_env(1)["RANK"] == "1" and topo.rank_env(1)["LOCAL_WORLD_SIZE"] == "2"


def test_a_node_of_a_multi_node_job_is_placed_by_its_environment() -> None:
    env = {"WORLD_SIZE": "6", "NODE_RANK": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"}
    topo = topology(2, env)
    assert topo == Topology(nproc=2, world_size=6, node_rank=2, master_addr="10.0.0.1", master_port=29500)
    assert [topo.rank_env(local)["RANK"] for local in (0, 1)] == ["4", "5"]
    assert topo.rank_env(1)["LOCAL_RANK"] == "1" and topo.rank_env(0)["NODE_RANK"] == "2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "5", "NODE_RANK": "0", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "WORLD_SIZE=5 is not a multiple"),
        ({"WORLD_SIZE": "4", "NODE_RANK": "1"}, "needs MASTER_ADDR, MASTER_PORT in its environment"),
        (
            {"WORLD_SIZE": "4", "NODE_RANK": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"},
            "NODE_RANK=2 is outside a job of 2 nodes",
        ),
    ],
)
def test_a_misplaced_node_is_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(LatheError, match=message):
        topology(2, env)


def rank_variables(logs: Path, rank: int) -> dict[str, str | None]:
    return json.loads((logs / f"rank{rank}.stdout.txt").read_text().splitlines()[0])


def test_every_rank_gets_its_variables_and_logs(tmp_path: Path) -> None:
    topo = Topology(nproc=2, world_size=4, node_rank=1, master_addr="127.0.0.1", master_port=29511)
    assert _run_ranks([sys.executable, "-c", RANK], topo, {}, tmp_path) == 0
    assert [rank_variables(tmp_path, rank)["RANK"] for rank in (2, 3)] == ["2", "3"]
    assert rank_variables(tmp_path, 3) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29511",
    }


def test_a_rank_alone_trains_without_a_process_group(tmp_path: Path) -> None:
    assert _run_ranks([sys.executable, "-c", RANK], topology(1, {}), {}, tmp_path) == 0
    assert set(rank_variables(tmp_path, 0).values()) == {None}


def test_a_failed_rank_stops_its_peers_and_fails_the_job(tmp_path: Path) -> None:
    topo = topology(2, {})
    started = time.monotonic()
    code = _run_ranks([sys.executable, "-c", RANK], topo, {"FAIL_RANK": "1", "SLEEP_S": "120"}, tmp_path)
    assert code == 3
    assert time.monotonic() - started < 60  # rank 0 was stopped, not waited for
    assert rank_variables(tmp_path, 0)["RANK"] == "0"  # it had started

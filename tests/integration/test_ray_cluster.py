"""`fedfusion simulate --ray-address`: a federation on an existing two-node Ray cluster started on 127.0.0.1.

The cluster is real: `ray start --head` with one CPU and `ray start --address` (a second node with its own CPU
and a custom resource), both kept in the foreground (`--block`) and stopped by PID. Each simulated site needs one
CPU, so Flower's actor pool (one actor per CPU of each node) must place an actor on each node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from common.config import ConfigError
from common.privacy.ledger import Ledger
from common.runtime.processes import ProcessSet, free_port, wait_for_port
from simulations.ray_cluster import PROBE_PREFIX, ClusterError, check_cluster, parse_address
from tests.integration.hospitals import hospital, scenario_head

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SCENARIO = (scenario_head("two-hospitals", "test: two hospitals on a two-node Ray cluster")
            + hospital("cleveland", ("tabular", "text"), 250) + hospital("va_long_beach", ("tabular",), 160))


def _alive_nodes(address: str) -> list[dict]:
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']])); ray.shutdown()" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head (1 CPU) + one worker node (1 CPU, resource fedfusion_worker) on 127.0.0.1; stopped by PID."""
    tmp = tmp_path_factory.mktemp("raycluster")
    ray_tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ffrc-{os.getpid()}"  # Ray's socket paths must be short
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    common = ["--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--object-store-memory", "100000000",
              "--disable-usage-stats"]
    procs = ProcessSet()
    try:
        head = procs.start([str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard", "false",
                            "--temp-dir", str(ray_tmp), *common], env=env, log=tmp / "head.log")
        try:
            wait_for_port(port, timeout=90, proc=head, log=tmp / "head.log")
        except (RuntimeError, TimeoutError) as err:
            pytest.skip(f"Ray cannot start a head node on this machine: {err}")
        worker = procs.start([str(BIN / "ray"), "start", "--address", address, "--resources",
                              '{"fedfusion_worker": 1}', *common], env=env, log=tmp / "worker.log")
        nodes: list[dict] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(nodes) < 2:
            if worker.poll() is not None:
                break
            nodes = _alive_nodes(address)
            time.sleep(1)
        if len(nodes) < 2:
            log = (tmp / "worker.log").read_text(errors="replace")[-1500:]
            pytest.skip(f"Ray started a head node but no second node joined it within 120 s on this machine "
                        f"(worker exit code {worker.poll()}); worker log:\n{log}")
        yield address, nodes
    finally:
        procs.stop(grace=20)


def test_address_must_be_host_and_port():
    assert parse_address("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert parse_address("head.example.org:10001") == ("head.example.org", 10001)
    for bad in ("auto", "ray://10.0.0.1:10001", "127.0.0.1", "127.0.0.1:99999", ""):
        with pytest.raises(ConfigError, match="HOST:PORT|not a TCP port"):
            parse_address(bad)


def test_an_address_where_no_cluster_answers_is_refused_before_any_process(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(ClusterError, match=f"no Ray cluster answers at 127.0.0.1:{port}.*ray start --head"):
        check_cluster(f"127.0.0.1:{port}", shared=[tmp_path])


@pytest.mark.slow
def test_a_node_that_cannot_see_a_path_is_named(cluster, tmp_path):
    address, nodes = cluster
    missing = tmp_path / "not-shared"
    with pytest.raises(ClusterError) as info:
        check_cluster(address, shared=[tmp_path / "run", missing])
    msg = str(info.value)
    assert f"2 of 2 nodes of the Ray cluster at {address}" in msg
    assert msg.count(f"cannot see {missing}") == 2  # each node says so
    assert not list((tmp_path / "run").glob(f"{PROBE_PREFIX}*"))  # the token file is removed again


@pytest.mark.slow
def test_a_federation_runs_on_both_nodes_of_the_cluster(cluster, tmp_path):
    address, nodes = cluster
    assert sorted(n["Resources"].get("CPU") for n in nodes) == [1.0, 1.0]
    worker_ids = {n["NodeID"] for n in nodes if "fedfusion_worker" in n["Resources"]}
    scenario = tmp_path / "two.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", "simulate", "--scenario", str(scenario), "--out", str(out),
         "--quiet", "--rounds", "1", "--ray-address", address, "--set", "batch-size=64",
         "--set", "target-epsilon=2.0", "--set", "min-available-nodes=2"],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True
    for site in ("cleveland", "va_long_beach"):
        assert summary["sites"][site]["rounds_trained"] == 1
        rows = Ledger(out / "sites" / site / "ledger.sqlite").entries(site=site)
        assert [r.event for r in rows] == ["reserve", "confirm"]  # one ledger per site, in the shared run folder
    # Flower's actors: one per CPU of each node; which node each ran on, from the cluster's own actor table
    code = ("import json, ray; from ray._private import state; ray.init(address=%r, logging_level='ERROR', "
            "log_to_driver=False); a = state.actors(); print(json.dumps(sorted({v['Address']['NodeID'] for v in "
            "a.values() if v.get('ActorClassName', '').endswith('ClientAppActor')}))); ray.shutdown()" % address)
    actors = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert actors.returncode == 0, actors.stderr[-2000:]
    actor_nodes = set(json.loads(actors.stdout.strip().splitlines()[-1]))
    assert actor_nodes == {n["NodeID"] for n in nodes}, "Flower's actors did not use both nodes"
    assert worker_ids <= actor_nodes
    assert not (out / "logs" / "superlink.log").read_text().count("Traceback")

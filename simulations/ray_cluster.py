"""Running a simulation on an existing Ray cluster (``fedfusion simulate --ray-address HOST:PORT``).

Flower's simulation runtime runs every virtual site's ClientApp in a Ray actor, on whichever node of the
cluster has room. A site's privacy ledger (the source of truth of its ε) lives in the run folder, so every
node must see that folder, the code and the data at the same paths: otherwise two rounds of one site could
write to two different ledgers, and each would under-state what the site has spent. :func:`check_cluster`
refuses such a cluster before any Flower process starts, naming the node and the path it cannot see.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from common.config import ConfigError
from simulations.engine import SimulationError

__all__ = ["ClusterError", "NodeReport", "check_cluster", "parse_address"]

_ADDRESS = re.compile(r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]*|\[[0-9A-Fa-f:]+\]):(?P<port>[0-9]{1,5})$")
PROBE_PREFIX = ".ray-probe-"  # token file written into the run folder while the cluster is checked
REQUIRED_MODULES = ("flwr", "opacus", "torch")  # each node's Python must find these (same venv layout)


class ClusterError(SimulationError):
    """The Ray cluster cannot run this federation safely; the message names the node and why."""


@dataclass(frozen=True)
class NodeReport:
    """What one alive node of the cluster saw."""

    node_id: str
    address: str  # the node's IP as Ray reports it
    python: str  # sys.executable of the probe task on that node
    problems: tuple[str, ...]  # empty = the node can run sites of this federation


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` of a Ray cluster's head (its GCS port, 6379 unless ``ray start --head --port``)."""
    m = _ADDRESS.match(address.strip())
    if not m:
        raise ConfigError(f"--ray-address {address!r}: expected HOST:PORT of the cluster's head node, e.g. "
                          "127.0.0.1:6379 (what `ray start --head` printed); Ray Client addresses (ray://) and "
                          "'auto' are not accepted: the cluster must be named explicitly")
    port = int(m.group("port"))
    if not 0 < port < 65536:
        raise ConfigError(f"--ray-address {address!r}: port {port} is not a TCP port (1-65535)")
    return m.group("host").strip("[]"), port


def _reachable(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _probe(paths: list[str], token_file: str, token: str, modules: tuple[str, ...]) -> tuple[str, list[str]]:
    """Runs ON each node: which of ``paths`` it cannot see, and whether the token reads the same."""
    import importlib.util
    import sys as _sys
    from pathlib import Path as _Path

    problems = [f"cannot see {p}" for p in paths if not _Path(p).exists()]
    try:
        if _Path(token_file).read_text() != token:
            problems.append(f"{token_file} holds another content: a different folder of the same name, not the "
                            "shared one")
    except OSError as err:
        problems.append(f"cannot read {token_file} ({err.strerror or err}): the run folder is not shared with it")
    problems += [f"its Python ({_sys.executable}) cannot import {m}" for m in modules
                 if importlib.util.find_spec(m) is None]
    return _sys.executable, problems


def check_cluster(address: str, *, shared: Sequence[Path], timeout: float = 120.0) -> list[NodeReport]:
    """Check that every alive node of the cluster at ``address`` sees ``shared`` (the first: the run folder).

    A token file with a fresh random content is written into ``shared[0]``; a task pinned to each node
    (hard node affinity, no CPU reserved) reads it back and checks the other paths and the Python modules.

    Returns
    -------
    list[NodeReport]
        One report per node, all without problems.

    Raises
    ------
    ConfigError
        ``address`` is not HOST:PORT.
    ClusterError
        Nothing answers at ``address``, or a node cannot see a path or import what the sites need.
    """
    host, port = parse_address(address)
    if not _reachable(host, port, timeout=5.0):
        raise ClusterError(f"no Ray cluster answers at {address}: start one there with `ray start --head --port "
                           f"{port}` (and `ray start --address {address}` on each other machine), or leave out "
                           "--ray-address to run on a private Ray instance on this machine")
    run_dir = Path(shared[0]).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    token_file = run_dir / f"{PROBE_PREFIX}{token[:8]}"
    token_file.write_text(token)
    paths = [str(Path(p).resolve()) for p in shared]
    import ray  # heavy (seconds): only where a cluster is used
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pythonpath = os.pathsep.join([*sys.path, *filter(None, [os.environ.get("PYTHONPATH")])])
    try:
        ray.init(address=f"{host}:{port}", logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
        try:
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            probe = ray.remote(num_cpus=0)(_probe)
            futures = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(paths, str(token_file), token, REQUIRED_MODULES) for n in nodes]
            answers = ray.get(futures, timeout=timeout)
        finally:
            ray.shutdown()
    except ClusterError:
        raise
    except Exception as err:  # Ray's own errors: version mismatch, a node that never answers ...
        raise ClusterError(f"could not check the Ray cluster at {address}: {type(err).__name__}: {err}") from err
    finally:
        token_file.unlink(missing_ok=True)
    reports = [NodeReport(n["NodeID"], str(n.get("NodeManagerAddress", "?")), py, tuple(problems))
               for n, (py, problems) in zip(nodes, answers)]
    bad = [r for r in reports if r.problems]
    if bad:
        lines = [f"node {r.node_id[:12]} ({r.address}): " + "; ".join(r.problems) for r in bad]
        raise ClusterError(
            f"{len(bad)} of {len(reports)} nodes of the Ray cluster at {address} cannot run this federation's sites:\n  "
            + "\n  ".join(lines) + "\nEvery node must see the run folder, the code and the data at the same paths "
            "(a shared filesystem): each site's privacy ledger is written in the run folder by whichever node runs "
            "that site, and split ledgers would under-state its ε.")
    return reports

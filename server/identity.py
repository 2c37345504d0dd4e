"""Who sent a reply: the node that Flower authenticated, bound to a site by the scenario or the operator's registration.

A reply's own words (its ``site`` field, its ``num-examples``, the branches it carries) are claims. The server
binds each reply to a site through the node id Flower delivers it from, and takes that site's declared modalities
and public ``max-records`` bound from a source the site does not write:

* **simulation**: the scenario. Flower 1.42's simulation registers the node of partition ``i`` as the ``i``-th node
  of its in-memory link state (``flwr/server/superlink/fleet/vce/vce_api.py``, ``_register_nodes``: one node per
  partition, in order), and ``InMemoryLinkState.get_node_info()`` lists nodes in that order; the ServerApp's
  ``InMemoryGrid`` shares that state. Partition ``i`` is the scenario's ``i``-th ``[[sites]]`` table
  (``common.config.resolve_site``), so node ``i`` is that site. The ServerApp starts before the nodes are registered:
  the map is read again whenever an unknown node id shows up (what was read is always a prefix of the final order).
* **deployment**: ``registered-sites.json``, written by ``fedfusion federation register`` (site name <-> SuperNode
  id <-> registered public key, with the site's modalities and ``max-records``). Flower's SuperNode authentication
  ties the node id to the key, so a reply from that node comes from the holder of that key.

A node the registry does not know is no site: its replies fail (``server/replies.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import MODALITIES, ConfigError, RunConfig, Scenario, site_privacy
from common.models.params import BRANCHES

__all__ = ["REGISTRY_FILE", "RegisteredSite", "SiteRegistry", "find_registry_file", "registry_from_file",
           "registry_from_scenario", "resolve_registry", "scenario_branches", "simulation_node_order"]

REGISTRY_FILE = "registered-sites.json"  # in the operator's federation folder (server/federation_ops.py)


@dataclass(frozen=True)
class RegisteredSite:
    """One site as the server knows it, from a source the site does not write."""

    name: str  # the site's name: its ledger key
    modalities: tuple[str, ...]  # the branches it may train (plus the shared head)
    max_records: int | None  # its declared, public bound on training records: the aggregation weight
    public_key: str = ""  # deployment: the OpenSSH public key the operator registered ("" in simulation)

    @property
    def branches(self) -> frozenset[str]:
        """The branches a reply of this site may carry: its modalities and the shared head."""
        return frozenset((*self.modalities, "head"))


class SiteRegistry:
    """Node id -> :class:`RegisteredSite`.

    Parameters
    ----------
    declared : Sequence[RegisteredSite]
        Every site of the federation (known before any node connects).
    source : str
        Where the binding comes from (for log lines and errors).
    nodes : Mapping[int, str] | None
        Node id -> site name, when fixed (deployment).
    discover : Callable[[], Sequence[int]] | None
        Node ids in partition order, read again when an unknown node shows up (simulation).
    """

    def __init__(self, declared: Sequence[RegisteredSite], *, source: str, nodes: Mapping[int, str] | None = None,
                 discover: Callable[[], Sequence[int]] | None = None) -> None:
        names = [s.name for s in declared]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: site names must be unique; got {names}")
        self.declared = tuple(declared)
        self.source = source
        self._by_name = {s.name: s for s in declared}
        self._discover = discover
        self._nodes: dict[int, str] = dict(nodes or {})
        unknown = sorted(set(self._nodes.values()) - set(self._by_name))
        if unknown:
            raise ConfigError(f"{source}: nodes bound to sites that are not declared: {unknown}")

    def lookup(self, node_id: int) -> RegisteredSite | None:
        """The site that node ``node_id`` is, or None if it is none of the federation's sites."""
        if node_id not in self._nodes and self._discover is not None:
            order = list(self._discover())
            if len(order) > len(self.declared):
                raise ConfigError(f"{self.source}: the simulation registered {len(order)} nodes for "
                                  f"{len(self.declared)} sites; run it with num-supernodes={len(self.declared)}")
            self._nodes = {node: self.declared[i].name for i, node in enumerate(order)}
        name = self._nodes.get(node_id)
        return None if name is None else self._by_name[name]

    def holders(self, branch: str) -> list[RegisteredSite]:
        """The declared sites that may train ``branch`` (every site holds the head)."""
        return [s for s in self.declared if branch in s.branches]


def registry_from_scenario(scenario: Scenario, *, discover: Callable[[], Sequence[int]]) -> SiteRegistry:
    """Simulation: the scenario's sites, node ``i`` of ``discover()`` being partition ``i``."""
    declared = [RegisteredSite(s.name, s.modalities, site_privacy(s.privacy_overrides, f"{scenario.path} site "
                                                                    f"'{s.name}' [sites.privacy]").max_records)
                for s in scenario.sites]
    return SiteRegistry(declared, source=f"scenario {scenario.path}", discover=discover)


def simulation_node_order(grid: object) -> Callable[[], Sequence[int]] | None:
    """For the simulation's ``InMemoryGrid``: a function listing node ids in registration (partition) order.

    None for any other grid (deployment).
    """
    from flwr.superlink.grid import InMemoryGrid

    if not isinstance(grid, InMemoryGrid):
        return None
    return lambda: [info.node_id for info in grid.state.get_node_info()]


def _field(entry: Mapping[str, object], key: str, where: str, check: Callable[[object], bool], expected: str):
    value = entry.get(key)
    if not check(value):
        raise ConfigError(f"{where}: '{key}' is {value!r}; expected {expected}. Register the site again with "
                          "`fedfusion federation register DIR KEY.pub --name NAME --modalities ... --max-records N` "
                          "(DEPLOY.md section 2)")
    return value


def registry_from_file(path: Path, scenario: Scenario) -> SiteRegistry:
    """Deployment: the operator's ``registered-sites.json`` (name -> node id, key, modalities, max-records).

    Raises
    ------
    ConfigError
        If the file is unreadable, or a site lacks its node id, modalities or max-records, or declares a modality
        the federation's model (``scenario``) does not have.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the operator's site registration ({err})") from err
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path}: no registered site; register each with `fedfusion federation register`")
    declared, nodes = [], {}
    for name, entry in sorted(raw.items()):
        where = f"{path} site '{name}'"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a table of node-id, modalities, max-records")
        node = _field(entry, "node-id", where, lambda v: isinstance(v, int) and not isinstance(v, bool),
                      "the SuperNode id `register` printed")
        mods = _field(entry, "modalities", where, lambda v: isinstance(v, list) and bool(v) and "tabular" in v
                      and set(v) <= set(scenario.modalities),
                      f"a list of the modalities the site holds, with 'tabular', drawn from the federation's "
                      f"{list(scenario.modalities)}")
        bound = _field(entry, "max-records", where, lambda v: isinstance(v, int) and not isinstance(v, bool)
                       and v >= 1, "the site's declared max-records (its site.toml [privacy])")
        key = entry.get("public-key-line", "")
        declared.append(RegisteredSite(name, tuple(m for m in MODALITIES if m in mods), int(bound), str(key)))
        nodes[int(node)] = name
    return SiteRegistry(declared, source=f"registration {path}", nodes=nodes)


def find_registry_file(run: RunConfig) -> Path | None:
    """``site-registry`` if set; else ``registered-sites.json`` in ``out-dir`` or the nearest folder above it."""
    if run.paths.site_registry is not None:
        if not run.paths.site_registry.is_file():
            raise ConfigError(f"run config: 'site-registry' {run.paths.site_registry} is not a file (the operator's "
                              f"{REGISTRY_FILE}, written by `fedfusion federation register`)")
        return run.paths.site_registry
    out = run.paths.out_dir
    for folder in ([out, *out.parents] if out is not None else []):
        if (folder / REGISTRY_FILE).is_file():
            return folder / REGISTRY_FILE
    return None


def resolve_registry(grid: object, run: RunConfig, scenario: Scenario) -> SiteRegistry:
    """The registry of this run: the scenario in simulation, the operator's registration in deployment.

    Raises
    ------
    ConfigError
        In deployment without a registration: the server could not tell which site a reply comes from.
    """
    order = simulation_node_order(grid)
    if order is not None:
        return registry_from_scenario(scenario, discover=order)
    path = find_registry_file(run)
    if path is None:
        raise ConfigError(
            f"no {REGISTRY_FILE}: a deployed server binds each reply to the site registered for its node, and "
            "found no registration in out-dir or the folders above it. Pass "
            f"--run-config 'site-registry=\"/ABS/DIR/{REGISTRY_FILE}\"' (written by `fedfusion federation register`)")
    return registry_from_file(path, scenario)


def scenario_branches(scenario: Scenario) -> tuple[str, ...]:
    """The branches of the federation's model: its modalities and the shared head."""
    return tuple(b for b in BRANCHES if b in scenario.modalities or b == "head")

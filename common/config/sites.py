"""Scenario files (simulation) and site files (deployment) -> the settings of one site."""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.config.settings import (APP_DIR, DEVICES, MODALITIES, PACKAGED_SCENARIOS, ConfigError, PrivacySettings,
                                    RunConfig, _privacy, _Reader, app_defaults)
from common.file_memo import FileMemo

__all__ = ["SOURCE_ARG_KEYS", "SiteSpec", "Scenario", "SiteConfig", "load_scenario", "resolve_site", "load_site_file",
           "scenario_data_dir", "site_privacy", "write_with_site_privacy"]

# ------------------------------------------------------------------------ scenario / sites
@dataclass(frozen=True)
class SiteSpec:
    name: str  # site slug, unique in the federation (also its ledger key)
    source: str  # data source registry key: "mapped" (common/data/sources.py)
    source_args: Mapping[str, Any]  # arguments for that source (e.g. hospital = "cleveland")
    modalities: tuple[str, ...]  # modalities this site holds
    privacy_overrides: Mapping[str, Any] = field(default_factory=dict)  # the site's own privacy keys (its file)


@dataclass(frozen=True)
class Scenario:
    name: str  # scenario name, e.g. "hospitals"
    description: str  # one line for reports
    modalities: tuple[str, ...]  # union of the sites' modalities = branches of the global model
    sites: tuple[SiteSpec, ...]  # partition i of the simulation is sites[i]
    path: Path  # file it was read from
    schema: Path  # the federation's schema TOML (absolute): the global model is built from it alone
    # where the sites' relative paths (mapping) point: [scenario] data-dir, relative to the scenario file's folder;
    # default that folder. The run setting data-dir (--set data-dir=...) overrides it (resolve_site).
    data_dir: Path | None = None


@dataclass(frozen=True)
class SiteConfig:
    spec: SiteSpec  # what the site holds
    # the site's OWN privacy: its file's [privacy] (deployment) or its scenario entry's [sites.privacy] (simulation)
    # over the package defaults; never the run's values. What a run may ask of it: common.config.terms
    privacy: PrivacySettings
    data_dir: Path  # where the site's data source reads from
    state_dir: Path  # the site's own durable state: ledger.sqlite, caches
    device: str  # auto | cpu | cuda
    # keep frozen-encoder features of the site's notes and its decoded image files under state-dir/cache (derived
    # patient data: it stays at the site); False recomputes them in every message-process
    feature_cache: bool = True
    # simulation only (run setting site-cache-root): where the site's caches (text features, images, σ) live
    # instead of <state-dir>/cache, kept across runs. Never set from a run config for a deployed site: a server does
    # not say where a site writes
    cache_dir: Path | None = None
    # deployment: fork each message's flwr-clientapp from a supervisor that has imported the libraries once
    # (client/warm_start.py); False = Flower's own fresh process per message
    warm_start: bool = True
    # send the per-message timing split (compute/setup/startup seconds) in replies: a side channel of the number of
    # rows and the Poisson batch sizes. Simulation: True; a deployed site: its site.toml's `report-timing` (false)
    report_timing: bool = True
    # deployment: the federation's scenario this site accepts (site.toml [site] scenario; default the packaged
    # hospitals scenario); a run naming any other file is refused before any file is opened. None in simulation
    scenario_file: Path | None = None

    @property
    def feature_cache_path(self) -> Path | None:
        """The folder of the site's frozen-text-feature cache; None when ``feature_cache`` is off."""
        if not self.feature_cache:
            return None
        return self.cache_dir or self.state_dir / "cache"

    def scenario_for(self, run: RunConfig) -> Path:
        """The scenario file this site reads for ``run``: in deployment only its own (``scenario_file``).

        The run's ``scenario-file`` is compared as a string with the site's own and never opened otherwise, so no
        error a server can provoke tells it which files exist on the site's machine (issue 12, case 35).
        """
        if self.scenario_file is None:
            return run.paths.scenario_file
        if run.paths.scenario_file != self.scenario_file:
            raise ConfigError("run config: 'scenario-file' is not the scenario this site accepts (its site.toml "
                              "[site] scenario); a deployed site reads no file a run names")
        return self.scenario_file


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


_PRIVACY_KEYS = ("dp", "target-epsilon", "epsilon-budget", "delta", "max-grad-norm", "accountant",
                 "secure-mode", "noise-seed", "max-records", "privacy-mode", "duplicate-records")


def _site_spec(raw: Mapping[str, Any], where: str) -> SiteSpec:
    r = _Reader(raw, where)
    name = r.text("name")
    if not name or not name.replace("-", "_").replace("_", "").isalnum():
        raise ConfigError(f"{where}: 'name' must be a non-empty slug of letters, digits, '-' or '_'; got {name!r}")
    mods = raw.get("modalities")
    if not isinstance(mods, list) or not mods or any(m not in MODALITIES for m in mods):
        raise ConfigError(f"{where}: 'modalities' must be a non-empty list drawn from {MODALITIES}; got {mods!r}")
    if "tabular" not in mods:
        raise ConfigError(f"{where}: every site needs the 'tabular' modality (it carries the record); got {mods!r}")
    unknown = set(raw) - {"name", "source", "modalities", "privacy", *SOURCE_ARG_KEYS}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    privacy = raw.get("privacy", {})
    bad = set(privacy) - set(_PRIVACY_KEYS)
    if bad:
        raise ConfigError(f"{where}.privacy: unknown keys {sorted(bad)}; allowed: {_PRIVACY_KEYS}")
    args = {k: raw[k] for k in SOURCE_ARG_KEYS if k in raw}
    return SiteSpec(name=name, source=r.text("source"), source_args=args,
                    modalities=tuple(m for m in MODALITIES if m in mods), privacy_overrides=dict(privacy))


#: keys of a [[sites]] entry (or site.toml [site]) that are handed to the site's data source (common/data/sources.py)
SOURCE_ARG_KEYS = ("mapping", "select", "partition", "split-key", "test-fraction")


_SCENARIOS: FileMemo[Scenario] = FileMemo(size=8)


def load_scenario(path: Path) -> Scenario:
    """Read a scenario TOML: ``[scenario]`` plus one ``[[sites]]`` table per partition.

    Memoised in the process while the file is unchanged (:class:`common.file_memo.FileMemo`): a simulation's site
    actor resolves its site from the scenario in every message (a 1000-site file takes ~0.3 s to parse).
    """
    return _SCENARIOS.get((path,), str(path), lambda: _parse_scenario(path))


def _parse_scenario(path: Path) -> Scenario:
    raw = _read_toml(path)
    head = raw.get("scenario", {})
    sites_raw = raw.get("sites")
    if not isinstance(sites_raw, list) or not sites_raw:
        raise ConfigError(f"{path}: needs at least one [[sites]] table")
    sites = tuple(_site_spec(s, f"{path} [[sites]] #{i}") for i, s in enumerate(sites_raw))
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: site names must be unique; got {names}")
    mods = tuple(m for m in MODALITIES if any(m in s.modalities for s in sites))
    schema = head.get("schema")
    if not isinstance(schema, str) or not schema:
        raise ConfigError(f"{path} [scenario]: 'schema' must name the federation's schema TOML, relative to the "
                          f"scenario file (e.g. schema = \"../../data/schemas/heart.toml\"); got {schema!r}")
    folder = Path(path).resolve().parent
    schema_path = (folder / schema).resolve()
    if not schema_path.is_file():
        raise ConfigError(f"{path} [scenario] schema: {schema_path} not found (relative to the scenario's folder)")
    data = head.get("data-dir", ".")
    if not isinstance(data, str) or not data:
        raise ConfigError(f"{path} [scenario] data-dir: must be a folder, relative to the scenario file; got {data!r}")
    return Scenario(name=str(head.get("name", path.stem)), description=str(head.get("description", "")),
                    modalities=mods, sites=sites, path=path, schema=schema_path, data_dir=(folder / data).resolve())


def site_privacy(overrides: Mapping[str, Any], where: str) -> PrivacySettings:
    """A site's own privacy: its file's keys over the PACKAGE defaults (``[tool.flwr.app.config]``), never over
    a run's values (a run only asks: :func:`common.config.terms.privacy_terms`)."""
    defaults = app_defaults()
    flat = {k: defaults[k] for k in _PRIVACY_KEYS if k in defaults}
    flat.update(overrides)
    return _privacy(_Reader(flat, where))


def resolve_site(node_config: Mapping[str, Any], run: RunConfig) -> SiteConfig:
    """Find this node's site: ``site-config`` file (deployment) or partition id (simulation)."""
    if "site-config" in node_config:
        return load_site_file(Path(str(node_config["site-config"])), run=run)
    if "partition-id" not in node_config:
        raise ConfigError(
            "node config has neither 'site-config' (deployment) nor 'partition-id' (simulation); "
            "start the SuperNode with --node-config 'site-config=\"/abs/site.toml\"'"
        )
    scenario = load_scenario(run.paths.scenario_file)
    pid = int(node_config["partition-id"])
    if not 0 <= pid < len(scenario.sites):
        raise ConfigError(
            f"partition-id {pid} has no site in {scenario.path} ({len(scenario.sites)} sites); "
            f"run the simulation with num-supernodes={len(scenario.sites)}"
        )
    spec = scenario.sites[pid]
    state_root = run.paths.site_state_root or (run.paths.out_dir / "sites" if run.paths.out_dir else None)
    if state_root is None:
        raise ConfigError("set 'out-dir' or 'site-state-root' (absolute): each site needs a state folder for its ledger")
    return SiteConfig(
        spec=spec,
        privacy=site_privacy(spec.privacy_overrides, f"{scenario.path} site '{spec.name}' [sites.privacy]"),
        data_dir=scenario_data_dir(scenario, run),
        state_dir=state_root / spec.name,
        device=run.train.device,
        cache_dir=run.paths.site_cache_root / spec.name if run.paths.site_cache_root else None,
    )


def scenario_data_dir(scenario: Scenario, run: RunConfig) -> Path:
    """The folder a simulated site's relative paths resolve against: the run's ``data-dir`` if set, else the
    scenario's own (``[scenario] data-dir``, default the scenario file's folder)."""
    if run.paths.data_dir is not None:
        return run.paths.data_dir
    return scenario.data_dir or Path(scenario.path).resolve().parent


def load_site_file(path: Path, *, run: RunConfig) -> SiteConfig:
    """Read a deployed site's TOML (``[site]`` table + optional ``[privacy]``)."""
    raw = _read_toml(path)
    site = dict(raw.get("site", {}))
    if "privacy" in raw:
        site["privacy"] = raw["privacy"]
    state_dir, data_dir = site.pop("state-dir", None), site.pop("data-dir", None)
    scenario = site.pop("scenario", "")
    device = site.pop("device", run.train.device)
    flags = _Reader({"feature-cache": site.pop("feature-cache", True), "warm-start": site.pop("warm-start", True),
                     "report-timing": site.pop("report-timing", False)}, f"{path} [site]")
    feature_cache, warm_start = flags.boolean("feature-cache"), flags.boolean("warm-start")
    report_timing = flags.boolean("report-timing")
    spec = _site_spec(site, f"{path} [site]")
    r = _Reader({"state-dir": state_dir or "", "data-dir": data_dir or "", "scenario": scenario}, f"{path} [site]")
    sd = r.path("state-dir")
    if sd is None:
        raise ConfigError(f"{path} [site]: 'state-dir' (absolute) is required: it holds the site's privacy ledger")
    if spec.privacy_overrides.get("noise-seed", "secret") != "secret":
        raise ConfigError(f"{path} [privacy]: 'noise-seed' must be \"secret\" at a deployed site (or left out): "
                          "noise derived from the run's seed can be recomputed by the server, which voids the ε")
    privacy = site_privacy(spec.privacy_overrides, f"{path} [privacy]")
    return SiteConfig(spec=spec, privacy=privacy,
                      data_dir=r.path("data-dir") or _repo_data_dir(), state_dir=sd,
                      device=_Reader({"device": device}, str(path)).choice("device", DEVICES),
                      feature_cache=feature_cache, warm_start=warm_start, report_timing=report_timing,
                      scenario_file=r.path("scenario") or PACKAGED_SCENARIOS / "hospitals.toml")


def _repo_data_dir() -> Path:
    d = APP_DIR / "data"
    if not d.is_dir():
        raise ConfigError(
            f"'data-dir' is empty and there is no data folder next to the app ({d}); Flower's app bundle "
            "carries no data: pass --run-config 'data-dir=\"/abs/path/to/fedfusion/data\"'"
        )
    return d


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings accept JSON string escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise ConfigError(f"cannot write {v!r} to a scenario file")


def write_with_site_privacy(source: Path, dest: Path, changes: Mapping[str, Any]) -> Path:
    """Copy scenario ``source`` to ``dest`` with ``changes`` set in EVERY site's own privacy table.

    In a simulation the scenario plays each site's own file: this is the one, explicit way a simulation changes
    what the sites allow (``fedfusion simulate --site-privacy key=value``, e.g. ``dp=false`` for a non-private
    baseline). The copy is validated like any scenario; the original is not touched.
    """
    bad = set(changes) - set(_PRIVACY_KEYS)
    if bad:
        raise ConfigError(f"--site-privacy: unknown keys {sorted(bad)}; allowed: {_PRIVACY_KEYS}")
    raw = _read_toml(source)
    lines = [f"# COPY of {source} with every site's own privacy table changed for this run: "
             + ", ".join(f"{k} = {_toml_value(v)}" for k, v in changes.items()), ""]
    if "scenario" in raw:
        head = dict(raw["scenario"])
        folder = Path(source).resolve().parent  # the copy lives elsewhere: its relative paths become absolute
        for key, default in (("schema", None), ("data-dir", ".")):
            value = head.get(key, default)
            if isinstance(value, str) and value:
                head[key] = str((folder / value).resolve())
        lines += ["[scenario]", *(f"{k} = {_toml_value(v)}" for k, v in head.items()), ""]
    for site in raw.get("sites", []):
        site = dict(site)
        site["privacy"] = {**site.get("privacy", {}), **changes}
        lines += ["[[sites]]", *(f"{k} = {_toml_value(v)}" for k, v in site.items()), ""]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines))
    for spec in load_scenario(dest).sites:
        site_privacy(spec.privacy_overrides, f"{dest} site '{spec.name}' [sites.privacy]")
    return dest

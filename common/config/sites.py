"""Scenario files (simulation) and site files (deployment) -> the settings of one site."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from common.config.settings import (APP_DIR, DEVICES, MODALITIES, ConfigError, PrivacySettings, RunConfig,
                                    _privacy, _Reader)

__all__ = ["SOURCE_ARG_KEYS", "SiteSpec", "Scenario", "SiteConfig", "load_scenario", "resolve_site", "load_site_file",
           "scenario_data_dir"]

# ------------------------------------------------------------------------ scenario / sites
@dataclass(frozen=True)
class SiteSpec:
    name: str  # site slug, unique in the federation (also its ledger key)
    source: str  # data source registry key: "mapped" (common/data/sources.py)
    source_args: Mapping[str, Any]  # arguments for that source (e.g. hospital = "cleveland")
    modalities: tuple[str, ...]  # modalities this site holds
    privacy_overrides: Mapping[str, Any] = field(default_factory=dict)  # per-site privacy keys


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
    privacy: PrivacySettings  # run defaults merged with the site's overrides
    data_dir: Path  # where the site's data source reads from
    state_dir: Path  # the site's own durable state: ledger.sqlite, caches
    device: str  # auto | cpu | cuda
    # keep frozen-encoder features of the site's notes under state-dir/cache (derived patient data: it stays
    # at the site); False recomputes them in every message-process
    feature_cache: bool = True
    # deployment: fork each message's flwr-clientapp from a supervisor that has imported the libraries once
    # (client/warm_start.py); False = Flower's own fresh process per message
    warm_start: bool = True


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


_PRIVACY_KEYS = ("dp", "target-epsilon", "epsilon-budget", "delta", "max-grad-norm", "accountant",
                 "secure-mode", "noise-seed")


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


def load_scenario(path: Path) -> Scenario:
    """Read a scenario TOML: ``[scenario]`` plus one ``[[sites]]`` table per partition."""
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


def _merge_privacy(base: PrivacySettings, overrides: Mapping[str, Any], where: str) -> PrivacySettings:
    if not overrides:
        return base
    merged = {f.name: getattr(base, f.name) for f in fields(base)}
    keymap = {"dp": "enabled", "target-epsilon": "target_epsilon", "epsilon-budget": "epsilon_budget",
              "delta": "delta", "max-grad-norm": "max_grad_norm", "accountant": "accountant",
              "secure-mode": "secure_mode", "noise-seed": "noise_seed"}
    flat = {k: merged[v] for k, v in keymap.items()}
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
        privacy=_merge_privacy(run.privacy, spec.privacy_overrides, f"{scenario.path} site '{spec.name}'"),
        data_dir=scenario_data_dir(scenario, run),
        state_dir=state_root / spec.name,
        device=run.train.device,
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
    device = site.pop("device", run.train.device)
    flags = _Reader({"feature-cache": site.pop("feature-cache", True), "warm-start": site.pop("warm-start", True)},
                    f"{path} [site]")
    feature_cache, warm_start = flags.boolean("feature-cache"), flags.boolean("warm-start")
    spec = _site_spec(site, f"{path} [site]")
    r = _Reader({"state-dir": state_dir or "", "data-dir": data_dir or ""}, f"{path} [site]")
    sd = r.path("state-dir")
    if sd is None:
        raise ConfigError(f"{path} [site]: 'state-dir' (absolute) is required: it holds the site's privacy ledger")
    if spec.privacy_overrides.get("noise-seed", "secret") != "secret":
        raise ConfigError(f"{path} [privacy]: 'noise-seed' must be \"secret\" at a deployed site (or left out): "
                          "noise derived from the run's seed can be recomputed by the server, which voids the ε")
    # the run's noise-seed is the server's to set: a deployed site never takes its noise seed from it
    privacy = replace(_merge_privacy(run.privacy, spec.privacy_overrides, str(path)), noise_seed="secret")
    return SiteConfig(spec=spec, privacy=privacy,
                      data_dir=r.path("data-dir") or _repo_data_dir(), state_dir=sd,
                      device=_Reader({"device": device}, str(path)).choice("device", DEVICES),
                      feature_cache=feature_cache, warm_start=warm_start)


def _repo_data_dir() -> Path:
    d = APP_DIR / "data"
    if not d.is_dir():
        raise ConfigError(
            f"'data-dir' is empty and there is no data folder next to the app ({d}); Flower's app bundle "
            "carries no data: pass --run-config 'data-dir=\"/abs/path/to/fedfusion/data\"'"
        )
    return d

"""The only reader of run settings, scenario files and site files.

Every run setting has exactly one source of truth: ``[tool.flwr.app.config]`` in
``pyproject.toml`` (key and default). Flower hands the merged values to the apps as
``context.run_config``; :func:`parse_run_config` turns that mapping into frozen,
validated dataclasses. Nothing else in the code base reads ``run_config``,
``node_config`` or a scenario/site TOML file.

Where a site's settings come from
---------------------------------
* Simulation: Flower gives each node only ``partition-id`` and ``num-partitions``;
  the scenario file (``scenario-file``) maps partition *i* to its ``[[sites]]`` entry.
* Deployment: the SuperNode is started with
  ``--node-config 'site-config="/abs/site.toml"'``; that file describes the site.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "ConfigError",
    "FederationSettings",
    "ModelSettings",
    "TrainSettings",
    "PrivacySettings",
    "PathSettings",
    "CentralSettings",
    "PRIVACY_MODES",
    "RunConfig",
    "SiteSpec",
    "Scenario",
    "SiteConfig",
    "APP_DIR",
    "app_defaults",
    "parse_run_config",
    "load_scenario",
    "resolve_site",
    "load_site_file",
]

#: Folder holding ``pyproject.toml`` (the Flower app). In an installed app bundle this is
#: the bundle's folder, which carries code and TOML files but no data.
APP_DIR = Path(__file__).resolve().parents[1]
PACKAGED_SCENARIOS = APP_DIR / "simulations" / "scenarios"

FUSIONS = ("concat", "attention", "late")
TEXT_ENCODERS = ("minilm-frozen", "minilm-finetune-top", "tiny-bert")
IMAGE_ENCODERS = ("small-cnn", "resnet18-gn")
ACCOUNTANTS = ("prv", "rdp")
DEVICES = ("auto", "cpu", "cuda")
MODALITIES = ("tabular", "text", "image")
PRIVACY_MODES = ("sample", "central")  # sample: per-site DP-SGD | central: site-level DP by Flower's wrapper


class ConfigError(ValueError):
    """A setting is missing, of the wrong type or out of range; the message names it."""


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class FederationSettings:
    num_rounds: int  # FL rounds the server runs
    fraction_train: float  # fraction of connected sites sampled for training
    min_train_nodes: int  # minimum number of sites sampled per round
    fraction_evaluate: float  # fraction of sites sampled for evaluation
    fold_evaluation: bool  # evaluate the received global model inside the train reply
    round_timeout: float  # seconds to wait for replies in one round
    seed: int  # global seed: model init, splits, sampling
    federation_id: str  # stable id across restarts ("" = derived from the first run id)
    min_available_nodes: int  # sites that must be connected before a round starts


@dataclass(frozen=True)
class ModelSettings:
    fusion: str  # concat | attention | late
    text_encoder: str  # minilm-frozen | minilm-finetune-top | tiny-bert
    image_encoder: str  # small-cnn | resnet18-gn
    hidden_dim: int  # width of the fused representation


@dataclass(frozen=True)
class TrainSettings:
    local_epochs: int  # local passes over the site's training data per round
    batch_size: int  # expected Poisson batch size; Opacus' sample rate is 1/len(loader)
    learning_rate: float  # SGD learning rate
    momentum: float  # SGD momentum
    modality_dropout: float  # probability of hiding a present modality of a training sample
    device: str  # auto | cpu | cuda


@dataclass(frozen=True)
class PrivacySettings:
    enabled: bool  # DP-SGD on; off only for baselines and benchmarks
    target_epsilon: float  # ε reached by one run's planned training (rounds x epochs)
    epsilon_budget: float  # lifetime ε budget of the site's dataset across runs
    delta: float  # δ; 0.0 means "site default, strictly below 1/n"
    max_grad_norm: float  # per-sample clipping norm C
    accountant: str  # prv | rdp: calibration, enforcement and reporting use this one
    secure_mode: bool  # Opacus secure_mode (CSPRNG noise)


@dataclass(frozen=True)
class PathSettings:
    scenario_file: Path  # scenario TOML (absolute)
    data_dir: Path | None  # data folder (absolute); None = the repository's ./data
    out_dir: Path | None  # server artefacts; None = write none
    site_state_root: Path | None  # parent of sites/<site>/ in simulation; None = <out_dir>/sites


@dataclass(frozen=True)
class CentralSettings:
    """Site-level DP of the released model (``privacy-mode = "central"``; checks: common/privacy/central.py)."""

    target_epsilon: float  # site-level ε cap after num-server-rounds releases (Flower's max_epsilon)
    noise_multiplier: float  # σ on the sum of clipped site updates; 0.0 = smallest σ meeting target_epsilon
    clipping_norm: float  # L2 norm each site's model update is clipped to (at the server)
    delta: float  # δ of the site-level guarantee; must stay below 1/number of sites


@dataclass(frozen=True)
class RunConfig:
    federation: FederationSettings
    model: ModelSettings
    train: TrainSettings
    privacy: PrivacySettings
    paths: PathSettings
    privacy_mode: str  # sample | central (PRIVACY_MODES)
    central: CentralSettings  # read in both modes, used in central mode only


# ------------------------------------------------------------------------ scenario / sites
@dataclass(frozen=True)
class SiteSpec:
    name: str  # site slug, unique in the federation (also its ledger key)
    source: str  # data source registry key, e.g. "uci-heart"
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


@dataclass(frozen=True)
class SiteConfig:
    spec: SiteSpec  # what the site holds
    privacy: PrivacySettings  # run defaults merged with the site's overrides
    data_dir: Path  # where the site's data source reads from
    state_dir: Path  # the site's own durable state: ledger.sqlite, caches
    device: str  # auto | cpu | cuda


# ------------------------------------------------------------------------------ readers
def app_defaults(pyproject: Path | None = None) -> dict[str, Any]:
    """Return ``[tool.flwr.app.config]`` from ``pyproject.toml`` (the defaults)."""
    path = pyproject or APP_DIR / "pyproject.toml"
    try:
        with path.open("rb") as fh:
            return dict(tomllib.load(fh)["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read [tool.flwr.app.config] ({err})") from err


class _Reader:
    """Typed access to a flat mapping; every error names the key and the source."""

    def __init__(self, values: Mapping[str, Any], source: str) -> None:
        self.values, self.source = values, source

    def _get(self, key: str) -> Any:
        if key not in self.values:
            raise ConfigError(f"{self.source}: missing setting '{key}'")
        return self.values[key]

    def integer(self, key: str, *, low: int | None = None) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise ConfigError(f"{self.source}: '{key}' must be an integer, got {v!r}")
        if low is not None and v < low:
            raise ConfigError(f"{self.source}: '{key}' must be >= {low}, got {v}")
        return int(v)

    def number(self, key: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{self.source}: '{key}' must be a finite number, got {v!r}")
        if low is not None and (v < low or (low_open and v == low)):
            op = ">" if low_open else ">="
            raise ConfigError(f"{self.source}: '{key}' must be {op} {low}, got {v}")
        if high is not None and v > high:
            raise ConfigError(f"{self.source}: '{key}' must be <= {high}, got {v}")
        return float(v)

    def boolean(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.source}: '{key}' must be true or false, got {v!r}")
        return v

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        v = self._get(key)
        if v not in allowed:
            raise ConfigError(f"{self.source}: '{key}' must be one of {', '.join(allowed)}; got {v!r}")
        return str(v)

    def text(self, key: str) -> str:
        v = self._get(key)
        if not isinstance(v, str):
            raise ConfigError(f"{self.source}: '{key}' must be a string, got {v!r}")
        return v

    def path(self, key: str) -> Path | None:
        v = self.text(key)
        if not v:
            return None
        p = Path(v).expanduser()
        if not p.is_absolute():
            raise ConfigError(
                f"{self.source}: '{key}' must be an absolute path (Flower's app bundle carries "
                f"no data, so relative paths have nothing to be relative to); got {v!r}"
            )
        return p


def _privacy(r: _Reader) -> PrivacySettings:
    p = PrivacySettings(
        enabled=r.boolean("dp"),
        target_epsilon=r.number("target-epsilon", low=0.0, low_open=True),
        epsilon_budget=r.number("epsilon-budget", low=0.0, low_open=True),
        delta=r.number("delta", low=0.0, high=0.1),
        max_grad_norm=r.number("max-grad-norm", low=0.0, low_open=True),
        accountant=r.choice("accountant", ACCOUNTANTS),
        secure_mode=r.boolean("secure-mode"),
    )
    if p.target_epsilon > p.epsilon_budget:
        raise ConfigError(
            f"{r.source}: target-epsilon ({p.target_epsilon}) exceeds epsilon-budget "
            f"({p.epsilon_budget}); one run's training may never plan to spend more than the lifetime budget"
        )
    return p


def parse_run_config(run_config: Mapping[str, Any], *, source: str = "run config") -> RunConfig:
    """Validate Flower's ``context.run_config`` into a :class:`RunConfig`.

    Raises :class:`ConfigError` naming the offending key.
    """
    r = _Reader(run_config, source)
    fed = FederationSettings(
        num_rounds=r.integer("num-server-rounds", low=1),
        fraction_train=r.number("fraction-train", low=0.0, high=1.0, low_open=True),
        min_train_nodes=r.integer("min-train-nodes", low=1),
        fraction_evaluate=r.number("fraction-evaluate", low=0.0, high=1.0),
        fold_evaluation=r.boolean("fold-evaluation"),
        round_timeout=r.number("round-timeout", low=0.0, low_open=True),
        seed=r.integer("seed", low=0),
        federation_id=r.text("federation-id"),
        min_available_nodes=r.integer("min-available-nodes", low=1),
    )
    model = ModelSettings(
        fusion=r.choice("fusion", FUSIONS),
        text_encoder=r.choice("text-encoder", TEXT_ENCODERS),
        image_encoder=r.choice("image-encoder", IMAGE_ENCODERS),
        hidden_dim=r.integer("hidden-dim", low=2),
    )
    train = TrainSettings(
        local_epochs=r.integer("local-epochs", low=1),
        batch_size=r.integer("batch-size", low=1),
        learning_rate=r.number("learning-rate", low=0.0, low_open=True),
        momentum=r.number("momentum", low=0.0, high=0.999),
        modality_dropout=r.number("modality-dropout", low=0.0, high=0.9),
        device=r.choice("device", DEVICES),
    )
    scenario = r.path("scenario-file") or PACKAGED_SCENARIOS / "hospitals.toml"
    paths = PathSettings(
        scenario_file=scenario,
        data_dir=r.path("data-dir"),
        out_dir=r.path("out-dir"),
        site_state_root=r.path("site-state-root"),
    )
    central = CentralSettings(
        target_epsilon=r.number("central-target-epsilon", low=0.0, low_open=True),
        noise_multiplier=r.number("central-noise-multiplier", low=0.0),
        clipping_norm=r.number("central-clipping-norm", low=0.0, low_open=True),
        delta=r.number("central-delta", low=0.0, high=0.1, low_open=True),
    )
    return RunConfig(federation=fed, model=model, train=train, privacy=_privacy(r), paths=paths,
                     privacy_mode=r.choice("privacy-mode", PRIVACY_MODES), central=central)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: file not found") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from err


_PRIVACY_KEYS = ("dp", "target-epsilon", "epsilon-budget", "delta", "max-grad-norm", "accountant",
                 "secure-mode")


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
    unknown = set(raw) - {"name", "source", "modalities", "privacy", *_SOURCE_ARG_KEYS}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    privacy = raw.get("privacy", {})
    bad = set(privacy) - set(_PRIVACY_KEYS)
    if bad:
        raise ConfigError(f"{where}.privacy: unknown keys {sorted(bad)}; allowed: {_PRIVACY_KEYS}")
    args = {k: raw[k] for k in _SOURCE_ARG_KEYS if k in raw}
    return SiteSpec(name=name, source=r.text("source"), source_args=args,
                    modalities=tuple(m for m in MODALITIES if m in mods), privacy_overrides=dict(privacy))


#: keys of a [[sites]] entry that are handed to the site's data source
_SOURCE_ARG_KEYS = ("hospital", "bank", "partition", "files", "mapping")


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
    return Scenario(name=str(head.get("name", path.stem)), description=str(head.get("description", "")),
                    modalities=mods, sites=sites, path=path)


def _merge_privacy(base: PrivacySettings, overrides: Mapping[str, Any], where: str) -> PrivacySettings:
    if not overrides:
        return base
    merged = {f.name: getattr(base, f.name) for f in fields(base)}
    keymap = {"dp": "enabled", "target-epsilon": "target_epsilon", "epsilon-budget": "epsilon_budget",
              "delta": "delta", "max-grad-norm": "max_grad_norm", "accountant": "accountant",
              "secure-mode": "secure_mode"}
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
        data_dir=run.paths.data_dir or _repo_data_dir(),
        state_dir=state_root / spec.name,
        device=run.train.device,
    )


def load_site_file(path: Path, *, run: RunConfig) -> SiteConfig:
    """Read a deployed site's TOML (``[site]`` table + optional ``[privacy]``)."""
    raw = _read_toml(path)
    site = dict(raw.get("site", {}))
    if "privacy" in raw:
        site["privacy"] = raw["privacy"]
    state_dir, data_dir = site.pop("state-dir", None), site.pop("data-dir", None)
    device = site.pop("device", run.train.device)
    spec = _site_spec(site, f"{path} [site]")
    r = _Reader({"state-dir": state_dir or "", "data-dir": data_dir or ""}, f"{path} [site]")
    sd = r.path("state-dir")
    if sd is None:
        raise ConfigError(f"{path} [site]: 'state-dir' (absolute) is required: it holds the site's privacy ledger")
    return SiteConfig(spec=spec, privacy=_merge_privacy(run.privacy, spec.privacy_overrides, str(path)),
                      data_dir=r.path("data-dir") or _repo_data_dir(), state_dir=sd,
                      device=_Reader({"device": device}, str(path)).choice("device", DEVICES))


def _repo_data_dir() -> Path:
    d = APP_DIR / "data"
    if not d.is_dir():
        raise ConfigError(
            f"'data-dir' is empty and there is no data folder next to the app ({d}); Flower's app bundle "
            "carries no data: pass --run-config 'data-dir=\"/abs/path/to/fedfusion/data\"'"
        )
    return d


def with_overrides(run: RunConfig, **privacy: Any) -> RunConfig:
    """Return ``run`` with privacy fields replaced (used by tests and the simulate driver)."""
    return replace(run, privacy=replace(run.privacy, **privacy))

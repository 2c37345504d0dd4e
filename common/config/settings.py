"""Run settings: ``[tool.flwr.app.config]`` (Flower's ``run_config``) -> frozen, validated dataclasses."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.file_memo import FileMemo

__all__ = [
    "ConfigError", "FederationSettings", "ModelSettings", "TrainSettings", "PrivacySettings", "PathSettings",
    "CentralSettings", "AggregationSettings", "DUPLICATE_POLICIES", "PRIVACY_MODES", "AGGREGATORS", "WEIGHTINGS",
    "STRATEGIES", "PLAIN_OPTIMIZERS", "StrategySettings", "RunConfig", "APP_DIR", "PACKAGED_SCENARIOS", "MODALITIES",
    "MAX_PROXIMAL_MU", "app_defaults", "parse_run_config",
]

#: Folder holding ``pyproject.toml`` (the Flower app). In an installed app bundle this is
#: the bundle's folder, which carries code and TOML files but no data.
APP_DIR = Path(__file__).resolve().parents[2]
PACKAGED_SCENARIOS = APP_DIR / "simulations" / "scenarios"

FUSIONS = ("concat", "attention", "late")
CLIPPINGS = ("flat", "per-modality")  # common/models/clipping.py CLIPPINGS (checked equal in the tests)
TEXT_ENCODERS = ("minilm-frozen", "minilm-finetune-top", "tiny-bert")
IMAGE_ENCODERS = ("small-cnn", "resnet18-gn", "pixel-projection")
ACCOUNTANTS = ("prv", "rdp")
DEVICES = ("auto", "cpu", "cuda")
#: where DP-SGD's randomness (Poisson sampling, Gaussian noise) comes from: client/dp_random.py
NOISE_SEEDS = ("secret", "run-seed")
MODALITIES = ("tabular", "text", "image")
#: ``duplicate-records`` of a site's own privacy file (common/data/duplicates.py): refuse to train on records that
#: are copies of one another in content (default), or allow them (the ledger then states the largest number of copies)
DUPLICATE_POLICIES = ("refuse", "allow")
PRIVACY_MODES = ("sample", "central")  # sample: per-site DP-SGD | central: site-level DP by Flower's wrapper
#: how the holders of a branch are combined (server/aggregation.py: Flower's own functions, per branch)
AGGREGATORS = ("weighted-mean", "trimmed-mean", "median", "krum", "multikrum", "bulyan")
#: the weight of a site's update: its registered, public max-records, or 1 for every site
WEIGHTINGS = ("max-records", "equal")
#: server strategies (server/optimizers.py: Flower's class of each, composed with the modality-aware merge)
STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad")
#: optimisers of training without DP (client/train.py PLAIN_OPTIMIZERS; DP-SGD always steps with SGD)
PLAIN_OPTIMIZERS = ("sgd", "adam")


MAX_PROXIMAL_MU = 100.0  # a larger μ pins every site to the global model (also the site's check of a message's μ)


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
    reply_poll_interval: float  # seconds between the server's checks for replies (server/grid.py)
    max_in_flight: int  # messages pushed and not yet answered, at most (server/grid.py); 0 = all of a round at once
    seed: int  # global seed: model init, splits, sampling
    federation_id: str  # stable id across restarts ("" = derived from the first run id)
    min_available_nodes: int  # sites that must be connected before a round starts


@dataclass(frozen=True)
class ModelSettings:
    fusion: str  # concat | attention | late
    text_encoder: str  # minilm-frozen | minilm-finetune-top | tiny-bert
    image_encoder: str  # small-cnn | resnet18-gn | pixel-projection
    hidden_dim: int  # width of the fused representation
    # minilm-frozen only: width of a fixed public random projection of its embedding (0 = none); the fine-tuned
    # encoders (tiny-bert, minilm-finetune-top) train their own output and do not use it
    text_projection: int = 16


@dataclass(frozen=True)
class TrainSettings:
    local_epochs: int  # local passes over the site's training data per round
    batch_size: int  # expected Poisson batch size; Opacus' sample rate is 1/len(loader)
    learning_rate: float  # DP-SGD learning rate (steps on clipped, noised mean gradients)
    momentum: float  # SGD momentum
    modality_dropout: float  # probability of hiding a present modality of a training sample
    clipping: str  # DP-SGD clipping: flat | per-modality (common/models/clipping.py; same C, σ and ε)
    device: str  # auto | cpu | cuda
    embedding_views: bool  # write PCA/t-SNE of fused representations at the site (never sent)
    missing_modality_evaluation: bool  # also evaluate with each held modality removed and alone (robustness metrics)
    # training WITHOUT DP (dp = false; baselines): its own optimiser and learning rate, chosen on public proxy data
    plain_optimizer: str  # sgd | adam (PLAIN_OPTIMIZERS)
    plain_learning_rate: float


@dataclass(frozen=True)
class PrivacySettings:
    enabled: bool  # DP-SGD on; off only for baselines and benchmarks
    target_epsilon: float  # ε reached by one run's planned training (rounds x epochs)
    epsilon_budget: float  # lifetime ε budget of the site's dataset across runs
    delta: float  # δ; 0.0 means "site default, strictly below 1/n"
    max_grad_norm: float  # per-sample clipping norm C
    accountant: str  # prv | rdp: calibration, enforcement and reporting use this one
    secure_mode: bool  # Opacus secure_mode (CSPRNG noise)
    # seeds of DP-SGD's batch sampling and noise: "secret" = fresh OS entropy each round, never stored or sent;
    # "run-seed" = derived from the run's seed, the site and the round: reproducible, but whoever knows the run
    # config can recompute the noise, so the ε holds only against others (simulations only; a deployed site
    # always uses "secret")
    noise_seed: str = "secret"
    # The site's own file only (a run config has no such key; None there): a PUBLIC upper bound on the number of
    # training records the site trains on. q = 1/ceil(max_records / batch_size), the steps, the default δ and the
    # aggregation weight derive from it, never from the rows the site holds (common.privacy.accountant.plan_steps).
    max_records: int | None = None
    # privacy-mode: in a run config the mode the run asks for; in a site's file the least private mode the site
    # accepts ("central": it lets the server see its raw model updates, a trusted curator)
    privacy_mode: str = "sample"
    # The site's own file only: "refuse" (default) = never train on records that are copies of one another in
    # content (DP's record would no longer be one person, common/data/duplicates.py); "allow" = the site states that
    # such records are different people, and its ledger rows state the largest number of copies
    duplicate_records: str = "refuse"


@dataclass(frozen=True)
class PathSettings:
    scenario_file: Path  # scenario TOML (absolute)
    data_dir: Path | None  # data folder (absolute); None = the scenario's own (sites.scenario_data_dir)
    out_dir: Path | None  # server artefacts; None = write none
    site_state_root: Path | None  # parent of sites/<site>/ in simulation; None = <out_dir>/sites
    # simulation only: parent of <site>/ caches (text features, σ calibrations) kept across runs;
    # None = each site's <state-dir>/cache
    site_cache_root: Path | None = None
    # deployment: the operator's registered-sites.json (node id <-> key <-> name, modalities, max-records);
    # None = the registered-sites.json found in out-dir or the nearest folder above it (server/identity.py)
    site_registry: Path | None = None


@dataclass(frozen=True)
class CentralSettings:
    """Site-level DP of the released model (``privacy-mode = "central"``; checks: common/privacy/central.py)."""

    target_epsilon: float  # site-level ε cap after num-server-rounds releases (Flower's max_epsilon)
    noise_multiplier: float  # σ on the sum of clipped site updates; 0.0 = smallest σ meeting target_epsilon
    clipping_norm: float  # L2 norm each site's model update is clipped to (at the server)
    delta: float  # δ of the site-level guarantee; must stay below 1/number of sites


@dataclass(frozen=True)
class AggregationSettings:
    """How the server combines the updates it accepted (``server/aggregation.py``, ``server/replies.py``)."""

    aggregator: str  # AGGREGATORS: combines the holders of each branch
    num_malicious_sites: int  # f: sites the robust aggregators must tolerate (trim, Krum scores, Bulyan)
    weighting: str  # WEIGHTINGS: the registered max-records of each site, or equal weights; never a reply's claim
    max_update_norm: float  # L2 bound of one reply's update (new - global); a reply beyond it fails; 0 = none


@dataclass(frozen=True)
class StrategySettings:
    """The server strategy and its optimiser (``server/optimizers.py``); sample-level mode only."""

    name: str  # fedavg | fedprox | fedadam | fedyogi | fedadagrad (STRATEGIES)
    learning_rate: float  # server-learning-rate: η of FedAdam / FedYogi / FedAdagrad
    beta_1: float  # server-beta-1: first-moment decay of the FedOpt family
    beta_2: float  # server-beta-2: second-moment decay (FedAdam, FedYogi)
    tau: float  # server-tau: added to sqrt(v); larger = closer to server SGD with rate η/τ
    proximal_mu: float  # proximal-mu: FedProx's μ (the sites add μ/2 ||w - w_global||² to their loss)


@dataclass(frozen=True)
class RunConfig:
    federation: FederationSettings
    model: ModelSettings
    train: TrainSettings
    privacy: PrivacySettings
    paths: PathSettings
    privacy_mode: str  # sample | central (PRIVACY_MODES)
    central: CentralSettings  # read in both modes, used in central mode only
    aggregation: AggregationSettings  # sample mode: how accepted updates are combined
    strategy: StrategySettings  # sample-level mode only (central mode runs Flower's DP wrapper around FedAvg)


# ------------------------------------------------------------------------------ readers
def app_defaults(pyproject: Path | None = None) -> dict[str, Any]:
    """Return ``[tool.flwr.app.config]`` from ``pyproject.toml`` (the defaults): a fresh dict each call, the file
    parsed once per version of it in a process (a site reads its privacy defaults in every message)."""
    path = pyproject or APP_DIR / "pyproject.toml"
    return dict(_DEFAULTS.get((path,), None, lambda: tuple(_read_app_config(path).items())))


_DEFAULTS: FileMemo[tuple] = FileMemo(size=4)


def _read_app_config(path: Path) -> dict[str, Any]:
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
        noise_seed=r.choice("noise-seed", NOISE_SEEDS),
        max_records=r.integer("max-records", low=1) if "max-records" in r.values else None,
        privacy_mode=r.choice("privacy-mode", PRIVACY_MODES) if "privacy-mode" in r.values else "sample",
        duplicate_records=(r.choice("duplicate-records", DUPLICATE_POLICIES) if "duplicate-records" in r.values
                           else "refuse"),
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
        reply_poll_interval=r.number("reply-poll-interval", low=0.01, high=60.0),
        max_in_flight=r.integer("max-messages-in-flight", low=0),
        seed=r.integer("seed", low=0),
        federation_id=r.text("federation-id"),
        min_available_nodes=r.integer("min-available-nodes", low=1),
    )
    model = ModelSettings(
        fusion=r.choice("fusion", FUSIONS),
        text_encoder=r.choice("text-encoder", TEXT_ENCODERS),
        image_encoder=r.choice("image-encoder", IMAGE_ENCODERS),
        hidden_dim=r.integer("hidden-dim", low=2),
        text_projection=r.integer("text-projection", low=0),
    )
    train = TrainSettings(
        local_epochs=r.integer("local-epochs", low=1),
        batch_size=r.integer("batch-size", low=1),
        learning_rate=r.number("learning-rate", low=0.0, low_open=True),
        momentum=r.number("momentum", low=0.0, high=0.999),
        modality_dropout=r.number("modality-dropout", low=0.0, high=0.9),
        clipping=r.choice("clipping", CLIPPINGS),
        device=r.choice("device", DEVICES),
        embedding_views=r.boolean("embedding-views"),
        missing_modality_evaluation=r.boolean("missing-modality-evaluation"),
        plain_optimizer=r.choice("plain-optimizer", PLAIN_OPTIMIZERS),
        plain_learning_rate=r.number("plain-learning-rate", low=0.0, low_open=True),
    )
    scenario = r.path("scenario-file") or PACKAGED_SCENARIOS / "hospitals.toml"
    paths = PathSettings(
        scenario_file=scenario,
        data_dir=r.path("data-dir"),
        out_dir=r.path("out-dir"),
        site_state_root=r.path("site-state-root"),
        site_cache_root=r.path("site-cache-root"),
        site_registry=r.path("site-registry"),
    )
    central = CentralSettings(
        target_epsilon=r.number("central-target-epsilon", low=0.0, low_open=True),
        noise_multiplier=r.number("central-noise-multiplier", low=0.0),
        clipping_norm=r.number("central-clipping-norm", low=0.0, low_open=True),
        delta=r.number("central-delta", low=0.0, high=0.1, low_open=True),
    )
    aggregation = AggregationSettings(
        aggregator=r.choice("aggregator", AGGREGATORS),
        num_malicious_sites=r.integer("num-malicious-sites", low=0),
        weighting=r.choice("weighting", WEIGHTINGS),
        max_update_norm=r.number("max-update-norm", low=0.0),
    )
    strategy = StrategySettings(
        name=r.choice("strategy", STRATEGIES),
        learning_rate=r.number("server-learning-rate", low=0.0, low_open=True),
        beta_1=r.number("server-beta-1", low=0.0, high=0.999),
        beta_2=r.number("server-beta-2", low=0.0, high=0.9999),
        tau=r.number("server-tau", low=0.0, low_open=True),
        proximal_mu=r.number("proximal-mu", low=0.0, high=MAX_PROXIMAL_MU),
    )
    privacy_mode = r.choice("privacy-mode", PRIVACY_MODES)
    if privacy_mode == "central" and strategy.name != "fedavg":
        raise ConfigError(f"{r.source}: strategy = {strategy.name!r} with privacy-mode = \"central\": central mode "
                          "runs Flower's DP wrapper around a plain FedAvg, the mechanism its accountant covers (the "
                          "wrapper refuses any other aggregation); use strategy = \"fedavg\"")
    return RunConfig(federation=fed, model=model, train=train, privacy=_privacy(r), paths=paths,
                     privacy_mode=privacy_mode, central=central, aggregation=aggregation,
                     strategy=strategy)

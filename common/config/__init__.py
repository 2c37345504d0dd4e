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

The package has three modules: ``settings`` (run settings), ``sites`` (scenario and site files) and ``terms``
(what a run may ask of a site's privacy: the site's own file is the limit, the run's settings are requests).
"""

from common.config.settings import (AGGREGATORS, APP_DIR, MAX_PROXIMAL_MU, MODALITIES, NOISE_SEEDS, PACKAGED_SCENARIOS,
                                    PLAIN_OPTIMIZERS, PRIVACY_MODES, STRATEGIES, WEIGHTINGS, AggregationSettings,
                                    CentralSettings, ConfigError, FederationSettings, ModelSettings, PathSettings, PrivacySettings,
                                    RunConfig, StrategySettings, TrainSettings, app_defaults, parse_run_config)
from common.config.sites import (Scenario, SiteConfig, SiteSpec, load_scenario, load_site_file, resolve_site,
                                 scenario_data_dir, site_privacy, write_with_site_privacy)
from common.config.terms import PrivacyTerms, Refusal, privacy_terms

__all__ = [
    "ConfigError", "FederationSettings", "ModelSettings", "TrainSettings", "PrivacySettings", "PathSettings",
    "CentralSettings", "AggregationSettings", "AGGREGATORS", "WEIGHTINGS", "PRIVACY_MODES", "STRATEGIES",
    "PLAIN_OPTIMIZERS", "StrategySettings", "MAX_PROXIMAL_MU", "RunConfig", "SiteSpec", "Scenario", "SiteConfig", "APP_DIR",
    "PACKAGED_SCENARIOS", "MODALITIES", "NOISE_SEEDS", "app_defaults", "parse_run_config", "load_scenario",
    "resolve_site", "load_site_file", "scenario_data_dir", "site_privacy", "write_with_site_privacy", "PrivacyTerms",
    "Refusal", "privacy_terms",
]

"""``fedfusion site check CONFIG``: validate a site's config and data before it joins. Sends nothing.

It reads the site config the way the ClientApp will (``common.config.load_site_file``), loads the
site's rows through the same data source and mapping (``common.data.sources``), and reports:

* per modality: where its data come from and how many rows carry it (train / test);
* the federation's modalities this site does not hold (its model keeps those branches frozen);
* errors that name the file and the field (a mapping's column, a config key), and warnings
  (key file permissions, a missing state folder, an existing ledger's integrity).

No network, no model, no text encoder: it reads files and prints.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, SiteConfig, app_defaults, load_scenario, load_site_file, parse_run_config

__all__ = ["ModalityCount", "SiteCheck", "check_site", "format_check", "check_json"]


@dataclass(frozen=True)
class ModalityCount:
    modality: str
    source: str  # where its data come from (a file, or how it is derived)
    train: int  # training rows that carry this modality
    test: int  # test rows that carry it


@dataclass
class SiteCheck:
    config: str
    site: str = ""
    data_source: str = ""
    train_rows: int = 0
    test_rows: int = 0
    modalities: list[ModalityCount] = field(default_factory=list)
    missing_modalities: list[str] = field(default_factory=list)  # federation modalities the site does not hold
    privacy: dict[str, Any] = field(default_factory=dict)
    cleaning: dict[str, dict[str, int]] = field(default_factory=dict)  # mapping changes per column per rule
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _source_file(site: SiteConfig) -> str:
    args, data_dir = site.spec.source_args, site.data_dir
    if site.spec.source == "mapped-csv" and "mapping" in args:
        from common.data.mapping import load_mapping

        return str(load_mapping(data_dir / str(args["mapping"])).file.path.resolve())  # errors name mapping and setting
    if site.spec.source == "uci-heart":
        return str(data_dir / "uci-heart-disease" / "heart_disease_uci.csv")
    return f"data source {site.spec.source!r} in {data_dir}"


def _check_state(site: SiteConfig, config: Path, report: SiteCheck) -> None:
    state = site.state_dir
    if state.exists() and not os.access(state, os.W_OK):
        report.errors.append(f"{config} [site] state-dir: {state} is not writable")
    elif not state.exists():
        parent = next((p for p in state.parents if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            report.errors.append(f"{config} [site] state-dir: {state} cannot be created")
        else:
            report.warnings.append(f"state-dir {state} does not exist yet; it is created on join")
    key = config.resolve().parent / "keys" / "site_ecdsa"
    if not key.exists():
        report.warnings.append(f"no private key at {key}: pass `site join --key PATH`")
    elif key.stat().st_mode & 0o077:
        report.errors.append(f"private key {key} is readable by others: chmod 600 {key}")
    ledger_file = state / "ledger.sqlite"
    if ledger_file.exists():
        from common.privacy.ledger import Ledger, LedgerIntegrityError

        try:
            ledger = Ledger(ledger_file)
            problems = ledger.verify()
            rows = ledger.entries(site=site.spec.name)
        except (LedgerIntegrityError, OSError) as err:
            report.errors.append(f"privacy ledger {ledger_file}: {err}")
            return
        if problems:
            report.errors.append(f"privacy ledger {ledger_file} fails verification: {problems[:3]}")
        reserves = [e for e in rows if e.event == "reserve"]
        report.privacy["ledger"] = str(ledger_file)
        report.privacy["ledger_rounds_spent"] = len(reserves)
        report.privacy["ledger_epsilon_spent"] = reserves[-1].epsilon if reserves else 0.0


def check_site(config: Path, *, scenario: Path | None = None, seed: int | None = None) -> SiteCheck:
    """Validate a site config and its data; read-only (creates nothing, sends nothing).

    Parameters
    ----------
    config
        The site's ``site.toml``.
    scenario
        Scenario TOML of the federation (its modalities); default: the run default (hospitals).
    seed
        Split seed; default: the run default.

    Returns
    -------
    SiteCheck
        Counts, missing modalities, errors and warnings; ``ok`` is False if any error.
    """
    config = Path(config).expanduser().resolve()
    report = SiteCheck(config=str(config))
    try:
        run = parse_run_config(app_defaults())
        site = load_site_file(config, run=run)
        fed = load_scenario(scenario or run.paths.scenario_file)
    except ConfigError as err:
        report.errors.append(str(err))
        return report
    report.site, report.data_source = site.spec.name, site.spec.source
    p = site.privacy
    report.privacy.update({"max_records": p.max_records or "NOT SET", "target_epsilon": p.target_epsilon,
                           "epsilon_budget": p.epsilon_budget, "delta": p.delta or "default (< 1/max-records)",
                           "accountant": p.accountant, "dp": p.enabled})
    report.missing_modalities = [m for m in fed.modalities if m not in site.spec.modalities]
    extra = [m for m in site.spec.modalities if m not in fed.modalities]
    if extra:
        report.warnings.append(f"modalities {extra} are not in the federation's model ({fed.path.name}): unused")
    _check_state(site, config, report)
    if not site.data_dir.is_dir():
        report.errors.append(f"{config} [site] data-dir: folder {site.data_dir} not found")
        return report
    if site.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            report.errors.append(f"{config} [site] device: 'cuda' but no CUDA device is visible here")
    from common.data.schema import DataContractError
    from common.data.sources import load_site_data

    try:
        tab_source = _source_file(site)
        train, test = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir,
                                     seed=seed if seed is not None else run.federation.seed)
    except DataContractError as err:  # names the file, line and column (or the mapping setting)
        report.errors.append(str(err))
        return report
    except (ValueError, OSError, KeyError) as err:
        report.errors.append(f"{config} [site] (source {site.spec.source!r}): {err}")
        return report
    report.train_rows, report.test_rows = len(train), len(test)
    if "mapping" in site.spec.source_args:  # what the site's mapping changed, column by column
        from common.data.cleaning import load_mapped

        mapped = load_mapped(site.data_dir / str(site.spec.source_args["mapping"]))
        report.cleaning = mapped.report.changes()
        if site.state_dir.is_dir():  # the site keeps its own copy of the cleaning report
            mapped.report.write_json(site.state_dir / "cleaning-report.json")
    for m in site.spec.modalities:
        if m == "tabular":
            c = ModalityCount(m, tab_source, int((train.tabular_mask.sum(1) > 0).sum()),
                              int((test.tabular_mask.sum(1) > 0).sum()))
        elif m == "text":
            c = ModalityCount(m, f"GENERATED notes from the rows of {tab_source}",
                              sum(bool(t.strip()) for t in train.notes), sum(bool(t.strip()) for t in test.notes))
        else:
            report.errors.append(f"{config} [site] modalities: {m!r} is not provided by data source "
                                 f"{site.spec.source!r}")
            continue
        report.modalities.append(c)
        if c.train == 0:
            report.errors.append(f"{config} [site] modalities: {m!r} is declared but no training row carries it "
                                 f"(source {c.source})")
    _check_bound(p, len(train), config, report)
    if len(train) < 2 or len(set(train.labels.tolist())) < 2:
        report.errors.append(f"{config}: {len(train)} training rows with labels {sorted(set(train.labels.tolist()))}"
                             "; training needs both classes")
    return report


def _check_bound(p: Any, train_rows: int, config: Path, report: SiteCheck) -> None:
    """The site's PUBLIC max-records bound: declared, above the training rows it holds, and δ below 1/bound."""
    if not p.max_records:
        report.errors.append(f"{config} [privacy] max-records: not set; declare a PUBLIC upper bound on your "
                             f"training records (now {train_rows}): the sample rate, the steps, δ and your weight "
                             "derive from it")
        return
    if train_rows > p.max_records:
        report.errors.append(f"{config} [privacy] max-records: {p.max_records} is below the {train_rows} training "
                             "rows this site holds; the site would decline every round")
    if p.delta and p.delta >= 1.0 / p.max_records:
        report.errors.append(f"{config} [privacy] delta: {p.delta} is not below 1/max-records = "
                             f"{1 / p.max_records:.3g}; use 0 for the default")


def format_check(report: SiteCheck) -> str:
    """The report as the lines ``fedfusion site check`` prints."""
    out = [f"site config   {report.config}"]
    if report.site:
        out.append(f"site          {report.site} (source {report.data_source})")
    if report.train_rows or report.test_rows:
        out.append(f"rows          {report.train_rows} train, {report.test_rows} test")
    for c in report.modalities:
        out.append(f"  {c.modality:<8} {c.train:>5} train {c.test:>5} test   <- {c.source}")
    if report.site:
        miss = ", ".join(report.missing_modalities) or "none"
        out.append(f"missing modalities (branches this site will not train): {miss}")
    if report.privacy:
        out.append("privacy       " + ", ".join(f"{k}={v}" for k, v in report.privacy.items()))
    for column, rules in report.cleaning.items():
        out.append(f"  cleaned {column:<18} " + ", ".join(f"{rule} x{n}" for rule, n in rules.items()))
    out += [f"warning: {w}" for w in report.warnings]
    out += [f"ERROR: {e}" for e in report.errors]
    out.append("OK: ready to join (nothing was sent)" if report.ok else
               f"NOT READY: {len(report.errors)} error(s) (nothing was sent)")
    return "\n".join(out)


def check_json(report: SiteCheck) -> str:
    """The report as JSON (``site check --json``)."""
    return json.dumps(report.as_dict(), indent=2, default=str)

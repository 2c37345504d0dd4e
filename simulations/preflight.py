"""``fedfusion simulate`` checks every site of the scenario before it starts any Flower process.

Each site is checked as ``fedfusion site check`` checks a deployed site (:func:`client.site_check.check_site_data`):
its mapping and file are read through the same data source, its modalities, classes and δ are checked, and its
schema is compared with the federation's. What is wrong is printed as one table, with every error in full (each
names the absolute file, line and column, or the scenario key), and nothing is started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from client.site_check import SiteCheck, check_site_data
from common.config import ConfigError, app_defaults, load_scenario, parse_run_config, resolve_site

__all__ = ["check_scenario_sites", "format_site_table"]


def check_scenario_sites(scenario_file: Path, run_config: dict[str, Any]) -> list[SiteCheck]:
    """One :class:`SiteCheck` per site of the scenario, in its order (reads files; writes and starts nothing).

    Parameters
    ----------
    scenario_file
        The scenario TOML (absolute).
    run_config
        The run settings the simulation will pass to Flower (``data-dir`` among them, if set).
    """
    scenario = load_scenario(scenario_file)
    # a state folder that does not exist: the check writes nothing (not even the cleaning report it keeps at a site)
    run = parse_run_config(app_defaults() | run_config | {"scenario-file": str(scenario_file),
                                                          "out-dir": "/nonexistent-preflight", "site-state-root": ""})
    checks = []
    for i, spec in enumerate(scenario.sites):
        where = f"{scenario.path} site '{spec.name}'"
        try:
            site = resolve_site({"partition-id": i}, run)
        except ConfigError as err:
            checks.append(SiteCheck(config=where, site=spec.name, data_source=spec.source, errors=[str(err)]))
            continue
        checks.append(check_site_data(site, fed=scenario, where=where, privacy_where=f"{where} privacy"))
    return checks


def format_site_table(checks: list[SiteCheck]) -> str:
    """The checks as one table (site, rows, modalities, status), then every error in full."""
    head = ("site", "rows (train/test)", "modalities", "status")
    rows = [(c.site, f"{c.train_rows}/{c.test_rows}" if c.train_rows or c.test_rows else "-",
             ", ".join(m.modality for m in c.modalities) or "-",
             "ok" if c.ok else f"{len(c.errors)} error{'s' if len(c.errors) > 1 else ''}") for c in checks]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in (head, *rows)]
    errors = [f"  {c.site}: {e}" for c in checks for e in c.errors]
    return "\n".join(lines + (["errors:", *errors] if errors else []))

"""The public ``max-records`` bound as ``site init`` proposes and writes it into a new ``site.toml``.

The bound is PUBLIC (sent to the federation; the sample rate, the steps, δ and the weight of the site's updates
derive from it), so ``site init`` only proposes a rounded-up value from the rows it can read and says so.
"""

from __future__ import annotations

from pathlib import Path

from common.config import app_defaults, load_site_file, parse_run_config

__all__ = ["max_records_line", "max_records_setting", "proposed_bound", "propose_max_records"]


_PUBLIC = ("# PUBLIC: an upper bound on this site's training records, sent to the federation. The sample rate, the\n"
           "# steps, δ and the weight of this site's updates derive from it. Declare one you will not exceed: with\n"
           "# more training rows the site declines (and that decline itself shows it holds more).\n")


def max_records_setting(max_records: int | None) -> str:
    """The commented ``max-records`` line of a new site.toml's [privacy] table (a placeholder when unknown)."""
    if max_records:
        return _PUBLIC + f"max-records = {int(max_records)}"
    return _PUBLIC + "# max-records = ...   REQUIRED before this site can train (site init could not read the data)"


def propose_max_records(rows: int) -> int:
    """``rows`` rounded UP to two significant digits (303 -> 310, 1234 -> 1300): a proposal, never below."""
    magnitude = 10 ** max(0, len(str(int(rows))) - 2)
    return -(-int(rows) // magnitude) * magnitude


def max_records_line(config: Path) -> str:
    """What ``site init`` says about the bound it wrote into ``config``."""
    import tomllib

    value = tomllib.loads(Path(config).read_text()).get("privacy", {}).get("max-records")
    return (f"{value}  (PUBLIC: the federation sees it; edit [privacy] max-records if it is not the bound you "
            "want to declare)" if value else "NOT SET: edit [privacy] max-records (a PUBLIC bound on your training "
            "records) before joining")


def proposed_bound(config: Path) -> int | None:
    """max-records proposed from the rows the site's data holds now (train and test), or None if unreadable."""
    try:
        from common.data.sources import load_site_data

        site = load_site_file(config, run=parse_run_config(app_defaults()))
        train, test = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir,
                                     modalities=site.spec.modalities)
        return propose_max_records(len(train) + len(test))
    except Exception:  # noqa: BLE001 - no data yet: the file says the bound is required
        return None

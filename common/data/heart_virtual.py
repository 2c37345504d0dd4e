"""VIRTUAL sites: the pooled UCI Heart Disease patients of all four hospitals, re-split into many sites.

These sites do not exist. They are built for experiments that need more sites than the four real hospitals
(site-level, "central", DP needs tens of sites before its noise stops swamping the signal): the 920 pooled
rows are cut by a partitioner of :mod:`common.data.partition`, and site ``part`` keeps the rows of that part.
Each virtual site then splits and standardises its own rows exactly like a real hospital
(:func:`common.data.heart_site.split_site`), so nothing is shared between sites but the schema.

A scenario entry names the partition and the part, e.g.::

    partition = { kind = "quantity", alpha = 100.0, num-sites = 20, seed = 0, min-size = 20, part = 3 }

Every virtual site of a scenario must use the same partition settings (all but ``part``), so that the parts
are disjoint and cover every pooled patient once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from common.data.heart import load_heart_disease
from common.data.heart_site import SiteSplit, split_site
from common.data.partition import PartitionError, partition_from_spec

__all__ = ["PART_KEY", "load_virtual_site"]

PART_KEY = "part"  # key of the partition table naming which part (0-based) this virtual site holds


def load_virtual_site(
    partition: Mapping[str, Any], *, csv_path: Path | None = None, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """The (train, test) rows of one virtual site.

    Parameters
    ----------
    partition
        A partition spec for :func:`common.data.partition.partition_from_spec` plus ``part``, the index of this
        site's part. ``natural`` partitions use the hospital column as the site column.
    csv_path
        The heart-disease CSV; defaults to the repository's copy.
    test_fraction, seed
        As for :func:`common.data.heart_site.split_site` (the site's own stratified split).

    Returns
    -------
    tuple[SiteSplit, SiteSplit]
        ``(train, test)`` of the site's rows.

    Raises
    ------
    PartitionError
        If ``part`` is missing or out of range, or the partition cannot be made.
    """
    spec = dict(partition)
    if PART_KEY not in spec:
        raise PartitionError(f"a virtual site needs '{PART_KEY}' in its partition table (which part it holds, "
                             f"0-based); got {sorted(spec)}")
    part = spec.pop(PART_KEY)
    if isinstance(part, bool) or not isinstance(part, int):
        raise PartitionError(f"partition '{PART_KEY}' must be an integer, got {part!r}")
    table = load_heart_disease(csv_path)
    parts = partition_from_spec(spec, labels=table["label"].to_numpy(), sites=table["hospital"].to_numpy())
    if not 0 <= part < len(parts):
        raise PartitionError(f"partition '{PART_KEY}' = {part} is out of range: the partition has {len(parts)} parts")
    return split_site(table.iloc[parts[part]], test_fraction=test_fraction, seed=seed)

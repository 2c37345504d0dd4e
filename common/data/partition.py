"""Partitioners for experiments: split one table's rows into federated sites.

Every partitioner takes keyword arguments only, is deterministic for its arguments (those that draw take a
``seed``) and returns a list of sorted int64 index arrays, one per site, that partition the rows EXACTLY: each
row is in exactly one site. :data:`PARTITIONERS` maps the names used in scenario files to the functions, and
:func:`partition_from_spec` applies a scenario entry such as
``partition = { kind = "dirichlet", alpha = 0.5, num-sites = 20, seed = 0 }`` (hyphens in keys read as underscores).

Kinds:

- ``natural``: one site per value of a site column (e.g. the hospital), in sorted order or a given ``order``.
- ``dirichlet``: label skew (Hsu et al., 2019). For each class, site shares are drawn from Dirichlet(``alpha``)
  and the class's shuffled rows are cut by them. Small ``alpha`` gives sites dominated by a few classes; large
  ``alpha`` gives every site about the global label mix.
- ``quantity``: quantity skew. Site shares are drawn from Dirichlet(``alpha``) over sites and the shuffled rows are
  cut by them (labels are ignored, so each site has about the global label mix but very different sizes).

Minimum size: a drawn partitioner redraws (from the same seeded generator, so still deterministic) until every site
has at least ``min_size`` rows, at most ``max_retries`` times, then raises :class:`PartitionError` saying which
knob to change. ``natural`` cannot redraw: a site below ``min_size`` is an error at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "PARTITIONERS",
    "PartitionError",
    "dirichlet_partition",
    "natural_partition",
    "partition_from_spec",
    "quantity_partition",
]

Partitioner = Callable[..., list[np.ndarray]]


class PartitionError(ValueError):
    """A partition cannot be made as asked; the message names the partitioner and what to change."""


def _labels(labels: np.ndarray | Sequence[int], owner: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise PartitionError(f"{owner}: labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise PartitionError(f"{owner}: labels must be integers, got dtype {y.dtype}")
    return y


def _check_common(owner: str, *, n: int, num_sites: int, alpha: float, min_size: int, max_retries: int) -> None:
    if isinstance(num_sites, bool) or not isinstance(num_sites, int | np.integer) or num_sites < 1:
        raise PartitionError(f"{owner}: num_sites must be an integer >= 1, got {num_sites!r}")
    if not (np.isfinite(alpha) and alpha > 0):
        raise PartitionError(f"{owner}: alpha must be a finite number > 0, got {alpha!r}")
    if min_size < 0 or max_retries < 1:
        raise PartitionError(f"{owner}: need min_size >= 0 and max_retries >= 1, got {min_size} and {max_retries}")
    if num_sites * min_size > n:
        raise PartitionError(
            f"{owner}: {num_sites} sites of at least {min_size} rows need {num_sites * min_size} rows, "
            f"but there are only {n}; lower num_sites or min_size"
        )


def _cut(rows: np.ndarray, shares: np.ndarray) -> list[np.ndarray]:
    """Cut ``rows`` into ``len(shares)`` consecutive pieces of sizes about ``shares * len(rows)`` (exact total)."""
    bounds = np.floor(np.cumsum(shares)[:-1] * rows.size + 0.5).astype(np.int64)
    return np.split(rows, np.clip(bounds, 0, rows.size))


def _finish(parts: list[list[np.ndarray]], num_sites: int) -> list[np.ndarray]:
    return [np.sort(np.concatenate([p[site] for p in parts])).astype(np.int64) for site in range(num_sites)]


def _sorted_values(values: set[object]) -> list[object]:
    try:
        return sorted(values)  # type: ignore[type-var]
    except TypeError:  # mixed kinds (e.g. 1 and "a"): sort by text
        return sorted(values, key=str)


def natural_partition(
    *,
    labels: np.ndarray | Sequence[int],
    sites: np.ndarray | Sequence[object],
    order: Sequence[object] | None = None,
    min_size: int = 1,
) -> list[np.ndarray]:
    """One site per value of a site column (e.g. the hospital each row came from).

    Parameters
    ----------
    labels
        One label per row; only its length is used (kept so every partitioner has the same inputs).
    sites
        The site of each row (any hashable values, no missing ones).
    order
        Site values in the order wanted; default: sorted distinct values. Every row's site must be listed.
    min_size
        Least rows per site; a smaller site raises :class:`PartitionError` (nothing to redraw).

    Returns
    -------
    list[numpy.ndarray]
        Sorted int64 row positions of each site, in ``order``.
    """
    owner = "natural partition"
    n = _labels(labels, owner).size
    site_of = np.asarray(sites, dtype=object)
    if site_of.shape != (n,):
        raise PartitionError(f"{owner}: sites must hold one value per row ({n}), got shape {site_of.shape}")
    missing = [i for i, s in enumerate(site_of) if s is None or (isinstance(s, float) and np.isnan(s))]
    if missing:
        raise PartitionError(f"{owner}: rows {missing[:5]} have no site value")
    values = list(order) if order is not None else _sorted_values(set(site_of.tolist()))
    if len(set(values)) != len(values):
        raise PartitionError(f"{owner}: order lists a site twice: {values}")
    unlisted = sorted(set(site_of.tolist()) - set(values), key=str)
    if unlisted:
        raise PartitionError(f"{owner}: rows belong to sites missing from order: {unlisted}")
    result = [np.flatnonzero(site_of == value).astype(np.int64) for value in values]
    small = {str(v): len(r) for v, r in zip(values, result, strict=True) if len(r) < min_size}
    if small:
        raise PartitionError(f"{owner}: sites with fewer than min_size={min_size} rows: {small}")
    return result


def dirichlet_partition(
    *,
    labels: np.ndarray | Sequence[int],
    num_sites: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_retries: int = 100,
    sites: object = None,
) -> list[np.ndarray]:
    """Label skew: each class's rows are spread over the sites by shares drawn from Dirichlet(``alpha``).

    Parameters
    ----------
    labels
        Integer class label of each row (1-D).
    num_sites
        Number of sites.
    alpha
        Dirichlet concentration (> 0): small (0.1) = strong skew, large (100+) = about the global label mix.
    seed
        Seed; the same arguments always give the same partition.
    min_size
        Least rows per site; the draw is repeated until it holds.
    max_retries
        Most draws before :class:`PartitionError`.
    sites
        Ignored (accepted so every partitioner takes the same inputs).

    Returns
    -------
    list[numpy.ndarray]
        ``num_sites`` sorted int64 arrays of row positions, disjoint and together covering every row.
    """
    owner = "dirichlet partition"
    y = _labels(labels, owner)
    _check_common(owner, n=y.size, num_sites=num_sites, alpha=alpha, min_size=min_size, max_retries=max_retries)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    for _ in range(max_retries):
        parts = [
            _cut(rng.permutation(np.flatnonzero(y == c)), rng.dirichlet(np.full(num_sites, alpha))) for c in classes
        ]
        result = _finish(parts, num_sites) if parts else [np.empty(0, np.int64) for _ in range(num_sites)]
        if min(len(r) for r in result) >= min_size:
            return result
    raise PartitionError(
        f"{owner}: no draw in {max_retries} gave every one of {num_sites} sites at least {min_size} rows "
        f"(alpha={alpha}, {y.size} rows); raise alpha or max_retries, or lower num_sites or min_size"
    )


def quantity_partition(
    *,
    labels: np.ndarray | Sequence[int],
    num_sites: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_retries: int = 100,
    sites: object = None,
) -> list[np.ndarray]:
    """Quantity skew: site sizes follow shares drawn from Dirichlet(``alpha``); rows are assigned at random.

    Parameters
    ----------
    labels
        One label per row; only its length is used (rows are shuffled regardless of label).
    num_sites
        Number of sites.
    alpha
        Dirichlet concentration (> 0) over site sizes: small = a few large sites, large = equal sizes.
    seed
        Seed; the same arguments always give the same partition.
    min_size
        Least rows per site; the draw is repeated until it holds.
    max_retries
        Most draws before :class:`PartitionError`.
    sites
        Ignored (accepted so every partitioner takes the same inputs).

    Returns
    -------
    list[numpy.ndarray]
        ``num_sites`` sorted int64 arrays of row positions whose sizes sum to the number of rows exactly.
    """
    owner = "quantity partition"
    n = _labels(labels, owner).size
    _check_common(owner, n=n, num_sites=num_sites, alpha=alpha, min_size=min_size, max_retries=max_retries)
    rng = np.random.default_rng(seed)
    for _ in range(max_retries):
        result = _finish([_cut(rng.permutation(n), rng.dirichlet(np.full(num_sites, alpha)))], num_sites)
        if min(len(r) for r in result) >= min_size:
            return result
    raise PartitionError(
        f"{owner}: no draw in {max_retries} gave every one of {num_sites} sites at least {min_size} rows "
        f"(alpha={alpha}, {n} rows); raise alpha or max_retries, or lower num_sites or min_size"
    )


PARTITIONERS: dict[str, Partitioner] = {
    "natural": natural_partition,
    "dirichlet": dirichlet_partition,
    "quantity": quantity_partition,
}


def partition_from_spec(
    spec: Mapping[str, object],
    *,
    labels: np.ndarray | Sequence[int],
    sites: np.ndarray | Sequence[object] | None = None,
) -> list[np.ndarray]:
    """Apply a scenario file's partition entry, e.g. ``{kind = "dirichlet", alpha = 0.5, num-sites = 20, seed = 0}``.

    Parameters
    ----------
    spec
        ``kind`` (a key of :data:`PARTITIONERS`) and that partitioner's settings; ``-`` in keys reads as ``_``.
    labels
        Label of each row.
    sites
        Site column of each row (needed by ``natural`` only).

    Returns
    -------
    list[numpy.ndarray]
        The partitioner's result.

    Raises
    ------
    PartitionError
        Unknown kind, unknown or missing settings (the message lists the allowed ones), or an impossible partition.
    """
    settings = {str(key).replace("-", "_"): value for key, value in spec.items()}
    kind = settings.pop("kind", None)
    if kind not in PARTITIONERS:
        raise PartitionError(f"partition kind {kind!r} is unknown; expected one of {sorted(PARTITIONERS)}")
    function = PARTITIONERS[str(kind)]
    parameters = inspect.signature(function).parameters
    allowed = sorted(set(parameters) - {"labels", "sites"})
    unknown = sorted(set(settings) - set(allowed))
    required = sorted(p for p in allowed if parameters[p].default is inspect.Parameter.empty)
    missing = sorted(set(required) - set(settings))
    if unknown or missing:
        problem = f"unknown settings {unknown}" if unknown else f"missing settings {missing}"
        raise PartitionError(f"partition kind {kind!r}: {problem}; it takes {allowed} (required: {required})")
    if kind == "natural" and sites is None:
        raise PartitionError("partition kind 'natural' needs the site column of every row (sites=...)")
    return function(labels=labels, sites=sites, **settings)

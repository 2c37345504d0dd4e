"""Modality-aware aggregation: each branch combined over the sites that hold it, by Flower's own functions.

Sites hold different modalities, so each update carries only the tensors of the branches that site trained
(:func:`common.models.params.branch_of`: a modality's encoder, projection and late head, or the shared head).
Each branch is combined over the sites that sent it and merged into the current global arrays; a branch nobody
trained this round keeps its global value (a hospital without notes neither dilutes nor erases the text branch).

How a branch's holders are combined is the run setting ``aggregator`` (:data:`AGGREGATORS`). Each calls the
functions Flower's strategies of the same name use (``flwr.serverapp.strategy``), on the branch's tensors only:

* ``weighted-mean``: ``strategy_utils.aggregate_arrayrecords`` (FedAvg), weighted by the weight the server gave
  each update (a site's registered max-records, or 1); for float32 tensors its exact arithmetic, run on a few flat
  segments per update instead of tensor by tensor (``server/flat_arrays.py``: bit-identical, tested);
* ``trimmed-mean``: ``fedtrimmedavg.trim_mean`` (FedTrimmedAvg), cutting ``f`` values per coordinate on each
  side (cut fraction ``(f + 1/4) / n``, so that Flower's ``int(cut * n)`` is ``f``); needs ``n >= 2f + 1``;
* ``median``: ``np.median(np.stack(layers), axis=0)``, FedMedian's own expression (Flower has no function for it);
* ``krum`` / ``multikrum``: ``multikrum.select_multikrum`` (Krum, MultiKrum) over whole-branch updates, keeping 1
  / ``n - f`` of them, then ``aggregate_arrayrecords`` of those;
* ``bulyan``: ``select_multikrum`` keeping ``n - 2f``, the coordinate-wise median of those, then
  ``bulyan.aggregate_n_closest_weights`` of the ``n - 4f`` closest (Bulyan); needs ``n >= 4f + 3``, as Flower's.

A branch with too few holders for its aggregator keeps its global value that round (Flower's Bulyan skips the
round likewise); :func:`minimum_holders` lets the ServerApp refuse a federation that could never aggregate.
The updates reaching this module were validated first (``server/replies.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from common.config import ConfigError
from common.models.params import branch_of
from common.packing import unpack_branch
from server.flat_arrays import weighted_mean

__all__ = ["AGGREGATORS", "Merge", "Update", "check_aggregation", "merge", "merge_weighted", "minimum_holders"]

_WEIGHT = "num-examples"  # the MetricRecord key Flower's functions weight by


@dataclass(frozen=True)
class Update:
    site: str  # who sent it (for log lines)
    arrays: Mapping[str, np.ndarray]  # the tensors it trained (validated: float32, global shapes, whole branches)
    weight: float  # the weight the server gives it (registered max-records, or 1)
    #: branch -> its tensors as one flat vector in packing order (``common/packing.py``), for a branch that came
    #: packed: the same values as ``arrays``; a weighted mean averages it in one piece, element for element alike
    packed: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class Merge:
    arrays: dict[str, np.ndarray]  # the new global arrays (every global tensor)
    used: dict[str, list[str]] = field(default_factory=dict)  # branch -> sites whose update went into it
    skipped: dict[str, str] = field(default_factory=dict)  # branch -> why it kept its global value


Group = list[dict[str, np.ndarray]]  # one branch: each holder's tensors of it


def _records(group: Group, weights: Sequence[float]) -> list[RecordDict]:
    return [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                        "metrics": MetricRecord({_WEIGHT: float(w)})}) for arrays, w in zip(group, weights)]


def _numpy(record: RecordDict) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record["arrays"].items()}


class _Held:
    """An array as ``aggregate_arrayrecords`` reads an ``Array``: ``.numpy()``, here the validated array itself."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def numpy(self) -> np.ndarray:
        return self.array


@dataclass(frozen=True)
class _HeldRecord:
    """What ``aggregate_arrayrecords`` reads of a ``RecordDict`` (its array and metric records), without the round
    trip through ``Array`` that wrapping would cost: ``.npy`` serialisation of every tensor of every update and
    ``np.load`` back (most of a 1000-reply round, BENCHMARKS.md "Aggregation"). Flower's arithmetic is untouched."""

    array_records: dict[str, dict[str, _Held]]
    metric_records: dict[str, dict[str, float]]


def _held(group: Group, weights: Sequence[float]) -> list[_HeldRecord]:
    return [_HeldRecord({"arrays": {k: _Held(v) for k, v in arrays.items()}}, {"metrics": {_WEIGHT: float(w)}})
            for arrays, w in zip(group, weights)]


def _weighted_mean(group: Group, weights: Sequence[float], f: int) -> tuple[dict[str, np.ndarray], list[int]]:
    shapes = {k: v.shape for k, v in group[0].items()}
    if all(v.dtype == np.float32 and v.shape == shapes[k] for g in group for k, v in g.items()):
        return weighted_mean(group, weights, shapes), list(range(len(group)))
    record = aggregate_arrayrecords(_held(group, weights), _WEIGHT)  # type: ignore[arg-type] - duck-typed records
    return {k: v.numpy() for k, v in record.items()}, list(range(len(group)))


def _coordinatewise(reduce: Callable[[np.ndarray], np.ndarray]):
    def aggregate(group: Group, weights: Sequence[float], f: int) -> tuple[dict[str, np.ndarray], list[int]]:
        return {k: np.asarray(reduce(np.stack([g[k] for g in group]))) for k in group[0]}, list(range(len(group)))
    return aggregate


def _trimmed(f: int, n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda stack: trim_mean(stack, (f + 0.25) / n)


def _trimmed_mean(group: Group, weights: Sequence[float], f: int) -> tuple[dict[str, np.ndarray], list[int]]:
    return _coordinatewise(_trimmed(f, len(group)))(group, weights, f)


def _krum(keep: Callable[[int, int], int]):
    def aggregate(group: Group, weights: Sequence[float], f: int) -> tuple[dict[str, np.ndarray], list[int]]:
        records = _records(group, weights)
        chosen = select_multikrum(records, num_malicious_nodes=f, num_nodes_to_select=keep(len(group), f))
        record = aggregate_arrayrecords(chosen, _WEIGHT)
        return {k: v.numpy() for k, v in record.items()}, [next(i for i, r in enumerate(records) if r is c)
                                                           for c in chosen]
    return aggregate


def _bulyan(group: Group, weights: Sequence[float], f: int) -> tuple[dict[str, np.ndarray], list[int]]:
    records = _records(group, weights)
    theta = len(group) - 2 * f
    chosen = select_multikrum(records, num_malicious_nodes=f, num_nodes_to_select=theta)
    keys = list(group[0])
    selected = [[_numpy(c)[k] for k in keys] for c in chosen]
    median = [np.median(np.stack(layer), axis=0) for layer in zip(*selected, strict=True)]
    merged = aggregate_n_closest_weights(median, selected, theta - 2 * f)
    return dict(zip(keys, merged, strict=True)), [next(i for i, r in enumerate(records) if r is c) for c in chosen]


#: aggregator -> (function, least number of holders a branch needs for it given f)
AGGREGATORS: dict[str, tuple[Callable[[Group, Sequence[float], int], tuple[dict[str, np.ndarray], list[int]]],
                             Callable[[int], int]]] = {
    "weighted-mean": (_weighted_mean, lambda f: 1),
    "trimmed-mean": (_trimmed_mean, lambda f: 2 * f + 1),
    "median": (_coordinatewise(lambda stack: np.median(stack, axis=0)), lambda f: 1),
    "krum": (_krum(lambda n, f: 1), lambda f: 1),
    "multikrum": (_krum(lambda n, f: max(1, n - f)), lambda f: 1),
    "bulyan": (_bulyan, lambda f: 4 * f + 3),
}


#: aggregators whose value for a tensor depends on that tensor's values only (not on a whole update, as Krum's
#: choice does): branches with the same holders are combined in one call, a few numpy calls per update in all
JOINT = frozenset({"weighted-mean"})


def minimum_holders(aggregator: str, f: int) -> int:
    """The least number of sites a branch needs for ``aggregator`` to combine it, tolerating ``f``."""
    return AGGREGATORS[aggregator][1](f)


def check_aggregation(aggregator: str, f: int, holders: Mapping[str, int]) -> None:
    """Refuse an aggregator that could never combine some branch: ``holders`` = branch -> sites that may train it.

    Raises
    ------
    ConfigError
        Naming the branch, its holders and what the aggregator needs.
    """
    need = minimum_holders(aggregator, f)
    short = {b: n for b, n in holders.items() if n < need}
    if short:
        raise ConfigError(f"run config: aggregator '{aggregator}' with num-malicious-sites={f} needs at least {need} "
                          f"sites holding each branch; this federation has " +
                          ", ".join(f"{n} for the {b} branch" for b, n in sorted(short.items())) +
                          " (lower num-malicious-sites, or choose another aggregator)")


def merge(global_arrays: Mapping[str, np.ndarray], updates: Sequence[Update], *, aggregator: str = "weighted-mean",
          num_malicious: int = 0) -> Merge:
    """Each branch combined over the updates that carry it (by ``aggregator``); other tensors stay global.

    The updates are combined in the order of their site names, whatever order they came in: the same updates give
    the same bits.

    Parameters
    ----------
    global_arrays
        The current global model (every trainable tensor).
    updates
        Validated updates (``server/replies.py``): whole branches of float32 tensors of the global shapes.
    aggregator
        A key of :data:`AGGREGATORS`.
    num_malicious
        ``f``: the sites the robust aggregators tolerate.
    """
    function, least = AGGREGATORS[aggregator]
    merged: dict[str, np.ndarray] = {}
    used: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    keys_of: dict[str, list[str]] = {}
    for k in global_arrays:
        keys_of.setdefault(branch_of(k), []).append(k)
    batches: dict[tuple[int, ...], list[str]] = {}  # holders -> the branches they all hold (one call for JOINT)
    holders_of: dict[str, list[Update]] = {}
    for branch in sorted(keys_of):
        # in site order, not arrival order: a round's result must not depend on which reply came first (float sums
        # are not associative; Flower samples nodes in random order)
        holders = sorted((u for u in updates if keys_of[branch][0] in u.arrays), key=lambda u: u.site)
        if not holders:
            continue
        if len(holders) < least(num_malicious):
            skipped[branch] = (f"{aggregator} with f={num_malicious} needs {least(num_malicious)} sites holding it; "
                               f"{len(holders)} sent it")
            continue
        holders_of[branch] = holders
        batch = tuple(map(id, holders)) if aggregator in JOINT else (len(batches),)
        batches.setdefault(batch, []).append(branch)
    for branches in batches.values():
        holders = holders_of[branches[0]]
        keys = [k for b in branches for k in keys_of[b]]
        weights = [u.weight for u in holders]
        if aggregator in JOINT and all(b in u.packed for u in holders for b in branches):
            # element-wise arithmetic: the packed vectors give each tensor's values bit for bit, in a few calls
            flat, chosen = function([{b: u.packed[b] for b in branches} for u in holders], weights, num_malicious)
            values = {k: v for b in branches for k, v in unpack_branch(b, np.asarray(flat[b]), global_arrays).items()}
        else:
            group = [{k: np.asarray(u.arrays[k]) for k in keys} for u in holders]
            values, chosen = function(group, weights, num_malicious)
        for k in keys:
            merged[k] = np.asarray(values[k]).astype(global_arrays[k].dtype, copy=False).reshape(global_arrays[k].shape)
        for branch in branches:
            used[branch] = [holders[i].site for i in chosen]
    merged |= {k: np.array(v, copy=True) for k, v in global_arrays.items() if k not in merged}
    return Merge({k: merged[k] for k in global_arrays}, used, skipped)


def merge_weighted(global_arrays: Mapping[str, np.ndarray], updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Per-branch weighted mean over the updates that carry it (FedAvg's arithmetic); other tensors stay global."""
    return merge(global_arrays, updates).arrays

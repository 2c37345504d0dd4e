"""A branch's tensors as a few flat float32 segments: one vectorised check per reply, one in-place weighted mean.

A reply of the default model is 18 small tensors: numpy's per-call cost, not the bytes, is what reading, checking
and averaging them costs (BENCHMARKS.md "Aggregation"). Here each branch's tensors (in the global model's order)
are cut into segments of at most :data:`SEGMENT` values: a run of small tensors copied side by side into one
scratch buffer (``np.concatenate(..., out=)``), or a slice of one large tensor, used in place. Every operation then
runs once per segment instead of once per tensor, on buffers that stay in the CPU's cache.

* :meth:`ReplyLayout.read` is the fast path of ``server/reply_arrays.py``'s array checks: it accepts a reply only
  when every array is exactly the plain ``.npy`` that Flower's ``Array(ndarray)`` writes for the global dtype and
  shape (compared byte for byte with the header numpy writes), the branches are whole and held by the site, and one
  float32 sum of squared differences per segment proves the update finite and within ``max-update-norm`` with a
  margin larger than its worst-case rounding error. Anything else returns None, and the exact, sequential checks
  decide and word the reason, as before. A branch sent packed (``common/packing.py``: one flat float32 array, what
  a sample-mode site sends) is already one contiguous vector: it is compared, slice by slice, with the global
  branch flattened in the same order (built once a round), and its tensors are views of it.
* :func:`weighted_mean` is FedAvg's arithmetic of ``flwr.serverapp.strategy.strategy_utils.aggregate_arrayrecords``
  (``x_1 * w_1``, then ``+= x_i * w_i`` in float32, with ``w_i = weight_i / sum(weights)``), element for element in
  the same order, so the result is bit-identical to Flower's (tested), into one output buffer per call (the
  merged tensors are views of it), segment by segment so that the accumulator stays in cache.

The layout keeps two scratch buffers: one ``ReplyLayout`` reads one reply at a time (the strategy reads a round's
replies in turn); do not share one between threads.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.models.params import branch_of

__all__ = ["MARGIN", "SEGMENT", "ReplyLayout", "Segment", "segments", "weighted_mean"]

SEGMENT = 1 << 16  # values per segment: 256 KB of float32, cache-sized
#: the float32 sum of squares of a segment of n <= SEGMENT values is within n * 2**-24 (relative) of the exact
#: one, whatever the summation order (terms >= 0); the fast path accepts only below (1 - MARGIN) of the bound
MARGIN = 2.0**-6
_TINY = 1e-30  # absolute slack for squares that underflow float32 (at most 2**-149 each)


@dataclass(frozen=True)
class Segment:
    """``keys`` side by side (a run of small tensors), or values ``start:stop`` of the single tensor ``keys[0]``."""

    keys: tuple[str, ...]
    offset: int  # where the segment starts in the branch's flat vector
    size: int
    start: int = -1  # >= 0: a slice of one tensor

    def source(self, arrays: Mapping[str, np.ndarray], scratch: np.ndarray) -> np.ndarray:
        """The segment's values of ``arrays`` as one flat float32 vector (in ``scratch`` for a run)."""
        if self.start >= 0:
            return arrays[self.keys[0]].reshape(-1)[self.start:self.start + self.size]
        if len(self.keys) == 1:
            return arrays[self.keys[0]].reshape(-1)
        return np.concatenate([arrays[k] for k in self.keys], axis=None, out=scratch[:self.size])


def segments(sizes: Iterable[tuple[str, int]], limit: int = SEGMENT) -> list[Segment]:
    """Cut tensors (name, number of values), in order, into segments of at most ``limit`` values."""
    out: list[Segment] = []
    run: list[str] = []
    run_size = offset = 0

    def flush() -> None:
        nonlocal run, run_size, offset
        if run:
            out.append(Segment(tuple(run), offset, run_size))
            offset += run_size
        run, run_size = [], 0

    for key, size in sizes:
        if size > limit:
            flush()
            for start in range(0, size, limit):
                out.append(Segment((key,), offset, min(limit, size - start), start))
                offset += out[-1].size
            continue
        if run_size + size > limit:
            flush()
        run.append(key)
        run_size += size
    flush()
    return out


@dataclass(frozen=True)
class _Expected:
    dtype: np.dtype
    dtype_name: str  # what Flower's Array.dtype says for it
    shape: tuple[int, ...]
    header: bytes  # the .npy header np.save writes for this dtype and shape (C order, format 1.0)
    offset: int  # where the values start: len(header)
    size: int  # bytes of header + values
    branch: str


def _expected(dtype: np.dtype, shape: tuple[int, ...], branch: str) -> _Expected:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(dtype),
                                               "fortran_order": False, "shape": shape})
    header = buf.getvalue()
    return _Expected(dtype, str(dtype), shape, header, len(header), len(header) + math.prod(shape) * dtype.itemsize,
                     branch)


@dataclass(frozen=True)
class _Packed:
    """A branch as a sample-mode site sends it (``common/packing.py``): the Array expected, the global values in
    packing order, and each tensor's place in the flat vector."""

    expected: _Expected
    reference: np.ndarray  # the global branch, flattened in packing order
    places: tuple[tuple[str, int, int, tuple[int, ...]], ...]  # (name, start, stop, shape)


class ReplyLayout:
    """The global model's tensors by branch, with the exact bytes and flat values a valid reply is checked against.

    Built once per round from the arrays the server sent (float32 tensors only take the fast path).
    """

    def __init__(self, global_arrays: Mapping[str, np.ndarray]) -> None:
        try:
            self.expected = {key: _expected(np.asarray(value).dtype, np.shape(value), branch_of(key))
                             for key, value in global_arrays.items()}
        except Exception:  # noqa: BLE001 - e.g. a header np.save writes as version 2.0: the exact checks read all
            self.expected = {}
        #: the fast path is on for a model of float32 tensors only
        self.enabled = bool(self.expected) and all(e.dtype == np.float32 for e in self.expected.values())
        self.count: dict[str, int] = {}
        for e in self.expected.values():
            self.count[e.branch] = self.count.get(e.branch, 0) + 1
        self._global = global_arrays
        #: the branches a reply sent -> its tensors' segments (in the global order) and the global values of each
        self._checks: dict[frozenset[str], list[tuple[Segment, np.ndarray]]] = {}
        self._packed: dict[str, _Packed] = {}  # branch -> its packed form, built on the first packed reply
        self._scratch = np.empty(SEGMENT, np.float32)
        self._diff = np.empty(SEGMENT, np.float32)

    def read(self, items: Iterable[tuple[str, object]], branches: Iterable[str],
             max_update_norm: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None:
        """Read-only views of a reply's tensors, and the flat vector of each branch sent packed, if the reply
        certainly passes every array check, else None.

        ``items`` are the reply's (name, ``flwr.app.Array``) pairs, one per tensor or one per branch under the
        branch's name (packed, ``common/packing.py``), or both for different branches; ``branches`` those the site
        holds. A packed branch is checked as one vector against the global branch flattened in packing order.
        """
        if not self.enabled:
            return None
        out: dict[str, np.ndarray] = {}
        packed: dict[str, np.ndarray] = {}
        sent: dict[str, int] = {}
        try:
            for key, array in items:
                form = self._packed_form(key) if key not in self.expected else None
                e = form.expected if form is not None else self.expected.get(key)
                if e is None or array.dtype != e.dtype_name or array.shape != e.shape:  # type: ignore[attr-defined]
                    return None
                data = array.data  # type: ignore[attr-defined]
                if type(data) is not bytes or len(data) != e.size or not data.startswith(e.header):
                    return None
                value = np.ndarray(e.shape, e.dtype, data, e.offset)  # read-only, over Flower's bytes
                if form is None:
                    out[key] = value
                    sent[e.branch] = sent.get(e.branch, 0) + 1
                    continue
                packed[key] = value
                out.update((name, value[start:stop].reshape(shape)) for name, start, stop, shape in form.places)
                sent[key] = sent.get(key, 0) + len(form.places)
        except Exception:  # noqa: BLE001 - whatever a reply holds, the exact checks word why it fails
            return None
        held = set(branches)
        if "head" not in sent or any(b not in held or n != self.count[b] for b, n in sent.items()):
            return None  # a branch not held, incomplete, or a tensor sent both packed and on its own
        tensor_branches = frozenset(b for b in sent if b not in packed)
        return (out, packed) if self._within(out, packed, tensor_branches, max_update_norm) else None

    def _packed_form(self, branch: str) -> _Packed | None:
        """``branch`` as it travels packed (None if no branch of the model has that name): built once a round."""
        if branch not in self._packed and self.count.get(branch):
            keys = sorted(k for k, e in self.expected.items() if e.branch == branch)  # common/packing.py's order
            places, start = [], 0
            for k in keys:
                size = math.prod(self.expected[k].shape)
                places.append((k, start, start + size, self.expected[k].shape))
                start += size
            reference = np.concatenate([np.asarray(self._global[k], np.float32).reshape(-1) for k in keys])
            self._packed[branch] = _Packed(_expected(np.dtype(np.float32), (start,), branch), reference,
                                           tuple(places))
        return self._packed.get(branch)

    def _segments(self, branches: frozenset[str]) -> list[tuple[Segment, np.ndarray]]:
        """Segments of the tensors of ``branches`` (global order), each with its global values: once a round."""
        if branches not in self._checks:
            keys = [k for k, e in self.expected.items() if e.branch in branches]
            cut = segments((k, math.prod(self.expected[k].shape)) for k in keys)
            self._checks[branches] = [(s, np.array(s.source(self._global, np.empty(s.size, np.float32)), copy=True))
                                      for s in cut]
        return self._checks[branches]

    def _within(self, arrays: Mapping[str, np.ndarray], packed: Mapping[str, np.ndarray],
                branches: frozenset[str], max_update_norm: float) -> bool:
        """True only if the update is finite and its L2 norm certainly within ``max_update_norm`` (0: no bound).

        ``arrays``: every tensor of the update; ``packed``: the branches that came as one vector (read whole, in
        slices of :data:`SEGMENT`); ``branches``: those sent tensor by tensor (read in segments).
        """
        total = 0.0
        with np.errstate(over="ignore", invalid="ignore"):  # a non-finite total sends the reply to the exact checks
            for branch, vector in packed.items():
                reference = self._packed[branch].reference
                for start in range(0, vector.size, SEGMENT):
                    stop = min(start + SEGMENT, vector.size)
                    diff = np.subtract(vector[start:stop], reference[start:stop], out=self._diff[:stop - start])
                    total += float(np.dot(diff, diff))
            for segment, reference in self._segments(branches) if branches else ():
                diff = np.subtract(segment.source(arrays, self._scratch), reference, out=self._diff[:segment.size])
                total += float(np.dot(diff, diff))
        if not math.isfinite(total):  # a NaN or inf in the update (or float32 overflow: the exact check decides)
            return False
        return max_update_norm <= 0 or total <= max_update_norm**2 * (1 - MARGIN) - _TINY


def weighted_mean(group: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """FedAvg's weighted mean of float32 tensors ``shapes`` (name -> shape, in order), bit for bit as Flower's.

    Flower's ``aggregate_arrayrecords`` computes ``w_i = weight_i / sum(weights)`` and, per tensor, ``x_1 * w_1``
    then ``+= x_i * w_i`` in float32 (numpy's rules for a Python float). The same operations run here on each
    segment of all the tensors, segment by segment over the group, into one output buffer: the same values, in a
    few calls per reply instead of two per tensor, and the accumulator segment stays in cache.
    """
    total = sum(weights)
    factors = [w / total for w in weights]
    cut = segments((k, math.prod(s)) for k, s in shapes.items())
    flat = np.empty(sum(s.size for s in cut), np.float32)
    scratch, product = np.empty(SEGMENT, np.float32), np.empty(SEGMENT, np.float32)
    for segment in cut:
        acc = flat[segment.offset:segment.offset + segment.size]
        tmp = product[:segment.size]
        for i, (arrays, factor) in enumerate(zip(group, factors, strict=True)):
            source = segment.source(arrays, scratch)
            if i == 0:
                np.multiply(source, factor, out=acc)
            else:
                np.multiply(source, factor, out=tmp)
                np.add(acc, tmp, out=acc)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for key, shape in shapes.items():
        size = math.prod(shape)
        out[key] = flat[offset:offset + size].reshape(shape)
        offset += size
    return out

"""What the server sends a site: the global model's trainable arrays, packed one flat array per branch.

Flower's ``FedAvg.configure_train`` / ``configure_evaluate`` put the global ``ArrayRecord`` into every message as it
is: one Flower ``Array`` per tensor, each with its own ``.npy`` header, ``Array`` object and two 64-hex ids (the
default model's train message was 1.118x its 75,660 tensor bytes). :func:`pack_downlink` swaps that record, in the
messages Flower built, for the layout of a sample-mode reply (``common.packing.pack_branches``): one float32 array
per branch, its tensors flattened in the sorted order of their names. The site splits it with its OWN model's names
and shapes (``client/downlink.py``), so names and shapes do not travel, and nothing new does.

Only the messages change: the strategy (and Flower's DP wrapper, FedOpt's server step) keep the per-tensor global
arrays they were handed, and replies are read against those.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Array, ArrayRecord, Message

from common.packing import pack_branches
from common.records import ARRAYS

__all__ = ["pack_downlink", "packed_record"]


def packed_record(arrays: ArrayRecord) -> ArrayRecord:
    """``arrays`` (one array per tensor) as one flat array per branch (``common.packing.pack_branches``)."""
    return ArrayRecord({k: Array(v) for k, v in pack_branches({k: a.numpy() for k, a in arrays.items()}).items()})


def pack_downlink(messages: Iterable[Message]) -> list[Message]:
    """The same ``messages``, each carrying its ``ARRAYS`` record packed (a shared payload is packed once).

    Flower's ``FedAvg`` gives all the messages of one call ONE ``RecordDict``; its ``ARRAYS`` slot is replaced, the
    ``ArrayRecord`` the strategy was handed is left as it was.
    """
    out = list(messages)
    done: dict[int, ArrayRecord] = {}  # id(the per-tensor record) -> its packed form
    for msg in out:
        content = msg.content
        record = content.array_records.get(ARRAYS)
        if record is None or any(record is p for p in done.values()):
            continue  # no arrays, or a payload shared with an earlier message and already packed
        content[ARRAYS] = done.setdefault(id(record), packed_record(record))
    return out

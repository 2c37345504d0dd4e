"""The server's round checkpoint: resume a federation after a SuperLink or ServerApp restart.

Flower's run id changes on every ``flwr run``; the federation id (run setting
``federation-id``) does not. After each aggregated round the server writes the global
arrays with that federation id and the round number, atomically. A ServerApp started with
the same federation id and out-dir resumes from the round after the checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from common.storage import arrays_digest, atomic_write_bytes

__all__ = ["Checkpoint", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FILENAME = "checkpoint.safetensors"


class CheckpointError(ValueError):
    """The checkpoint in out-dir belongs to another federation or is unreadable."""


@dataclass(frozen=True)
class Checkpoint:
    federation_id: str  # stable id across restarts
    round: int  # last completed (aggregated) round
    arrays: dict[str, np.ndarray]  # the global trainable arrays after that round
    digest: str  # arrays_digest(arrays): what the sites were (or will be) sent


def save_checkpoint(out_dir: Path, ckpt: Checkpoint) -> Path:
    from safetensors.numpy import save

    meta = {"federation_id": ckpt.federation_id, "round": str(ckpt.round), "digest": ckpt.digest}
    path = out_dir / FILENAME
    atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in ckpt.arrays.items()}, metadata=meta))
    return path


def load_checkpoint(out_dir: Path, *, federation_id: str) -> Checkpoint | None:
    """The checkpoint of ``federation_id`` in ``out_dir``; None if there is none."""
    from safetensors import safe_open

    path = out_dir / FILENAME
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: unreadable checkpoint ({err}); move it away to start afresh") from err
    if meta.get("federation_id") != federation_id:
        raise CheckpointError(
            f"{path} belongs to federation {meta.get('federation_id')!r}, not {federation_id!r}: "
            "use another out-dir, or the federation-id the checkpoint was written for"
        )
    if arrays_digest(arrays) != meta.get("digest"):
        raise CheckpointError(f"{path}: arrays do not match their recorded digest (corrupt checkpoint)")
    return Checkpoint(federation_id=federation_id, round=int(meta["round"]), arrays=arrays, digest=meta["digest"])


def describe(ckpt: Checkpoint) -> str:
    return json.dumps({"federation_id": ckpt.federation_id, "round": ckpt.round, "digest": ckpt.digest[:12]})

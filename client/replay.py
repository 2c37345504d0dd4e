"""A site's reply cache: a round asked for twice is answered once and spent once.

After a SuperLink or ServerApp restart the server may send a round again. The site keys
each train reply by (federation id, round, digest of the global arrays it was sent); the
same request gets the cached reply back, status ``replayed``, and no new privacy spend.
If the site's ledger shows the round was already reserved but no reply survived (a crash
between reservation and reply), it declines rather than spend on the same round twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping

import torch

from client.round import TrainOutcome
from common.privacy.ledger import Ledger
from common.records import NUM_EXAMPLES, STATUS_DECLINED, STATUS_REPLAYED, decline_code
from common.storage import arrays_digest, atomic_write_bytes

__all__ = ["ReplayCache", "state_digest"]


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """The digest the server computes over the arrays it sent (``common.storage.arrays_digest``)."""
    return arrays_digest({k: v.detach().cpu().numpy() for k, v in state.items()})


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)[:80] or "_"


class ReplayCache:
    def __init__(self, state_dir: Path, *, site: str) -> None:
        self.dir = state_dir / "replay"
        self.site = site
        self.ledger_path = state_dir / "ledger.sqlite"

    def _path(self, federation_id: str, server_round: int, digest: str) -> Path:
        return self.dir / _safe(federation_id) / f"round-{server_round:05d}-{digest[:16]}.safetensors"

    def get(self, federation_id: str, server_round: int, digest: str,
            report: Callable[[str], dict] | None = None) -> TrainOutcome | None:
        """The cached reply for this exact request, or a decline if the round was spent without one.

        ``report(code)`` makes that decline's PRIVACY record (``SiteRound.decline_report``: ε over the
        ledger's whole history); without it the record holds only status, code, reason and site.
        """
        from safetensors.torch import load

        path = self._path(federation_id, server_round, digest)
        if path.exists():
            raw = path.read_bytes()
            header_len = int.from_bytes(raw[:8], "little")
            meta = json.loads(raw[8:8 + header_len]).get("__metadata__", {})
            arrays = load(raw) or None
            privacy = json.loads(meta["privacy"])
            if meta.get("has_arrays") != "1":
                return TrainOutcome(None, json.loads(meta["metrics"]), privacy)  # a decline stays a decline
            return TrainOutcome(arrays, json.loads(meta["metrics"]), privacy | {"status": STATUS_REPLAYED})
        if self.ledger_path.exists() and any(
                e.event == "reserve" and e.federation_id == federation_id and e.round == server_round
                for e in Ledger(self.ledger_path).entries(site=self.site)):
            code = "already-spent"
            privacy = report(code) if report else {"status": STATUS_DECLINED, "code": code, "site": self.site,
                                                   "reason": decline_code(code).text}
            return TrainOutcome(None, {NUM_EXAMPLES: 0.0}, privacy)
        return None

    def put(self, federation_id: str, server_round: int, digest: str, outcome: TrainOutcome) -> None:
        from safetensors.torch import save

        meta = {"privacy": json.dumps(outcome.privacy), "metrics": json.dumps(outcome.metrics),
                "has_arrays": "1" if outcome.arrays is not None else "0"}
        tensors = {k: v.contiguous() for k, v in (outcome.arrays or {}).items()}
        atomic_write_bytes(self._path(federation_id, server_round, digest), save(tensors, metadata=meta))

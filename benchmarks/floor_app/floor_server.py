"""The floor's ServerApp: Flower's FedAvg, train messages only, timed per round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

__all__ = ["app", "parse_shapes"]

app = ServerApp()


def parse_shapes(text: str) -> dict[str, tuple[int, ...]]:
    """``"a:64x14,b:64"`` -> ``{"a": (64, 14), "b": (64,)}``."""
    out: dict[str, tuple[int, ...]] = {}
    for item in filter(None, text.split(",")):
        name, _, dims = item.partition(":")
        if not name or not dims:
            raise ValueError(f"shapes: {item!r} is not name:d1xd2...")
        out[name] = tuple(int(d) for d in dims.split("x"))
    if not out:
        raise ValueError("shapes is empty: give at least one name:d1xd2 array")
    return out


class TimedFedAvg(FedAvg):
    """Flower's FedAvg, unchanged, with the wall time from each round's sampling to its aggregate noted."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.round_seconds: list[float] = []
        self._t0 = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._t0 = time.monotonic()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        result = super().aggregate_train(server_round, replies)
        self.round_seconds.append(time.monotonic() - self._t0)
        return result


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    shapes = parse_shapes(str(cfg["shapes"]))
    rng = np.random.default_rng(0)
    arrays = ArrayRecord({k: Array(rng.standard_normal(s).astype(np.float32)) for k, s in shapes.items()})
    strategy = TimedFedAvg(fraction_train=float(cfg["fraction-train"]), fraction_evaluate=0.0,
                           min_train_nodes=1, min_available_nodes=int(cfg["min-available-nodes"]))
    t0 = time.monotonic()
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=int(cfg["num-server-rounds"]))
    strategy_s = time.monotonic() - t0
    if cfg.get("out-file"):
        Path(str(cfg["out-file"])).write_text(json.dumps({
            "strategy_s": strategy_s, "round_s": strategy.round_seconds,
            "parameters": int(sum(int(np.prod(s)) for s in shapes.values())), "tensors": len(shapes)}))

"""Server optimisers (FedProx and the FedOpt family) composed with the modality-aware merge.

Flower 1.42's ``FedProx``, ``FedAdam``, ``FedYogi`` and ``FedAdagrad`` subclass ``FedAvg``: FedProx only adds
``proximal-mu`` to every train message (the proximal term itself is a site's loss term, ``client/train.py``); the
FedOpt strategies apply their server step to what ``FedAvg.aggregate_train`` returns. That call is the seam: each
strategy here is ``(Flower's class, ModalityFedAvg)``, so Flower's own ``configure_train`` / ``aggregate_train``
run on top of our per-tensor merge (``server/strategy.py``), and none of their loops is copied.

**Per-tensor ownership holds under the server step.** A tensor that no site trained this round (the text branch
in a round where every site holding notes declined) keeps its value: its merged delta is 0, but Adam's and Yogi's
first moment still carries earlier rounds and would move it. After Flower's step, such tensors are put back to the
global value and their moments to what they were before the round (the moments of a tensor advance only in the
rounds it was trained, as in torch's SparseAdam). "Nobody trained it" is read from the merge itself: the merged
tensor equals the global one exactly (delta exactly 0), whatever the aggregator decided (no update for the branch,
or a robust aggregator that kept the global value). A tensor trained by sites but merged to exactly its old value
is treated the same way: it has no step to take.

The server step is post-processing of what the sites released: it costs no privacy. Its moments live in this
process only: a resumed run (``server/checkpoint.py``) restarts them at 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi

from common.config import StrategySettings
from server.strategy import ModalityFedAvg

__all__ = ["STRATEGIES", "StrategySpec", "build_strategy"]


@dataclass(frozen=True)
class StrategySpec:
    """One ``strategy`` setting: Flower's class and which :class:`StrategySettings` fields it takes."""

    flower_class: type[FedAvg]
    step_kwargs: Callable[[StrategySettings], dict[str, float]]  # the settings -> Flower's keyword arguments
    description: str


STRATEGIES: dict[str, StrategySpec] = {
    "fedavg": StrategySpec(FedAvg, lambda s: {}, "per-tensor weighted mean (ModalityFedAvg alone)"),
    "fedprox": StrategySpec(FedProx, lambda s: {"proximal_mu": s.proximal_mu},
                            "FedAvg + proximal term μ/2 ||w - w_global||² at each site (Li et al. 2020)"),
    "fedadam": StrategySpec(FedAdam, lambda s: {"eta": s.learning_rate, "beta_1": s.beta_1, "beta_2": s.beta_2,
                                                "tau": s.tau}, "server Adam on the merged delta (Reddi et al. 2021)"),
    "fedyogi": StrategySpec(FedYogi, lambda s: {"eta": s.learning_rate, "beta_1": s.beta_1, "beta_2": s.beta_2,
                                                "tau": s.tau}, "server Yogi on the merged delta (Reddi et al. 2021)"),
    "fedadagrad": StrategySpec(FedAdagrad, lambda s: {"eta": s.learning_rate, "tau": s.tau},  # Flower's: no β
                               "server Adagrad on the merged delta (Reddi et al. 2021)"),
}

_FEDAVG_KEYS = frozenset(inspect.signature(FedAvg.__init__).parameters) - {"self"}


class _ModalityBase(ModalityFedAvg):
    """Where Flower's chains of calls reach ``FedAvg``: adds ModalityFedAvg's own arguments, keeps the merge."""

    _modality_kwargs: dict[str, Any]
    merged_arrays: dict[str, np.ndarray] | None = None  # the per-tensor merge of the last round, before any step

    def __init__(self, **fedavg_kwargs: Any) -> None:
        super().__init__(**self._modality_kwargs, **fedavg_kwargs)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        self.merged_arrays = None if arrays is None else {k: v.numpy() for k, v in arrays.items()}
        return arrays, metrics


class _OwnedStrategySettings:
    """Mixin before a FedOpt class: tensors nobody trained this round keep their value and their moments; every
    tensor keeps the global model's dtype (Flower's step returns float64; the reply checks want exactly it)."""

    current_arrays: dict[str, np.ndarray] | None
    merged_arrays: dict[str, np.ndarray] | None
    m_t: dict[str, np.ndarray] | None
    v_t: dict[str, np.ndarray] | None
    untouched_keys: frozenset[str] = frozenset()  # tensors the last round's merge left exactly as they were

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        moments = {name: _copy(getattr(self, name, None)) for name in ("m_t", "v_t")}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None or self.current_arrays is None or self.merged_arrays is None:
            return arrays, metrics
        self.untouched_keys = frozenset(k for k, v in self.current_arrays.items()
                                        if np.array_equal(self.merged_arrays[k], v))
        for key, current in self.current_arrays.items():
            if key in self.untouched_keys:
                arrays[key] = Array(np.asarray(current))
                continue
            if arrays[key].numpy().dtype != current.dtype:  # Flower's step computes in float64: keep the model's
                arrays[key] = Array(arrays[key].numpy().astype(current.dtype))  # dtype (sites reply in it, exactly)
        for key in self.untouched_keys:
            for name, before in moments.items():
                after = getattr(self, name, None)
                if after is not None and key in after:
                    after[key] = before[key] if before and key in before else np.zeros_like(after[key])
        return arrays, metrics


def _copy(state: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray] | None:
    return None if not state else {k: np.array(v, copy=True) for k, v in state.items()}


_COMPOSED: dict[str, type] = {}


def _composed_class(name: str) -> type[ModalityFedAvg]:
    """``ModalityFed<Name>``: (ownership mixin,) Flower's class, then the modality-aware merge."""
    if name not in _COMPOSED:
        flower = STRATEGIES[name].flower_class
        bases: tuple[type, ...] = (flower, _ModalityBase)
        if issubclass(flower, (FedAdam, FedYogi, FedAdagrad)):
            bases = (_OwnedStrategySettings, *bases)
        _COMPOSED[name] = type(f"Modality{flower.__name__}", bases, {"__doc__": STRATEGIES[name].description,
                                                                      "__module__": __name__})
    return _COMPOSED[name]


def build_strategy(settings: StrategySettings, **kwargs: Any) -> ModalityFedAvg:
    """The strategy the run setting ``strategy`` names, with ModalityFedAvg's merge and recorder.

    Parameters
    ----------
    settings
        The run's strategy settings (``common.config.StrategySettings``); fields the named strategy does not use
        are ignored.
    **kwargs
        ``FedAvg``'s sampling arguments (``fraction_train``, ``min_train_nodes``, ...) and ModalityFedAvg's own
        (``recorder``, ``round_offset``, ``fold_evaluation``, ...).

    Raises
    ------
    ValueError
        For a name that is not a strategy.
    """
    name = settings.name
    if name not in STRATEGIES:
        raise ValueError(f"strategy {name!r} is unknown; choose one of {', '.join(STRATEGIES)}")
    fedavg_kwargs = {k: v for k, v in kwargs.items() if k in _FEDAVG_KEYS}
    modality_kwargs = {k: v for k, v in kwargs.items() if k not in _FEDAVG_KEYS}
    if name == "fedavg":
        return ModalityFedAvg(**modality_kwargs, **fedavg_kwargs)
    cls = _composed_class(name)
    strategy = cls.__new__(cls)
    strategy._modality_kwargs = modality_kwargs  # read once by _ModalityBase.__init__ inside Flower's chain
    cls.__init__(strategy, **fedavg_kwargs, **STRATEGIES[name].step_kwargs(settings))
    del strategy._modality_kwargs
    return strategy

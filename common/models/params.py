"""Which branch owns each parameter, and moving the trainable parameters of chosen branches in and out.

Every parameter belongs to exactly one branch: a modality (``encoders.<m>.``, ``projections.<m>.``,
``late_heads.<m>.``) or ``"head"`` (everything else). A site that holds only some modalities trains, sends
and receives only those branches (plus the head); the server averages each branch over the sites that
hold it. Names are those of the plain model: the ``_module.`` prefix of an Opacus ``GradSampleModule`` is
dropped, so a state taken from a wrapped model loads into a plain one and back.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from common.models.config import MODALITIES

__all__ = [
    "BRANCHES",
    "branch_of",
    "freeze_branches",
    "load_trainable",
    "parameter_counts",
    "plain_name",
    "trainable_state",
]

BRANCHES: tuple[str, ...] = (*MODALITIES, "head")
_MODALITY_CONTAINERS = ("encoders", "projections", "late_heads")  # FusionModel attributes keyed by modality
_WRAPPER_PREFIX = "_module."  # what opacus.GradSampleModule puts before every name


def plain_name(name: str) -> str:
    """``name`` without the ``_module.`` prefix(es) that Opacus' GradSampleModule adds."""
    while name.startswith(_WRAPPER_PREFIX):
        name = name[len(_WRAPPER_PREFIX) :]
    return name


@functools.lru_cache(maxsize=8192)
def branch_of(name: str) -> str:
    """The branch that owns parameter ``name``: one of ``MODALITIES`` or ``"head"``.

    Raises
    ------
    ValueError
        If ``name`` sits in a per-modality container under a name that is not a modality.
    """
    parts = plain_name(name).split(".")
    if parts[0] in _MODALITY_CONTAINERS:
        if len(parts) < 3 or parts[1] not in MODALITIES:
            raise ValueError(
                f"parameter {name!r} is under {parts[0]}/ but {parts[1] if len(parts) > 1 else ''!r} is not one of "
                f"{MODALITIES}: per-modality containers must be keyed by modality"
            )
        return parts[1]
    return "head"


def _checked_branches(branches: Iterable[str]) -> frozenset[str]:
    if isinstance(branches, str):
        raise TypeError(f"branches={branches!r}: give a collection of branch names, e.g. ({branches!r},)")
    chosen = frozenset(branches)
    unknown = sorted(chosen - set(BRANCHES))
    if unknown:
        raise ValueError(f"unknown branches {unknown}; branches are {BRANCHES}")
    return chosen


def _named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, parameter in model.named_parameters():
        yield plain_name(name), parameter


def trainable_state(model: nn.Module, *, branches: Iterable[str]) -> dict[str, Tensor]:
    """Detached copies of the parameters of ``branches`` that require grad, by plain name.

    Frozen parameters (``freeze_branches``, pretrained weights) are never included.
    """
    chosen = _checked_branches(branches)
    return {
        name: parameter.detach().clone()
        for name, parameter in _named_parameters(model)
        if parameter.requires_grad and branch_of(name) in chosen
    }


def load_trainable(model: nn.Module, state: Mapping[str, Tensor], *, strict_known: bool = True) -> list[str]:
    """Copy ``state`` into the model's parameters of the same (plain) names; a partial state is fine.

    Parameters
    ----------
    model
        A ``FusionModel``, plain or wrapped by Opacus.
    state
        Name -> tensor, as made by :func:`trainable_state` (any subset of branches).
    strict_known
        If True, a name the model does not have is an error; if False it is skipped.

    Returns
    -------
    list[str]
        The names that were loaded.
    """
    parameters = dict(_named_parameters(model))
    unknown = sorted(name for name in state if plain_name(name) not in parameters)
    if unknown and strict_known:
        raise KeyError(
            f"state has parameters this model does not have: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}; "
            "was it made from a model with another FusionConfig? (strict_known=False skips them)"
        )
    loaded = []
    with torch.no_grad():
        for name, value in state.items():
            parameter = parameters.get(plain_name(name))
            if parameter is None:
                continue
            if parameter.shape != value.shape:
                raise ValueError(
                    f"state[{name!r}] has shape {tuple(value.shape)} but the model's parameter has "
                    f"{tuple(parameter.shape)}: the configs of sender and receiver differ"
                )
            parameter.copy_(value)
            loaded.append(plain_name(name))
    return loaded


def freeze_branches(model: nn.Module, branches: Iterable[str]) -> None:
    """Set ``requires_grad=False`` on every parameter of ``branches``.

    Call before ``PrivacyEngine.make_private``: Opacus decides at wrap time which parameters get
    per-sample gradients.
    """
    chosen = _checked_branches(branches)
    for name, parameter in _named_parameters(model):
        if branch_of(name) in chosen:
            parameter.requires_grad_(False)


def parameter_counts(model: nn.Module, *, trainable_only: bool = True) -> dict[str, int]:
    """Number of (trainable) parameter elements per branch, every branch listed."""
    counts = dict.fromkeys(BRANCHES, 0)
    for name, parameter in _named_parameters(model):
        if parameter.requires_grad or not trainable_only:
            counts[branch_of(name)] += parameter.numel()
    return counts

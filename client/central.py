"""A site's round under ``privacy-mode = "central"``: plain SGD, the whole model back, an equal weight.

Site-level DP is the server's job here (``server/central.py``: Flower's server-side fixed clipping and noise).
The site runs no Opacus; what protects it is that the server clips its update to ``central-clipping-norm`` and
noises the sum (README "Central DP"), a server it must trust with its raw update. Before the update leaves, the
site records the release in its own ledger (record-level: the server's σ/2, ``client/privacy.py``), so its
lifetime composition spans federations. No Flower imports.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from client.train import train_plain
from common.config import TrainSettings
from common.models.params import trainable_state
from common.records import SITE_WEIGHT

__all__ = ["central_update"]


def central_update(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    global_state: Mapping[str, torch.Tensor],
    branches: tuple[str, ...],
    train: TrainSettings,
    device: torch.device,
    seed: int,
    site: str,
) -> tuple[dict[str, torch.Tensor], dict[str, float], float]:
    """Train ``model`` with plain SGD and return ``(arrays, metrics, local training loss)``.

    Parameters
    ----------
    model
        The global model loaded into this site's copy.
    dataset
        The site's training rows.
    global_state
        The arrays the server sent: the reply carries exactly these keys, IN THIS ORDER (Flower's server-side
        clipping pairs reply and global arrays by position).
    branches
        Every branch of the model (central mode sends the whole model).
    train
        Local training settings.
    device, seed
        Where and with which seed to train.
    site
        The site's name (for the server's records).

    Returns
    -------
    tuple
        ``arrays`` (the whole trained model), ``metrics`` (``site-weight`` = 1.0, the equal aggregation weight
        Flower's accounted FedAvg requires: nothing computed from the rows), and the mean training loss for the
        site's own log (never sent).

    Raises
    ------
    RuntimeError
        If the trained model's tensors are not exactly the ones the server sent.
    """
    res = train_plain(model, dataset, epochs=train.local_epochs, batch_size=train.batch_size, lr=train.learning_rate,
                      momentum=train.momentum, modality_dropout=train.modality_dropout, device=device, seed=seed)
    state = trainable_state(model, branches=branches)
    if set(state) != set(global_state):
        missing, extra = sorted(set(global_state) - set(state)), sorted(set(state) - set(global_state))
        raise RuntimeError(f"site '{site}': central DP needs the whole model back; missing {missing}, extra {extra}")
    arrays = {k: state[k].detach().cpu().contiguous() for k in global_state}
    return arrays, {SITE_WEIGHT: 1.0}, res.loss

"""Tabular encoder: an MLP over publicly normalised values concatenated with their missing indicators.

Inputs (see ``common/data/features.py``): ``inputs["tabular"]`` (B, F) publicly normalised values, 0 where missing,
and ``inputs["tabular_mask"]`` (B, F), 1 = observed, 0 = missing. The model sees the mask, so "missing" is
information, not an imputed value.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from common.models.config import TabularEncoderConfig

__all__ = ["TabularEncoder"]


class TabularEncoder(nn.Module):
    """MLP: ``[x * mask, mask]`` (B, 2F) -> hidden -> ``out_dim``.

    Missing values are zeroed here as well, so whatever fill value a caller used cannot reach the model.
    """

    def __init__(self, config: TabularEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.out_dim
        self.net = nn.Sequential(
            nn.Linear(2 * config.in_features, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.out_dim),
            nn.GELU(),
        )

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Encode a batch.

        Parameters
        ----------
        inputs
            Must hold ``"tabular"`` (B, F) and ``"tabular_mask"`` (B, F).

        Returns
        -------
        Tensor
            (B, out_dim) features.
        """
        if "tabular_mask" not in inputs:
            raise KeyError(
                "inputs has 'tabular' but no 'tabular_mask': the encoder must know which values are missing "
                "(1 = observed, 0 = missing; see common/data/features.py)"
            )
        values, mask = inputs["tabular"], inputs["tabular_mask"]
        expected = self.config.in_features
        if values.shape[-1] != expected or mask.shape != values.shape:
            raise ValueError(
                f"inputs['tabular'] {tuple(values.shape)} and inputs['tabular_mask'] {tuple(mask.shape)} must both "
                f"be (B, {expected}) (TabularEncoderConfig.in_features={expected})"
            )
        dtype = self.net[0].weight.dtype
        mask = mask.to(dtype)
        values = torch.where(mask > 0, values.to(dtype), torch.zeros((), dtype=dtype, device=values.device))
        return self.net(torch.cat([values, mask], dim=-1))

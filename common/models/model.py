"""``FusionModel``: per-modality encoders, per-modality branches, and a shared fusion head.

Data flow for a batch of B samples and the M = ``len(config.modalities)`` modalities::

    inputs[m] --encoders.<m>--> feature --projections.<m> | late_heads.<m>--> branch output (B, width)
        zeroed where modality m is missing  ->  stacked (B, M, width)  --head(stacked, present)--> logits

Parameter names therefore say who owns them (``common/models/params.py``): ``encoders.<m>.``,
``projections.<m>.`` and ``late_heads.<m>.`` belong to modality m, everything under ``head.`` is shared.

A modality is *present* for a sample when its column of ``modality_mask`` is 1 and ``inputs`` holds it.
The output never depends on the values of a missing modality (they are zeroed after the branch), and a
missing modality contributes zero gradient. Plain torch + Opacus: this file knows nothing of Flower.

Under Opacus every trainable parameter needs a per-sample gradient each step, and an encoder whose modality
is never in ``inputs`` never runs. A site that lacks a modality must therefore call
``freeze_branches(model, (modality,))`` before ``PrivacyEngine.make_private`` (Opacus otherwise fails in
``optimizer.step`` with "Per sample gradient is not initialized").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from common.models.config import FusionConfig
from common.models.fusion import FUSIONS
from common.models.image import build_image_encoder
from common.models.tabular import TabularEncoder
from common.models.text import build_text_encoder

__all__ = ["ENCODERS", "INPUT_KEYS", "FusionModel"]

# modality -> builder of its encoder from the modality's sub-config (FusionConfig.<modality>)
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "tabular": TabularEncoder,
    "text": build_text_encoder,
    "image": build_image_encoder,
}

# modality -> every key of ``inputs`` that may belong to it (the first one marks the modality as given)
INPUT_KEYS: dict[str, tuple[str, ...]] = {
    "tabular": ("tabular", "tabular_mask"),
    "text": ("text", "text_attention_mask"),
    "image": ("image",),
}


class FusionModel(nn.Module):
    """Multimodal classifier that tolerates modalities missing per sample.

    Parameters
    ----------
    config
        Which modalities, which fusion, and one encoder config per modality.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        fusion = FUSIONS[config.fusion]
        self.encoders = nn.ModuleDict({m: ENCODERS[m](getattr(config, m)) for m in config.modalities})
        branches = nn.ModuleDict(
            {m: fusion.build_branch(self.encoders[m].out_dim, config) for m in config.modalities}
        )
        self._branch_attr = fusion.branch_attr
        self.add_module(fusion.branch_attr, branches)  # "projections" or "late_heads"
        self._branch_width = fusion.branch_width(config)
        self.head = fusion.build_head(config)

    @property
    def last_attention_weights(self) -> Tensor | None:
        """(B, M) attention weights of the last forward pass (detached), 0 for missing modalities.

        None unless ``fusion='attention'`` and a forward pass has run.
        """
        return getattr(self.head, "last_attention_weights", None)

    def forward(self, inputs: Mapping[str, Tensor], modality_mask: Tensor) -> Tensor:
        """Logits for a batch.

        Parameters
        ----------
        inputs
            ``"tabular"`` (B, F) + ``"tabular_mask"`` (B, F); ``"text"`` (+ ``"text_attention_mask"``) as made
            by ``TextFeaturizer``; ``"image"`` (B, C, H, W). A modality absent from ``inputs`` is missing for
            every sample. B may be 0.
        modality_mask
            (B, M) float, 1 = present, columns in the order of ``config.modalities``.

        Returns
        -------
        Tensor
            (B, num_classes) logits.
        """
        modalities = self.config.modalities
        if modality_mask.dim() != 2 or modality_mask.shape[1] != len(modalities):
            raise ValueError(
                f"modality_mask is {tuple(modality_mask.shape)}; expected (B, {len(modalities)}), one column per "
                f"entry of FusionConfig.modalities={modalities}"
            )
        inputs = self._checked_inputs(inputs, batch=modality_mask.shape[0])
        dtype = next(self.head.parameters()).dtype
        given = torch.tensor([m in inputs for m in modalities], dtype=dtype, device=modality_mask.device)
        present = modality_mask.to(dtype) * given
        branches = getattr(self, self._branch_attr)
        zero = torch.zeros((), dtype=dtype, device=modality_mask.device)
        columns = []
        for index, modality in enumerate(modalities):
            if modality in inputs:
                output = branches[modality](self.encoders[modality](inputs))
                columns.append(torch.where(present[:, index : index + 1] > 0, output, zero))
            else:
                columns.append(zero.expand(modality_mask.shape[0], self._branch_width))
        return self.head(torch.stack(columns, dim=1), present)

    def _checked_inputs(self, inputs: Mapping[str, Tensor], *, batch: int) -> dict[str, Tensor]:
        """Refuse keys this model does not read and batch sizes that disagree; cast floats to the model dtype."""
        readable = {key for m in self.config.modalities for key in INPUT_KEYS[m]}
        unknown = sorted(set(inputs) - readable)
        if unknown:
            raise KeyError(
                f"inputs has keys {unknown} that this model does not read (modalities={self.config.modalities}); "
                f"it reads {sorted(readable)}. A misspelt key would otherwise silently mark a modality missing"
            )
        dtype = next(self.head.parameters()).dtype
        checked = {}
        for key, value in inputs.items():
            if value.shape[0] != batch:
                raise ValueError(f"inputs[{key!r}] has {value.shape[0]} samples but modality_mask has {batch} rows")
            checked[key] = value.to(dtype) if value.is_floating_point() else value
        return checked

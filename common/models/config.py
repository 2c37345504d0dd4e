"""Configuration of the fusion model: one frozen dataclass per encoder and one for the whole model.

Like ``CLIPConfig`` holding a text and a vision config, :class:`FusionConfig` holds one sub-config per
modality it reads. Every config validates itself on construction, so a bad value fails where it is
written, with a message naming the class and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "MODALITIES",
    "FusionConfig",
    "FusionKind",
    "ImageEncoderConfig",
    "ImageKind",
    "TabularEncoderConfig",
    "TextEncoderConfig",
    "TextKind",
]

MODALITIES: tuple[str, ...] = ("tabular", "text", "image")
"""Every modality a model may read, in canonical order."""

TextKind = Literal["minilm-frozen", "minilm-finetune-top", "tiny-bert"]
ImageKind = Literal["small-cnn", "resnet18-gn", "pixel-projection"]
FusionKind = Literal["concat", "attention", "late"]


def _require_positive(owner: str, **fields: int) -> None:
    for name, value in fields.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}.{name}={value!r}: must be a positive integer")


def _require_probability(owner: str, name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{owner}.{name}={value!r}: a dropout probability must lie in [0, 1)")


def _require_choice(owner: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{owner}.{name}={value!r}: unknown; choose one of {choices}")


@dataclass(frozen=True)
class TabularEncoderConfig:
    """MLP over publicly normalised tabular values concatenated with their missing indicators (2F inputs)."""

    in_features: int  # F: number of tabular features; the encoder reads 2F inputs (values + missing indicators)
    hidden: int = 64  # width of the MLP's hidden layer
    out_dim: int = 32  # width of the tabular feature handed to the fusion
    dropout: float = 0.1  # dropout after the hidden layer

    def __post_init__(self) -> None:
        owner = "TabularEncoderConfig"
        _require_positive(owner, in_features=self.in_features, hidden=self.hidden, out_dim=self.out_dim)
        _require_probability(owner, "dropout", self.dropout)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Text encoder over the cacheable inputs that ``TextFeaturizer`` computes from the notes."""

    kind: TextKind = "minilm-frozen"  # minilm-frozen | minilm-finetune-top | tiny-bert (see common/models/text.py)
    out_dim: int = 32  # text feature width of the trainable kinds (minilm-frozen passes its 384-d embedding on as is)
    max_length: int = 64  # tokens per note after padding/truncation; also tiny-bert's number of positions
    tiny_hidden: int = 32  # tiny-bert: hidden width (must be a multiple of tiny_heads)
    tiny_layers: int = 2  # tiny-bert: number of transformer layers
    tiny_heads: int = 2  # tiny-bert: attention heads per layer
    tiny_intermediate: int = 64  # tiny-bert: width of each layer's feed-forward block
    dropout: float = 0.1  # dropout inside the trainable BERT layers and on the pooled feature
    featurize_batch_size: int = 32  # notes per MiniLM forward pass in TextFeaturizer
    # minilm-frozen: k > 0 maps the 384-d embedding through a FIXED random k x 384 Gaussian matrix (public: drawn
    # from a constant seed, never fitted on any data, never trained or sent); 0 = pass the embedding on as is
    public_projection: int = 0

    def __post_init__(self) -> None:
        owner = "TextEncoderConfig"
        _require_choice(owner, "kind", self.kind, get_args(TextKind))
        if not isinstance(self.public_projection, int) or isinstance(self.public_projection, bool) \
                or self.public_projection < 0:
            raise ValueError(f"{owner}.public_projection={self.public_projection!r}: must be an integer >= 0 "
                             "(0 = no projection)")
        if self.public_projection and self.kind != "minilm-frozen":
            raise ValueError(f"{owner}.public_projection={self.public_projection} with kind={self.kind!r}: only "
                             "minilm-frozen has a fixed embedding to project; the other kinds train their own output")
        _require_positive(
            owner,
            out_dim=self.out_dim,
            max_length=self.max_length,
            tiny_hidden=self.tiny_hidden,
            tiny_layers=self.tiny_layers,
            tiny_heads=self.tiny_heads,
            tiny_intermediate=self.tiny_intermediate,
            featurize_batch_size=self.featurize_batch_size,
        )
        _require_probability(owner, "dropout", self.dropout)
        if self.max_length > 512:
            raise ValueError(f"{owner}.max_length={self.max_length}: MiniLM has only 512 positions")
        if self.tiny_hidden % self.tiny_heads != 0:
            raise ValueError(
                f"{owner}.tiny_hidden={self.tiny_hidden} is not a multiple of tiny_heads={self.tiny_heads}: "
                "each attention head takes an equal slice of the hidden width"
            )


@dataclass(frozen=True)
class ImageEncoderConfig:
    """Image encoder; GroupNorm everywhere (BatchNorm would break per-sample gradients)."""

    kind: ImageKind = "small-cnn"  # small-cnn | resnet18-gn | pixel-projection (see common/models/image.py)
    in_channels: int = 1  # channels of the input images (1 = grey, 3 = RGB)
    out_dim: int = 32  # width of the image feature handed to the fusion (pixel-projection: its projection's width)
    cnn_channels: tuple[int, ...] = (16, 32)  # small-cnn: output channels of each conv block
    norm_groups: int = 8  # GroupNorm groups in every conv block; must divide every channel count
    dropout: float = 0.1  # dropout on the pooled image feature

    def __post_init__(self) -> None:
        owner = "ImageEncoderConfig"
        _require_choice(owner, "kind", self.kind, get_args(ImageKind))
        object.__setattr__(self, "cnn_channels", tuple(self.cnn_channels))
        if not self.cnn_channels:
            raise ValueError(f"{owner}.cnn_channels is empty: small-cnn needs at least one conv block")
        _require_positive(owner, in_channels=self.in_channels, out_dim=self.out_dim, norm_groups=self.norm_groups)
        _require_positive(owner, **{f"cnn_channels[{i}]": c for i, c in enumerate(self.cnn_channels)})
        _require_probability(owner, "dropout", self.dropout)
        # resnet18 widths are 64..512; small-cnn widths are cnn_channels; pixel-projection has no GroupNorm.
        widths = {"resnet18-gn": (64, 128, 256, 512), "small-cnn": self.cnn_channels}.get(self.kind, ())
        for width in widths:
            if width % self.norm_groups != 0:
                raise ValueError(
                    f"{owner}.norm_groups={self.norm_groups} does not divide a {self.kind} width of {width}: "
                    "GroupNorm splits the channels into equal groups"
                )


@dataclass(frozen=True)
class FusionConfig:
    """The whole model: which modalities it reads, how they are fused, and one encoder config per modality."""

    modalities: tuple[str, ...]  # modalities the model reads, in the column order of modality_mask
    fusion: FusionKind = "concat"  # concat | attention | late (see common/models/fusion.py)
    hidden: int = 64  # width of the per-modality projections and of the fusion head
    num_classes: int = 2  # number of output logits
    dropout: float = 0.1  # dropout inside the fusion head and the late-fusion classifiers
    tabular: TabularEncoderConfig | None = None  # required iff "tabular" is in modalities
    text: TextEncoderConfig | None = None  # required iff "text" is in modalities
    image: ImageEncoderConfig | None = None  # required iff "image" is in modalities

    def __post_init__(self) -> None:
        owner = "FusionConfig"
        if isinstance(self.modalities, str):
            raise ValueError(f"{owner}.modalities={self.modalities!r}: give a tuple of names, not one string")
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not self.modalities:
            raise ValueError(f"{owner}.modalities is empty: a model must read at least one modality")
        for modality in self.modalities:
            _require_choice(owner, "modalities", modality, MODALITIES)
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"{owner}.modalities={self.modalities}: each modality may appear only once")
        _require_choice(owner, "fusion", self.fusion, get_args(FusionKind))
        _require_positive(owner, hidden=self.hidden, num_classes=self.num_classes)
        _require_probability(owner, "dropout", self.dropout)
        for modality in MODALITIES:
            sub_config = getattr(self, modality)
            if modality in self.modalities and sub_config is None:
                raise ValueError(
                    f"{owner}.{modality} is None but {modality!r} is in modalities: its encoder needs a config"
                )
            if modality not in self.modalities and sub_config is not None:
                raise ValueError(
                    f"{owner}.{modality} is set but {modality!r} is not in modalities={self.modalities}: "
                    "a config no encoder reads would be a second, silent source of truth"
                )

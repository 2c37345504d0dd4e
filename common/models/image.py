"""Image encoders: a small GroupNorm CNN, torchvision's ResNet-18 with GroupNorm, and a fixed public projection.

No BatchNorm anywhere: BatchNorm mixes samples across the batch, which breaks per-sample gradients (DP-SGD).
No pretrained weights (none ship offline for ResNet). Input: ``inputs["image"]`` (B, C, H, W) float; any H, W
from 8 up (both encoders end in a global average pool).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from common.models.config import ImageEncoderConfig

__all__ = ["IMAGE_ENCODERS", "PIXEL_PROJECTION_SEED", "PIXEL_SIDE", "PixelProjectionEncoder", "ResNet18GNEncoder",
           "SmallCNNEncoder", "build_image_encoder", "public_pixel_projection"]


def _check_image(image: Tensor, config: ImageEncoderConfig) -> None:
    if image.dim() != 4 or image.shape[1] != config.in_channels:
        raise ValueError(
            f"inputs['image'] is {tuple(image.shape)}; the {config.kind} encoder reads (B, C, H, W) images with "
            f"C = ImageEncoderConfig.in_channels = {config.in_channels}"
        )


class SmallCNNEncoder(nn.Module):
    """small-cnn: per block 3x3 conv -> GroupNorm -> GELU -> 2x2 max-pool (not after the last block),
    then global average pool -> dropout -> Linear -> GELU."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.out_dim
        layers: list[nn.Module] = []
        in_channels = config.in_channels
        for index, channels in enumerate(config.cnn_channels):
            layers += [
                nn.Conv2d(in_channels, channels, kernel_size=3, padding=1),
                nn.GroupNorm(config.norm_groups, channels),
                nn.GELU(),
            ]
            if index < len(config.cnn_channels) - 1:
                layers.append(nn.MaxPool2d(2))
            in_channels = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.output = nn.Sequential(nn.Linear(in_channels, config.out_dim), nn.GELU())

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        image = inputs["image"]
        _check_image(image, self.config)
        pooled = self.pool(self.features(image)).flatten(1)
        return self.output(self.dropout(pooled))


@functools.cache
def _basic_block_without_inplace() -> type[nn.Module]:
    """torchvision's ``BasicBlock`` with its in-place ops replaced.

    Opacus' hooks wrap each layer's output in a backward-hook function; modifying such an output in place
    (``out += identity``, ``ReLU(inplace=True)``) is forbidden by autograd. Built lazily so importing this
    module does not import torchvision.
    """
    from torchvision.models.resnet import BasicBlock

    class BasicBlockWithoutInplace(BasicBlock):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.relu = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    return BasicBlockWithoutInplace


class ResNet18GNEncoder(nn.Module):
    """resnet18-gn: torchvision ResNet-18 (random init) with GroupNorm, ``in_channels`` input channels,
    its classifier replaced by dropout -> Linear(512, out_dim) -> GELU."""

    def __init__(self, config: ImageEncoderConfig) -> None:
        from torchvision.models.resnet import ResNet

        super().__init__()
        self.config = config
        self.out_dim = config.out_dim
        groups = config.norm_groups
        self.backbone = ResNet(
            _basic_block_without_inplace(),
            [2, 2, 2, 2],
            norm_layer=lambda channels: nn.GroupNorm(groups, channels),
        )
        self.backbone.conv1 = nn.Conv2d(config.in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.backbone.relu = nn.ReLU()  # the stem's ReLU is in-place too
        self.backbone.fc = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(512, config.out_dim), nn.GELU())

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        image = inputs["image"]
        _check_image(image, self.config)
        return self.backbone(image)


PIXEL_PROJECTION_SEED = 20251202  # constant, public: every site and the server draw the same matrix
PIXEL_SIDE = 14  # images are average-pooled to 14 x 14 before the projection (MNIST's 28 x 28: 2 x 2 blocks)


def public_pixel_projection(k: int, in_features: int) -> Tensor:
    """The fixed (k, in_features) matrix of pixel-projection: N(0, 1) entries from :data:`PIXEL_PROJECTION_SEED`.

    Data-independent (a Johnson-Lindenstrauss map), so using it costs no privacy; a unit-norm input maps to
    coordinates of unit variance.
    """
    gen = torch.Generator().manual_seed(PIXEL_PROJECTION_SEED)
    return torch.randn(k, in_features, generator=gen, dtype=torch.float32)


class PixelProjectionEncoder(nn.Module):
    """pixel-projection: NO trainable parameters; the image through fixed public maps to ``out_dim`` features.

    Average pool to 14 x 14, flatten, centre and scale each image by its OWN mean and norm (per record: no
    statistics of other records), then the fixed matrix of :func:`public_pixel_projection` (a non-persistent buffer:
    not in the state dict, never sent). The fusion's image projection (out_dim x hidden) is then the image
    branch's only trained part: under DP-SGD the noise falls on ~2 000 coordinates instead of the ~8 000 of
    small-cnn + projection, and no conv filter has to be learnt from a few hundred noisy steps (the image
    counterpart of ``text-projection``; BENCHMARKS.md "hospitals-multimodal: the image branch").
    """

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.out_dim = config.out_dim
        matrix = public_pixel_projection(config.out_dim, config.in_channels * PIXEL_SIDE * PIXEL_SIDE)
        self.register_buffer("projection", matrix, persistent=False)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        image = inputs["image"]
        _check_image(image, self.config)
        flat = nn.functional.adaptive_avg_pool2d(image, PIXEL_SIDE).flatten(1)
        flat = flat - flat.mean(dim=1, keepdim=True)
        flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)  # an absent (all-zero) image stays zero
        return flat @ self.projection.to(flat.dtype).T


IMAGE_ENCODERS: dict[str, Callable[[ImageEncoderConfig], nn.Module]] = {
    "small-cnn": SmallCNNEncoder,
    "resnet18-gn": ResNet18GNEncoder,
    "pixel-projection": PixelProjectionEncoder,
}


def build_image_encoder(config: ImageEncoderConfig) -> nn.Module:
    """The image encoder of ``config.kind`` (keys of :data:`IMAGE_ENCODERS`)."""
    return IMAGE_ENCODERS[config.kind](config)

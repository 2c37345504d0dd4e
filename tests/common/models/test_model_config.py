"""Config validation: bad values fail at construction with a message naming class and field."""

from __future__ import annotations

import dataclasses
from typing import get_args

import pytest

from common.models import (
    MODALITIES,
    FusionConfig,
    ImageEncoderConfig,
    TabularEncoderConfig,
    TextEncoderConfig,
)
from common.models.config import FusionKind, ImageKind, TextKind
from common.models.fusion import FUSIONS
from common.models.image import IMAGE_ENCODERS
from common.models.model import ENCODERS, INPUT_KEYS
from common.models.text import _FEATURIZERS, TEXT_ENCODERS


def test_modalities_are_the_documented_three() -> None:
    assert MODALITIES == ("tabular", "text", "image")


def test_registries_cover_exactly_the_config_choices() -> None:
    assert set(TEXT_ENCODERS) == set(get_args(TextKind)) == set(_FEATURIZERS)
    assert set(IMAGE_ENCODERS) == set(get_args(ImageKind))
    assert set(FUSIONS) == set(get_args(FusionKind))
    assert set(ENCODERS) == set(INPUT_KEYS) == set(MODALITIES)


def test_defaults_of_the_spec() -> None:
    tabular = TabularEncoderConfig(in_features=7)
    assert (tabular.hidden, tabular.out_dim, tabular.dropout) == (64, 32, 0.1)
    text = TextEncoderConfig()
    assert (text.kind, text.max_length, text.tiny_hidden, text.tiny_layers) == ("minilm-frozen", 64, 32, 2)
    image = ImageEncoderConfig()
    assert (image.kind, image.in_channels) == ("small-cnn", 1)
    fusion = FusionConfig(modalities=("tabular",), tabular=tabular)
    assert (fusion.fusion, fusion.hidden, fusion.num_classes) == ("concat", 64, 2)


def test_configs_are_frozen() -> None:
    config = TabularEncoderConfig(in_features=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hidden = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TabularEncoderConfig(in_features=0), r"TabularEncoderConfig\.in_features=0"),
        (lambda: TabularEncoderConfig(in_features=7, dropout=1.0), r"TabularEncoderConfig\.dropout"),
        (lambda: TextEncoderConfig(kind="bert-large"), r"TextEncoderConfig\.kind='bert-large'.*choose one of"),
        (lambda: TextEncoderConfig(tiny_hidden=30, tiny_heads=4), r"tiny_hidden=30 is not a multiple of tiny_heads"),
        (lambda: TextEncoderConfig(max_length=1000), r"max_length=1000.*512 positions"),
        (lambda: ImageEncoderConfig(kind="vit"), r"ImageEncoderConfig\.kind='vit'"),
        (lambda: ImageEncoderConfig(cnn_channels=(6, 8), norm_groups=4), r"norm_groups=4 does not divide.*width of 6"),
        (lambda: ImageEncoderConfig(kind="resnet18-gn", norm_groups=3), r"norm_groups=3 does not divide"),
        (lambda: ImageEncoderConfig(cnn_channels=()), r"cnn_channels is empty"),
        (lambda: FusionConfig(modalities=()), r"modalities is empty"),
        (lambda: FusionConfig(modalities="tabular"), r"not one string"),
        (lambda: FusionConfig(modalities=("audio",)), r"FusionConfig\.modalities='audio'"),
        (
            lambda: FusionConfig(modalities=("tabular", "tabular"), tabular=TabularEncoderConfig(in_features=2)),
            r"only once",
        ),
        (lambda: FusionConfig(modalities=("tabular",)), r"FusionConfig\.tabular is None"),
        (
            lambda: FusionConfig(
                modalities=("tabular",), tabular=TabularEncoderConfig(in_features=2), image=ImageEncoderConfig()
            ),
            r"FusionConfig\.image is set but 'image' is not in modalities",
        ),
        (
            lambda: FusionConfig(modalities=("tabular",), fusion="sum", tabular=TabularEncoderConfig(in_features=2)),
            r"FusionConfig\.fusion='sum'",
        ),
    ],
)
def test_invalid_values_fail_with_a_message_that_names_the_field(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_modalities_given_as_list_become_a_tuple() -> None:
    config = FusionConfig(modalities=["tabular"], tabular=TabularEncoderConfig(in_features=3))  # type: ignore[arg-type]
    assert config.modalities == ("tabular",)
    assert hash(config)  # frozen and hashable, so usable as a cache key

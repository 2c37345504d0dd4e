"""Branch ownership of parameters and partial state in/out (what a site sends and receives)."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule

from common.models import (
    BRANCHES,
    MODALITIES,
    FusionConfig,
    FusionModel,
    ImageEncoderConfig,
    TabularEncoderConfig,
    TextEncoderConfig,
    branch_of,
    freeze_branches,
    load_trainable,
    parameter_counts,
    trainable_state,
)

FUSION_KINDS = ("concat", "attention", "late")


@pytest.mark.parametrize(
    ("name", "branch"),
    [
        ("encoders.text.bert.embeddings.word_embeddings.weight", "text"),
        ("projections.image.0.weight", "image"),
        ("late_heads.tabular.3.bias", "tabular"),
        ("head.mlp.0.weight", "head"),
        ("head.log_weights", "head"),
        ("_module.encoders.image.features.0.weight", "image"),  # Opacus GradSampleModule prefix
        ("_module.head.bias", "head"),
    ],
)
def test_branch_of_exact(name: str, branch: str) -> None:
    assert branch_of(name) == branch


def test_branch_of_refuses_an_unknown_modality_container() -> None:
    with pytest.raises(ValueError, match="'audio' is not one of"):
        branch_of("encoders.audio.weight")


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_every_trainable_tensor_has_exactly_one_owner(fusion: str, make_config) -> None:
    model = FusionModel(make_config(fusion))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    per_branch = {b: set(trainable_state(model, branches=(b,))) for b in BRANCHES}
    for a in BRANCHES:
        for b in BRANCHES:
            if a != b:
                assert not per_branch[a] & per_branch[b]
    assert set().union(*per_branch.values()) == set(names)
    assert all(per_branch[m] for m in MODALITIES) and per_branch["head"]
    # The per-modality containers are exactly the ones the fusion kind documents.
    container = "late_heads" if fusion == "late" else "projections"
    for modality in MODALITIES:
        prefixes = {name.split(".")[0] for name in per_branch[modality]}
        assert prefixes == {"encoders", container}
    assert all(name.startswith("head.") for name in per_branch["head"])


def test_parameter_counts_add_up(make_config) -> None:
    model = FusionModel(make_config("concat"))
    counts = parameter_counts(model)
    assert set(counts) == set(BRANCHES)
    assert sum(counts.values()) == sum(p.numel() for p in model.parameters())
    # head = Linear(3 * 8 + 3, 8) + Linear(8, 3) for hidden=8, 3 modalities, 3 classes
    assert counts["head"] == (27 * 8 + 8) + (8 * 3 + 3)


def test_trainable_state_round_trip_between_models(make_config) -> None:
    config = make_config("attention")
    torch.manual_seed(0)
    source = FusionModel(config)
    torch.manual_seed(1)
    target = FusionModel(config)
    state = trainable_state(source, branches=("text", "head"))
    loaded = load_trainable(target, state)
    assert sorted(loaded) == sorted(state)
    assert trainable_state(target, branches=("text", "head")).keys() == state.keys()
    for name, value in trainable_state(target, branches=("text", "head")).items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    # Branches not in the state keep their own values.
    image_source = trainable_state(source, branches=("image",))
    image_target = trainable_state(target, branches=("image",))
    assert any(not torch.equal(image_source[k], image_target[k]) for k in image_source)


def test_trainable_state_is_a_copy(make_config) -> None:
    model = FusionModel(make_config("concat"))
    state = trainable_state(model, branches=("head",))
    name = next(iter(state))
    state[name].add_(1.0)
    assert not torch.equal(dict(model.named_parameters())[name], state[name])


def test_names_do_not_carry_the_opacus_prefix(make_config) -> None:
    plain = FusionModel(make_config("late"))
    wrapped = GradSampleModule(FusionModel(make_config("late")))
    state = trainable_state(wrapped, branches=BRANCHES)
    assert state.keys() == trainable_state(plain, branches=BRANCHES).keys()
    assert not any(name.startswith("_module.") for name in state)
    assert sorted(load_trainable(plain, state)) == sorted(state)  # wrapped -> plain
    load_trainable(wrapped, trainable_state(plain, branches=BRANCHES))  # and plain -> wrapped


def test_load_trainable_unknown_and_mismatched_keys(make_config) -> None:
    model = FusionModel(make_config("concat"))
    with pytest.raises(KeyError, match="another FusionConfig"):
        load_trainable(model, {"encoders.text.nonexistent": torch.zeros(1)})
    assert load_trainable(model, {"encoders.text.nonexistent": torch.zeros(1)}, strict_known=False) == []
    with pytest.raises(ValueError, match="configs of sender and receiver differ"):
        load_trainable(model, {"head.mlp.3.bias": torch.zeros(7)})


def test_freeze_branches_removes_them_from_the_trainable_state(make_config) -> None:
    model = FusionModel(make_config("concat"))
    freeze_branches(model, ("image",))
    assert trainable_state(model, branches=("image",)) == {}
    assert parameter_counts(model)["image"] == 0
    assert parameter_counts(model, trainable_only=False)["image"] > 0
    assert trainable_state(model, branches=("tabular",))  # others untouched
    with pytest.raises(TypeError, match="collection of branch names"):
        freeze_branches(model, "image")
    with pytest.raises(ValueError, match="unknown branches"):
        trainable_state(model, branches=("audio",))


@pytest.mark.parametrize(
    ("fusion", "expected"),
    [
        # tabular: Linear(14,64)+Linear(64,32) = 3040, projection Linear(32,64) = 2112
        # text (minilm-frozen): projection Linear(384,64) = 24640, nothing else trainable
        # image (small-cnn 16,32): convs 160+4640, GroupNorms 32+64, Linear(32,32) 1056, projection 2112
        # concat head: Linear(3*64+3, 64) + Linear(64, 2); attention adds V, U (64x64) and w (64->1)
        ("concat", {"tabular": 5152, "text": 24640, "image": 8064, "head": 12674}),
        ("attention", {"tabular": 5152, "text": 24640, "image": 8064, "head": 12675}),
        # late: each modality Linear(d,64)+Linear(64,2) instead of a projection; head = 3 log-weights + 2 biases
        ("late", {"tabular": 5282, "text": 24770, "image": 8194, "head": 5}),
    ],
)
def test_parameter_counts_of_the_default_configuration(fusion: str, expected: dict[str, int]) -> None:
    config = FusionConfig(
        modalities=MODALITIES,
        fusion=fusion,
        tabular=TabularEncoderConfig(in_features=7),
        text=TextEncoderConfig(kind="minilm-frozen"),
        image=ImageEncoderConfig(kind="small-cnn"),
    )
    assert parameter_counts(FusionModel(config)) == expected


def test_the_run_default_projects_the_note_embedding_to_16_before_the_trained_projection() -> None:
    # pyproject's text-projection = 16: the trained text projection is Linear(16, 64) = 1088 instead of 24640
    config = FusionConfig(modalities=MODALITIES, fusion="attention", tabular=TabularEncoderConfig(in_features=7),
                          text=TextEncoderConfig(kind="minilm-frozen", public_projection=16),
                          image=ImageEncoderConfig(kind="small-cnn"))
    assert parameter_counts(FusionModel(config)) == {"tabular": 5152, "text": 1088, "image": 8064, "head": 12675}

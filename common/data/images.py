"""Reading a site's own image files for the image modality: PNG and JPEG (Pillow), DICOM (pydicom) and NPY.

The schema declares what the model reads (``size = [height, width]``, ``channels = 1 | 3``, optionally a public
intensity ``window``); every file is converted to that: channels to grey or RGB, pixels to [0, 1], and resized
(bilinear) when its size differs. Pixel scaling depends on the file alone: 8-bit images are divided by 255, 16-bit
ones by 65535; DICOM pixel data get the file's rescale slope and intercept and are then scaled by the schema's public
``window`` (clipped to it), or, without one, by the image's own minimum and maximum. No image's values depend on
another record.

The AV-MNIST construction of the demos (digits chosen by label) is a generator: :mod:`common.data.generators`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "READER_VERSION", "ImageFileError", "load_image", "load_images"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".npy")
#: names what this module's code makes of a file: raise it with any change to the values it returns, so that the
#: sites' caches of decoded images (common.data.image_cache) are decoded again
READER_VERSION = 1
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
_PIL_SCALE = {"1": 1.0, "L": 255.0, "LA": 255.0, "P": 255.0, "RGB": 255.0, "RGBA": 255.0, "CMYK": 255.0,
              "YCbCr": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0}  # fmt: skip


class ImageFileError(ValueError):
    """A site's image file cannot be used; the message names the file and what was expected."""


def _fail(path: Path, problem: str) -> ImageFileError:
    return ImageFileError(f"image file '{path}': {problem}; expected a PNG, JPEG or DICOM file (or a .npy array of "
                          "shape (H, W) or (C, H, W), uint8 0-255 or float in [0, 1])")  # fmt: skip


def _read_pil(path: Path, suffix: str) -> np.ndarray:
    """(C, H, W) float in [0, 1], C = 1 or 3.

    The file is read in one call and decoded from memory: Pillow reading a small file through its own buffered reads
    takes about 1.7x as long (a site reads one small file per record), and the pixels are the same."""
    from PIL import Image, UnidentifiedImageError  # imported here: a site without image files never loads Pillow

    try:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            if image.format != _PIL_FORMATS[suffix]:
                raise _fail(path, f"the content is {image.format or 'unknown'}, not {_PIL_FORMATS[suffix]}")
            if image.mode not in _PIL_SCALE:
                raise _fail(path, f"pixel mode {image.mode!r} is not supported (modes {sorted(_PIL_SCALE)} are)")
            image.load()
            scale = _PIL_SCALE[image.mode]
            if image.mode in ("L", "1") or image.mode.startswith("I;16"):
                array = np.asarray(image, dtype=np.float32)[None] / scale
            else:
                array = np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32), -1, 0) / scale
    except ImageFileError:
        raise
    except UnidentifiedImageError as error:  # its own text names the in-memory buffer, not the file
        raise _fail(path, "not a readable image (Pillow recognises no image format in its content)") from error
    except Image.DecompressionBombError as error:
        raise _fail(path, f"not a readable image ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data, bad CRC, broken chunks
        raise _fail(path, f"corrupt or truncated image ({error})") from error
    return array


def _read_dicom(path: Path, window: tuple[float, float] | None) -> np.ndarray:
    import pydicom  # imported here: only sites with DICOM images pay for it
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array.astype(np.float64)
    except InvalidDicomError as error:
        raise _fail(path, f"not a DICOM file ({error})") from error
    except (AttributeError, ValueError, RuntimeError, NotImplementedError, OSError) as error:
        raise _fail(path, f"DICOM pixel data cannot be decoded ({error})") from error
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) > 1:
        raise _fail(path, f"a multi-frame DICOM ({dataset.NumberOfFrames} frames)")
    pixels = pixels * float(getattr(dataset, "RescaleSlope", 1.0)) + float(getattr(dataset, "RescaleIntercept", 0.0))
    pixels = pixels[None] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)  # (H, W, 3) colour -> (3, H, W)
    low, high = window if window is not None else (float(pixels.min()), float(pixels.max()))
    scaled = (np.clip(pixels, low, high) - low) / (high - low) if high > low else np.zeros_like(pixels)
    return scaled.astype(np.float32)


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise _fail(path, f"not a readable .npy array ({error})") from error
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise _fail(path, f"the array has shape {array.shape}")
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


def _convert(array: np.ndarray, *, size: tuple[int, int], channels: int) -> np.ndarray:
    if array.shape[0] != channels:  # grey -> RGB repeats; RGB -> grey by ITU-R 601-2 luma, as Pillow's "L"
        array = np.repeat(array, 3, axis=0) if channels == 3 else np.tensordot(
            np.asarray([0.299, 0.587, 0.114], dtype=np.float32), array, axes=1)[None]
    if array.shape[1:] != size:
        from PIL import Image

        height, width = size
        array = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(c, dtype=np.float32), mode="F")
                                     .resize((width, height), Image.Resampling.BILINEAR)) for c in array])
    return np.clip(array, 0.0, 1.0).astype(np.float32)


def load_image(path: str | Path, *, size: tuple[int, int], channels: int,
               window: tuple[float, float] | None = None) -> np.ndarray:
    """Read one image file as the schema declares it.

    Parameters
    ----------
    path
        A ``.png``, ``.jpg``/``.jpeg``, ``.dcm`` or ``.npy`` file.
    size, channels
        ``(height, width)`` and 1 or 3: the schema's ``size`` and ``channels``.
    window
        The schema's public intensity window for DICOM pixel data (after rescale); None = the image's own range.

    Returns
    -------
    numpy.ndarray
        float32 ``(channels, height, width)`` in [0, 1].

    Raises
    ------
    ImageFileError
        The file is missing, has another extension, is not such an image, or is corrupt; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file" if not path.exists() else "not a regular file")
    suffix = path.suffix.lower()
    if suffix in _PIL_FORMATS:
        array = _read_pil(path, suffix)
    elif suffix == ".dcm":
        array = _read_dicom(path, window)
    elif suffix == ".npy":
        array = _read_npy(path)
    else:
        raise _fail(path, f"unsupported extension {path.suffix!r} (read: {', '.join(IMAGE_SUFFIXES)})")
    return _convert(array, size=size, channels=channels)


def load_images(paths: Sequence[str | Path], *, size: tuple[int, int], channels: int,
                window: tuple[float, float] | None = None) -> np.ndarray:
    """float32 ``(n, channels, height, width)``: :func:`load_image` of each path; the first bad file raises."""
    images = np.empty((len(paths), channels, *size), dtype=np.float32)
    for row, path in enumerate(paths):
        images[row] = load_image(path, size=size, channels=channels, window=window)
    return images

"""A site's decoded image files kept in its cache folder: bit-identical to decoding, and decoded again whenever any
one of its files changes. Images CONSTRUCTED by the tests (grey gradients, noise)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data import image_cache
from common.data.image_cache import cached_images
from common.data.images import ImageFileError, load_images

GREY28 = dict(size=(28, 28), channels=1, window=None)


@pytest.fixture
def no_racy_window(monkeypatch):
    """A racy window of 50 ms (instead of seconds); ``_pngs`` waits it out after writing."""
    monkeypatch.setattr(image_cache, "RACY_SECONDS", 0.05)


def _pngs(folder: Path, n: int, *, seed: int = 0, shape=(28, 28), mode: str = "L") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(*shape, 3) if mode == "RGB" else shape, dtype=np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(pixels, mode=mode).save(path, format="PNG", compress_level=0)  # length fixed by the size
        paths.append(path)
    time.sleep(0.1)
    return paths


def _stored(cache: Path) -> np.ndarray:
    """The array the one cache file holds, as stored (uint8 levels or float32), after its JSON header line."""
    (only,) = sorted(cache.glob("images-*.bin"))
    header, raw = only.read_bytes().split(b"\n", 2)[1:]
    meta = json.loads(header)
    return np.frombuffer(raw, dtype=meta["dtype"]).reshape(meta["shape"])


def test_cached_images_equal_pillows_decoding_bit_for_bit_first_and_later(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 12)
    expected = load_images(paths, size=(28, 28), channels=1)
    first = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    later = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    assert first.dtype == later.dtype == np.float32
    assert np.array_equal(first, expected) and np.array_equal(later, expected)
    assert _stored(tmp_path / "cache").dtype == np.uint8  # 8-bit levels, stored as such: they read back exactly
    for row, path in enumerate(paths):  # and each equals the file's pixels / 255, as Pillow reads them
        assert np.array_equal(later[row, 0], np.asarray(Image.open(path), dtype=np.float32) / 255.0)


def test_resized_rgb_images_are_kept_as_float32_and_read_back_exactly(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 4, shape=(40, 33), mode="RGB")  # resized and turned grey: not 8-bit levels
    expected = load_images(paths, size=(28, 28), channels=1)
    cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    assert _stored(tmp_path / "cache").dtype == np.float32
    assert np.array_equal(cached_images(paths, **GREY28, cache_dir=tmp_path / "cache"), expected)


def test_the_second_read_comes_from_the_cache_not_the_files(tmp_path, no_racy_window, monkeypatch):
    paths = _pngs(tmp_path / "img", 3)
    first = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(image_cache, "load_images", lambda *a, **k: pytest.fail("decoded although cached"))
    assert np.array_equal(cached_images(paths, **GREY28, cache_dir=tmp_path / "cache"), first)


def test_a_png_rewritten_after_the_cache_was_made_is_read_fresh(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 5)
    before = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    pixels = np.asarray(Image.open(paths[2]))
    stat = paths[2].stat()
    inverted = tmp_path / "inverted.png"
    Image.fromarray(255 - pixels, mode="L").save(inverted, format="PNG", compress_level=0)
    assert inverted.stat().st_size == stat.st_size
    with paths[2].open("r+b") as fh:  # in place: same inode, same size, the old modification time put back
        fh.write(inverted.read_bytes())
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (paths[2].stat().st_ino, paths[2].stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    after = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    assert np.array_equal(after, load_images(paths, size=(28, 28), channels=1))
    assert np.array_equal(after[2, 0], (255 - pixels).astype(np.float32) / np.float32(255.0))
    assert not np.array_equal(after[2], before[2])
    assert np.array_equal(after[[0, 1, 3, 4]], before[[0, 1, 3, 4]])


def test_a_file_written_within_the_racy_window_is_decoded_but_not_cached(tmp_path):
    paths = _pngs(tmp_path / "img", 2)  # written 0.1 s ago: within RACY_SECONDS
    got = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    assert np.array_equal(got, load_images(paths, size=(28, 28), channels=1))
    assert not list((tmp_path / "cache").glob("images-*.bin"))


def test_a_damaged_cache_file_is_ignored_and_rewritten(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 6)
    expected = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    (stored,) = sorted((tmp_path / "cache").glob("images-*.bin"))
    good = stored.read_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 0x01  # one pixel's byte changed: its digest no longer matches
    other = image_cache._encode(np.zeros((2, 1, 28, 28), np.float32))  # well formed, another shape
    for damaged in (good[:100], bytes(flipped), other, b"", b"fedfusion decoded images\n{not json\n"):
        stored.write_bytes(damaged)
        assert np.array_equal(cached_images(paths, **GREY28, cache_dir=tmp_path / "cache"), expected)
        assert stored.read_bytes() == good  # written again



def test_a_bad_file_still_fails_naming_it_and_nothing_is_cached(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 3)
    paths[1].write_bytes(paths[1].read_bytes()[:60])  # header intact, pixel data cut off
    with pytest.raises(ImageFileError, match="corrupt or truncated image") as caught:
        cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    assert str(paths[1]) in str(caught.value)
    with pytest.raises(ImageFileError, match="no such file"):
        cached_images([*paths[:1], tmp_path / "img" / "absent.png"], **GREY28, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("images-*.bin"))


def test_other_schema_settings_use_another_cache_entry(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 2, shape=(28, 28))
    grey = cached_images(paths, **GREY28, cache_dir=tmp_path / "cache")
    rgb = cached_images(paths, size=(14, 14), channels=3, window=None, cache_dir=tmp_path / "cache")
    assert grey.shape == (2, 1, 28, 28) and rgb.shape == (2, 3, 14, 14)
    assert np.array_equal(rgb, load_images(paths, size=(14, 14), channels=3))
    assert len(list((tmp_path / "cache").glob("images-*.bin"))) == 2


def test_no_cache_folder_decodes_and_writes_nothing(tmp_path, no_racy_window):
    paths = _pngs(tmp_path / "img", 2)
    assert np.array_equal(cached_images(paths, **GREY28, cache_dir=None), load_images(paths, size=(28, 28),
                                                                                       channels=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]

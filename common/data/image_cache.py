"""A site's decoded image files, kept in its own cache folder while every one of those files is unchanged.

Decoding one small image file per record is most of a site's first read of its data (a virtual site of the
1000-site Fashion-MNIST scenario reads ~60 PNG files; a deployed site runs each message in a fresh process). What
:func:`common.data.images.load_image` returns depends only on the file's content, the schema's ``size``,
``channels`` and ``window``, and the reader's code; so the decoded array of a site's image files is written once to
its cache folder (``SiteConfig.feature_cache_path``: ``<state-dir>/cache``, or a simulation's ``site-cache-root``),
under a name derived from all of these, each file named by its identity on disk (``common.file_memo.file_identity``:
path, device, inode, size, mtime_ns, ctime_ns). Any rewrite of any of the files (a new inode, size or time) gives
another name, and the files are decoded again. A file system stamps times at a coarse tick (milliseconds), so a
file rewritten in place with the same size within one tick of the previous write keeps its identity; as git does for
its index ("racily clean" entries), images are cached only when every file is older than ``RACY_SECONDS``, so that
any later rewrite stamps another time. A cached file that cannot be read, or holds another shape, is ignored and
rewritten.

The cache stays at the site, beside its other derived values (text features, σ calibrations); nothing of it is sent.
Arrays whose every value is an 8-bit level (``k / 255``, what 8-bit PNG and JPEG files give) are stored as uint8
only after checking that reading them back gives every value bit for bit; others are stored as float32.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.images import READER_VERSION, load_images
from common.file_memo import file_identity
from common.storage import atomic_write_bytes

__all__ = ["RACY_SECONDS", "cached_images"]

#: files written this recently are decoded but not cached: a rewrite within the file system's time stamp tick could
#: leave their identity unchanged
RACY_SECONDS = 2.0
_LEVELS = np.float32(255.0)


def _from_levels(levels: np.ndarray) -> np.ndarray:
    """uint8 levels -> float32 in [0, 1], computed as the reader computes 8-bit pixels (``float32 / 255``)."""
    return levels.astype(np.float32) / _LEVELS


def _stored(images: np.ndarray) -> np.ndarray:
    """``images`` as uint8 levels when that reads back bit for bit, else unchanged (float32)."""
    levels = np.rint(images * _LEVELS)
    if levels.min(initial=0.0) >= 0.0 and levels.max(initial=0.0) <= 255.0:
        levels = levels.astype(np.uint8)
        if np.array_equal(_from_levels(levels), images):
            return levels
    return images


def _read(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    try:
        stored = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # absent, truncated or not an array: decode the files again
    if stored.shape != shape or stored.dtype not in (np.uint8, np.float32):
        return None
    return _from_levels(stored) if stored.dtype == np.uint8 else stored


def cached_images(paths: Sequence[Path], *, size: tuple[int, int], channels: int,
                  window: tuple[float, float] | None, cache_dir: Path | None) -> np.ndarray:
    """:func:`common.data.images.load_images` of ``paths``, kept in ``cache_dir`` (None: no cache).

    Returns float32 ``(len(paths), channels, height, width)``, equal bit for bit to ``load_images``. A file that
    cannot be stat'ed is never cached: ``load_images`` raises its own error naming it.
    """
    identities = [file_identity(p) for p in paths]
    if cache_dir is None or not paths or any(i is None for i in identities):
        return load_images(paths, size=size, channels=channels, window=window)
    key = repr((READER_VERSION, tuple(size), channels, window, identities))
    path = cache_dir / f"images-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.npy"
    shape = (len(paths), channels, *size)
    cached = _read(path, shape)
    if cached is not None:
        return cached
    images = load_images(paths, size=size, channels=channels, window=window)
    newest = max(max(i[4], i[5]) for i in identities)  # mtime_ns, ctime_ns
    if newest > time.time_ns() - RACY_SECONDS * 1e9:
        return images
    buffer = io.BytesIO()
    np.save(buffer, _stored(images), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return images

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
any later rewrite stamps another time.

A cached file holds a one-line JSON header (dtype, shape, sha256 of the pixel bytes) and the pixel bytes; one that is
torn, of another shape or whose bytes do not match their digest is ignored and written again. Since every read
checks the digest, the file is written to a temporary name and renamed without ``fsync`` (measured: 7.6 ms a site
with it, 0.7 ms without, on the loaded 2-core machine): a crash can lose it, never make it read wrong.

The cache stays at the site, beside its other derived values (text features, σ calibrations); nothing of it is sent.
Arrays whose every value is an 8-bit level (``k / 255``, what 8-bit PNG and JPEG files give) are stored as uint8
only after checking that reading them back gives every value bit for bit; others are stored as float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.data.images import READER_VERSION, load_images
from common.file_memo import file_identity

__all__ = ["RACY_SECONDS", "cached_images"]

#: files written this recently are decoded but not cached: a rewrite within the file system's time stamp tick could
#: leave their identity unchanged
RACY_SECONDS = 2.0
_LEVELS = np.float32(255.0)
_MAGIC = b"fedfusion decoded images\n"
_DTYPES = {"uint8": np.uint8, "float32": np.float32}


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


def _encode(images: np.ndarray) -> bytes:
    stored = np.ascontiguousarray(_stored(images))
    raw = stored.tobytes()
    header = {"dtype": str(stored.dtype), "shape": list(stored.shape), "sha256": hashlib.sha256(raw).hexdigest()}
    return _MAGIC + json.dumps(header).encode("utf-8") + b"\n" + raw


def _read(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The images cached in ``path``; None if it is absent, torn, of another shape, or its bytes fail their digest."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(_MAGIC):
        return None
    line, _, raw = data[len(_MAGIC):].partition(b"\n")
    try:
        header = json.loads(line)
        dtype = _DTYPES[header["dtype"]]
    except (ValueError, KeyError, TypeError):
        return None
    if tuple(header.get("shape", ())) != shape or len(raw) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        return None
    if hashlib.sha256(raw).hexdigest() != header.get("sha256"):
        return None
    stored = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return _from_levels(stored) if dtype == np.uint8 else stored.copy()


def _write(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, then rename over ``path`` (no fsync: see the module's note)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    path = cache_dir / f"images-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.bin"
    shape = (len(paths), channels, *size)
    cached = _read(path, shape)
    if cached is not None:
        return cached
    images = load_images(paths, size=size, channels=channels, window=window)
    newest = max(max(i[4], i[5]) for i in identities)  # mtime_ns, ctime_ns
    if newest > time.time_ns() - RACY_SECONDS * 1e9:
        return images
    _write(path, _encode(images))
    return images

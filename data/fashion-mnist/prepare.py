"""Data preparation of the Fashion-MNIST example (the 1000-site scale benchmark's data; domain code lives here).

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando SE, MIT licence): 28x28 grey images of clothing, 10 classes.
The copy used is Debian's package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``: the four
IDX files under ``/usr/share/datasets/fashion-mnist/``, read offline). This script writes what a site's export would
hold, for the mapped source (``mapping.toml`` beside this file, onto ``schema.toml``):

* ``fashion-mnist.csv``: ``id,label,image,ink,coverage,height,width``: the record's 1-based position in the 60,000
  training images, its class as the dataset's own word, the path of its image relative to the data folder, and four
  DERIVED numbers that this script computes from that image alone (:func:`shape_features`: the mean intensity, the
  share of non-blank pixels, the height and width of the box around them). Fashion-MNIST has no tabular data; every
  site of ours needs a tabular modality (it carries the record), and these four are public per-record functions of
  the record (no other record enters), so they are preprocessing, not a release;
* ``images/NN/NNNNN.png``: each image, unchanged (8-bit grey PNG), 1000 per folder.

Run from anywhere: ``python data/fashion-mnist/prepare.py`` (about 30 s; ~60,000 files, ~250 MB on disk; they are
not committed). ``--source DIR`` reads the IDX files from another folder (the test uses the small real sample
``sample/`` of this folder), ``--limit N`` keeps the first N images. ``--scenario N`` writes the scenario of N
VIRTUAL sites (``simulations/scenarios/fashion<N>.toml``, a Dirichlet label-skew partition of the pooled images)
instead; the committed ``fashion1000.toml`` is its output for N = 1000 (a test checks it is not stale).
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEBIAN_SOURCE = Path("/usr/share/datasets/fashion-mnist")
IMAGES, LABELS = "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
TABLE = "fashion-mnist.csv"
#: the dataset's class words (its README's order: label 0 = "T-shirt/top", ...), lower-case as the schema spells them
CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
PER_FOLDER = 1000

__all__ = ["CLASSES", "image_path", "read_idx", "scenario_text", "shape_features", "write_table", "main"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) as a uint8 array of its declared shape (ValueError naming the file if not IDX)."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()!r}, expected 0000 08 0d)")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes), the file holds {data.size}")
    return data.reshape(shape)


def image_path(record_id: int, folder: str = "fashion-mnist") -> str:
    """Where record ``record_id``'s image lives, relative to the data folder (``folder`` = this folder's name)."""
    return f"{folder}/images/{(record_id - 1) // PER_FOLDER:02d}/{record_id:05d}.png"


def shape_features(image: np.ndarray) -> tuple[float, float, int, int]:
    """DERIVED from one image alone: mean intensity (0-255), share of non-blank pixels, height and width of their
    bounding box (pixels; 0 for a blank image)."""
    ink = image > 0
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    height = int(rows[-1] - rows[0] + 1) if rows.size else 0
    width = int(cols[-1] - cols[0] + 1) if cols.size else 0
    return float(image.mean()), float(ink.mean()), height, width


def write_table(source: Path, out: Path, *, limit: int | None = None) -> int:
    """Write ``out/fashion-mnist.csv`` and ``out/images/``; return the number of records."""
    from PIL import Image

    images, labels = read_idx(source / IMAGES), read_idx(source / LABELS)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise ValueError(f"{source}: {images.shape[0]} images of {images.shape[1:]} and {labels.shape[0]} labels; "
                         "expected as many 28x28 images as labels")
    n = images.shape[0] if limit is None else min(limit, images.shape[0])
    rows = ["id,label,image,ink,coverage,height,width"]
    for i in range(n):
        rid = i + 1
        rel = image_path(rid, out.name)
        target = out.parent / rel  # image paths are relative to the data folder, the parent of out/
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i], mode="L").save(target, format="PNG")
        ink, coverage, height, width = shape_features(images[i])
        rows.append(f"{rid},{CLASSES[int(labels[i])]},{rel},{ink:.2f},{coverage:.4f},{height},{width}")
    (out / TABLE).write_text("\n".join(rows) + "\n")
    return n


def scenario_text(num_sites: int, *, alpha: float = 0.5, min_size: int = 10, max_records: int = 250) -> str:
    """The scenario of ``num_sites`` VIRTUAL sites cut from the pooled images by a Dirichlet label-skew partition."""
    head = f'''# VIRTUAL sites: {num_sites} sites that do NOT exist. Fashion-MNIST's 60,000 real training images (Zalando SE,
# MIT; Debian package dataset-fashion-mnist, written out by data/fashion-mnist/prepare.py) are pooled and cut by a
# Dirichlet label-skew partition (alpha = {alpha}: most sites hold a few classes; common/data/partition.py); virtual
# site i holds part i and splits it 70/30 by the keyed hash of each image id, like every site. Image (run setting image-encoder) and four tabular
# numbers DERIVED from each image by prepare.py.
# The scale benchmark of issue 15 (benchmarks/sim_overhead.py): GENERATED by
#   python data/fashion-mnist/prepare.py --scenario {num_sites}
# max-records = {max_records} is each site's PUBLIC bound on its training records (q = 1/ceil({max_records} / batch-size)).
# At scale, run it with --set missing-modality-evaluation=false (benchmarks/flower_floor.py --ours-set): the extra
# evaluations with a modality hidden are most of a site's evaluation time and change no training and no ε.
# The sites are one inline table per line (TOML: top-level keys come before the [scenario] table).

sites = [
'''
    part = f'kind = "dirichlet", alpha = {alpha}, num-sites = {num_sites}, seed = 0, min-size = {min_size}'
    lines = [f'  {{ name = "fm-{i:04d}", source = "mapped", mapping = "fashion-mnist/mapping.toml", '
             f'partition = {{ {part}, part = {i} }}, modalities = ["tabular", "image"], '
             f'privacy = {{ max-records = {max_records} }} }},' for i in range(num_sites)]
    tail = f''']

[scenario]
name = "fashion{num_sites}"
description = "VIRTUAL: Fashion-MNIST's 60,000 images pooled and split into {num_sites} sites (Dirichlet label skew)"
schema = "../../data/fashion-mnist/schema.toml"
data-dir = "../../data"                 # the sites' relative paths (mapping, images) resolve against this folder
'''
    return head + "\n".join(lines) + "\n" + tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, default=DEBIAN_SOURCE, help=f"folder of the IDX files ({DEBIAN_SOURCE})")
    ap.add_argument("--out", type=Path, default=HERE, help="folder of fashion-mnist.csv and images/ (image paths in the "
                    "table are relative to its parent, the data folder)")
    ap.add_argument("--limit", type=int, default=None, help="keep the first N images only")
    ap.add_argument("--scenario", type=int, default=None, metavar="N",
                    help="write simulations/scenarios/fashion<N>.toml (N virtual sites) instead of the data")
    args = ap.parse_args(argv)
    if args.scenario is not None:
        path = REPO / "simulations" / "scenarios" / f"fashion{args.scenario}.toml"
        path.write_text(scenario_text(args.scenario))
        print(f"wrote {path}")
        return 0
    if not (args.source / IMAGES).is_file():
        print(f"prepare.py: {args.source / IMAGES} not found: install Debian's package dataset-fashion-mnist "
              "(apt-get install dataset-fashion-mnist) or give --source DIR", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    n = write_table(args.source, args.out, limit=args.limit)
    print(f"wrote {args.out / TABLE} and {n} images under {args.out / 'images'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

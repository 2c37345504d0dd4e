"""Local embedding views: PCA and t-SNE of a site's fused representations, kept at the site.

The representation is what the fusion head receives: the per-modality features of each
sample (zero where a modality is missing), concatenated. The PNG is written into the site's
own state folder (``<state-dir>/views/``) for the site's own inspection; nothing here is ever
put into a Flower message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.train import LABEL, MODALITY_MASK

__all__ = ["fused_representations", "write_embedding_views"]


@torch.no_grad()
def fused_representations(model: nn.Module, dataset: Dataset, *, device: torch.device) -> tuple[np.ndarray, ...]:
    """(features (n, M*width), labels (n,), modality mask (n, M)) for every row of ``dataset``."""
    captured: list[torch.Tensor] = []
    hook = model.head.register_forward_hook(lambda _m, args, _out: captured.append(args[0].flatten(1).cpu()))
    try:
        model.to(device).eval()
        labels, masks = [], []
        for batch in DataLoader(dataset, batch_size=256, shuffle=False):
            inputs = {k: v.to(device) for k, v in batch.items() if k not in (LABEL, MODALITY_MASK)}
            model(inputs, batch[MODALITY_MASK].to(device))
            labels.append(batch[LABEL])
            masks.append(batch[MODALITY_MASK])
    finally:
        hook.remove()
    return torch.cat(captured).numpy(), torch.cat(labels).numpy(), torch.cat(masks).numpy()


def write_embedding_views(model: nn.Module, dataset: Dataset, png: Path, *, device: torch.device,
                          modalities: tuple[str, ...], title: str, seed: int = 0) -> Path:
    """Scatter PCA and t-SNE of the fused representations, coloured by label, into ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    feats, labels, masks = fused_representations(model, dataset, device=device)
    n = len(feats)
    pca = PCA(n_components=2, random_state=seed).fit_transform(feats) if n >= 3 else np.zeros((n, 2))
    tsne = (TSNE(n_components=2, perplexity=max(2.0, min(30.0, (n - 1) / 3)), random_state=seed,
                 init="pca").fit_transform(feats) if n >= 5 else np.zeros((n, 2)))
    full = masks.sum(axis=1) == len(modalities)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, xy, name in ((axes[0], pca, "PCA"), (axes[1], tsne, "t-SNE")):
        for label, colour in ((0, "C0"), (1, "C3")):
            for has_all, marker in ((True, "o"), (False, "x")):
                sel = (labels == label) & (full == has_all)
                if sel.any():
                    what = "all modalities" if has_all else "a modality missing"
                    ax.scatter(xy[sel, 0], xy[sel, 1], c=colour, marker=marker, s=18, alpha=0.8,
                               label=f"label {label}, {what}")
        ax.set_title(f"{name} of fused representations")
        ax.legend(fontsize=7)
    fig.suptitle(title + " — kept at the site, never sent", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png

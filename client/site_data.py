"""A site's rows as model inputs, with its frozen text features cached.

Frozen-encoder features (MiniLM sentence embeddings) depend only on the site's notes, so they
are computed once per site and kept twice: in this process (simulation actors live across
rounds) and on disk under ``<state-dir>/cache/`` (a deployed site runs each message in a
fresh process). The cache key is a hash of the notes and the encoder settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.train import LABEL, MODALITY_MASK, TensorDictDataset
from common.config import SiteConfig
from common.data.heart_site import SiteSplit
from common.data.sources import load_site_data
from common.factory import text_config
from common.storage import atomic_write_bytes

__all__ = ["SiteData", "load_site"]


@dataclass(frozen=True)
class SiteData:
    train: TensorDictDataset
    test: TensorDictDataset
    dataset_id: str  # fingerprint of the training rows: the ledger records which data was spent on
    modalities: tuple[str, ...]  # modalities this site actually feeds the model


_MEMO: dict[tuple, SiteData] = {}


def _fingerprint(split: SiteSplit) -> str:
    h = hashlib.sha256()
    for arr in (split.ids, split.labels, split.tabular, split.tabular_mask):
        h.update(np.ascontiguousarray(arr).tobytes())
    for note in split.notes:
        h.update(note.encode("utf-8"))
    return h.hexdigest()[:16]


def _text_features(notes: tuple[str, ...], *, kind: str, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """Frozen-encoder features of ``notes``; ``cache_dir`` None = no disk cache (the site's ``feature-cache``)."""
    from safetensors.torch import load, save

    from common.models.text import TextFeaturizer

    cfg = text_config(kind)
    key = hashlib.sha256("\x1f".join([kind, repr(cfg), *notes]).encode("utf-8")).hexdigest()[:20]
    path = cache_dir / f"text-{kind}-{key}.safetensors" if cache_dir is not None else None
    if path is not None and path.exists():
        return load(path.read_bytes())
    feats = TextFeaturizer(cfg).featurize(list(notes))
    if path is not None:
        atomic_write_bytes(path, save({k: v.contiguous() for k, v in feats.items()}))
    return feats


def _tensors(split: SiteSplit, *, site_mods: tuple[str, ...], model_mods: tuple[str, ...], text_kind: str,
             cache_dir: Path | None, images: np.ndarray | None) -> dict[str, torch.Tensor]:
    n = len(split)
    out = {
        "tabular": torch.from_numpy(split.tabular),
        "tabular_mask": torch.from_numpy(split.tabular_mask),
        LABEL: torch.from_numpy(split.labels),
    }
    present = np.zeros((n, len(model_mods)), dtype=np.float32)
    for j, m in enumerate(model_mods):
        if m not in site_mods:
            continue
        if m == "tabular":
            present[:, j] = (split.tabular_mask.sum(axis=1) > 0).astype(np.float32)
        elif m == "text":
            out.update(_text_features(split.notes, kind=text_kind, cache_dir=cache_dir))
            present[:, j] = np.array([bool(t.strip()) for t in split.notes], dtype=np.float32)
        elif m == "image" and images is not None:
            out["image"] = torch.from_numpy(images)
            present[:, j] = 1.0
        else:
            raise ValueError(f"modality {m!r} is not provided by this site's data source")
    out[MODALITY_MASK] = torch.from_numpy(present)
    return out


def load_site(site: SiteConfig, *, model_modalities: tuple[str, ...], text_encoder: str, seed: int) -> SiteData:
    """The site's train/test datasets for a model over ``model_modalities``."""
    key = (repr(site.spec), str(site.data_dir), str(site.state_dir), site.feature_cache, model_modalities,
           text_encoder, seed)
    if key in _MEMO:
        return _MEMO[key]
    train, test = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir, seed=seed)
    site_mods = tuple(m for m in site.spec.modalities if m in model_modalities)
    cache = site.state_dir / "cache" if site.feature_cache else None
    train_img = test_img = None
    if "image" in site_mods:
        # CONSTRUCTED modality: real MNIST digits paired to records by label (AV-MNIST style),
        # see common/data/images.py. It carries no clinical signal.
        from common.data.images import ImagePairing, paired_images_split

        train_img, test_img = paired_images_split(train.labels, test.labels, pairing=ImagePairing(seed=seed),
                                                  site_salt=site.spec.name)
    kw = dict(site_mods=site_mods, model_mods=model_modalities, text_kind=text_encoder, cache_dir=cache)
    data = SiteData(train=TensorDictDataset(_tensors(train, images=train_img, **kw)),
                    test=TensorDictDataset(_tensors(test, images=test_img, **kw)),
                    dataset_id=_fingerprint(train), modalities=site_mods)
    _MEMO[key] = data
    return data

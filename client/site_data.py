"""A site's rows as model inputs, with its frozen text features cached per record.

Frozen-encoder features (MiniLM sentence embeddings) depend only on each record's own text (fixed-length padding:
common/models/text.py), so they are computed once per distinct text and kept twice: in this process (simulation
actors live across rounds) and on disk under ``<state-dir>/cache/`` (a deployed site runs each message in a fresh
process). The disk store holds one embedding per text, keyed by a hash of the text and the encoder settings: adding
or removing a record computes only what is new. In simulation the run setting ``site-cache-root`` puts a virtual
site's store beside the run folders instead (``SiteConfig.feature_cache_path``), so that the next run of the scenario
computes no feature again: a pure function of each text, it can be shared across runs without changing any value.
The same folder keeps the site's decoded image files while every one of them is unchanged (common.data.image_cache).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from client.train import LABEL, MODALITY_MASK, TensorDictDataset
from common.config import SiteConfig
from common.data.duplicates import check_copies
from common.data.site_split import SiteSplit
from common.data.sources import load_site_data, site_files
from common.factory import text_config
from common.file_memo import FileMemo
from common.storage import atomic_write_bytes

__all__ = ["SiteData", "load_site", "text_features"]


@dataclass(frozen=True)
class SiteData:
    train: TensorDictDataset
    test: TensorDictDataset
    dataset_id: str  # fingerprint of the training rows: the ledger records which data was spent on
    modalities: tuple[str, ...]  # modalities this site actually feeds the model
    # the largest number of training records that are copies of one another in content (1 = none; more only when
    # the site's own file says duplicate-records = "allow": common/data/duplicates.py); stated in its ledger
    max_copies: int = 1


#: the sites' data loaded in this process (a simulation actor serves many sites, message after message), each kept
#: while every file it was read from is unchanged (``sources.site_files``: mapping, schema, data file, the site's own
#: image and text files; and the federation's schema): a file rewritten while the actor lives is read again
_MEMO: FileMemo[SiteData] = FileMemo(size=4096)
#: the federation's schema, read once per version of its file (every site of a scenario checks its mapping against it)
_SCHEMAS: FileMemo = FileMemo(size=4)


def _fingerprint(split: SiteSplit) -> str:
    h = hashlib.sha256()
    for arr in (split.ids.astype(str), split.labels, split.tabular, split.tabular_mask):
        h.update(np.ascontiguousarray(arr).tobytes())
    for note in split.text or ():
        h.update(note.encode("utf-8"))
    if split.images is not None:
        h.update(np.ascontiguousarray(split.images).tobytes())
    return h.hexdigest()[:16]


def _text_key(kind: str, cfg: object, text: str) -> str:
    return hashlib.sha256("\x1f".join([kind, repr(cfg), text]).encode("utf-8")).hexdigest()[:32]


def text_features(texts: tuple[str, ...], *, kind: str, cache_dir: Path | None) -> dict[str, torch.Tensor]:
    """Frozen-encoder features of ``texts``, one row per text, computed per text and cached per text.

    ``cache_dir`` None = no disk cache (the site's ``feature-cache``). A text's features never depend on the other
    texts (see ``TextFeaturizer``), so the cache can hold them one by one.
    """
    from safetensors.torch import load, save

    from common.models.text import TextFeaturizer

    cfg = text_config(kind)
    keys = [_text_key(kind, cfg, t) for t in texts]
    path = cache_dir / f"text-{kind}.safetensors" if cache_dir is not None else None
    store: dict[str, torch.Tensor] = load(path.read_bytes()) if path is not None and path.exists() else {}
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if f"{k}.text" not in store}.items())
    if todo:
        feats = TextFeaturizer(cfg).featurize([t for _, t in todo])
        for row, (key, _) in enumerate(todo):
            store.update({f"{key}.{name}": value[row].contiguous() for name, value in feats.items()})
        if path is not None:
            atomic_write_bytes(path, save(store))
    names = sorted({name.split(".", 1)[1] for name in store})
    if not texts:
        return TextFeaturizer(cfg).featurize([])
    return {name: torch.stack([store[f"{k}.{name}"] for k in keys]) for name in names}


def _tensors(split: SiteSplit, *, site_mods: tuple[str, ...], model_mods: tuple[str, ...], text_kind: str,
             cache_dir: Path | None) -> dict[str, torch.Tensor]:
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
        elif m == "text" and split.text is not None:
            out.update(text_features(split.text, kind=text_kind, cache_dir=cache_dir))
            present[:, j] = np.array([bool(t.strip()) for t in split.text], dtype=np.float32)
        elif m == "image" and split.images is not None and split.image_present is not None:
            out["image"] = torch.from_numpy(split.images)
            present[:, j] = split.image_present.astype(np.float32)
        else:
            raise ValueError(f"modality {m!r} is not provided by this site's data source")
    out[MODALITY_MASK] = torch.from_numpy(present)
    return out


def _check_schema(site: SiteConfig, federation_schema: Path) -> None:
    """The site's mapping must map onto the federation's schema: the model's inputs are built from it."""
    from common.data.schema import load_schema
    from common.data.sources import site_schema

    own = site_schema(site.spec.source, site.spec.source_args, data_dir=site.data_dir)
    federation = _SCHEMAS.get((federation_schema,), str(federation_schema), lambda: load_schema(federation_schema))
    if not federation.same_contract(own):
        raise ValueError(f"site '{site.spec.name}': its mapping maps onto schema '{own.name}' ({own.path}), but the "
                         f"federation's model is built from {federation_schema}; map the site's file onto the "
                         "federation's schema")  # fmt: skip


def load_site(site: SiteConfig, *, model_modalities: tuple[str, ...], text_encoder: str,
              schema: Path | None = None) -> SiteData:
    """The site's train/test datasets for a model over ``model_modalities``.

    ``schema``: the federation's schema file (the scenario's); when given, the site's mapping must map onto the
    same contract (else ValueError saying so), since the model's input widths come from it.
    """
    key = (repr(site.spec), str(site.data_dir), str(site.state_dir), str(site.feature_cache_path), model_modalities,
           text_encoder, str(schema), site.privacy.duplicate_records)
    site_mods = tuple(m for m in site.spec.modalities if m in model_modalities)
    try:
        files = site_files(site.spec.source, site.spec.source_args, data_dir=site.data_dir, modalities=site_mods)
    except Exception:  # noqa: BLE001 - unreadable or invalid: no memo; the load below raises its own clear error
        return _load(site, model_modalities=model_modalities, text_encoder=text_encoder, schema=schema)
    files += (schema,) if schema is not None else ()
    return _MEMO.get(files, key, lambda: _load(site, model_modalities=model_modalities, text_encoder=text_encoder,
                                               schema=schema))


def _load(site: SiteConfig, *, model_modalities: tuple[str, ...], text_encoder: str,
          schema: Path | None) -> SiteData:
    if schema is not None:
        _check_schema(site, schema)
    site_mods = tuple(m for m in site.spec.modalities if m in model_modalities)
    cache = site.feature_cache_path
    train, test = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir,
                                 modalities=site_mods, image_cache=cache)
    k = check_copies(train, site=site.spec.name, policy=site.privacy.duplicate_records, data_dir=site.data_dir,
                     source_args=site.spec.source_args)  # before anything is computed or spent on the rows
    kw = dict(site_mods=site_mods, model_mods=model_modalities, text_kind=text_encoder, cache_dir=cache)
    return SiteData(train=TensorDictDataset(_tensors(train, **kw)), test=TensorDictDataset(_tensors(test, **kw)),
                    dataset_id=_fingerprint(train), modalities=site_mods, max_copies=k)

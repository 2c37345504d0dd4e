"""One site's records as model inputs, built from the schema alone: :class:`SiteSplit` and :func:`build_split`.

The site's mapped table (the schema's canonical columns, :mod:`common.data.cleaning`) becomes, per record: the
tabular inputs with their missing indicators (public normalisation, :mod:`common.data.features`), the label's class
index, the record's text (a column, a file per record, or a declared generator) and its image (a file per record, or
a declared generator). The train/test split is a keyed hash of each record's id (:mod:`common.data.split`). Every
input of a record depends on that record and on public declarations only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.duplicates import record_digests
from common.data.features import encode_labels, encode_tabular, label_classes
from common.data.generators import MnistByLabel, TemplateText, build_generator
from common.data.image_cache import cached_images
from common.data.mapping import SiteMapping
from common.data.schema import DataContractError, FeatureSpec, Schema
from common.data.split import keyed_split

__all__ = ["SiteSplit", "build_split"]


@dataclass(frozen=True)
class SiteSplit:
    """The records of one site's train or test set; row i of every field is the same record."""

    ids: np.ndarray  # (n,), record ids (the schema's id feature)
    labels: np.ndarray  # int64 (n,), class index of the label (features.label_classes)
    tabular: np.ndarray  # float32 (n, F), publicly normalised tabular inputs, 0 where missing
    tabular_mask: np.ndarray  # float32 (n, F), 1 = recorded, 0 = missing
    text: tuple[str, ...] | None = None  # one text per record ("" = none), if the site holds the text modality
    images: np.ndarray | None = None  # float32 (n, C, H, W) in [0, 1], if the site holds the image modality
    image_present: np.ndarray | None = None  # bool (n,): the record has an image
    num_classes: int = 2
    # sha256 of each record's content but its id (common.data.duplicates): equal digests = copies of one record
    content: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        lengths = {"labels": len(self.labels), "tabular": len(self.tabular), "tabular_mask": len(self.tabular_mask)}
        lengths |= {"text": len(self.text)} if self.text is not None else {}
        lengths |= {"images": len(self.images)} if self.images is not None else {}
        lengths |= {"content": len(self.content)} if self.content is not None else {}
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"SiteSplit: ids has {n} rows but {wrong}")
        if self.tabular.shape != self.tabular_mask.shape:
            raise ValueError(f"SiteSplit: tabular {self.tabular.shape} and mask {self.tabular_mask.shape} differ")

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> SiteSplit:
        """The records at positions ``rows``."""
        return SiteSplit(ids=self.ids[rows], labels=self.labels[rows], tabular=self.tabular[rows],
                         tabular_mask=self.tabular_mask[rows],
                         text=tuple(self.text[i] for i in rows) if self.text is not None else None,
                         images=self.images[rows] if self.images is not None else None,
                         image_present=self.image_present[rows] if self.image_present is not None else None,
                         num_classes=self.num_classes,
                         content=None if self.content is None else tuple(self.content[i] for i in rows))  # fmt: skip


def _modality_feature(schema: Schema, kind: str) -> FeatureSpec:
    found = [f for f in schema.features if f.role == "feature" and f.type == kind]
    if not found:
        raise DataContractError(f"the site holds the {kind} modality but schema '{schema.name}' has no {kind} "
                                "feature", file=schema.path, expected=f"a [features.<name>] with type = '{kind}'")
    return found[0]


def _read_text(path: Path, record: object) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataContractError(f"text file of record {record} not found", file=path,
                                expected="a UTF-8 file, its path relative to the site's data folder") from None
    except (UnicodeDecodeError, OSError) as error:
        raise DataContractError(f"text file of record {record} cannot be read ({error})", file=path,
                                expected="a UTF-8 text file") from None


def _texts(table: pd.DataFrame, mapping: SiteMapping, ids: np.ndarray, data_dir: Path) -> tuple[str, ...]:
    spec = _modality_feature(mapping.schema, "text")
    if spec.generated is not None:
        generator = build_generator(mapping.schema.generators[spec.generated], path=mapping.schema.path)
        assert isinstance(generator, TemplateText)
        return generator.generate(table, ids=list(ids))
    rule = next((r for r in mapping.columns if r.feature.name == spec.name), None)
    values = [None if pd.isna(v) else str(v) for v in table[spec.name]]
    if rule is not None and rule.content == "file":
        return tuple("" if v is None else _read_text(data_dir / v, i) for v, i in zip(values, ids, strict=True))
    return tuple("" if v is None else v for v in values)


def _images(table: pd.DataFrame, schema: Schema, ids: np.ndarray, labels: np.ndarray, test: np.ndarray,
            data_dir: Path, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    spec = _modality_feature(schema, "image")
    assert spec.size is not None and spec.channels is not None
    if spec.generated is not None:
        generator = build_generator(schema.generators[spec.generated], path=schema.path)
        assert isinstance(generator, MnistByLabel)
        return generator.generate(list(ids), labels, test=test), np.ones(len(ids), dtype=bool)
    images = np.zeros((len(ids), spec.channels, *spec.size), dtype=np.float32)
    column = table[spec.name]
    present = column.notna().to_numpy(dtype=bool)
    images[present] = cached_images([data_dir / str(v) for v in column.to_numpy()[present]], size=spec.size,
                                    channels=spec.channels, window=spec.window, cache_dir=cache_dir)
    return images, present


def _content(table: pd.DataFrame, mapping: SiteMapping, id_name: str, text: tuple[str, ...] | None,
             images: np.ndarray | None) -> tuple[str, ...]:
    """Each record's content digest: its mapped row without the id; a note or image read from the site's own
    files by its content instead of its path; generated notes and images (a function of the row) left out."""
    schema, exclude = mapping.schema, [id_name]
    own_text = own_images = None
    if text is not None:
        spec = _modality_feature(schema, "text")
        rule = next((r for r in mapping.columns if r.feature.name == spec.name), None)
        if spec.generated is None and rule is not None and rule.content == "file":
            exclude.append(spec.name)
            own_text = text
    if images is not None:
        spec = _modality_feature(schema, "image")
        if spec.generated is None:
            exclude.append(spec.name)
            own_images = images
    return record_digests(table, exclude=exclude, text=own_text, images=own_images)


def build_split(table: pd.DataFrame, mapping: SiteMapping, *, modalities: Iterable[str], data_dir: Path,
                split_key: str, test_fraction: float, image_cache: Path | None = None) -> tuple[SiteSplit, SiteSplit]:
    """The site's (train, test) records from its mapped table.

    Parameters
    ----------
    table
        The site's rows of the schema's canonical table (``MappedTable.table``, after any selection).
    mapping
        The site's mapping (its schema, and how its text column is written).
    modalities
        The modalities the site holds: text and images are built only for these.
    data_dir
        The site's data folder: relative paths of image and text files are relative to it.
    split_key, test_fraction
        The keyed-hash split (:func:`common.data.split.keyed_split`).
    image_cache
        The site's cache folder for its decoded image files (:mod:`common.data.image_cache`); None = decode them.
    """
    schema = mapping.schema
    id_feature = schema.role("id")
    assert id_feature is not None
    table = table.reset_index(drop=True)
    ids = table[id_feature.name].to_numpy()
    train_idx, test_idx = keyed_split(ids, key=split_key, test_fraction=test_fraction)
    is_test = np.zeros(len(ids), dtype=bool)
    is_test[test_idx] = True
    labels = encode_labels(table, schema)
    tabular, mask = encode_tabular(table, schema)
    modalities = set(modalities)
    text = _texts(table, mapping, ids, data_dir) if "text" in modalities else None
    images = present = None
    if "image" in modalities:
        images, present = _images(table, schema, ids, labels, is_test, data_dir, image_cache)
    whole = SiteSplit(ids=ids, labels=labels, tabular=tabular, tabular_mask=mask, text=text, images=images,
                      image_present=present, num_classes=len(label_classes(schema)),
                      content=_content(table, mapping, id_feature.name, text, images))  # fmt: skip
    return whole.take(train_idx), whole.take(test_idx)

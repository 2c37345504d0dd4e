"""A CONSTRUCTED multimodal table (a free-text column, PNG and DICOM image paths, a tabular number with a unit pint
converts, a three-class label) in an Excel workbook and in a Parquet file: the schema-driven source builds the same
text, images and tabular inputs from either, through configuration only.

Every record is made up for this test; the DICOM file is pydicom's packaged sample ``CT_small.dcm``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from common.data.sources import load_site_data

SCHEMA = """
[schema]
name = "dermatology"
description = "CONSTRUCTED for tests: skin lesions with a note and a photo"

[features.lesion]
role = "id"
type = "integer"
range = [1, 100000]
required = true
unique = true

[features.diameter]
modality = "tabular"
type = "numeric"
unit = "mm"
range = [0, 50]

[features.note]
modality = "text"
type = "text"

[features.photo]
modality = "image"
type = "image"
size = [16, 16]
channels = 1

[features.grade]
role = "label"
type = "categorical"
vocabulary = ["benign", "atypical", "malignant"]
required = true
"""
HEADER = ["lesion", "diameter_cm", "note", "photo", "grade"]


def _mapping(file_table: str) -> str:
    return (f'[mapping]\nschema = "schema.toml"\n\n[file]\n{file_table}\nmissing = ["-9"]\n\n[columns.lesion]\n'
            '[columns.diameter_cm]\nfeature = "diameter"\nunit = "cm"\n[columns.note]\n[columns.photo]\n'
            '[columns.grade]\ncodes = { "0" = "benign", "1" = "atypical", "2" = "malignant" }\n')  # fmt: skip


def _records(folder: Path) -> list[list[object]]:
    (folder / "img").mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "img" / "ct.dcm")
    rows = []
    for lesion in range(1, 41):
        grade = lesion % 3
        Image.fromarray(np.full((20, 24), 90 * grade, np.uint8), mode="L").save(folder / "img" / f"{lesion}.png")
        photo = "img/ct.dcm" if lesion % 10 == 0 else (-9 if lesion % 7 == 0 else f"img/{lesion}.png")
        note = f'Lesion {lesion}: "{("flat", "raised", "ulcerated")[grade]}", border {("even", "uneven")[lesion % 2]}.'
        rows.append([lesion, round(0.2 + lesion / 20, 2), note, photo, grade])
    return rows


@pytest.mark.parametrize("kind", ["excel", "parquet"])
def test_text_and_images_from_a_typed_table(tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "site"
    rows = _records(folder)
    (folder / "schema.toml").write_text(SCHEMA)
    if kind == "excel":
        book = openpyxl.Workbook()
        for row in [HEADER, *rows]:
            book.active.append(row)
        book.save(folder / "lesions.xlsx")
        (folder / "mapping.toml").write_text(_mapping('path = "lesions.xlsx"\nformat = "excel"'))
    else:
        columns = list(zip(*rows, strict=True))
        photos = pa.array([None if p == -9 else p for p in columns[3]])  # Parquet has real nulls
        pq.write_table(pa.table({"lesion": pa.array(columns[0]), "diameter_cm": pa.array(columns[1]),
                                 "note": pa.array(columns[2]), "photo": photos, "grade": pa.array(columns[4])}),
                       folder / "lesions.parquet")  # fmt: skip
        (folder / "mapping.toml").write_text(_mapping('path = "lesions.parquet"\nformat = "parquet"'))
    train, test = load_site_data("mapped", {"mapping": "mapping.toml"}, data_dir=folder,
                                 modalities=("tabular", "text", "image"))  # fmt: skip
    assert len(train) + len(test) == 40 and train.num_classes == 3
    found = {int(i): (split, k) for split in (train, test) for k, i in enumerate(split.ids)}
    split, k = found[12]
    assert split.text[k] == 'Lesion 12: "flat", border even.'  # the cell's own text, quotes and commas kept
    assert split.tabular[k, 0] == pytest.approx((0.2 + 12 / 20) * 10 / 25 - 1)  # cm -> mm, public range [0, 50]
    assert split.labels[k] == 0 and split.image_present[k]
    split, k = found[14]
    assert not split.image_present[k]  # no photo for this lesion
    split, k = found[20]
    assert split.image_present[k] and split.images.shape[1:] == (1, 16, 16)  # the DICOM sample, resized

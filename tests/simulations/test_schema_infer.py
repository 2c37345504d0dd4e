"""`fedfusion schema infer FILE`: a draft schema and mapping, what to confirm, and no observed range used silently.

Files: the breast-cancer example's three clinic exports (data/breast-cancer: real WDBC values, CONSTRUCTED layouts),
and small CONSTRUCTED columns for the profiler's rules.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.data.cleaning import load_mapped
from common.data.infer import ColumnProfile, snake_case
from common.data.schema import DataContractError, load_schema
from simulations.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "breast-cancer"


def _infer(tmp_path: Path, capsys, *args: str) -> tuple[dict, str, str]:
    schema, mapping = tmp_path / "draft.toml", tmp_path / "draft-mapping.toml"
    assert main(["schema", "infer", *args, "--out", str(schema), "--mapping-out", str(mapping)]) == 0
    err = capsys.readouterr().err
    return tomllib.loads(schema.read_text()), mapping.read_text(), err


def test_north_csv_draft_names_types_codes_and_what_to_confirm(tmp_path: Path, capsys) -> None:
    draft, mapping, err = _infer(tmp_path, capsys, str(EXAMPLE / "north.csv"), "--encoding", "cp1252", "--comment",
                                 "#", "--label", "Befund")  # fmt: skip
    features = draft["features"]
    assert list(features)[:3] == ["patienten_nr", "radius_mittel", "textur_mittel"]
    assert features["patienten_nr"] == {"role": "id", "type": "integer", "required": True, "unique": True,
                                        "description": "from column 'Patienten-Nr'"}  # fmt: skip
    assert features["befund"]["role"] == "label" and set(features["befund"]["vocabulary"]) == {"bösartig", "gutartig"}
    assert features["texturgrad"]["type"] == "categorical"
    assert set(features["texturgrad"]["vocabulary"]) == {"niedrig", "mittel", "hoch"}
    assert all("range" not in f for f in features.values())  # observed ranges are comments, never values
    assert 'delimiter = ";"' in mapping and 'decimal = ","' in mapping and 'encoding = "cp1252"' in mapping
    assert '[columns."Konkavität (Mittel)"]\nfeature = "konkavitaet_mittel"\nmissing = ["-9"]' in mapping
    assert "'Konkavität (Mittel)': suspected missing code(s) '-9' x8" in err
    assert "'Symmetrie (Mittel)': suspected missing code(s) '-9' x4" in err
    assert "label classes ['bösartig', 'gutartig']" in err or "label classes ['gutartig', 'bösartig']" in err
    assert re.search(r"public ranges \(or center and scale\) and units of the 10 tabular numbers: .*'Radius "
                     r"\(Mittel\)' \[8\.571, 27\.22\]", err)  # fmt: skip


def test_the_draft_is_refused_until_public_ranges_are_written(tmp_path: Path, capsys) -> None:
    _infer(tmp_path, capsys, str(EXAMPLE / "north.csv"), "--encoding", "cp1252", "--comment", "#", "--label",
           "Befund")  # fmt: skip
    draft = tmp_path / "draft.toml"
    with pytest.raises(DataContractError, match=r"draft\.toml, feature 'radius_mittel': a tabular number needs "
                                                r"public normalisation values"):
        load_schema(draft)
    # a person writes ranges (here, for the test, wide round ones: not the observed ones) and the drafts then work
    text = re.sub(r"# range = \[.*", "range = [-10, 3000]", draft.read_text())
    draft.write_text(text)
    mapped = load_mapped(tmp_path / "draft-mapping.toml")
    assert len(mapped.table) == 190 and mapped.report.missing["konkavitaet_mittel"] == 8
    assert mapped.table["befund"].isna().sum() == 0


def test_south_tsv_intervals_and_no_id(tmp_path: Path, capsys) -> None:
    draft, mapping, err = _infer(tmp_path, capsys, str(EXAMPLE / "south.tsv"), "--label", "malignant")
    assert draft["features"]["area_band"]["type"] == "numeric"
    assert '[columns.area_band]\ninterval = "midpoint"' in mapping and 'format = "tsv"' in mapping
    assert '[columns.smoothness]\nmissing = ["NA"]' in mapping
    assert "no column looks like a record id" in err
    assert "'area_band' holds intervals such as '40-49' (190 cells)" in err
    assert draft["features"]["malignant"]["vocabulary"] in (["0", "1"], ["1", "0"])


def test_east_arff_takes_the_declared_nominal_values(tmp_path: Path, capsys) -> None:
    draft, mapping, err = _infer(tmp_path, capsys, str(EXAMPLE / "east.arff"), "--label", "diagnosis")
    assert draft["features"]["texture_grade"]["vocabulary"] == ["low", "mid", "high"]  # as @attribute declares
    assert draft["features"]["diagnosis"]["vocabulary"] == ["M", "B"]
    assert draft["features"]["patient"]["role"] == "id" and 'format = "arff"' in mapping


def test_a_bad_file_or_label_is_one_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["schema", "infer", str(EXAMPLE / "south.tsv"), "--label", "outcome"]) == 1
    assert "--label 'outcome' is not a column of" in capsys.readouterr().err
    bad = tmp_path / "bad.arff"
    bad.write_text("@relation r\n@attribute a numeric\n@data\nx\n")
    assert main(["schema", "infer", str(bad)]) == 1
    assert "bad.arff line 4, column 'a': 'x' is not a number" in capsys.readouterr().err


def _profile(cells: list[str]) -> ColumnProfile:
    profile = ColumnProfile("c")
    for cell in cells:
        profile.add(cell, ".")
    profile.finish()
    return profile


def test_suspected_missing_codes() -> None:
    assert dict(_profile(["120", "135", "0", "0", "160", "118", "0", "140"]).codes) == {"0": 3}  # 0 far below
    assert dict(_profile(["0", "1", "2", "0", "3"]).codes) == {}  # 0 among small counts is a value
    assert dict(_profile(["63", "-9", "41", "-9"]).codes) == {"-9": 2}
    assert dict(_profile(["1500", "999", "2200", "800"]).codes) == {}  # 999 inside the values' span
    assert dict(_profile(["1.5", "999", "2.2"]).codes) == {"999": 1}
    assert dict(_profile(["3.1", "?", "NA", "2.0", "n/a"]).codes) == {"?": 1, "NA": 1, "n/a": 1}
    profile = _profile(["120", "135", "0", "160"])
    assert (profile.low, profile.high) == (120, 160)  # the suspected 0 is not in the observed range


@given(st.text(max_size=30))
def test_feature_names_are_snake_case_identifiers(name: str) -> None:
    snake = snake_case(name)
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", snake) and snake_case(snake) == snake

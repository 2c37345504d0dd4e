"""The drafts ``fedfusion schema infer`` writes: a schema TOML and a mapping TOML, and the list of what to confirm.

The draft schema is deliberately not ready: every tabular number's range is the range OBSERVED in this one file,
written as a comment, so that the schema is refused until someone writes a PUBLIC range (or center and scale) in
its place. Observed values never become the model's normalisation by default (issue 10: preprocessing is public).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from common.data.infer import Guess, guess, observed_range, profile_file
from common.data.readers import FileFormat

__all__ = ["Draft", "draft_from_file", "sniff_text"]

_SAMPLE_BYTES = 1 << 16


@dataclass(frozen=True)
class Draft:
    """What ``schema infer`` found and wrote."""

    schema_toml: str
    mapping_toml: str
    confirm: tuple[str, ...]  # numbered list of what the user must confirm
    records: int
    guesses: tuple[Guess, ...]


def sniff_text(path: Path, *, encoding: str, comment: tuple[str, ...], skip_lines: int) -> tuple[str, str]:
    """``(delimiter, decimal)`` of a delimited text file, from its first 64 KiB."""
    with open(path, encoding="utf-8-sig" if encoding.lower() in ("utf-8", "utf8") else encoding,
              errors="replace", newline="") as fh:  # fmt: skip
        lines = fh.read(_SAMPLE_BYTES).splitlines()[skip_lines:]
    lines = [line for line in lines if line.strip() and not (comment and line.lstrip().startswith(comment))]
    sample = "\n".join(lines[:200])
    try:
        delimiter = csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","
    cells = [c.strip() for row in csv.reader(io.StringIO(sample), delimiter=delimiter) for c in row]
    comma = sum(bool(c) and c.replace("-", "", 1).replace(",", "", 1).isdigit() and "," in c for c in cells)
    point = sum(bool(c) and c.replace("-", "", 1).replace(".", "", 1).isdigit() and "." in c for c in cells)
    return delimiter, "," if delimiter != "," and comma > point else "."


def _key(name: str) -> str:
    return name if name.replace("_", "").replace("-", "").isalnum() and name.isascii() else json.dumps(
        name, ensure_ascii=False)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _feature_toml(g: Guess) -> list[str]:
    out = [f"[features.{g.feature}]"]
    if g.role != "feature":
        out.append(f'role = "{g.role}"')
    else:
        out.append(f'modality = "{g.modality}"')
    out.append(f'type = "{g.type}"')
    if g.vocabulary:
        out.append(f"vocabulary = {json.dumps(list(g.vocabulary), ensure_ascii=False)}")
    if g.role in ("id", "label"):
        out.append("required = true")
    if g.role == "id":
        out.append("unique = true")
    if g.type == "numeric" and g.whole:
        out.append("integer_valued = true")
    if g.type == "numeric" and g.role == "feature":
        seen = f"[{_num(g.observed[0])}, {_num(g.observed[1])}]" if g.observed else "none"
        out.append(f"# range = {seen}   # OBSERVED at one site, NOT public: write the feature's public range (a "
                   "published reference, the instrument's limits) or center and scale; never fit it on site data")
        out.append('# unit = "..."        # the federation\'s unit (any unit pint reads, e.g. "mg/dL", "kg/m2")')
    out.append(f"description = {json.dumps(f'from column {g.column!r}', ensure_ascii=False)}")
    return out


def _column_toml(g: Guess) -> list[str]:
    out = [f"[columns.{_key(g.column)}]"]
    if g.feature != g.column:
        out.append(f'feature = "{g.feature}"')
    if g.codes:
        out.append(f"missing = {json.dumps([c for c, _ in g.codes], ensure_ascii=False)}   # suspected: confirm")
    if g.interval:
        out.append('interval = "midpoint"          # "40-49" -> 44.5')
    if g.boolean_words:
        true, false = g.boolean_words
        out.append(f"codes = {{ {json.dumps(true, ensure_ascii=False)} = true, "
                   f"{json.dumps(false, ensure_ascii=False)} = false }}")
    return out


def _file_toml(fmt: FileFormat, mapping_out: Path | None) -> list[str]:
    base = mapping_out.parent if mapping_out else Path.cwd()
    out = [f"path = {json.dumps(os.path.relpath(fmt.path.resolve(), base.resolve()))}", f'format = "{fmt.format}"']
    if fmt.format in ("csv", "tsv"):
        if fmt.format == "csv" and fmt.delimiter != ",":
            out.append(f"delimiter = {json.dumps(fmt.delimiter)}")
        if fmt.decimal != ".":
            out.append(f'decimal = "{fmt.decimal}"')
        if fmt.comment:
            out.append(f"comment = {json.dumps(list(fmt.comment))}")
        if fmt.skip_lines:
            out.append(f"skip_lines = {fmt.skip_lines}")
    if fmt.format in ("csv", "tsv", "arff") and fmt.encoding.lower() not in ("utf-8", "utf8"):
        out.append(f'encoding = "{fmt.encoding}"')
    if fmt.format == "excel" and fmt.sheet:
        out.append(f"sheet = {json.dumps(fmt.sheet)}")
    return out


def draft_from_file(fmt: FileFormat, *, label: str | None, name: str, schema_out: Path | None = None,
                    mapping_out: Path | None = None) -> Draft:  # fmt: skip
    """Profile the file and write the drafts' text (nothing is written to disk here).

    Raises
    ------
    DataContractError
        What reading the file raises (naming file, line and column); also if ``label`` is not a column.
    ValueError
        If ``label`` is not one of the file's columns.
    """
    profiles, records = profile_file(fmt)
    names = [p.name for p in profiles]
    if label is not None and label not in names:
        raise ValueError(f"--label {label!r} is not a column of {fmt.path}; its columns: {names}")
    guesses = tuple(guess(p, label=label, records=records, first=i == 0) for i, p in enumerate(profiles))
    confirm = [f"the label: no --label was given, so the draft has none; name the column the model predicts"] \
        if label is None else []  # fmt: skip
    if not any(g.role == "id" for g in guesses):
        confirm.append("the id: no column looks like a record id; add one, or number the records in the mapping "
                       "([row_number] feature = \"id\", offset = ...) and add an integer id feature")
    confirm += [c for g in guesses for c in g.confirm]
    numbers = [g for g in guesses if g.type == "numeric" and g.role == "feature"]
    if numbers:
        seen = ", ".join(f"'{g.column}' {observed_range(g.observed)}" for g in numbers)
        confirm.append(f"public ranges (or center and scale) and units of the {len(numbers)} tabular numbers: only the "
                       f"ranges OBSERVED here are known, and they stay comments in the draft: {seen}")
    confirm += ["the [schema] note: say what is real and what is constructed (run reports print it)"]
    numbered = tuple(f"{i}. {c}" for i, c in enumerate(confirm, start=1))
    head = [f"# DRAFT schema written by `fedfusion schema infer` from {fmt.path.name} ({records} records).",
            "# A starting point, not a contract: confirm each item below, then delete this header. The ranges below",
            "# are commented out on purpose: they are OBSERVED at one site; the schema is refused until every",
            "# tabular number has a PUBLIC range (or center and scale).", "#", "# To confirm:",
            *(f"#   {line}" for line in numbered), "",
            "[schema]", f'name = "{name}"', 'description = "DRAFT: what one record is"',
            'note = "DRAFT: the data\'s source and licence; what is real and what is constructed"', ""]  # fmt: skip
    for g in guesses:
        head += [*_feature_toml(g), ""]
    schema_rel = os.path.relpath((schema_out or Path(f"{name}.toml")).resolve(),
                                 (mapping_out.parent if mapping_out else Path.cwd()).resolve())  # fmt: skip
    mapping = [f"# DRAFT mapping of {fmt.path.name} onto the draft schema (written by `fedfusion schema infer`).",
               "# Confirm the missing codes, codes and renames; relative paths are relative to this file.", "",
               "[mapping]", f"schema = {json.dumps(schema_rel)}", "", "[file]", *_file_toml(fmt, mapping_out), ""]
    for g in guesses:
        mapping += [*_column_toml(g), ""]
    return Draft(schema_toml="\n".join(head).rstrip() + "\n", mapping_toml="\n".join(mapping).rstrip() + "\n",
                 confirm=numbered, records=records, guesses=guesses)

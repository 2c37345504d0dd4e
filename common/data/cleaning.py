"""Applying a site mapping to the site's file: the schema's table, plus a report of every change made.

Cleaning never imputes. A value that is blank, a missing-value code, or out of range under an ``out_of_range =
"missing"`` rule becomes missing (NaN / None / pd.NA / NaT) and stays missing; the tabular features later carry a mask
so the model sees what was not recorded (:func:`common.data.features.encode_tabular`). Every other value is converted to
the schema's unit and vocabulary or refused with a :class:`~common.data.schema.DataContractError` naming the file,
line and column. :class:`CleaningReport` counts, per column, what each rule changed, and can be written as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from common.data.cleaning_report import CleaningReport, ColumnReport
from common.data.codes import parse_number
from common.data.mapping import ColumnRule, SiteMapping, load_mapping
from common.data.column_buffer import ColumnBuffer, as_series, take
from common.data.readers import SiteFileStream, count_records, open_site_file
from common.data.schema import DataContractError, FeatureSpec, display_path

__all__ = ["CleaningReport", "ColumnReport", "MappedTable", "apply_mapping", "load_mapped"]


@dataclass(frozen=True)
class MappedTable:
    """A site's file mapped onto the schema."""

    table: pd.DataFrame  # the schema's features as columns, in schema order, rows sorted by the id feature
    report: CleaningReport
    mapping: SiteMapping


class _Bad(Exception):
    """One cell's problem: ``(problem, expected)``."""


def _alternatives(rule: ColumnRule) -> str:
    missing = list(rule.missing.table)
    return f", or a missing-value code ({', '.join(repr(c) for c in missing)})" if missing else ""


def _value(rule: ColumnRule, text: str, decimal: str, report: ColumnReport) -> object:
    """The canonical value of one non-missing cell; None if an outlier rule makes it missing."""
    spec = rule.feature
    if rule.codes:
        found, value = rule.codes.lookup(text)
        if not found:
            codes = ", ".join(rule.codes.table)
            raise _Bad(f"unknown code {text!r}", f"one of {codes}{_alternatives(rule)}")
        report.recoded += 1
    elif spec.type == "categorical":
        if text not in (spec.vocabulary or ()):
            raise _Bad(f"unknown category {text!r}", f"{spec.expected()}{_alternatives(rule)} (or map the site's "
                       "words with [columns.<name>] codes)")  # fmt: skip
        value = text
    elif spec.type == "boolean":
        if text.lower() not in ("true", "false"):
            raise _Bad(f"{text!r} is not true or false", f"true or false{_alternatives(rule)} (or map the site's "
                       "words with [columns.<name>] codes)")  # fmt: skip
        value = text.lower() == "true"
    elif spec.type in ("numeric", "integer"):
        number = _interval(text, decimal) if rule.interval == "midpoint" else parse_number(text, decimal)
        if number is None:
            also = " or an interval 'low-high'" if rule.interval else ""
            raise _Bad(f"{text!r} is not a number",
                       f"a number with decimal separator {decimal!r}{also}{_alternatives(rule)}")
        value = number
    elif spec.type == "timestamp":
        return _timestamp(rule, text, report)
    else:
        return text
    if spec.type == "numeric":
        value = _numeric(rule, float(value), text, report, coded=bool(rule.codes))  # type: ignore[arg-type]
    if spec.type in ("numeric", "integer") and value is not None and spec.range is not None:
        low, high = spec.range
        if not low <= value <= high:  # type: ignore[operator]
            if rule.out_of_range == "error":
                unit = f" {spec.unit}" if spec.unit else ""
                source = f" (read {text!r} {rule.unit})" if rule.conversion else ""
                raise _Bad(f"{value:g}{unit}{source} is outside the allowed range",
                           f"{spec.expected()} (or set out_of_range = 'missing' for this column)")  # fmt: skip
            report.out_of_range_to_missing += 1
            return None
    if spec.type == "integer":
        if not float(value).is_integer():  # type: ignore[arg-type]
            raise _Bad(f"{text!r} is not a whole number", spec.expected())
        return int(value)  # type: ignore[call-overload]
    return value


def _interval(text: str, decimal: str) -> float | None:
    """``"40-49"`` -> 44.5 (the midpoint); a plain number reads as itself; else None."""
    number = parse_number(text, decimal)
    if number is not None:
        return number
    low, sep, high = text.partition("-")
    bounds = (parse_number(low.strip(), decimal), parse_number(high.strip(), decimal)) if sep else (None, None)
    if bounds[0] is None or bounds[1] is None or bounds[0] > bounds[1]:
        return None
    return (bounds[0] + bounds[1]) / 2.0


def _numeric(rule: ColumnRule, value: float, text: str, report: ColumnReport, *, coded: bool = False) -> float:
    if rule.conversion is not None and not coded:  # a code's value is written in the schema's unit
        value = rule.conversion.apply(value)
        report.converted += 1
    if rule.round is not None:
        rounded = round(value, rule.round)
        report.rounded += rounded != value
        value = rounded
    if rule.feature.integer_valued and not value.is_integer():
        raise _Bad(f"{text!r} is not a whole number", rule.feature.expected())
    return value


def _timestamp(rule: ColumnRule, text: str, report: ColumnReport) -> datetime:
    try:
        moment = datetime.strptime(text, rule.format or "")
    except ValueError:
        raise _Bad(f"{text!r} is not a timestamp in the site's format",
                   f"format {rule.format!r}{_alternatives(rule)}") from None  # fmt: skip
    if rule.timezone is not None:
        moment = moment.replace(tzinfo=ZoneInfo(rule.timezone))
    report.to_utc += moment.utcoffset() != timedelta(0)
    return moment.astimezone(UTC)


def _column(spec: FeatureSpec, values: list[object]) -> object:
    """Values as the table's column for ``spec`` (missing as NaN / None / pd.NA / NaT)."""
    if spec.type == "numeric":
        return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    if spec.type == "integer":  # nullable: an optional integer feature may be missing (pd.NA)
        return pd.array(values, dtype="Int64")
    if spec.type == "boolean":
        return pd.array(values, dtype="boolean")
    if spec.type == "timestamp":
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True).array
    return values


def _check_header(stream: SiteFileStream, mapping: SiteMapping) -> None:
    mapped = [r.column for r in mapping.columns]
    where = "header" if stream.header_line is not None else "the file's columns"
    absent = [c for c in mapped if c not in stream.columns]
    if absent:
        features = ", ".join(f"'{r.column}' -> {r.feature.name}" for r in mapping.columns if r.column in absent)
        raise stream.error(f"missing column(s) {features}", line=stream.header_line,
                           expected=f"a {where} naming every mapped column; it has {list(stream.columns)}")
    extra = [c for c in stream.columns if c not in mapped and c not in mapping.file.ignore]
    if extra:
        raise stream.error(f"column(s) {extra} are not in the mapping", line=stream.header_line,
                           expected="a [columns.<name>] table for each, or list them in [file] ignore")


def apply_mapping(mapping: SiteMapping) -> MappedTable:
    """Read the site's file, chunk by chunk, and map it onto the schema.

    Only one chunk of the file's raw text is held at a time (:mod:`common.data.readers`); each chunk's cells are
    turned into the schema's typed columns at once, so memory holds little more than the cleaned table.

    Returns
    -------
    MappedTable
        The table (schema features in schema order; features the site does not provide are missing in every row;
        rows sorted by the id feature) and its cleaning report.

    Raises
    ------
    DataContractError
        Naming file, line and column, for any cell that is not what the mapping and schema allow, a missing
        required value, or a repeated value of a unique feature.
    """
    reports = [ColumnReport(column=rule.column, feature=rule.feature.name,
                            conversion=rule.conversion.describe() if rule.conversion else None)
               for rule in mapping.columns]  # fmt: skip
    n = count_records(mapping.file, mapping=mapping.path)  # a first pass: the columns are allocated once
    buffers = {rule.feature.name: ColumnBuffer(n) for rule in mapping.columns}
    lines = np.empty(n, dtype=np.int32 if mapping.file.max_bytes < 2**31 else np.int64)  # a line is >= 1 byte
    with open_site_file(mapping.file, mapping=mapping.path) as stream:
        if mapping.file.columns is None:
            _check_header(stream, mapping)
        positions = [stream.columns.index(rule.column) for rule in mapping.columns]
        for chunk in stream.chunks():
            if stream.records > n:
                raise stream.error(f"the file changed while it was read ({n} records, then more)")
            for rule, position, report in zip(mapping.columns, positions, reports, strict=True):
                cells: list[object] = []
                for row, line in zip(chunk.rows, chunk.lines, strict=True):
                    try:
                        cells.append(_cell(rule, row[position], mapping.file.decimal, report))
                    except _Bad as bad:
                        problem, expected = bad.args
                        raise stream.error(problem, line=line, column=rule.column, expected=expected) from None
                report.missing += sum(v is None for v in cells)
                buffers[rule.feature.name].add(_column(rule.feature, cells))
            lines[stream.records - len(chunk.lines) : stream.records] = chunk.lines
        if stream.records != n:
            raise stream.error(f"the file changed while it was read ({n} records, then {stream.records})")
    values: dict[str, Any] = {name: buffer.column() for name, buffer in buffers.items()}
    del buffers
    for report in reports:
        report.observed = n - report.missing
    for name, value in mapping.constants.items():
        values[name] = _column(mapping.schema.feature(name), [value] * n)
    if mapping.row_number is not None:
        values[mapping.row_number.feature.name] = _row_numbers(mapping, n)
    _check_unique(mapping, stream, values, lines)
    id_feature = mapping.schema.role("id")
    if id_feature is not None and id_feature.name in values and n:
        ids = np.asarray(values[id_feature.name])
        if not bool(np.all(ids[1:] >= ids[:-1])):  # sorted already (ids numbered by row, or an ordered export)
            order = np.argsort(ids, kind="stable")
            for name in list(values):
                values[name] = take(values[name], order)
    table = pd.DataFrame({s.name: as_series(values.pop(s.name) if s.name in values else _column(s, [None] * n))
                          for s in mapping.schema.features}, copy=False)  # fmt: skip
    schema_path = mapping.schema.path
    report = CleaningReport(
        site_file=display_path(stream.path), mapping=display_path(mapping.path) if mapping.path else None,
        schema=display_path(schema_path) if schema_path else mapping.schema.name, rows=n,
        blank_lines=stream.blank_lines, skipped_lines=stream.skipped_lines, columns=reports,
        constants=dict(mapping.constants),
        row_number=(f"{mapping.row_number.feature.name} = {mapping.row_number.offset} + record number (1-based)"
                    if mapping.row_number else None),
        not_provided=[f.name for f in mapping.schema.features  # generated features are built, never read
                      if f.name not in mapping.provided() and f.generated is None],
        missing={name: int(table[name].isna().sum()) for name in mapping.schema.names},
    )  # fmt: skip
    return MappedTable(table=table, report=report, mapping=mapping)


def _cell(rule: ColumnRule, text: str, decimal: str, report: ColumnReport) -> object:
    if not text:
        report.blank += 1
        value = None
    elif rule.missing.lookup(text)[0]:
        code = rule.missing.code_for(text)
        report.missing_codes[code] = report.missing_codes.get(code, 0) + 1
        value = None
    else:
        value = _value(rule, text, decimal, report)
    if value is None and rule.feature.required:
        label = f"{rule.feature.role} " if rule.feature.role != "feature" else ""
        raise _Bad(f"missing value {text!r} for required {label}feature '{rule.feature.name}'",
                   f"{rule.feature.expected()} (this feature may not be missing)")  # fmt: skip
    return value


def _row_numbers(mapping: SiteMapping, n: int) -> Any:
    numbering = mapping.row_number
    assert numbering is not None
    first, last = numbering.offset + 1, numbering.offset + n
    low, high = numbering.feature.range or (-np.inf, np.inf)
    if not (low <= first and last <= high):
        raise DataContractError(f"the records would be numbered from {first} to {last}", file=mapping.path,
                                key="[row_number] offset", expected=numbering.feature.expected())  # fmt: skip
    return pd.array(np.arange(first, last + 1, dtype=np.int64), dtype="Int64")


def _first_repeat(column: Any) -> int | None:
    """Position of the first value that repeats an earlier one (missing values aside), or None."""
    if isinstance(column, pd.arrays.IntegerArray) and not column.isna().any():
        column = column.to_numpy(dtype=np.int64)
    if isinstance(column, np.ndarray) and column.dtype.kind in "iuf":  # numbers: sort, not a hash table (memory)
        if column.dtype.kind == "f":
            column = np.where(np.isnan(column), -np.inf, column)  # NaN is missing, never a repeat: checked below
        ordered = bool(np.all(column[1:] >= column[:-1]))
        order = None if ordered else np.argsort(column, kind="stable")
        values = column if order is None else column[order]
        same = np.flatnonzero((values[1:] == values[:-1]) & np.isfinite(values[1:]))
        if not len(same):
            return None
        later = same + 1 if order is None else order[same + 1]
        return int(later.min())
    series = pd.Series(column, dtype=object) if isinstance(column, list) else pd.Series(column, copy=False)
    repeated = series.duplicated(keep="first") & series.notna()
    return int(np.argmax(repeated.to_numpy())) if repeated.any() else None


def _check_unique(mapping: SiteMapping, stream: SiteFileStream, values: dict[str, Any], lines: np.ndarray) -> None:
    for rule in mapping.columns:
        if not rule.feature.unique:
            continue
        column = values[rule.feature.name]
        at = _first_repeat(column)
        if at is not None:
            value = column[at]
            first = next(i for i in range(at) if column[i] == value)
            value = value.item() if hasattr(value, "item") else value
            raise stream.error(f"{rule.feature.name} {value!r} also appears on {stream.line_word} {lines[first]}",
                               line=int(lines[at]), column=rule.column, expected=f"each {rule.feature.name} once")


def load_mapped(path: Path, *, data_file: Path | None = None) -> MappedTable:
    """Read a mapping TOML and apply it (see :func:`apply_mapping`); ``data_file`` replaces ``[file] path``."""
    return apply_mapping(load_mapping(path, data_file=data_file))


def load_mapped_site(path: Path, *, table_name: str, columns: tuple[str, ...], site_column: str,
                     site: str | None) -> pd.DataFrame:
    """One site's rows of a mapped export, in ``columns`` order: what every ``mapped-*`` data source reads.

    ``site_column`` ("hospital", "bank") names the site of each row; ``site`` picks one when the export holds
    several. Raises :class:`DataContractError` when the mapping's schema lacks ``columns`` (it is not a mapping
    onto ``data/schemas/<table_name>.toml``) or the export does not hold exactly one site.
    """
    mapped = load_mapped(path)
    table = mapped.table
    lacking = [c for c in columns if c not in table.columns]
    if lacking:
        raise DataContractError(f"schema '{mapped.mapping.schema.name}' lacks the {table_name} table's column(s) "
                                f"{lacking}", file=path, expected=f"a mapping onto data/schemas/{table_name}.toml")
    if site is not None:
        table = table[table[site_column] == site]
    held = sorted(set(table[site_column]))
    if len(held) != 1:
        raise DataContractError(f"the mapped export holds {site_column}(s) {held}", file=mapped.mapping.file.path,
                                mapping=path, expected=f"exactly one {site_column} (name it with '{site_column}')")
    return table[list(columns)]

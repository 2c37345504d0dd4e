"""A site's mapping of its own data file onto the federation schema, declared in TOML (``data/mappings/*.toml``).

A mapping says how the file is written (``[file]``: format, layout, encoding, size limit; validated by
:mod:`common.data.readers`), which of its columns feeds which schema feature and how to
read it (``[columns.<name>]``: rename, unit, codes, missing-value codes, outlier rule, timestamp format and zone),
which features are the same for every row (``[constants]``) and, for files without an id column, how ids are
numbered (``[row_number]``). Relative paths in a mapping are relative to the mapping file's folder. This module only
reads and validates the mapping; :mod:`common.data.cleaning` applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from common.data.codes import Codes
from common.data.readers import FORMAT_KEYS, FileFormat, file_format_from_dict
from common.data.schema import DataContractError, FeatureSpec, Schema, load_schema, read_toml
from common.data.units import Conversion, UnitError, conversion

__all__ = ["ColumnRule", "FileFormat", "RowNumber", "SiteMapping", "load_mapping", "mapping_from_dict"]

_TABLES = {"mapping", "file", "columns", "constants", "row_number"}
_COLUMN_KEYS = {"feature", "unit", "round", "codes", "missing", "out_of_range", "format", "timezone", "interval",
                "content"}  # fmt: skip
_CODED_TYPES = ("categorical", "boolean", "integer", "numeric")  # numeric/integer: ordinal and interval codes


@dataclass(frozen=True)
class ColumnRule:
    """How one column of the file becomes one feature."""

    column: str  # name in the file
    feature: FeatureSpec  # the schema feature it feeds
    missing: Codes  # file-wide and column missing codes (value None)
    unit: str | None = None  # the file's unit (numeric features)
    conversion: Conversion | None = None  # file unit -> schema unit; None when they are the same
    round: int | None = None  # decimals kept after conversion
    codes: Codes | None = None  # code -> canonical value (categorical, boolean, integer)
    out_of_range: str = "error"  # "error" or "missing"
    format: str | None = None  # timestamp: strptime format
    timezone: str | None = None  # timestamp: IANA zone of times without an offset ("UTC" allowed)
    interval: str | None = None  # numeric: "midpoint" reads a cell "a-b" as (a + b) / 2
    content: str = "value"  # text: "value" (the cell is the text) or "file" (a path, relative to the data folder)


@dataclass(frozen=True)
class RowNumber:
    """Ids for files without an id column: ``offset`` + the record's 1-based position among the data rows."""

    feature: FeatureSpec
    offset: int


@dataclass(frozen=True)
class SiteMapping:
    """A validated site mapping."""

    path: Path | None  # the mapping file
    schema: Schema
    file: FileFormat
    columns: tuple[ColumnRule, ...]
    constants: Mapping[str, object]  # feature -> canonical value for every row
    row_number: RowNumber | None
    description: str = ""

    def provided(self) -> tuple[str, ...]:
        """Schema features this mapping fills (the others are missing at this site)."""
        given = {r.feature.name for r in self.columns} | set(self.constants)
        given |= {self.row_number.feature.name} if self.row_number else set()
        return tuple(n for n in self.schema.names if n in given)


class _Checker:
    """Raises DataContractError naming the mapping file and the setting."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def fail(self, key: str, problem: str, expected: str | None = None) -> NoReturn:
        raise DataContractError(problem, file=self.path, key=key, expected=expected) from None

    def table(self, raw: Any, key: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(raw, Mapping):
            self.fail(key, f"is {raw!r}, not a table", f"[{key}] with keys from {sorted(allowed)}")
        unknown = sorted(set(raw) - allowed)
        if unknown:
            self.fail(key, f"unknown key(s) {unknown}", f"keys from {sorted(allowed)}")
        return raw

    def strings(self, raw: Any, key: str) -> tuple[str, ...]:
        if not (isinstance(raw, list) and all(isinstance(v, str) for v in raw)):
            self.fail(key, f"is {raw!r}", "a list of strings as written in the file, e.g. ['?', '-9']")
        return tuple(raw)

    def value(self, spec: FeatureSpec, value: object, key: str) -> object:
        """A canonical value for ``spec`` given in the mapping (a code's target or a constant)."""
        ok = {
            "categorical": isinstance(value, str) and value in (spec.vocabulary or ()),
            "boolean": isinstance(value, bool),
            "integer": isinstance(value, int) and not isinstance(value, bool),
            "numeric": isinstance(value, int | float) and not isinstance(value, bool),
            "text": isinstance(value, str),
            "timestamp": False,
            "image": False,
        }[spec.type]
        if ok and spec.range is not None and not spec.range[0] <= value <= spec.range[1]:  # type: ignore[operator]
            ok = False
        if not ok:
            self.fail(key, f"{value!r} is not a value of feature '{spec.name}'", spec.expected())
        return float(value) if spec.type == "numeric" else value  # type: ignore[arg-type]

    def feature(self, schema: Schema, name: Any, key: str) -> FeatureSpec:
        try:
            return schema.feature(name)
        except KeyError:
            self.fail(key, f"feature {name!r} is not in schema '{schema.name}'", "one of " + ", ".join(schema.names))


def _column_rule(column: str, raw: Any, schema: Schema, fmt: FileFormat, check: _Checker) -> ColumnRule:
    key = f"[columns.{column}]" if column.isidentifier() else f'[columns."{column}"]'
    raw = check.table(raw, key, _COLUMN_KEYS)
    spec = check.feature(schema, raw.get("feature", column), f"{key} feature")
    missing = Codes({c: None for c in (*fmt.missing, *check.strings(raw.get("missing", []), f"{key} missing"))},
                    decimal=fmt.decimal)  # fmt: skip

    def only(keys: tuple[str, ...], types: tuple[str, ...]) -> None:
        for k in keys:
            if k in raw and spec.type not in types:
                check.fail(f"{key} {k}", f"does not apply to {spec.type} feature '{spec.name}'",
                           f"'{k}' only for {' or '.join(types)} features")  # fmt: skip

    only(("unit", "round"), ("numeric",))
    only(("codes",), _CODED_TYPES)
    only(("out_of_range",), ("numeric", "integer"))
    only(("format", "timezone"), ("timestamp",))
    only(("interval",), ("numeric",))
    only(("content",), ("text",))
    if spec.generated is not None:
        check.fail(f"{key} feature", f"feature '{spec.name}' is generated by the schema's generator "
                   f"'{spec.generated}'", "no column for it: a generated feature is built per record, not read")
    interval, content = raw.get("interval"), raw.get("content", "value")
    if interval not in (None, "midpoint"):
        check.fail(f"{key} interval", f"is {interval!r}", "'midpoint' (a cell 'a-b' reads as (a + b) / 2)")
    if content not in ("value", "file"):
        check.fail(f"{key} content", f"is {content!r}", "'value' (the cell is the text) or 'file' (a path)")
    unit, converter = raw.get("unit", spec.unit), None
    if spec.type == "numeric" and unit is not None:
        if spec.unit is None:
            check.fail(f"{key} unit", f"feature '{spec.name}' has no unit in the schema", "no 'unit' key")
        try:
            converter = conversion(str(unit), spec.unit, molar_mass_of=spec.molar_mass)
        except UnitError as error:
            check.fail(f"{key} unit", str(error))
    rounding = raw.get("round")
    if rounding is not None and not (isinstance(rounding, int) and not isinstance(rounding, bool) and rounding >= 0):
        check.fail(f"{key} round", f"is {rounding!r}", "a whole number of decimals >= 0")
    codes = None
    if "codes" in raw:
        table = raw["codes"]
        if not isinstance(table, Mapping) or not table:
            check.fail(f"{key} codes", f"is {table!r}", "a table of code = value pairs, e.g. { \"1\" = \"male\" }")
        codes = Codes({str(c): check.value(spec, v, f"{key} codes.{c}") for c, v in table.items()},
                      decimal=fmt.decimal)  # fmt: skip
        clash = [c for c in codes.table if missing.lookup(c)[0]]
        if clash:
            check.fail(f"{key} codes", f"code(s) {clash} are also missing-value codes", "each code to mean one thing")
    out_of_range = raw.get("out_of_range", "error")
    if out_of_range not in ("error", "missing"):
        check.fail(f"{key} out_of_range", f"is {out_of_range!r}", "'error' or 'missing'")
    fmt_string, zone = raw.get("format"), raw.get("timezone")
    if spec.type == "timestamp":
        if not (isinstance(fmt_string, str) and "%" in fmt_string):
            check.fail(f"{key} format", f"is {fmt_string!r}", "a strptime format, e.g. '%Y-%m-%d %H:%M'")
        if ("%z" in fmt_string) == (zone is not None):
            check.fail(f"{key} timezone", "given although the format reads an offset (%z)" if zone is not None
                       else "missing", "an IANA zone (e.g. 'Europe/Budapest' or 'UTC') unless the format has %z")
        if zone is not None:
            try:
                ZoneInfo(str(zone))
            except (ZoneInfoNotFoundError, ValueError):
                check.fail(f"{key} timezone", f"unknown time zone {zone!r}", "an IANA zone, e.g. 'Europe/Budapest'")
    return ColumnRule(column=column, feature=spec, missing=missing, unit=unit, conversion=converter, round=rounding,
                      codes=codes, out_of_range=out_of_range, format=fmt_string, timezone=zone, interval=interval,
                      content=content)  # fmt: skip


def mapping_from_dict(
    raw: Mapping[str, Any], *, path: Path | None = None, schema: Schema | None = None, data_file: Path | None = None
) -> SiteMapping:
    """Validate a parsed mapping TOML into a :class:`SiteMapping`.

    Parameters
    ----------
    raw
        The parsed TOML.
    path
        The mapping file (relative paths inside it are relative to its folder; named in error messages).
    schema
        The schema to map onto; default: ``[mapping] schema`` (a path) is read.
    data_file
        Read this file instead of ``[file] path`` (same format).

    Raises
    ------
    DataContractError
        Naming the mapping file and the setting, if anything is unknown, inconsistent or not allowed.
    """
    check = _Checker(path)
    base = path.parent if path is not None else Path.cwd()
    unknown = sorted(set(raw) - _TABLES)
    if unknown:
        check.fail("top level", f"unknown table(s) {unknown}", f"tables from {sorted(_TABLES)}")
    head = check.table(raw.get("mapping", {}), "mapping", {"schema", "description"})
    if schema is None:
        if "schema" not in head:
            check.fail("[mapping] schema", "missing", "the schema file's path, relative to the mapping file")
        schema = load_schema(base / str(head["schema"]))
    fmt = file_format_from_dict(raw.get("file", {}), base=base, check=check, data_file=data_file,
                                formats=FORMAT_KEYS)
    columns_raw = check.table(raw.get("columns", {}), "columns", set(raw.get("columns", {})))
    rules = tuple(_column_rule(str(c), spec, schema, fmt, check) for c, spec in columns_raw.items())
    constants = {}
    for name, value in check.table(raw.get("constants", {}), "constants", set(schema.names)).items():
        constants[name] = check.value(schema.feature(name), value, f"[constants] {name}")
    row_number = None
    if "row_number" in raw:
        numbering = check.table(raw["row_number"], "row_number", {"feature", "offset"})
        spec = check.feature(schema, numbering.get("feature", "id"), "[row_number] feature")
        offset = numbering.get("offset", 0)
        if spec.type != "integer" or not isinstance(offset, int) or isinstance(offset, bool):
            check.fail("[row_number]", f"feature '{spec.name}' ({spec.type}) with offset {offset!r}",
                       "an integer feature and a whole-number offset")  # fmt: skip
        row_number = RowNumber(feature=spec, offset=offset)
    sources = [r.feature.name for r in rules] + list(constants) + ([row_number.feature.name] if row_number else [])
    twice = sorted({n for n in sources if sources.count(n) > 1})
    if twice:
        check.fail("columns", f"feature(s) {twice} are filled more than once",
                   "one column, constant or row number for each feature")
    if fmt.columns is not None:
        for rule in rules:
            if rule.column not in fmt.columns:
                check.fail(f"[columns.{rule.column}]", "is not a column of the file", f"one of {list(fmt.columns)}")
        unmapped = [c for c in fmt.columns if c not in {r.column for r in rules} | set(fmt.ignore)]
        if unmapped:
            check.fail("[file] columns", f"column(s) {unmapped} are neither mapped nor ignored",
                       "a [columns.<name>] table for each, or list them in [file] ignore")  # fmt: skip
    result = SiteMapping(path=path, schema=schema, file=fmt, columns=rules, constants=constants,
                         row_number=row_number, description=str(head.get("description", "")))  # fmt: skip
    lacking = [f.name for f in schema.features if f.required and f.name not in result.provided()]
    if lacking:
        check.fail("columns", f"required feature(s) {lacking} are not mapped",
                   "a column, constant or row number for every required feature")  # fmt: skip
    return result


def load_mapping(path: Path, *, data_file: Path | None = None) -> SiteMapping:
    """Read and validate a mapping TOML file (see :func:`mapping_from_dict`)."""
    path = Path(path)
    return mapping_from_dict(read_toml(path, what="mapping"), path=path, data_file=data_file)

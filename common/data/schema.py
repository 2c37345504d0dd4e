"""The federation's data contract: feature definitions declared in a TOML file (e.g. ``data/schemas/heart.toml``).

A schema lists, in column order, every feature a site's mapped table holds: its role (id, site, label or an input
feature), modality, type, unit, allowed range or vocabulary, and whether it is required. Sites never change the
schema; each site writes a mapping (:mod:`common.data.mapping`) from its own files onto it.

Every problem with a schema, a mapping or a site's file raises :class:`DataContractError`, whose message names the
file, the line and column (or the setting) and what was expected.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from common.data.units import UnitError, molar_mass, parse_unit

__all__ = ["FEATURE_TYPES", "MODALITIES", "ROLES", "DataContractError", "FeatureSpec", "GeneratorSpec", "Schema",
           "display_path", "load_schema", "not_found", "read_toml", "schema_from_dict"]  # fmt: skip

FEATURE_TYPES = ("numeric", "integer", "categorical", "boolean", "text", "timestamp", "image")
ROLES = ("id", "site", "label", "feature")  # id: one per schema, unique; site: which site a row is from
MODALITIES = ("tabular", "text", "image")
_FEATURE_KEYS = {"role", "modality", "type", "unit", "quantity", "molar_mass", "range", "vocabulary", "required",
                 "unique", "integer_valued", "description", "center", "scale", "size", "channels", "window",
                 "generated"}  # fmt: skip


def display_path(path: Path | str) -> str:
    """``path`` relative to the working directory when it lies below it (as people type it), else absolute."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def not_found(path: Path | str) -> str:
    """``"file not found"``, with the absolute path looked for when the message would show a relative one."""
    absolute = str(Path(path).resolve())
    return "file not found" + (f" (looked for {absolute})" if display_path(path) != absolute else "")


class DataContractError(ValueError):
    """A schema, a site mapping or a site's data file breaks the data contract.

    The message reads ``<file> line <n>, column '<c>': <problem>; expected <what> (mapping <mapping file>)``; parts
    that do not apply are left out (``line_word`` is "row" for spreadsheets and Parquet). The parts are kept as
    attributes for programs.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        column: str | None = None,
        key: str | None = None,
        expected: str | None = None,
        mapping: Path | str | None = None,
        line_word: str = "line",
    ) -> None:
        self.problem, self.file, self.line, self.column = problem, file, line, column
        self.key, self.expected, self.mapping, self.line_word = key, expected, mapping, line_word
        where = display_path(file) if file is not None else ""
        if line is not None:
            where += f" {line_word} {line}"
        if column is not None:
            where += f", column '{column}'"
        if key is not None:
            where += f", {key}"
        message = f"{where.lstrip(', ')}: {problem}" if where else problem
        if expected:
            message += f"; expected {expected}"
        if mapping is not None and (file is None or Path(mapping) != Path(file)):
            message += f" (mapping {display_path(mapping)})"
        super().__init__(message)


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """Read a TOML file; a missing or invalid file is a :class:`DataContractError` naming it."""
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DataContractError(f"{what} {not_found(path)}", file=path) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DataContractError(f"not valid TOML ({error})", file=path) from None
    except OSError as error:
        raise DataContractError(f"{what} file cannot be read ({error.strerror})", file=path) from None


@dataclass(frozen=True)
class FeatureSpec:
    """One feature of the contract (one column of a mapped table)."""

    name: str
    type: str  # one of FEATURE_TYPES
    role: str = "feature"  # one of ROLES
    modality: str | None = None  # one of MODALITIES for role "feature"; None for id / site / label
    unit: str | None = None  # numeric only: the federation's unit (any unit pint reads, common.data.units)
    quantity: str | None = None  # numeric only: what is measured (a label, e.g. "cholesterol")
    molar_mass: str | None = None  # numeric only: molar mass of what is measured ("386.65 g/mol"): mmol/L <-> mg/dL
    range: tuple[float, float] | None = None  # numeric / integer: allowed closed interval
    vocabulary: tuple[str, ...] | None = None  # categorical: the allowed canonical words
    required: bool = False  # a row may not lack it
    unique: bool = False  # no two rows share a value
    integer_valued: bool = False  # numeric: values must be whole numbers (stored as float64, NaN = missing)
    description: str = ""
    # public normalisation of a tabular numeric/integer feature: the model reads (x - center) / scale
    # (default: the midpoint and half-width of ``range``); never fitted on a site's rows
    center: float | None = None
    scale: float | None = None
    size: tuple[int, int] | None = None  # image: (height, width) the model reads
    channels: int | None = None  # image: 1 (grey) or 3 (RGB)
    window: tuple[float, float] | None = None  # image: public intensity window (DICOM); None = per-image min..max
    generated: str | None = None  # text / image: built per record by [generators.<name>], not read from a file

    def expected(self) -> str:
        """Words for what a value of this feature must be (used in error messages)."""
        if self.type == "categorical":
            return "one of " + ", ".join(repr(v) for v in self.vocabulary or ())
        if self.type == "boolean":
            return "true or false"
        if self.range is not None:
            unit = f" {self.unit}" if self.unit and self.unit != "1" else ""
            low, high = (_show(v) for v in self.range)
            kind = "an integer" if self.type == "integer" or self.integer_valued else "a number"
            return f"{kind} from {low} to {high}{unit}"
        return {"numeric": "a number", "integer": "an integer", "text": "text", "timestamp": "a timestamp",
                "image": "the path of an image file (PNG, JPEG or DICOM), relative to the site's data folder"}[self.type]

    def normalisation(self) -> tuple[float, float]:
        """``(center, scale)`` of this numeric/integer feature: the declared ones, else from ``range``."""
        if self.center is not None and self.scale is not None:
            return self.center, self.scale
        if self.range is None:
            raise ValueError(f"feature '{self.name}' declares neither center/scale nor a range")
        low, high = self.range
        return (low + high) / 2.0, (high - low) / 2.0 if high > low else 1.0


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class GeneratorSpec:
    """A ``[generators.<name>]`` table: how a ``generated`` text or image feature is built per record.

    ``params`` are the table's other keys, validated by the generator of ``kind`` (:mod:`common.data.generators`).
    """

    name: str
    kind: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class Schema:
    """A federation schema: its features in column order, and the generators of its constructed features."""

    name: str
    description: str
    features: tuple[FeatureSpec, ...]
    path: Path | None = None  # the TOML file it was read from
    generators: Mapping[str, GeneratorSpec] = field(default_factory=dict)
    note: str = ""  # provenance shown in run reports (what is real, what is constructed)

    @property
    def names(self) -> tuple[str, ...]:
        """Feature names in column order."""
        return tuple(f.name for f in self.features)

    def same_contract(self, other: Schema) -> bool:
        """Whether ``other`` declares the same features and generators (wherever its file lies)."""
        return (self.name, self.features, dict(self.generators)) == (other.name, other.features, dict(other.generators))

    def feature(self, name: str) -> FeatureSpec:
        """The feature called ``name`` (KeyError if there is none)."""
        for spec in self.features:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def role(self, role: str) -> FeatureSpec | None:
        """The feature with ``role`` ("id", "site" or "label"), or None."""
        return next((f for f in self.features if f.role == role), None)

    def modality(self, modality: str) -> tuple[str, ...]:
        """Names of the input features of one modality, in column order."""
        return tuple(f.name for f in self.features if f.role == "feature" and f.modality == modality)


def _feature(name: str, raw: Mapping[str, Any], fail: Callable[[str, str], NoReturn]) -> FeatureSpec:
    unknown = sorted(set(raw) - _FEATURE_KEYS)
    if unknown:
        fail(f"unknown key(s) {unknown}", f"keys from {sorted(_FEATURE_KEYS)}")
    kind, role = raw.get("type"), raw.get("role", "feature")
    if kind not in FEATURE_TYPES:
        fail(f"type {kind!r} is not a feature type", "one of " + ", ".join(FEATURE_TYPES))
    if role not in ROLES:
        fail(f"role {role!r} is not a role", "one of " + ", ".join(ROLES))
    modality = raw.get("modality")
    if role == "feature" and modality not in MODALITIES:
        fail(f"modality {modality!r} is not a modality", "one of " + ", ".join(MODALITIES))
    if role != "feature" and modality is not None:
        fail(f"a {role} feature has no modality", "no 'modality' key")
    unit, quantity, mass = raw.get("unit"), raw.get("quantity"), raw.get("molar_mass")
    if (unit is not None or quantity is not None or mass is not None) and kind != "numeric":
        fail(f"'unit', 'quantity' and 'molar_mass' apply to numeric features, not {kind}",
             "no 'unit', 'quantity' or 'molar_mass' key")  # fmt: skip
    try:
        if unit is not None:
            parse_unit(unit)
        if mass is not None:
            molar_mass(mass)
    except UnitError as error:
        problem, _, expected = str(error).partition("; expected ")
        fail(problem, expected)
    bounds = raw.get("range")
    if bounds is not None:
        if kind not in ("numeric", "integer"):
            fail(f"'range' applies to numeric and integer features, not {kind}", "no 'range' key")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(_is_number(b) for b in bounds)
                and bounds[0] <= bounds[1]):  # fmt: skip
            fail(f"range {bounds!r} is not [low, high]", "two numbers, low <= high")
        bounds = (float(bounds[0]), float(bounds[1]))
    vocabulary = raw.get("vocabulary")
    if kind == "categorical":
        if not (isinstance(vocabulary, list) and vocabulary and all(isinstance(v, str) and v for v in vocabulary)
                and len(set(vocabulary)) == len(vocabulary)):  # fmt: skip
            fail(f"vocabulary {vocabulary!r} is not a list of distinct words", "a non-empty list of distinct strings")
        vocabulary = tuple(vocabulary)
    elif vocabulary is not None:
        fail(f"'vocabulary' applies to categorical features, not {kind}", "no 'vocabulary' key")
    flags = {k: raw.get(k, False) for k in ("required", "unique", "integer_valued")}
    for key, value in flags.items():
        if not isinstance(value, bool):
            fail(f"'{key}' is {value!r}", "true or false")
    if role in ("id", "site", "label") and not flags["required"]:
        fail(f"the {role} feature must be required", "required = true")
    if role == "label" and kind not in ("integer", "categorical", "boolean"):
        fail(f"a label of type {kind} cannot name classes", "type 'integer' with a range, 'categorical' or 'boolean'")
    if role == "label" and kind == "integer" and (bounds is None or not 2 <= bounds[1] - bounds[0] + 1 <= 1000):
        fail(f"integer label with range {bounds!r}", "range = [low, high] covering 2 to 1000 classes")
    return FeatureSpec(name=name, type=kind, role=role, modality=modality, unit=unit, quantity=quantity,
                       molar_mass=mass, range=bounds, vocabulary=vocabulary, required=flags["required"], unique=flags["unique"],
                       integer_valued=flags["integer_valued"], description=str(raw.get("description", "")),
                       **_model_keys(kind, modality, raw, bounds, fail))  # fmt: skip


def _model_keys(kind: str, modality: str | None, raw: Mapping[str, Any], bounds: tuple[float, float] | None,
                fail: Callable[[str, str], NoReturn]) -> dict[str, Any]:
    """The keys that say how the model reads a feature: public normalisation, image shape, generator."""

    def only(keys: tuple[str, ...], applies: bool, what: str) -> None:
        for key in keys:
            if key in raw and not applies:
                fail(f"'{key}' applies to {what}, not to this {kind} feature", f"no '{key}' key")

    tabular_number = modality == "tabular" and kind in ("numeric", "integer")
    only(("center", "scale"), tabular_number, "numeric and integer features of the tabular modality")
    only(("size", "channels", "window"), kind == "image", "image features")
    only(("generated",), kind in ("text", "image"), "text and image features")
    out: dict[str, Any] = {}
    if tabular_number:
        center, scale = raw.get("center"), raw.get("scale")
        if (center is None) != (scale is None):
            fail("'center' and 'scale' come together", "both keys, or neither (then the range gives them)")
        if center is not None:
            if not (_is_number(center) and _is_number(scale) and scale > 0):  # type: ignore[operator]
                fail(f"center {center!r} / scale {scale!r}", "a number and a number > 0")
            out.update(center=float(center), scale=float(scale))
        elif bounds is None:
            fail("a tabular number needs public normalisation values",
                 "a public 'range' = [low, high], or 'center' and 'scale' (never fitted on a site's rows)")
    if kind == "image":
        size, channels, window = raw.get("size"), raw.get("channels", 1), raw.get("window")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   and 8 <= v <= 4096 for v in size)):
            fail(f"size {size!r}", "size = [height, width], whole numbers from 8 to 4096")
        if channels not in (1, 3):
            fail(f"channels {channels!r}", "1 (grey) or 3 (RGB)")
        if window is not None and not (isinstance(window, list) and len(window) == 2
                                       and all(_is_number(v) for v in window) and window[0] < window[1]):
            fail(f"window {window!r}", "window = [low, high], two numbers, low < high")
        out.update(size=(int(size[0]), int(size[1])), channels=int(channels),
                   window=(float(window[0]), float(window[1])) if window is not None else None)
    generated = raw.get("generated")
    if generated is not None:
        if not (isinstance(generated, str) and generated):
            fail(f"generated {generated!r}", "the name of a [generators.<name>] table")
        out["generated"] = generated
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def schema_from_dict(raw: Mapping[str, Any], *, path: Path | None = None) -> Schema:
    """Validate a parsed schema TOML (``[schema]`` + ``[features.<name>]`` tables) into a :class:`Schema`.

    Raises
    ------
    DataContractError
        Naming the file and the feature, if any key is unknown or any value is not allowed.
    """
    unknown = sorted(set(raw) - {"schema", "features", "generators"})
    if unknown:
        raise DataContractError(f"unknown table(s) {unknown}", file=path,
                                expected="[schema], [features.<name>] and [generators.<name>]")
    features_raw = raw.get("features")
    if not isinstance(features_raw, Mapping) or not features_raw:
        raise DataContractError("no features", file=path, expected="at least one [features.<name>] table")
    features = []
    for name, spec in features_raw.items():

        def fail(problem: str, expected: str, name: str = name) -> NoReturn:
            raise DataContractError(problem, file=path, key=f"feature '{name}'", expected=expected)

        if not isinstance(spec, Mapping):
            fail("is not a table", "[features.<name>] with type = ...")
        features.append(_feature(name, spec, fail))
    for role in ("id", "site", "label"):
        holders = [f.name for f in features if f.role == role]
        if len(holders) > 1 or (role == "id" and not holders):
            raise DataContractError(f"{len(holders)} features have role '{role}' ({holders})", file=path,
                                    expected="exactly one id feature, at most one site and one label feature")
    head = raw.get("schema", {})
    generators = _generators(raw.get("generators", {}), path)
    schema = Schema(name=str(head.get("name", path.stem if path else "schema")),
                    description=str(head.get("description", "")), features=tuple(features), path=path,
                    generators=generators, note=str(head.get("note", "")))  # fmt: skip
    from common.data.generators import check_schema_generators  # here: generators.py imports this module

    check_schema_generators(schema)
    return schema


def _generators(raw: Any, path: Path | None) -> dict[str, GeneratorSpec]:
    if not isinstance(raw, Mapping):
        raise DataContractError("[generators] is not a table", file=path, expected="[generators.<name>] tables")
    out = {}
    for name, table in raw.items():
        if not isinstance(table, Mapping) or not isinstance(table.get("kind"), str):
            raise DataContractError("is not a table with a 'kind'", file=path, key=f"generator '{name}'",
                                    expected="[generators.<name>] with kind = ... (see docs/schema-format.md)")
        out[str(name)] = GeneratorSpec(name=str(name), kind=table["kind"],
                                       params={k: v for k, v in table.items() if k != "kind"})
    return out


def load_schema(path: Path) -> Schema:
    """Read and validate a schema TOML file (see :func:`schema_from_dict`)."""
    return schema_from_dict(read_toml(path, what="schema"), path=Path(path))

"""The data source of a site: its own file, mapped onto the federation's schema (``source = "mapped"``).

A site's entry (scenario ``[[sites]]`` or ``site.toml`` ``[site]``) names its mapping and, optionally, which rows it
keeps: ``select`` (rows whose feature equals a value, e.g. ``{ hospital = "cleveland" }``) and ``partition`` (one
part of a partitioner, for VIRTUAL sites cut from one pooled file; :mod:`common.data.partition`). Its records are
split by a keyed hash of their ids (``split-key``, default the schema's name: public; ``test-fraction``, default
0.3). Everything the model reads is built from the schema (:mod:`common.data.site_split`); no domain has code here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config.sites import SOURCE_ARG_KEYS
from common.data.cleaning import MappedTable, apply_mapping
from common.data.features import encode_labels
from common.data.mapping import SiteMapping, load_mapping
from common.data.partition import PartitionError, partition_from_spec
from common.data.schema import DataContractError, Schema
from common.data.site_split import SiteSplit, build_split
from common.data.split import DEFAULT_TEST_FRACTION
from common.file_memo import FileMemo, file_identity

__all__ = ["SOURCE_KEYS", "SOURCES", "DataSource", "SourceArgs", "get_source", "load_site_data", "mapped_table",
           "site_files", "site_schema", "source_args"]  # fmt: skip

#: keys of a site entry that belong to its data source (one list, kept where site entries are read)
SOURCE_KEYS = SOURCE_ARG_KEYS
PART_KEY = "part"  # the partition table's key naming which part (0-based) a virtual site holds
_REMOVED = ("uci-heart", "mapped-csv", "uci-heart-virtual", "german-credit", "mapped-credit")


@dataclass(frozen=True)
class SourceArgs:
    """A site's source settings, validated."""

    mapping: str  # the site's mapping TOML, relative to its data folder
    select: Mapping[str, Any]  # feature -> value: keep only these rows
    partition: Mapping[str, Any] | None  # a partitioner spec plus "part"
    split_key: str | None  # None = the schema's name (public)
    test_fraction: float


def source_args(args: Mapping[str, Any]) -> SourceArgs:
    """Validate a site's source keys (ValueError naming the key)."""
    if "mapping" not in args or not isinstance(args["mapping"], str):
        raise ValueError("source 'mapped' needs 'mapping': the site's mapping TOML, relative to the data folder "
                         "(e.g. 'mappings/cleveland.toml'; see data/mappings/README.md)")  # fmt: skip
    select = args.get("select", {})
    if not isinstance(select, Mapping):
        raise ValueError(f"'select' must be a table of feature = value, e.g. {{ hospital = \"cleveland\" }}; "
                         f"got {select!r}")  # fmt: skip
    partition = args.get("partition")
    if partition is not None and not isinstance(partition, Mapping):
        raise ValueError(f"'partition' must be a table, e.g. {{ kind = \"quantity\", ..., part = 3 }}; got {partition!r}")
    key, fraction = args.get("split-key"), args.get("test-fraction", DEFAULT_TEST_FRACTION)
    if key is not None and not (isinstance(key, str) and key):
        raise ValueError(f"'split-key' must be a non-empty string; got {key!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction < 1.0:
        raise ValueError(f"'test-fraction' must be a number strictly between 0 and 1; got {fraction!r}")
    return SourceArgs(mapping=args["mapping"], select=dict(select), partition=dict(partition) if partition else None,
                      split_key=key, test_fraction=float(fraction))  # fmt: skip


def _select(table: pd.DataFrame, mapping: SiteMapping, select: Mapping[str, Any]) -> pd.DataFrame:
    schema = mapping.schema
    for name, value in select.items():
        if name not in schema.names:
            raise DataContractError(f"select names {name!r}, not a feature of schema '{schema.name}'",
                                    file=mapping.path, expected="one of " + ", ".join(schema.names))
        table = table[table[name] == value]
    site = schema.role("site")
    if site is not None and not select:
        held = sorted({str(v) for v in table[site.name].dropna()})
        if len(held) > 1:
            raise DataContractError(f"the mapped file holds {site.name}(s) {held}", file=mapping.file.path,
                                    mapping=mapping.path, expected=f"one {site.name}, or name it with "
                                    f"select = {{ {site.name} = \"...\" }}")  # fmt: skip
    if table.empty:
        raise DataContractError(f"no row of the mapped file matches select = {dict(select)}", file=mapping.file.path,
                                mapping=mapping.path, expected="a value that occurs in the file")
    return table


def _part(table: pd.DataFrame, schema: Schema, spec: Mapping[str, Any], files: tuple[Path, ...]) -> pd.DataFrame:
    """The rows of ``table`` (the whole mapped file, read from ``files``) that part ``spec["part"]`` holds."""
    spec = dict(spec)
    if PART_KEY not in spec:
        raise PartitionError(f"a virtual site needs '{PART_KEY}' in its partition table (which part it holds, "
                             f"0-based); got {sorted(spec)}")  # fmt: skip
    part = spec.pop(PART_KEY)
    if isinstance(part, bool) or not isinstance(part, int):
        raise PartitionError(f"partition '{PART_KEY}' must be an integer, got {part!r}")
    site = schema.role("site")

    def cut() -> list[np.ndarray]:
        return partition_from_spec(spec, labels=encode_labels(table, schema),
                                   sites=table[site.name].to_numpy() if site is not None else None)

    # the same files give the same table (mapped_table), hence the same labels and the same cut
    parts = _PARTS.get(files, repr(sorted(spec.items())), cut)
    if not 0 <= part < len(parts):
        raise PartitionError(f"partition '{PART_KEY}' = {part} is out of range: the partition has {len(parts)} parts")
    rows = parts[part]
    return table.iloc[rows].set_axis(pd.Index(rows), axis=0)  # labelled by position, as after reset_index


#: the mapped tables read in this process, while mapping, schema and data file are unchanged: the virtual sites of
#: one partition all read the same pooled file, and one simulation actor serves many of them
_TABLES: FileMemo[MappedTable] = FileMemo(size=4)
#: the partitions computed in this process (every virtual site of one partition computes the same cut)
_PARTS: FileMemo[list] = FileMemo(size=4)
#: the last sites' rows (a site's partition part and selection; frames that callers copy before changing)
_SITE_TABLES: FileMemo[pd.DataFrame] = FileMemo(size=8)
#: the mappings read in this process (a site's data, schema and check each read its mapping)
_MAPPINGS: FileMemo[tuple] = FileMemo(size=16)


def _mapping(path: Path) -> SiteMapping:
    """:func:`load_mapping` of ``path``, memoised while the mapping file and its schema file are unchanged."""
    mapping, schema_id = _MAPPINGS.get((path,), str(path), lambda: _read_mapping(path))
    if mapping.schema.path is not None and file_identity(mapping.schema.path) != schema_id:
        _MAPPINGS.clear()  # the schema was rewritten: read both again
        mapping, _ = _MAPPINGS.get((path,), str(path), lambda: _read_mapping(path))
    return mapping


def _read_mapping(path: Path) -> tuple[SiteMapping, tuple | None]:
    mapping = load_mapping(path)
    return mapping, None if mapping.schema.path is None else file_identity(mapping.schema.path)


def _files(path: Path, mapping: SiteMapping) -> tuple[Path, ...]:
    return tuple(p for p in (path, mapping.file.path, mapping.schema.path) if p is not None)


def mapped_table(path: Path) -> MappedTable:
    """:func:`common.data.cleaning.load_mapped` of ``path``, memoised in this process while the mapping, its schema
    and its data file are unchanged (a file rewritten in any way is read and validated again)."""
    mapping = _mapping(path)
    return _TABLES.get(_files(path, mapping), str(path), lambda: apply_mapping(mapping))


def _site_table(a: SourceArgs, data_dir: Path) -> tuple[pd.DataFrame, MappedTable]:
    """The site's rows of its mapped file (its partition part and selection), and the whole mapped file.

    Memoised in this process while the files are unchanged: a site's first message reads its rows twice (the list of
    its image files that keys its data's memo, then its records), and cutting them from the pooled file is not free."""
    path = data_dir / a.mapping
    mapped = mapped_table(path)
    files = _files(path, mapped.mapping)
    key = (str(path), repr(a.partition), repr(a.select))
    return _SITE_TABLES.get(files, key, lambda: _rows(a, mapped, files)), mapped


def _rows(a: SourceArgs, mapped: MappedTable, files: tuple[Path, ...]) -> pd.DataFrame:
    if a.partition is not None:
        table = _part(mapped.table, mapped.mapping.schema, a.partition, files)
    else:
        table = mapped.table.reset_index(drop=True)
    return _select(table, mapped.mapping, a.select) if a.select or a.partition is None else table


def _mapped(args: Mapping[str, Any], data_dir: Path, modalities: Iterable[str],
            image_cache: Path | None) -> tuple[SiteSplit, SiteSplit]:
    a = source_args(args)
    table, mapped = _site_table(a, data_dir)
    return build_split(table, mapped.mapping, modalities=modalities, data_dir=data_dir, image_cache=image_cache,
                       split_key=a.split_key or mapped.mapping.schema.name, test_fraction=a.test_fraction)


def site_files(source: str, args: Mapping[str, Any], *, data_dir: Path,
               modalities: Iterable[str] = ("tabular",)) -> tuple[Path, ...]:
    """Every file a site's records are read from: its mapping, the mapping's schema and data file, and the site's
    own per-record image and text files (those of its rows, for the ``modalities`` it holds; generated ones have
    none). A memo of the site's data is valid while all of these are unchanged (``common.file_memo``)."""
    get_source(source)
    a = source_args(args)
    table, mapped = _site_table(a, data_dir)
    mapping, modalities = mapped.mapping, set(modalities)
    out = list(_files(data_dir / a.mapping, mapping))
    for kind in ("image", "text"):
        feature = next((f for f in mapping.schema.features if f.role == "feature" and f.type == kind), None)
        if kind not in modalities or feature is None or feature.generated is not None:
            continue
        rule = next((r for r in mapping.columns if r.feature.name == feature.name), None)
        if kind == "text" and (rule is None or rule.content != "file"):
            continue  # the text is a cell of the data file
        out += [data_dir / str(v) for v in table[feature.name] if not pd.isna(v)]
    return tuple(out)


@dataclass(frozen=True)
class DataSource:
    name: str  # registry key used in scenario / site files ("source = ...")
    # (args, data_dir, modalities, the site's cache folder for decoded images or None)
    load: Callable[[Mapping[str, Any], Path, Iterable[str], Path | None], tuple[SiteSplit, SiteSplit]]


SOURCES: dict[str, DataSource] = {"mapped": DataSource(name="mapped", load=_mapped)}


def get_source(name: str) -> DataSource:
    """The registered source ``name`` (ValueError naming the known ones, and what replaced a removed one)."""
    if name in _REMOVED:
        raise ValueError(f"data source {name!r} was removed: every site now reads its own file through a mapping "
                         "onto the federation's schema: source = \"mapped\", mapping = \"mappings/<site>.toml\" "
                         "(docs/schema-format.md)")  # fmt: skip
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}") from None


def load_site_data(source: str, args: Mapping[str, Any], *, data_dir: Path, modalities: Iterable[str] = ("tabular",),
                   image_cache: Path | None = None) -> tuple[SiteSplit, SiteSplit]:
    """Load one site's (train, test) records from its own files, building the ``modalities`` it holds.

    ``image_cache``: the site's cache folder for its decoded image files (:mod:`common.data.image_cache`)."""
    return get_source(source).load(args, data_dir, tuple(modalities), image_cache)


def site_schema(source: str, args: Mapping[str, Any], *, data_dir: Path) -> Schema:
    """The schema a site's mapping maps onto (reads the mapping and the schema, not the data)."""
    get_source(source)
    return _mapping(data_dir / source_args(args).mapping).schema

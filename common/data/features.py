"""Model inputs built from the schema alone: the tabular columns, their public normalisation, and the label classes.

Nothing here looks at more than one record at a time, and nothing is fitted on a site's rows: a numeric feature is
scaled by the public ``center`` / ``scale`` its schema declares (or the midpoint and half-width of its public
``range``), a categorical one is one-hot over its public vocabulary. So removing or adding one record changes no
other record's inputs (issue 10, finding 3). Every tabular column has a missing indicator (``tabular_mask``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.data.schema import FeatureSpec, Schema

__all__ = ["TabularColumn", "encode_labels", "encode_tabular", "label_classes", "tabular_columns", "tabular_width"]


@dataclass(frozen=True)
class TabularColumn:
    """One input column of the tabular encoder."""

    name: str  # "age", or "cp=asymptomatic" for a one-hot column
    feature: str  # the schema feature it comes from
    kind: str  # "number" | "boolean" | "one-hot"
    center: float = 0.0  # number: public center
    scale: float = 1.0  # number: public scale
    word: str | None = None  # one-hot: the vocabulary word this column is 1 for


def _columns(spec: FeatureSpec) -> list[TabularColumn]:
    if spec.type in ("numeric", "integer"):
        center, scale = spec.normalisation()
        return [TabularColumn(spec.name, spec.name, "number", center=center, scale=scale)]
    if spec.type == "boolean":
        return [TabularColumn(spec.name, spec.name, "boolean")]
    if spec.type == "categorical":
        return [TabularColumn(f"{spec.name}={w}", spec.name, "one-hot", word=w) for w in spec.vocabulary or ()]
    raise ValueError(f"feature '{spec.name}' of type {spec.type} cannot feed the tabular modality "
                     "(numeric, integer, boolean and categorical can)")


def tabular_columns(schema: Schema) -> tuple[TabularColumn, ...]:
    """The tabular encoder's input columns, in schema order (one-hot columns in vocabulary order)."""
    return tuple(c for f in schema.features if f.role == "feature" and f.modality == "tabular" for c in _columns(f))


def tabular_width(schema: Schema) -> int:
    """F: the number of tabular input columns (the encoder reads 2F: values and missing indicators)."""
    return len(tabular_columns(schema))


def encode_tabular(table: pd.DataFrame, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """The tabular inputs of ``table``'s rows (the schema's canonical table, e.g. ``MappedTable.table``).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(x, mask)``, float32 ``(n, F)``. ``x`` is ``(value - center) / scale`` for numbers, 0/1 for booleans and
        one-hot columns, and 0 where missing; ``mask`` is 1 where the feature was recorded, 0 where not (all one-hot
        columns of a missing categorical are masked). Row i depends on row i alone.
    """
    columns = tabular_columns(schema)
    n = len(table)
    x = np.zeros((n, len(columns)), dtype=np.float64)
    mask = np.zeros((n, len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        series = table[column.feature]
        observed = series.notna().to_numpy(dtype=bool)
        if column.kind == "one-hot":
            values = (series == column.word).fillna(False).to_numpy(dtype=np.float64)
        else:
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            if column.kind == "number":
                values = (values - column.center) / column.scale
        x[:, j] = np.where(observed, values, 0.0)
        mask[:, j] = observed
    return x.astype(np.float32), mask.astype(np.float32)


def label_classes(schema: Schema) -> tuple[str, ...]:
    """Names of the label's classes, in class-index order (integer: low..high; categorical: the vocabulary)."""
    label = schema.role("label")
    if label is None:
        raise ValueError(f"schema '{schema.name}' has no feature with role = 'label'; the model needs one")
    if label.type == "categorical":
        return tuple(label.vocabulary or ())
    if label.type == "boolean":
        return ("false", "true")
    assert label.range is not None  # the schema checks an integer label's range
    low, high = (int(v) for v in label.range)
    return tuple(str(v) for v in range(low, high + 1))


def encode_labels(table: pd.DataFrame, schema: Schema) -> np.ndarray:
    """int64 class index of every row's label (see :func:`label_classes`); the label is never missing."""
    label = schema.role("label")
    classes = label_classes(schema)
    assert label is not None
    series = table[label.name]
    if label.type == "categorical":
        index = {word: i for i, word in enumerate(classes)}
        return np.asarray([index[v] for v in series], dtype=np.int64)
    if label.type == "boolean":
        return series.astype(bool).to_numpy(dtype=np.int64)
    return series.to_numpy(dtype=np.int64) - int(label.range[0])  # type: ignore[index]

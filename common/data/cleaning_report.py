"""The per-site cleaning report: what mapping a site's file changed, counted per column and per rule.

The report stays at the site (it names the site's own file); it holds counts only, never a patient's value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CleaningReport", "ColumnReport"]


@dataclass
class ColumnReport:
    """What cleaning did to one column of the site's file (counts of cells)."""

    column: str  # name in the file
    feature: str  # schema feature it fills
    observed: int = 0  # cells that hold a value after cleaning
    blank: int = 0  # empty cells (missing)
    missing_codes: dict[str, int] = field(default_factory=dict)  # missing-value code -> cells (missing)
    recoded: int = 0  # cells translated through the mapping's codes
    converted: int = 0  # values converted to the schema's unit
    conversion: str | None = None  # e.g. "mmol/L -> mg/dL: x38.67"
    rounded: int = 0  # values changed by the rule's rounding
    out_of_range_to_missing: int = 0  # values outside the schema's range, set to missing by the outlier rule
    to_utc: int = 0  # timestamps moved from the site's zone onto UTC
    missing: int = 0  # cells missing after cleaning (blank + missing codes + out of range)


@dataclass
class CleaningReport:
    """Per-site report of a mapped file: where it came from and what cleaning changed, column by column."""

    site_file: str
    mapping: str | None
    schema: str
    rows: int  # data records read (= rows of the table)
    blank_lines: int  # empty lines skipped
    columns: list[ColumnReport]
    constants: dict[str, object]  # feature -> value given to every row
    row_number: str | None  # how ids were numbered, if the file has none
    not_provided: list[str]  # schema features this site does not hold (missing in every row)
    missing: dict[str, int]  # schema feature -> rows missing it after cleaning
    skipped_lines: int = 0  # comment lines and leading lines skipped ([file] comment, skip_lines; ARFF % comments)

    def changes(self) -> dict[str, dict[str, int]]:
        """Column -> rule -> cells changed, leaving out rules that changed nothing."""
        result = {}
        for col in self.columns:
            counts = {"blank": col.blank, **{f"missing code {c!r}": n for c, n in col.missing_codes.items()},
                      "recoded": col.recoded, "converted": col.converted, "rounded": col.rounded,
                      "out of range -> missing": col.out_of_range_to_missing, "to UTC": col.to_utc}  # fmt: skip
            kept = {rule: n for rule, n in counts.items() if n}
            if kept:
                result[col.column] = kept
        return result

    def to_dict(self) -> dict[str, object]:
        """Plain data (for JSON)."""
        return asdict(self)

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, default=str)

    def write_json(self, path: Path) -> Path:
        """Write :meth:`to_json` to ``path`` (folders created) and return the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

"""``fedfusion schema infer FILE``: a draft schema (and mapping) from a data file, and what to confirm.

Argument parsing and file writing only; the profiling is :mod:`common.data.infer`, the drafts
:mod:`common.data.infer_draft`. Imports are lazy so ``fedfusion --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_schema_commands"]


def _infer(a: argparse.Namespace) -> int:
    from common.data.infer import sniff_path
    from common.data.infer_draft import draft_from_file, sniff_text
    from common.data.readers import DEFAULT_MAX_BYTES, FileFormat
    from common.data.schema import DataContractError

    path = Path(a.file).expanduser().resolve()
    fmt_name = a.format or sniff_path(path)
    comment = tuple(a.comment or ())
    delimiter, decimal = a.delimiter, a.decimal
    try:
        if fmt_name in ("csv", "tsv") and (delimiter is None or decimal is None) and path.is_file():
            found = sniff_text(path, encoding=a.encoding, comment=comment, skip_lines=a.skip_lines)
            delimiter = delimiter or ("\t" if fmt_name == "tsv" else found[0])
            decimal = decimal or found[1]
        fmt = FileFormat(path=path, format=fmt_name, delimiter=delimiter or ",", decimal=decimal or ".",
                         encoding=a.encoding, comment=comment, skip_lines=a.skip_lines, sheet=a.sheet,
                         max_bytes=a.max_bytes or DEFAULT_MAX_BYTES)  # fmt: skip
        outputs = [p for p in (a.out, a.mapping_out) if p is not None]
        existing = [str(p) for p in outputs if Path(p).exists()]
        if existing and not a.force:
            raise ValueError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
        name = a.name or path.stem.replace("-", "_").replace(" ", "_").lower()
        draft = draft_from_file(fmt, label=a.label, name=name, schema_out=a.out, mapping_out=a.mapping_out)
    except (DataContractError, ValueError, OSError) as err:
        print(f"fedfusion schema infer: {err}", file=sys.stderr)
        return 1
    if a.out is None:
        print(draft.schema_toml)
    else:
        Path(a.out).write_text(draft.schema_toml, encoding="utf-8")
        print(f"draft schema:  {a.out}")
    if a.mapping_out is not None:
        Path(a.mapping_out).write_text(draft.mapping_toml, encoding="utf-8")
        print(f"draft mapping: {a.mapping_out}")
    print(f"{draft.records} records, {len(draft.guesses)} columns of {path}. Confirm before use "
          f"(the draft schema is refused until every tabular number has a public range):", file=sys.stderr)
    for line in draft.confirm:
        print(f"  {line}", file=sys.stderr)
    return 0


def add_schema_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``schema infer`` to the ``fedfusion`` parser."""
    schema = sub.add_parser("schema", help="a federation schema: draft one from a data file")
    ssub = schema.add_subparsers(dest="schema_command", required=True)
    p = ssub.add_parser("infer", help="write a DRAFT schema (and mapping) from a data file; lists what to confirm")
    p.add_argument("file", type=Path, help="a site's data file: .csv, .tsv, .xlsx, .parquet or .arff")
    p.add_argument("--label", default=None, help="the column the model predicts")
    p.add_argument("--out", type=Path, default=None, help="write the draft schema here (default: print it)")
    p.add_argument("--mapping-out", type=Path, default=None, help="also write a draft mapping of FILE onto it")
    p.add_argument("--name", default=None, help="the schema's name (default: the file's name)")
    p.add_argument("--format", default=None, choices=("csv", "tsv", "excel", "parquet", "arff"),
                   help="the file's format (default: from its extension)")
    p.add_argument("--delimiter", default=None, help="csv: the delimiter (default: sniffed)")
    p.add_argument("--decimal", default=None, choices=(".", ","), help="csv/tsv: decimal mark (default: sniffed)")
    p.add_argument("--encoding", default="utf-8", help="text formats: the encoding (default utf-8)")
    p.add_argument("--comment", action="append", default=None, metavar="PREFIX",
                   help="csv/tsv: skip lines starting with PREFIX (repeatable), e.g. --comment '#'")
    p.add_argument("--skip-lines", type=int, default=0, help="csv/tsv: leading lines to skip")
    p.add_argument("--sheet", default=None, help="excel: the worksheet (default: the first)")
    p.add_argument("--max-bytes", type=int, default=None, help="refuse a larger file (default 256 MiB)")
    p.add_argument("--force", action="store_true", help="overwrite --out / --mapping-out")
    p.set_defaults(func=_infer)

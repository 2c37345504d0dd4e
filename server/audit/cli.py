"""The ``fedfusion audit`` subcommand: arguments, output, exit code.

Exit status: 0 the audit passed (warnings allowed), 1 it failed (any FAIL finding), 2 nothing
could be audited (a path that does not exist, wrong arguments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_audit_command", "run_audit"]

_EPILOG = """examples:
  fedfusion audit runs/hospitals-20261128-101500          # a run folder: server + every site ledger
  fedfusion audit runs/x/sites/cleveland/ledger.sqlite    # one site's own ledger
  fedfusion audit runs/x --json > audit.json              # for machines
  fedfusion audit runs/x --html audit.html                # a self-contained report with plots
  fedfusion audit --compare SITE_LEDGER SERVER_LEDGER     # what a site recorded vs what the server says
  fedfusion audit OPERATOR/runs/x --sites COPIES          # deployed: COPIES/<any>/state/ledger.sqlite per site
exit status: 0 passed, 1 failed, 2 nothing to audit"""


def _keys(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        site, sep, key = item.partition("=")
        if not sep or not site or not key:
            raise SystemExit(f"--site-key expects SITE=PUBLIC_KEY_FILE, got {item!r}")
        out[site] = key
    return out


def run_audit(args: argparse.Namespace) -> int:
    """Run the audit the arguments ask for, print it, write the HTML if asked; return the exit status."""
    from server.audit.core import audit_compare, audit_path
    from server.audit.render import print_report, report_json

    if bool(args.path) == bool(args.compare):
        print("fedfusion audit: give either PATH or --compare SITE_LEDGER SERVER_LEDGER", file=sys.stderr)
        return 2
    paths = [args.path] if args.path else list(args.compare)
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        print(f"fedfusion audit: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    common = dict(allow_unsigned=args.allow_unsigned, site_keys=_keys(args.site_key), server_key=args.server_key or "")
    if args.compare:
        report = audit_compare(Path(args.compare[0]), Path(args.compare[1]), **common)
    else:
        report = audit_path(Path(args.path), sites_dir=args.sites, **common)
    if args.json:
        print(report_json(report))
    else:
        print_report(report)
    if args.html:
        from server.audit.html import write_html

        write_html(report, args.html)
        if not args.json:
            print(f"HTML report: {args.html}")
    return 0 if report.passed else 1


def add_audit_command(sub: argparse._SubParsersAction) -> None:
    """Add ``audit`` to the ``fedfusion`` subcommands."""
    a = sub.add_parser("audit", help="verify privacy ledgers, recompute every site's ε, check budgets",
                       description="Verify the privacy ledgers of a run (or one ledger): integrity (hash chains, "
                                   "signed heads), ε recomputed with Google's dp-accounting, budgets.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("path", nargs="?", type=Path, help="run folder, server ledger, or a site's ledger / state folder")
    a.add_argument("--compare", nargs=2, type=Path, metavar=("SITE_LEDGER", "SERVER_LEDGER"),
                   help="compare a site's ledger with a server's ledger")
    a.add_argument("--json", action="store_true", help="print the report as JSON (schema fedfusion-audit/1)")
    a.add_argument("--html", type=Path, metavar="OUT", help="also write a self-contained HTML report to OUT")
    a.add_argument("--sites", type=Path, default=None,
                   help="folder of site ledgers when not <run>/sites: <site>/ledger.sqlite (--site-state runs) or "
                        "deployed sites' SITE/state/ledger.sqlite (any folder names: the rows name the site)")
    a.add_argument("--site-key", action="append", default=[], metavar="SITE=PUB",
                   help="pin a site's public key (OpenSSH .pub, e.g. its SuperNode key); repeatable")
    a.add_argument("--server-key", default=None, metavar="PUB", help="pin the server's public key (server_key.pub)")
    a.add_argument("--allow-unsigned", action="store_true",
                   help="accept ledgers written before signed heads (a WARN instead of a FAIL)")
    a.set_defaults(func=run_audit)

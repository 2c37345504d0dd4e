"""The ``fedfusion`` command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _parse_set(values: list[str]) -> dict[str, object]:
    """``--set key=value`` pairs; values are read as TOML scalars (numbers, true/false, "strings")."""
    import tomllib

    out: dict[str, object] = {}
    for item in values:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # bare word: a string
    return out


def _cmd_simulate(args: argparse.Namespace) -> int:
    from common.config import ConfigError
    from simulations.driver import SimulationError, SimulationRequest, simulate
    from simulations.report import plot_privacy_utility, plot_rounds, print_report

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path("runs") / f"{args.scenario}-{stamp}").resolve()
    try:
        summary = simulate(SimulationRequest(scenario=args.scenario, out=out, rounds=args.rounds,
                                             site_state=args.site_state, overrides=_parse_set(args.set),
                                             site_privacy=_parse_set(args.site_privacy), progress=not args.quiet,
                                             ray_address=args.ray_address, check_sites=not args.no_site_check))
    except (ConfigError, SimulationError) as err:
        print(f"fedfusion simulate: {err}", file=sys.stderr)
        return 1
    budgets = {n: s.get("epsilon_budget") for n, s in summary.get("sites", {}).items()}
    plot_rounds(out / "metrics.csv", out / "rounds.png", budgets=budgets)
    plot_privacy_utility(out / "metrics.csv", out / "privacy-utility.png")
    print_report(summary, out)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from simulations.report import plot_privacy_utility, print_report

    summary = json.loads((Path(args.run) / "summary.json").read_text())
    if (Path(args.run) / "metrics.csv").exists():  # the run's privacy-utility curve, redrawn from its metrics
        plot_privacy_utility(Path(args.run) / "metrics.csv", Path(args.run) / "privacy-utility.png")
    print_report(summary, Path(args.run))
    return 0


# ------------------------------------------------------------- empirical-audit (one-run privacy audit)
def _cmd_empirical_audit(args: argparse.Namespace) -> int:
    """Exit 0: bound <= accounted ε; 1: the bound exceeds it (a leak caught); 2: bad settings."""
    from common.config import ConfigError
    from simulations.empirical_audit import EmpiricalAuditRequest, format_report, run_empirical_audit

    req = EmpiricalAuditRequest(site=args.site, canaries=args.canaries, rounds=args.rounds,
                                target_epsilon=args.target_epsilon, noise_scale=args.noise_scale, seed=args.seed,
                                scenario=args.scenario, state_root=args.state_root, audit_delta=args.audit_delta)
    try:
        report = run_empirical_audit(req)
    except ConfigError as err:
        print(f"fedfusion empirical-audit: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, allow_nan=False) if args.json else format_report(report))
    return 0 if report["verdict"] == "PASS" else 1


def _add_empirical_audit(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("empirical-audit", help="one-run empirical lower bound on a site's ε (Steinke et al. 2023)")
    e.add_argument("--site", default="cleveland", help="site name in the scenario (default: cleveland)")
    e.add_argument("--scenario", default="hospitals", help="packaged scenario name or path of a scenario .toml")
    e.add_argument("--canaries", type=int, default=1000, help="m white-box gradient canaries (default: 1000)")
    e.add_argument("--rounds", type=int, default=None, help="FL rounds trained (default: num-server-rounds)")
    e.add_argument("--target-epsilon", type=float, default=None,
                   help="ε the noise is calibrated for, i.e. the claim (default: the site's target-epsilon)")
    e.add_argument("--noise-scale", type=float, default=1.0,
                   help="σ used = scale × calibrated σ: 1 = as configured; 0.1 or 0 = negative controls")
    e.add_argument("--audit-delta", type=float, default=None, help="δ of the audit (default: min(1e-5, site δ))")
    e.add_argument("--seed", type=int, default=0, help="canary coin flips, sampling and noise")
    e.add_argument("--state-root", type=Path, default=None,
                   help="folder for <site>/cache (text features; no ledger is written): default runs/empirical-audit")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=_cmd_empirical_audit)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedfusion", description="Federated, DP multimodal training (Flower + Opacus)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="run a whole federation on this machine (Flower simulation engine)")
    s.add_argument("--scenario", default="hospitals", help="packaged scenario name or path of a scenario .toml")
    s.add_argument("--rounds", type=int, default=None, help="FL rounds (default: num-server-rounds)")
    s.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<scenario>-<time>)")
    s.add_argument("--site-state", type=Path, default=None,
                   help="existing site-state root holding <site>/ledger.sqlite: budgets keep being spent across runs")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [tool.flwr.app.config] setting, e.g. --set target-epsilon=2.0")
    s.add_argument("--site-privacy", action="append", default=[], metavar="KEY=VALUE",
                   help="change EVERY site's own privacy table for this run (the scenario plays the sites' files; "
                        "a run's --set may only ask for more privacy), e.g. --site-privacy dp=false for a "
                        "non-private baseline (recorded as epsilon = inf); reported loudly")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--no-site-check", action="store_true",
                   help="skip the check of every site's data before any process starts (1000 virtual sites: minutes); "
                        "a site's data is still checked when it is first sampled, and a bad site's reply says so")
    s.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                   help="run the sites on this existing Ray cluster (`ray start --head` printed it); every node must "
                        "see the run folder, code and data at the same paths (README: Ray clusters)")
    s.set_defaults(func=_cmd_simulate)

    r = sub.add_parser("report", help="print the table of a finished run folder")
    r.add_argument("run", type=Path)
    r.set_defaults(func=_cmd_report)
    _add_empirical_audit(sub)  # `empirical-audit`

    from server.audit.cli import add_audit_command  # `audit`: ledgers, recomputed ε, budgets (server/audit*.py)

    add_audit_command(sub)

    from simulations.deploy_cli import add_deploy_commands  # `federation ...` and `site ...` (deployment)

    add_deploy_commands(sub)
    from simulations.schema_cli import add_schema_commands  # `schema infer`: a draft schema from a data file

    add_schema_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

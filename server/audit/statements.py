"""What every audit report states in words: what a site releases, under which relation and mechanism, the
public bounds, δ, secure mode, seeds, how ε was recomputed and what the integrity checks show."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from server.audit.model import AuditReport
from server.audit.recompute import MECHANISMS

__all__ = ["RELEASED", "statements"]

#: what leaves a site, stated in every report (README "What leaves a site")
RELEASED = ("What a site releases: its model update (after DP-SGD in sample mode, which the ε below covers; raw to a "
            "trusted server that adds the noise in central mode; raw where its own file allowed a release without "
            "DP, ε = ∞); evaluation metrics on its TEST rows (accuracy, balanced accuracy, AUC, loss, row and "
            "positive counts), which are NOT privatised; and public facts: its privacy settings, its declared "
            "max-records bound (the sample rate q = 1/ceil(max-records / batch size), the steps, the default δ and "
            "its aggregation weight derive from it, never from the rows it holds), its ledger's ε and signed head, "
            "and an HMAC of its dataset's fingerprint under a key it keeps. No training loss, no row count; a "
            "failed reply carries a code from a closed list, never the error's text. Timing metrics (a side "
            "channel of the row count) only where the site allows them (simulation, or report-timing = true).")


def statements(report: AuditReport) -> list[str]:
    """The report's statements, in the order the terminal and HTML reports print them."""
    try:
        dpa = version("dp-accounting")
    except PackageNotFoundError:
        dpa = "?"
    sites = sorted(report.sites.items())
    modes = sorted({m.strip() for _, a in sites for m in a.mode.split(",") if m.strip()}) or ["sample-level"]
    out = [RELEASED]
    out += [f"Neighbouring relation and mechanism ({m}): {MECHANISMS[m].relation}." if m in MECHANISMS
            else f"Mechanism {m}: unknown to this audit." for m in modes]
    out.append("max-records per site (PUBLIC, declared by the site; q, the steps, the default δ and its aggregation "
               "weight derive from it): " + ("; ".join(f"{n} {a.max_records or 'not recorded'}" for n, a in sites)
                                              or "n/a") + ". The guarantee holds for datasets within that bound.")
    unbounded = [n for n, a in sites if a.released_without_dp]
    if unbounded:
        out.append("Released WITHOUT differential privacy (their own file allowed it; ε = ∞ from then on): "
                   + ", ".join(unbounded) + ".")
    out.append("δ per site (every ε is (ε, δ)-DP at that δ): "
               + ("; ".join(f"{n} δ={', '.join(f'{d:g}' for d in a.deltas) or 'n/a'}" for n, a in sites) or "none"))
    out.append("Opacus secure_mode (cryptographically secure noise RNG): "
               + ("; ".join(f"{n} {a.secure_mode}" for n, a in sites) or "n/a")
               + ". Without it the noise comes from a non-cryptographic PRNG, which the DP guarantee does not cover "
                 "against an adversary who can predict it.")
    out.append("Seeds of DP-SGD's batch sampling and noise: "
               + ("; ".join(f"{n} {a.noise_seed}" for n, a in sites) or "n/a")
               + ". secret = fresh OS entropy each round, never stored or sent; run-seed = derived from the run's "
                 "seed (reproducible simulations; no protection against whoever knows the run config); not "
                 "recorded = no seed source in the run's summary or the site's ledger: a run from before 2026-11-28, "
                 "whose seeds were derived from the run's seed, central-mode rows, whose noise the server adds, or a "
                 "site's ledger audited without its run folder (a deployed site's own ledger counts as secret: its "
                 "config refuses anything else).")
    out.append(f"Reported ε comes from the accountant each row names (a site's: Opacus PRV, RDP beside it; central "
               f"rows: Flower's RdpAccountant). The audit recomputed every "
               f"value with Google's dp-accounting {dpa} (PLD: add/remove, the larger of both directions; and RDP), "
               "which the training never used. Under-reported (FAIL): below dp-accounting's OPTIMISTIC PLD estimate "
               "(a lower bound of the true ε) on the "
               f"{report.thresholds['pld_value_discretization_interval']:g} grid, or, for a value between that "
               f"grid's bounds, on the {report.thresholds.get('fine_pld_value_discretization_interval', 0):g} grid; "
               "between the fine grid's optimistic and pessimistic estimates: WARN (the grid cannot tell); "
               f"conservative: more than {report.thresholds['conservative_rtol']:.0%} above RDP (WARN).")
    out.append("Integrity: ledger rows are hash-chained; each site signs its ledger head (ECDSA P-384) after every "
               "round and the server records it; the server signs its own ledger. A signature shows which key vouched "
               "for a head, not that its holder is honest: compare the key fingerprints with the keys you trust.")
    partial = [n for n, a in sites if not a.history_complete and a.mode != "central"]
    if partial:
        out.append("Recomputed from the server's rows only (the site's own ledger was not at hand; earlier runs are "
                   f"invisible, so ε is a lower bound and only under-reporting is judged): {', '.join(partial)}.")
    return out

"""The run's privacy-utility PNG (simulations/report.py): drawn from metrics.csv, only where ε is finite."""

from __future__ import annotations

from simulations.report import plot_privacy_utility

HEADER = "round,site,status,mode,accuracy,balanced-accuracy,auc,epsilon\n"


def test_a_png_is_drawn_from_rounds_with_accuracy_and_finite_epsilon(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(HEADER + "1,a,trained,sample,0.6,0.55,0.7,1.5\n2,a,trained,sample,0.7,0.65,0.8,2.5\n"
                   "1,b,trained,none,0.6,0.6,0.7,inf\n")
    png = tmp_path / "pu.png"
    assert plot_privacy_utility(csv, png) is True
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_png_when_no_round_has_a_finite_epsilon(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(HEADER + "1,b,trained,none,0.6,0.6,0.7,inf\n1,c,declined,sample,,,,0.0\n")
    png = tmp_path / "pu.png"
    assert plot_privacy_utility(csv, png) is False
    assert not png.exists()

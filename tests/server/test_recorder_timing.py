"""The recorder's split of a round's wall time (server/recorder.py on_timing)."""

from __future__ import annotations

import pytest

from server.recorder import RunRecorder


def test_overhead_is_wall_minus_slowest_compute_split_for_the_site_that_finished_last(tmp_path):
    rec = RunRecorder(out_dir=tmp_path, federation_id="fed", run_id="1", run_info={})
    sites = [{"compute-seconds": 4.0, "setup-seconds": 0.5, "startup-seconds": 6.0},  # finished last: 10.5
             {"compute-seconds": 5.0, "setup-seconds": 1.0, "startup-seconds": 2.0}]  # slowest compute
    rec.on_timing(3, "train", 20.0, sites)
    row = rec.rounds[3]["timing"]["train"]
    assert row == {"wall_s": 20.0, "slowest_site_compute_s": 5.0, "overhead_s": 15.0, "last_site_setup_s": 0.5,
                   "last_site_startup_s": 6.0, "handoff_s": 9.5}


def test_simulation_replies_have_no_startup_and_no_replies_have_no_split(tmp_path):
    rec = RunRecorder(out_dir=tmp_path, federation_id="fed", run_id="1", run_info={})
    rec.on_timing(1, "evaluate", 3.0, [{"compute-seconds": 1.25, "setup-seconds": 0.25}])
    assert rec.rounds[1]["timing"]["evaluate"] == pytest.approx(
        {"wall_s": 3.0, "slowest_site_compute_s": 1.25, "overhead_s": 1.75, "last_site_setup_s": 0.25,
         "handoff_s": 1.5})
    rec.on_timing(2, "train", 2.0, [])
    assert rec.rounds[2]["timing"]["train"] == {"wall_s": 2.0, "slowest_site_compute_s": 0.0, "overhead_s": 2.0}


def test_the_report_gives_the_median_training_round_and_its_split():
    from simulations.report import time_line

    def row(wall, comp, start, setup):
        return {"timing": {"train": {"wall_s": wall, "slowest_site_compute_s": comp, "overhead_s": wall - comp,
                                     "last_site_setup_s": setup, "last_site_startup_s": start,
                                     "handoff_s": wall - comp - start - setup}}}

    summary = {"rounds": {"0": {}, "1": row(30.0, 5.0, 9.0, 7.0), "2": row(14.0, 3.0, 7.0, 0.0),
                          "3": row(16.0, 4.0, 8.0, 1.0) | {"weighted": {}}}}
    assert time_line(summary) == (
        "time per training round (median of 3): 16.0 s, of which the slowest site's training + evaluation 4.0 s "
        "and overhead 12.0 s (last site: process start-up 8.0 s, data/model setup 1.0 s, Flower hand-offs and "
        "server 4.0 s)")
    assert time_line({"rounds": {"1": {"weighted": {}}}}) is None

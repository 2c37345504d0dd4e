"""Where a site's time goes in one message, for the server's overhead figures.

A reply carries three numbers (MetricRecord keys in ``common.records``):

* ``compute-seconds``: training and evaluation proper (DP-SGD steps with their privacy accounting and
  ledger writes, forward passes);
* ``setup-seconds``: reading the site's data, frozen-encoder features, building the model, and the
  libraries imported lazily on the way (Opacus for DP training, scikit-learn's metrics);
* ``startup-seconds``: deployment only, from the start of this ``flwr-clientapp`` process (or of its
  warm-start launcher) to the handler (interpreter, Flower, torch, Opacus and our imports, fetching the message).

Round wall time at the server minus the slowest site's compute is the round's overhead; the server
splits it with the other two (``server.recorder.on_timing``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from client.warm_start import LAUNCHED_AT_ENV

__all__ = ["Stopwatch", "process_age_seconds"]


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux ``/proc``); None where that is not known.

    A process forked by the warm-start supervisor counts from the start of the launcher that Flower ran
    (``client/warm_start.py`` sets ``FEDFUSION_LAUNCHED_AT``), not from the fork.
    """
    launched = os.environ.get(LAUNCHED_AT_ENV)
    if launched:
        try:
            return max(0.0, time.time() - float(launched))
        except ValueError:
            pass
    try:
        # field 22 of /proc/self/stat is the start time in clock ticks after boot; the command name
        # (field 2) may hold spaces, so count from its closing parenthesis (field 3 = index 0)
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


class Stopwatch:
    """Accumulates the seconds spent inside ``with watch:`` blocks (re-entrant use adds up)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._t0

"""Flower's grid, with site replies collected promptly.

Flower 1.42's deployment grid (``HttpGrid.send_and_receive``) pushes a round's messages and then
checks for replies every 3 s, so each round waits 1.5 s on average after its last reply has
arrived (BENCHMARKS.md). :class:`PromptGrid` wraps the grid Flower hands the ServerApp and does
the same push-then-pull with Flower's own ``push_messages`` / ``pull_messages``, checking every
``poll_s`` seconds; everything else is the wrapped grid's.

In a simulation it also pushes a round's messages as a window (``max_in_flight``, run setting
``max-messages-in-flight``; :func:`window_for`): at most that many sent and not yet answered; each reply makes room
for the next. Flower 1.42's simulation engine sweeps every node every 0.1 s and, for each, walks every stored message
(``InMemoryLinkState.get_message_ins``): with a whole 1000-site round in flight that sweep took most of a core from
the sites' actors (py-spy, BENCHMARKS.md). The engine runs at most one message per actor at a time anyway, so a
window of a few times the actors loses nothing. A deployment's sites each train on their own machine, all at
once: there the window is off. A message the window never sent before the round's timeout is never sent (its site
spends nothing).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

if TYPE_CHECKING:
    from flwr.supercore.run import Run

__all__ = ["PromptGrid", "window_for"]


def window_for(grid: Grid, max_in_flight: int) -> int:
    """The window for ``grid``: ``max_in_flight`` in Flower's simulation engine (its in-memory grid), else 0 (off).

    The in-memory grid's module is looked up, not imported: Flower's simulation engine has imported it, a
    deployment's ServerApp never needs it (importing it costs ~0.7 s of Flower's SuperLink modules).
    """
    simulation = sys.modules.get("flwr.superlink.grid.inmemory_grid")
    return max_in_flight if simulation is not None and isinstance(grid, simulation.InMemoryGrid) else 0


class PromptGrid(Grid):
    def __init__(self, grid: Grid, *, poll_s: float, max_in_flight: int = 0) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0 seconds, got {poll_s}")
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be >= 0 (0 = no window), got {max_in_flight}")
        self._grid, self.poll_s, self.max_in_flight = grid, poll_s, max_in_flight

    # ------------------------------------------------------------- delegated
    def set_run(self, run: "Run") -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> "Run":
        return self._grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self):  # noqa: ANN201 - Flower's NodeInfo rows
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    # ------------------------------------------------------------------ ours
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` (at most ``max_in_flight`` unanswered at a time); return the replies that arrive within
        ``timeout`` seconds (None = wait for all)."""
        waiting = list(messages)
        window = self.max_in_flight or len(waiting)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending: set[str] = set()
        replies: list[Message] = []
        while True:
            room = window - len(pending)
            if waiting and room > 0:  # send the next messages the window has room for
                pending.update(self.push_messages(waiting[:room]))
                waiting = waiting[room:]
            if not pending:
                return replies
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if deadline is not None and time.monotonic() >= deadline:
                return replies
            if not got:  # nothing new: wait before asking again
                time.sleep(self.poll_s if deadline is None else max(0.0, min(self.poll_s, deadline - time.monotonic())))

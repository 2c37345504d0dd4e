"""PromptGrid: Flower's push/pull, replies checked every poll_s instead of every 3 s."""

from __future__ import annotations

import time

import pytest
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from server.grid import PromptGrid


pytestmark = pytest.mark.usefixtures("flower_task_identity")


class _SitesAnswerLater(Grid):
    """A grid whose replies become available after a given number of pulls (per destination node)."""

    def __init__(self, pulls_needed: dict[int, int]) -> None:
        self.pulls_needed, self.pulls, self.sent = pulls_needed, 0, {}

    def set_run(self, run):  # noqa: ANN001
        self._run = run

    @property
    def run(self):  # noqa: ANN201
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001, ANN201
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):  # noqa: ANN201
        return list(self.pulls_needed)

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id  # as Flower's grids do on push
            self.sent[m.object_id] = m
            ids.append(m.object_id)
        return ids

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        raise AssertionError("the wrapped grid's 3-s polling loop must not be used")

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        out = []
        for mid in message_ids:
            if self.pulls >= self.pulls_needed[self.sent[mid].metadata.dst_node_id]:
                out.append(Message(RecordDict(), reply_to=self.sent[mid]))
        return out


def _messages(nodes):
    return [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.TRAIN) for n in nodes]


def test_collects_every_reply_once_and_stops_when_all_are_in():
    inner = _SitesAnswerLater({1: 1, 2: 4})
    grid = PromptGrid(inner, poll_s=0.01)
    sent = _messages([1, 2])
    replies = list(grid.send_and_receive(sent, timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(m.object_id for m in sent)
    assert inner.pulls == 4  # pulled until the last reply arrived, then stopped
    assert grid.get_node_ids() == [1, 2]  # the rest is the wrapped grid's


def test_returns_what_arrived_when_the_timeout_passes():
    inner = _SitesAnswerLater({1: 1, 2: 10**9})  # node 2 never answers
    started = time.monotonic()
    sent = _messages([1, 2])
    replies = list(PromptGrid(inner, poll_s=0.01).send_and_receive(sent, timeout=0.2))
    assert [r.metadata.reply_to_message_id for r in replies] == [sent[0].object_id]
    assert time.monotonic() - started >= 0.2 and inner.pulls > 2


def test_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_s must be > 0"):
        PromptGrid(_SitesAnswerLater({}), poll_s=0.0)


class _AnswersAfterPulls(_SitesAnswerLater):
    """Each message is answered ``after`` pulls after it was pushed; records how many were ever unanswered at once."""

    def __init__(self, nodes: list[int], after: int) -> None:
        super().__init__({n: 0 for n in nodes})
        self.after, self.pushed_at, self.answered, self.max_unanswered = after, {}, set(), 0

    def push_messages(self, messages):  # noqa: ANN001, ANN201
        ids = super().push_messages(messages)
        self.pushed_at.update({i: self.pulls for i in ids})
        self.max_unanswered = max(self.max_unanswered, len(self.pushed_at) - len(self.answered))
        return ids

    def pull_messages(self, message_ids):  # noqa: ANN001, ANN201
        self.pulls += 1
        ready = [mid for mid in message_ids if self.pulls - self.pushed_at[mid] >= self.after]
        self.answered.update(ready)
        return [Message(RecordDict(), reply_to=self.sent[mid]) for mid in ready]


@pytest.mark.parametrize(("window", "most"), [(0, 7), (2, 2), (3, 3), (10, 7)])
def test_a_window_keeps_at_most_that_many_messages_unanswered_and_still_sends_all(window, most):
    inner = _AnswersAfterPulls(list(range(1, 8)), after=2)
    sent = _messages(range(1, 8))
    replies = list(PromptGrid(inner, poll_s=0.001, max_in_flight=window).send_and_receive(sent, timeout=None))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == sorted(m.object_id for m in sent)
    assert inner.max_unanswered == most  # 0 = no window: all seven at once
    assert [inner.sent[i].metadata.dst_node_id for i in inner.pushed_at] == list(range(1, 8))  # in the given order


def test_messages_the_window_never_sent_before_the_timeout_are_never_sent():
    inner = _AnswersAfterPulls([1, 2, 3], after=10**9)  # nobody answers
    replies = list(PromptGrid(inner, poll_s=0.01, max_in_flight=1).send_and_receive(_messages([1, 2, 3]),
                                                                                    timeout=0.1))
    assert replies == [] and len(inner.sent) == 1  # sites 2 and 3 were never asked: they spent nothing


def test_the_window_must_not_be_negative():
    with pytest.raises(ValueError, match="max_in_flight must be >= 0"):
        PromptGrid(_SitesAnswerLater({}), poll_s=0.1, max_in_flight=-1)


def test_the_window_is_for_flowers_simulation_engine_only():
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server.grid import window_for

    class _Simulation(InMemoryGrid):
        def __init__(self) -> None:  # Flower's simulation grid, without its link state
            pass

    assert window_for(_Simulation(), 8) == 8
    assert window_for(_SitesAnswerLater({}), 8) == 0  # a deployment's grid: every sampled site trains at once

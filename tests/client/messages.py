"""A train message through a deployed site's real ClientApp handler (``client.app.app``), as its SuperNode hands it.

A Flower ``Message`` takes its run id from the task identity that a ClientApp process holds; ``send_train`` sets it
for the message and the reply, and restores what was there after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app
from common.records import ARRAYS, CONFIG

__all__ = ["NODE_ID", "send_train"]

NODE_ID = 7  # the deployed site's node


@contextmanager
def _client_task(node_id: int) -> Iterator[None]:
    """Flower's task identity as inside the ClientApp process of ``node_id`` (task 1 of run 1); restored after."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, node_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def send_train(site_file: Path, run_config: dict[str, Any], arrays: ArrayRecord, *, federation_id: str,
               message_config: dict[str, Any] | None = None) -> Message:
    """Round 1's train message (global ``arrays``, ``federation_id``, then ``message_config``) to the site that
    ``site_file`` deploys, under ``run_config``; the reply its ClientApp sends."""
    with _client_task(NODE_ID):
        msg = Message(content=RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(
            {"server-round": 1, "federation-id": federation_id, **(message_config or {})})}), dst_node_id=NODE_ID,
            message_type=MessageType.TRAIN)
        context = Context(run_id=1, node_id=NODE_ID, node_config={"site-config": str(site_file)}, state=RecordDict(),
                          run_config=run_config)
        return app(msg, context)

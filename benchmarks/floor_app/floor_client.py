"""The floor's ClientApp: unpack the received arrays to numpy and send them back (no training, no data)."""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

__all__ = ["app"]

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """What every real ClientApp does at least: arrays in -> numpy -> arrays out, with an example count."""
    arrays = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    reply = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                        "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=reply, reply_to=msg)

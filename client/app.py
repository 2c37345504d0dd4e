"""ClientApp: Flower messages in, plain-torch training/evaluation, Flower messages out.

Everything a site does lives elsewhere: data in ``client/site_data.py``, DP-SGD in
``client/train.py``, privacy bookkeeping in ``client/privacy.py``. The handlers only glue
them to Flower's Message API.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.replay import ReplayCache, state_digest
from client.round import SiteRound
from common.records import ARRAYS, CONFIG, METRICS, PRIVACY, SITE

__all__ = ["app"]

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train this site's branches with DP-SGD, or decline if the budget would be exceeded."""
    job = SiteRound.from_flower(context.run_config, context.node_config, msg.content[CONFIG], str(context.run_id))
    state = msg.content[ARRAYS].to_torch_state_dict()
    # The same round sent again (server restart) is answered from the cache: no second spend.
    cache, digest = ReplayCache(job.site.state_dir, site=job.site.spec.name), state_digest(state)
    outcome = cache.get(job.federation_id, job.server_round, digest)
    if outcome is None:
        outcome = job.train(state)
        cache.put(job.federation_id, job.server_round, digest, outcome)
    content = RecordDict({METRICS: MetricRecord(outcome.metrics), PRIVACY: ConfigRecord(outcome.privacy)})
    if outcome.arrays is not None:
        content[ARRAYS] = ArrayRecord(outcome.arrays)
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this site's own test rows."""
    job = SiteRound.from_flower(context.run_config, context.node_config, msg.content[CONFIG], str(context.run_id))
    metrics = job.evaluate(msg.content[ARRAYS].to_torch_state_dict())
    content = RecordDict({METRICS: MetricRecord(metrics), SITE: ConfigRecord({"name": job.site.spec.name})})
    return Message(content=content, reply_to=msg)

"""ClientApp: Flower messages in, plain-torch training/evaluation, Flower messages out.

Everything a site does lives elsewhere: data in ``client/site_data.py``, DP-SGD in
``client/train.py``, privacy bookkeeping in ``client/privacy.py``. The handlers only glue
them to Flower's Message API.
"""

from __future__ import annotations

import logging
import time
from functools import wraps
from typing import Callable

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.downlink import received_state
from client.errors import failure_code
from client.replay import ReplayCache, state_digest
from client.round import SiteRound
from client.timing import process_age_seconds
from common.packing import reply_arrays
from common.privacy.ledger_guard import site_lock
from common.records import (ARRAYS, COMPUTE_SECONDS, CONFIG, EVALUATE_GLOBAL, EVALUATION, METRICS, NUM_EXAMPLES,
                            PRIVACY, SETUP_SECONDS, SITE, STARTUP_SECONDS, STATUS_FAILED)

__all__ = ["app"]

app = ClientApp()
log = logging.getLogger("fedfusion.client")


def reply_on_error(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A site's error becomes a normal reply that names the site and a code; the federation goes on.

    The reply says only the code, its category and the registry's fixed sentence (``common.records.ERRORS``,
    ``client/errors.py``): an exception's message can quote cells, notes or ids, so it and the traceback go to
    this site's own log only. (A privacy reservation made before the error stays in the ledger: it counts as spent.)
    """

    @wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as err:  # noqa: BLE001 - every failure is reported, with the traceback logged here
            code = failure_code(err)
            log.exception("site handler failed (replied with code %s; this message stays here)", code.code)
            site = ""  # never the site-config path: the server names an unknown site by its node id
            try:
                from common.config import parse_run_config, resolve_site

                site = resolve_site(context.node_config, parse_run_config(context.run_config)).spec.name
            except Exception:  # noqa: BLE001 - the site's own config may be what failed
                pass
            content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0.0}),
                                  PRIVACY: ConfigRecord({"status": STATUS_FAILED, "site": site, "code": code.code,
                                                         "category": code.category, "reason": code.text})})
            return Message(content=content, reply_to=msg)

    return wrapped


def _timing(job: SiteRound, node_config, seconds: float, startup: float | None) -> dict[str, float]:
    """This message's time split (client/timing.py): compute excludes data loading and model building.

    A side channel (it grows with the rows and the Poisson batch sizes): sent only where the site allows it
    (``SiteConfig.report_timing``: simulation, or a deployed site.toml with ``report-timing = true``).
    """
    if not job.site.report_timing:
        return {}
    out = {COMPUTE_SECONDS: max(0.0, seconds - job.setup.seconds), SETUP_SECONDS: job.setup.seconds}
    if startup is not None and "site-config" in node_config:  # deployment: one fresh process per message
        out[STARTUP_SECONDS] = startup
    return out


def _global_state(job: SiteRound, msg: Message) -> dict:
    """The message's global arrays as this site's model's tensors (packed branches split with its own layout)."""
    return received_state({k: a.numpy() for k, a in msg.content[ARRAYS].items()}, job.layout())


@app.train()
@reply_on_error
def train(msg: Message, context: Context) -> Message:
    """Train this site's branches with DP-SGD, or decline if the budget would be exceeded."""
    startup = process_age_seconds()
    job = SiteRound.from_flower(context.run_config, context.node_config, msg.content[CONFIG], str(context.run_id))
    state = _global_state(job, msg)
    # Folded evaluation: the received global model's test metrics ride along (one message, one process).
    t0 = time.perf_counter()
    evaluation = job.evaluate(state) if msg.content[CONFIG].get(EVALUATE_GLOBAL) else None
    # The same round sent again (server restart) is answered from the cache: no second spend. One process at a time
    # per site (a file lock on its state folder): a second one waits, then finds the first one's reply.
    cache, digest = ReplayCache(job.site.state_dir, site=job.site.spec.name), state_digest(state)
    with site_lock(job.site.state_dir):
        outcome = cache.get(job.federation_id, job.server_round, digest, report=job.decline_report)
        if outcome is None:
            outcome = job.train(state)
            cache.put(job.federation_id, job.server_round, digest, outcome)
    # the train reply's timing covers the whole handler (folded evaluation included); the server takes
    # round wall time minus the slowest site's compute as the round's overhead
    outcome.metrics.update(_timing(job, context.node_config, time.perf_counter() - t0, startup))
    content = RecordDict({METRICS: MetricRecord(outcome.metrics), PRIVACY: ConfigRecord(outcome.privacy)})
    if outcome.arrays is not None:  # in the layout the server's reader for this mode expects (common/packing.py)
        wire = reply_arrays(outcome.arrays, mode=outcome.privacy["mode"])
        content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in wire.items()})
    if evaluation is not None:
        content[EVALUATION] = MetricRecord(evaluation)
    return Message(content=content, reply_to=msg)


@app.evaluate()
@reply_on_error
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this site's own test rows."""
    startup = process_age_seconds()
    job = SiteRound.from_flower(context.run_config, context.node_config, msg.content[CONFIG], str(context.run_id))
    t0 = time.perf_counter()
    metrics = job.evaluate(_global_state(job, msg))
    metrics.update(_timing(job, context.node_config, time.perf_counter() - t0, startup))
    content = RecordDict({METRICS: MetricRecord(metrics), SITE: ConfigRecord({"name": job.site.spec.name})})
    return Message(content=content, reply_to=msg)

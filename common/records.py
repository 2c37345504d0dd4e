"""Names of the records a site and the server exchange (the only contract between them).

A train message carries ``ARRAYS`` (trainable tensors of the global model) and ``CONFIG``.
A train reply carries ``ARRAYS`` (the branches this site trained), ``METRICS`` (plain
training metrics, which Flower may average) and ``PRIVACY`` (a ConfigRecord: per-site
privacy facts must never be averaged, so they never travel as metrics).
"""

from __future__ import annotations

__all__ = [
    "ARRAYS", "CONFIG", "METRICS", "PRIVACY", "SITE", "NUM_EXAMPLES",
    "STATUS_TRAINED", "STATUS_DECLINED", "STATUS_REPLAYED", "PRIVACY_FIELDS",
]

ARRAYS = "arrays"  # ArrayRecord key, as Flower's FedAvg uses it
CONFIG = "config"  # ConfigRecord key of the server's instructions
METRICS = "metrics"  # MetricRecord key of the reply
PRIVACY = "privacy"  # ConfigRecord key of the site's privacy report (train replies)
SITE = "site"  # ConfigRecord key of the site's identity (evaluate replies)
NUM_EXAMPLES = "num-examples"  # weighting key, as Flower's FedAvg uses it

STATUS_TRAINED = "trained"
STATUS_DECLINED = "declined"
STATUS_REPLAYED = "replayed"

#: fields of the PRIVACY ConfigRecord; cumulative values cover the dataset's lifetime
PRIVACY_FIELDS = (
    "status",  # trained | declined
    "reason",  # why it declined ("" if trained)
    "site",  # site name (ledger key)
    "dataset-id",  # fingerprint of the training data the ledger is kept for
    "epsilon",  # cumulative ε after this round (accountant below)
    "epsilon-rdp",  # cumulative ε by RDP (conservative figure)
    "accountant",  # accountant that produced "epsilon"
    "delta",  # δ the ε values are for
    "target-epsilon",  # ε the run's planned training was calibrated to
    "epsilon-budget",  # lifetime budget the site enforces
    "noise-multiplier",  # σ of this round
    "sample-rate",  # Poisson rate Opacus used (1/len(loader))
    "steps",  # DP-SGD steps of this round
    "total-steps",  # DP-SGD steps over the dataset's lifetime
    "max-grad-norm",  # clipping norm C
    "rounds-trained",  # rounds this dataset was trained in, lifetime
    "secure-mode",  # Opacus secure_mode on or off
)

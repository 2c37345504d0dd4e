"""Names of the records a site and the server exchange (the only contract between them).

A train message carries ``ARRAYS`` (trainable tensors of the global model) and ``CONFIG``.
A train reply carries ``ARRAYS`` (the branches this site trained), ``METRICS`` (plain
training metrics, which Flower may average) and ``PRIVACY`` (a ConfigRecord: per-site
privacy facts must never be averaged, so they never travel as metrics).
"""

from __future__ import annotations

__all__ = [
    "ARRAYS", "CONFIG", "METRICS", "PRIVACY", "SITE", "EVALUATION", "EVALUATE_GLOBAL", "NUM_EXAMPLES", "SITE_WEIGHT",
    "STATUS_TRAINED", "STATUS_DECLINED", "STATUS_REPLAYED", "STATUS_FAILED", "PRIVACY_FIELDS",
]

ARRAYS = "arrays"  # ArrayRecord key, as Flower's FedAvg uses it
CONFIG = "config"  # ConfigRecord key of the server's instructions
METRICS = "metrics"  # MetricRecord key of the reply
PRIVACY = "privacy"  # ConfigRecord key of the site's privacy report (train replies)
SITE = "site"  # ConfigRecord key of the site's identity (evaluate replies)
EVALUATION = "evaluation"  # MetricRecord key: the received global model's test metrics, folded into a train reply
EVALUATE_GLOBAL = "evaluate-global"  # CONFIG flag: fold evaluation into the train reply
NUM_EXAMPLES = "num-examples"  # weighting key, as Flower's FedAvg uses it
# where a site's time went in one message (client/timing.py), MetricRecord keys of train/evaluate replies
COMPUTE_SECONDS = "compute-seconds"  # training (with its privacy accounting) + evaluation proper
SETUP_SECONDS = "setup-seconds"  # data, frozen-encoder features, model build, lazy imports (Opacus, sklearn)
STARTUP_SECONDS = "startup-seconds"  # deployment: process start to handler (imports, fetching the message)
TIMING_KEYS = (COMPUTE_SECONDS, SETUP_SECONDS, STARTUP_SECONDS)
SITE_WEIGHT = "site-weight"  # privacy-mode "central": weighting key; every site sends 1.0 (equal weights)

STATUS_TRAINED = "trained"
STATUS_DECLINED = "declined"
STATUS_REPLAYED = "replayed"
STATUS_FAILED = "failed"

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
    "noise-seed",  # where the round's DP sampling and noise seeds came from: secret | run-seed (client/dp_random.py)
    # the site's signed ledger head after this round (common/privacy/signing.py); the server records it
    "ledger-head-seq",  # seq of the newest row of the site's ledger
    "ledger-head-hash",  # that row's hash
    "ledger-head-signature",  # base64 ECDSA-SHA384 signature over (kind, site, seq, hash)
    "site-public-key",  # OpenSSH line of the key that signed it
)

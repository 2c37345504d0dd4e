"""Names of the records a site and the server exchange (the only contract between them), and what a reply may say.

A train or evaluate message carries ``ARRAYS`` (the trainable tensors of the global model, one flat float32 array per
branch: ``server/downlink.py``, ``client/downlink.py``) and ``CONFIG``.
A train reply carries ``ARRAYS`` (the branches this site trained; in a sample-mode federation one flat array per
branch, ``common/packing.py``), ``METRICS`` (public facts Flower may
average: the aggregation weight, and in simulation the timing split) and ``PRIVACY`` (a ConfigRecord:
per-site privacy facts must never be averaged, so they never travel as metrics).

What a reply may hold (README "What leaves a site"): the model update (DP-SGD output), values computed on the
site's TEST rows (declared unprivatised), and public facts: the settings the site trains under, its declared
``max-records`` bound (which is also the aggregation weight), its ledger's accounting and signed head, a keyed
HMAC as dataset id. Nothing computed from the training rows outside the DP mechanism (no training loss, no row
count). A reply that failed or declined says why only in the words of :data:`ERRORS` / :data:`DECLINES`: a closed
set of codes with fixed texts, never an exception's message (which can quote cells, notes or ids); the full
message stays in the site's own log.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARRAYS", "CONFIG", "METRICS", "PRIVACY", "SITE", "EVALUATION", "EVALUATE_GLOBAL", "NUM_EXAMPLES", "SITE_WEIGHT",
    "COMPUTE_SECONDS", "SETUP_SECONDS", "STARTUP_SECONDS", "TIMING_KEYS", "CENTRAL_NOISE_MULTIPLIER", "PROXIMAL_MU",
    "STATUS_TRAINED", "STATUS_DECLINED", "STATUS_REPLAYED", "STATUS_FAILED", "PRIVACY_FIELDS", "FAILED_FIELDS",
    "TRAIN_METRIC_KEYS", "ReplyCode", "ERRORS", "DECLINES", "error_code", "decline_code",
]

ARRAYS = "arrays"  # ArrayRecord key, as Flower's FedAvg uses it
CONFIG = "config"  # ConfigRecord key of the server's instructions
METRICS = "metrics"  # MetricRecord key of the reply
PRIVACY = "privacy"  # ConfigRecord key of the site's privacy report (train replies)
SITE = "site"  # ConfigRecord key of the site's identity (evaluate replies)
EVALUATION = "evaluation"  # MetricRecord key: the received global model's test metrics, folded into a train reply
EVALUATE_GLOBAL = "evaluate-global"  # CONFIG flag: fold evaluation into the train reply
#: weighting key, as Flower's FedAvg uses it. In a TRAIN reply it is the site's declared, public ``max-records``
#: (never the number of rows it holds); in an EVALUATE reply (and the folded EVALUATION) the number of test rows.
NUM_EXAMPLES = "num-examples"
# where a site's time went in one message (client/timing.py), MetricRecord keys of train/evaluate replies. They
# depend on the number of rows and on the Poisson batch sizes: a side channel. Simulation replies carry them; a
# deployed site sends them only if its site.toml says `report-timing = true` (README "What leaves a site").
COMPUTE_SECONDS = "compute-seconds"  # training (with its privacy accounting) + evaluation proper
SETUP_SECONDS = "setup-seconds"  # data, frozen-encoder features, model build, lazy imports (Opacus, sklearn)
STARTUP_SECONDS = "startup-seconds"  # deployment: process start to handler (imports, fetching the message)
TIMING_KEYS = (COMPUTE_SECONDS, SETUP_SECONDS, STARTUP_SECONDS)
SITE_WEIGHT = "site-weight"  # privacy-mode "central": weighting key; every site sends 1.0 (equal weights)
#: CONFIG key (privacy-mode "central"): the σ the server's DP wrapper adds; a site records its release with it
CENTRAL_NOISE_MULTIPLIER = "central-noise-multiplier"
#: CONFIG key (strategy "fedprox", set by Flower's FedProx): μ of the proximal term the site adds to its gradient
PROXIMAL_MU = "proximal-mu"
#: every METRICS key a train reply may carry (the message inspector test holds replies to this list)
TRAIN_METRIC_KEYS = (NUM_EXAMPLES, SITE_WEIGHT, *TIMING_KEYS)

STATUS_TRAINED = "trained"
STATUS_DECLINED = "declined"
STATUS_REPLAYED = "replayed"
STATUS_FAILED = "failed"

#: fields of the PRIVACY ConfigRecord; cumulative values cover the dataset's lifetime
PRIVACY_FIELDS = (
    "status",  # trained | declined
    "reason",  # why it declined ("" if trained): the fixed text of its code (DECLINES), with public settings only
    "code",  # the decline's code (DECLINES); "" if trained
    "site",  # site name (ledger key)
    "mode",  # sample | central | none: the mechanism this round's release ran under ("none": no DP, ε = ∞)
    "dataset-id",  # HMAC-SHA256 of the training rows' fingerprint under a key kept in the site's state folder
    "max-records",  # the site's declared public bound on its training rows (q, steps, δ and the weight follow it)
    "epsilon",  # cumulative ε after this round (accountant below); inf after a release without DP
    "epsilon-rdp",  # cumulative ε by RDP (conservative figure)
    "accountant",  # accountant that produced "epsilon"
    "delta",  # δ the ε values are for
    "target-epsilon",  # ε the run's planned training was calibrated to
    "epsilon-budget",  # lifetime budget the site enforces
    "noise-multiplier",  # σ of this round
    "sample-rate",  # Poisson rate q = 1/ceil(max-records / batch-size)
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
#: the only fields of a FAILED reply's PRIVACY record (``reason`` is the fixed text of ``code``, never the error)
FAILED_FIELDS = ("status", "site", "code", "category", "reason")


# ----------------------------------------------------------------------------- why a site failed or declined
@dataclass(frozen=True)
class ReplyCode:
    """One entry of the closed registry of what a failed or declined reply may say."""

    code: str  # stable identifier, sent in the reply
    category: str  # coarse class, sent in the reply
    text: str  # the fixed sentence sent as the reply's reason: it never quotes data


def _registry(*codes: ReplyCode) -> dict[str, ReplyCode]:
    return {c.code: c for c in codes}


#: failures (status "failed"): the site could not run the round; the details are in the site's own log only
ERRORS: dict[str, ReplyCode] = _registry(
    ReplyCode("site-config", "configuration",
              "the site's configuration (site file or scenario entry) is invalid; details in the site's log"),
    ReplyCode("run-config", "configuration", "the run configuration is invalid for this site; details in its log"),
    ReplyCode("data-contract", "data",
              "the site's data broke the data contract (schema, mapping or a file's content); details in its log"),
    ReplyCode("data-unreadable", "data", "a file of the site's data could not be read; details in the site's log"),
    ReplyCode("ledger-integrity", "privacy",
              "the site's privacy ledger failed verification; the site refuses to account from it"),
    ReplyCode("privacy-accounting", "privacy", "the site's privacy accounting failed; details in the site's log"),
    ReplyCode("message", "protocol", "the server's message could not be used by this site; details in its log"),
    ReplyCode("resources", "environment", "the site ran out of a resource (memory, disk, device)"),
    ReplyCode("internal", "internal", "the site hit an internal error; details in the site's log"),
)

#: declines (status "declined"): the site chose not to release; ``text`` is completed with public settings only
DECLINES: dict[str, ReplyCode] = _registry(
    ReplyCode("budget", "privacy", "lifetime budget"),
    ReplyCode("privacy-request", "privacy",
              "the run asks for less privacy than this site's own file allows"),
    ReplyCode("max-records", "privacy",
              "the site holds more training records than the max-records it declared; nothing released"),
    ReplyCode("secure-mode-unavailable", "privacy",
              "secure-mode is on but its requirement (the torchcsprng package) is not installed at this site"),
    ReplyCode("noise-device", "privacy",
              "the DP noise generator is not on the training device; nothing reserved or released"),
    ReplyCode("already-spent", "privacy",
              "this round was already reserved in the site's ledger but its reply was lost; training it again "
              "would spend the budget twice"),
)


def error_code(code: str) -> ReplyCode:
    """The registry entry of a failure code (KeyError: an unknown code is a bug, never sent)."""
    return ERRORS[code]


def decline_code(code: str) -> ReplyCode:
    """The registry entry of a decline code (KeyError: an unknown code is a bug, never sent)."""
    return DECLINES[code]

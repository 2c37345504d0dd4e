"""Which failure code a site's exception becomes in its reply: a closed mapping onto ``common.records.ERRORS``.

An exception's message can quote a cell, a note, a patient id or a path (a data-contract error names the file,
line, column and the raw value, by design: the site's data engineer needs them). None of that may leave the
site: a failed reply carries only the code, its category and the registry's fixed sentence; the message and the
traceback go to the site's own log (``client/app.py``).
"""

from __future__ import annotations

from common.config import ConfigError
from common.privacy.accountant import BudgetExhausted
from common.privacy.ledger import LedgerIntegrityError
from common.records import ERRORS, ReplyCode

__all__ = ["failure_code"]


def _message_error() -> type[Exception]:
    from client.round import MessageError

    return MessageError


def _by_type() -> tuple[tuple[type[BaseException], str], ...]:
    """Exception types in the order they are tried (the first that matches the exception's class wins)."""
    import torch

    return (
        (_message_error(), "message"),
        (LedgerIntegrityError, "ledger-integrity"),
        (BudgetExhausted, "privacy-accounting"),
        (MemoryError, "resources"),
        (torch.cuda.OutOfMemoryError, "resources"),
        (UnicodeError, "data-unreadable"),
        (OSError, "data-unreadable"),
    )


def failure_code(err: BaseException) -> ReplyCode:
    """The registry entry for ``err``: configuration, data contract, ledger, accounting, resources, or internal.

    Errors of the site's data pipeline (any exception class defined under ``common.data``) are data-contract
    failures; a configuration error is the run's when its message names the run config, else the site's.
    """
    if isinstance(err, ConfigError):
        return ERRORS["run-config" if str(err).startswith("run config") else "site-config"]
    for cls, code in _by_type():
        if isinstance(err, cls):
            return ERRORS[code]
    if any(c.__module__.startswith("common.data") for c in type(err).__mro__):
        return ERRORS["data-contract"]
    return ERRORS["internal"]

"""``fedfusion audit``: the privacy officer's tool, as one package.

* :mod:`server.audit.core` — :func:`audit_path` / :func:`audit_compare`: what is checked and in what order;
* :mod:`server.audit.integrity` — hash chains and signed heads;
* :mod:`server.audit.recompute` — ε recomputed independently with Google's dp-accounting;
* :mod:`server.audit.compare` — a site's ledger against the server's;
* :mod:`server.audit.model` — findings and the report they make;
* :mod:`server.audit.render`, :mod:`server.audit.html` — terminal, JSON and HTML output;
* :mod:`server.audit.cli` — the ``fedfusion audit`` command.

The two entry points are imported lazily: the CLI stays light until an audit actually runs
(dp-accounting pulls in scipy).
"""

from __future__ import annotations

from typing import Any

__all__ = ["audit_compare", "audit_path"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from server.audit import core

        return getattr(core, name)
    raise AttributeError(f"module 'server.audit' has no attribute {name!r}")

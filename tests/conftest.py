"""Suite-wide hooks: the order in which pytest-xdist hands test files to its workers (``make test`` runs ``-n``).

``make test`` runs ``pytest -n 2 --dist loadfile --no-loadscope-reorder``: each test FILE is one unit of work on one
worker, so a module-scoped fixture (a federation run, a Ray cluster, a deployment) runs once, and the tests of a file
run in their order. (``--dist loadgroup`` with ``xdist_group`` marks would be finer, but pytest-xdist 3.8 marks a
group by rewriting ``item._nodeid``, which pytest 9 no longer reads: the groups were silently split and each worker
ran the same federation.) The files are handed out in collection order; this hook puts first the end-to-end files
of ``tests/integration`` (each starts real Flower federations: one to eight minutes a file), then the other files
with ``slow`` tests, then the rest (within each part, files with more slow tests first), so that the long ones
start at once and the fast ones fill the gaps, instead of a five-minute file starting while the other workers run
out of work. In a plain (serial) run nothing is reordered.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

__all__ = ["pytest_collection_modifyitems"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under an xdist worker: tests/integration, then the other files with ``slow`` tests (each part: files with more
    slow tests first), then the rest; every file's tests in their own order.

    Every worker collects, and xdist requires every worker's collection to be the same list: the order depends on
    the items' paths, markers and collection order only, so it is.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = Counter(item.path for item in items if item.get_closest_marker("slow") is not None)
    integration = Path(__file__).parent / "integration"

    def rank(item: pytest.Item) -> tuple[int, int]:
        if item.path in slow:  # the files with the most slow tests first (test_deploy: eleven on one deployment)
            return 0 if integration in item.path.parents else 1, -slow[item.path]
        return 2, 0

    items.sort(key=rank)  # stable: each file keeps its order

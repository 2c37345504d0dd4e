"""A Flower app that is NOT fedfusion, for the deployment's attack tests (CONSTRUCTED test code, not a product).

:func:`write_rogue_app` writes it into a folder: publisher ``not-the-operator``. Its ClientApp, if a site ever
ran it, would write a marker file (and the site's data folder listing) to ``MARKERS``; its ServerApp sends one
``train`` message to every node and writes what came back (error code and reason per node) to ``RESULT``.
Both paths are baked into the code, as an attacker's would be.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["write_rogue_app"]

_PYPROJECT = '''\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rogue"
version = "1.0.0"
description = "not the operator's app"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "not-the-operator"

[tool.flwr.app.components]
serverapp = "rogue.server_app:app"
clientapp = "rogue.client_app:app"

[tool.flwr.app.config]
'''

_CLIENT = '''\
import json, os, socket
from pathlib import Path
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    markers = Path({markers!r})
    markers.mkdir(parents=True, exist_ok=True)
    site = str(context.node_config.get("site-config", "?"))
    (markers / f"client-ran-{{os.getpid()}}").write_text(json.dumps({{"site-config": site, "cwd": os.getcwd()}}))
    return Message(RecordDict({{"m": MetricRecord({{"ran": 1}})}}), reply_to=msg)
'''

_SERVER = '''\
import json
from pathlib import Path
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    out = [Message(RecordDict({{"m": MetricRecord({{"x": 1}})}}), dst_node_id=n, message_type="train")
           for n in nodes]
    replies = list(grid.send_and_receive(out, timeout={timeout}))
    result = {{"nodes": len(nodes), "replies": [
        {{"node": r.metadata.src_node_id, "error": r.has_error(),
          "code": r.error.code if r.has_error() else None,
          "reason": r.error.reason if r.has_error() else ""}} for r in replies]}}
    Path({result!r}).write_text(json.dumps(result))
'''


def write_rogue_app(folder: Path, *, markers: Path, result: Path, timeout: float = 120.0) -> Path:
    """Write the rogue app into ``folder`` (created); return it."""
    pkg = folder / "rogue"
    pkg.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT)
    (pkg / "__init__.py").write_text("")
    (pkg / "client_app.py").write_text(textwrap.dedent(_CLIENT.format(markers=str(markers))))
    (pkg / "server_app.py").write_text(textwrap.dedent(_SERVER.format(result=str(result), timeout=timeout)))
    return folder

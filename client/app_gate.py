"""A site runs only the app it approved: the check in front of every ``flwr-clientapp``.

Flower sends each run's code (its app bundle, the FAB) from the SuperLink; a SuperNode executes whatever
arrives, with the site's data, key and ledger in reach. Flower's own check, ``flower-supernode
--trusted-entities``, accepts only FABs whose signatures came from Flower Hub (``verifications`` with a
``valid_license``, ``flwr/supernode/start_client_internal.py``): offline it refuses every run, the operator's
too. So fedfusion closes the gap itself:

* ``fedfusion site join`` records the app this site approves in ``<state-dir>/approved-app.json``: the
  SHA-256 of the FAB that Flower builds from the fedfusion the site installed (:func:`build_app_fab`: Flower's
  own ``build_fab_from_files``, deterministic; ``flwr run .`` sends the same bytes from an identical checkout),
  and the digest of each file in it;
* every message-process of the site is started through ``<state-dir>/warm/bin/flwr-clientapp``
  (:mod:`client.warm_start`, warm and cold path alike), which calls :func:`guard` before Flower's own
  ``flwr-clientapp`` code runs. :func:`guard` wraps the one call through which Flower's ClientApp process
  installs the run's FAB (``install_from_fab`` in ``flwr.supernode.runtime.run_clientapp``), so the bytes
  that would be unpacked and imported are checked first: a FAB whose SHA-256 is not the approved one is never
  unpacked, and nothing of it is imported. Flower then replies to the server with an error (the reason
  names the digest) and this module writes one ``[app-gate] REFUSED`` line to the SuperNode's log;
* every other program Flower's SuperExec may start for a run (``flwr-agentapp``, ``flwr-model``,
  ``flwr-connector``, ...; it starts them by name) is a refusing stub in the same folder (:func:`refuse_task`).

Why the run's own code cannot get around it: the check runs in the message-process before any of the run's
code exists on disk or in memory; the run's code only ever runs after the check passed, that is, when it is
the approved code. The folder, launcher and approval file are the site's (mode 0700 state folder); the
SuperNode's ``PATH`` is set by the site's supervisor, not by anything the server sends.

Loaded three ways: as ``client.app_gate`` by ``site join``; by file path in the warm-start supervisor (under
:data:`MODULE_NAME`, never as ``client.*``: the app's own packages must come from each run's bundle); and as a
script (``python app_gate.py --approved FILE --real FLWR_CLIENTAPP -- ARGS``) on the cold path. Standard
library only at import time; Flower is imported when used.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import io
import json
import os
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

__all__ = ["APPROVED_FILE", "MODULE_NAME", "TAG", "Approval", "AppNotApproved", "build_app_fab", "check_fab",
           "fab_files", "fab_identity", "guard", "load_approval", "record_approval", "refuse_task"]

APPROVED_FILE = "approved-app.json"  # in the site's state folder, written by `site join`
MODULE_NAME = "fedfusion_app_gate"  # the name the supervisor loads this file under
TAG = "[app-gate]"
_SCHEMA = "fedfusion-approved-app/1"
_MANIFEST = ".info/CONTENT"


class AppNotApproved(RuntimeError):
    """A run's app is not the one this site approved; the message says which digest arrived and why it differs."""

    __module__ = MODULE_NAME  # one name in Flower's error reply, whichever way this file was loaded


@dataclass(frozen=True)
class Approval:
    """What ``site join`` recorded: the one app bundle this site runs."""

    fab_sha256: str  # SHA-256 of the FAB, hex (Flower's own fab hash)
    app: str  # "publisher/name version" from its pyproject.toml
    source: str  # the fedfusion folder it was built from
    recorded_at: str  # UTC ISO-8601
    files: dict[str, str] = field(default_factory=dict)  # path in the FAB -> SHA-256 of its content


# ------------------------------------------------------------------------------ the app bundle
def build_app_fab(app_dir: Path) -> bytes:
    """The FAB ``flwr run APP_DIR`` would send: Flower's own deterministic build of the folder's files."""
    from flwr.cli.build import build_fab_from_files

    from common.runtime.app_files import app_files  # here: this file also runs alone, as the SuperExec's stub

    return build_fab_from_files(app_files(Path(app_dir)))[0]


def fab_files(content: bytes) -> dict[str, str]:
    """Path -> SHA-256 of every file in a FAB (read from the archive itself; nothing is unpacked to disk)."""
    with zipfile.ZipFile(io.BytesIO(content)) as zf:
        return {n: hashlib.sha256(zf.read(n)).hexdigest() for n in zf.namelist()
                if n != _MANIFEST and not n.endswith("/")}


def fab_identity(content: bytes) -> str:
    """``publisher/name version`` from a FAB's pyproject.toml (parsed, never executed); "?" if unreadable."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as zf:
            cfg = tomllib.loads(zf.read("pyproject.toml").decode())
        return (f"{cfg['tool']['flwr']['app']['publisher']}/{cfg['project']['name']} "
                f"{cfg['project']['version']}")
    except Exception:  # noqa: BLE001 - a malformed bundle is still named by its digest
        return "?"


# ------------------------------------------------------------------------------ the approval
def record_approval(path: Path, app_dir: Path) -> Approval:
    """Build the FAB of the fedfusion in ``app_dir`` and record it as this site's one approved app (atomic write)."""
    content = build_app_fab(app_dir)
    approval = Approval(fab_sha256=hashlib.sha256(content).hexdigest(), app=fab_identity(content),
                        source=str(Path(app_dir).resolve()),
                        recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        files=fab_files(content))
    text = json.dumps({"schema": _SCHEMA, "fab-sha256": approval.fab_sha256, "app": approval.app,
                       "source": approval.source, "recorded-at": approval.recorded_at, "files": approval.files},
                      indent=1, sort_keys=True) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return approval


def load_approval(path: Path) -> Approval:
    """Read ``approved-app.json``; :class:`AppNotApproved` (refuse everything) if missing or malformed."""
    try:
        raw = json.loads(Path(path).read_text())
        if raw.get("schema") != _SCHEMA or len(str(raw["fab-sha256"])) != 64:
            raise ValueError(f"not a {_SCHEMA} file")
        return Approval(fab_sha256=str(raw["fab-sha256"]), app=str(raw.get("app", "?")),
                        source=str(raw.get("source", "?")), recorded_at=str(raw.get("recorded-at", "?")),
                        files={str(k): str(v) for k, v in dict(raw.get("files", {})).items()})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AppNotApproved(f"no approved app could be read from {path} ({err}): this site runs nothing until "
                             "`fedfusion site join` records the app it installed") from None


def _differences(received: dict[str, str], approved: dict[str, str], limit: int = 8) -> str:
    changed = sorted(p for p in received.keys() & approved.keys() if received[p] != approved[p])
    added = sorted(received.keys() - approved.keys())
    missing = sorted(approved.keys() - received.keys())
    parts = [f"{label}: {', '.join(paths[:limit])}{' ...' if len(paths) > limit else ''}"
             for label, paths in (("changed", changed), ("not in the approved app", added),
                                  ("missing", missing)) if paths]
    return "; ".join(parts) or "same files, different archive"


def check_fab(content: bytes, claimed_sha256: str, approval: Approval) -> str:
    """Pass (returning the digest) only if ``content`` is the approved FAB and is what Flower says it is.

    Raises
    ------
    AppNotApproved
        If the bytes' SHA-256 differs from the approved one, or from the hash Flower will install it under.
    """
    digest = hashlib.sha256(content).hexdigest()
    if claimed_sha256 and claimed_sha256 != digest:
        raise AppNotApproved(f"the app bundle's bytes hash to {digest[:16]}..., not to the {claimed_sha256[:16]}... "
                             "it was announced as: refused unopened")
    if digest != approval.fab_sha256:
        identity = fab_identity(content)
        if identity == "?":
            what = "not a readable app bundle"
        elif identity.split(" ")[0] != approval.app.split(" ")[0]:
            what = "another app altogether"
        else:
            what = (f"the same app with other files ({_differences(fab_files(content), approval.files)}). If the "
                    "operator upgraded fedfusion, install the same version here and run `fedfusion site join` again")
        raise AppNotApproved(
            f"app {identity} (FAB sha256 {digest[:16]}...) is not the app this site approved ({approval.app}, "
            f"sha256 {approval.fab_sha256[:16]}..., recorded by `site join` at {approval.recorded_at} from "
            f"{approval.source}): {what}. Nothing of it was unpacked or run")
    return digest


# ------------------------------------------------------------------------------ in the message-process
def _say(message: str) -> None:
    print(f"{TAG} {message}", file=sys.stderr, flush=True)


def guard(approved: Path) -> None:
    """Make this process's ``flwr-clientapp`` install (and so load) only the approved FAB.

    Must run before Flower's ``flwr_clientapp()`` is called. Wraps two names where
    ``flwr.supernode.runtime.run_clientapp`` looks them up: ``pull_task_input`` (to note the run's announced
    app id, version and hash) and ``install_from_fab``, the step between pulling the run's FAB and loading it,
    which then installs only the approved bytes, and only under the name Flower will load them by.
    """
    import flwr.supernode.runtime.run_clientapp as runner

    pull, install = runner.pull_task_input, runner.install_from_fab
    announced: dict[str, str] = {}

    def pull_and_note(client: object) -> tuple:
        message, context, run, fab = pull(client)
        announced.update(run_id=str(run.run_id), app=f"{run.fab_id} {run.fab_version}", hash=str(fab.hash_str))
        return message, context, run, fab

    def install_if_approved(fab_file: Path | bytes, *args: object, **kwargs: object) -> Path:
        content = fab_file if isinstance(fab_file, bytes) else Path(fab_file).read_bytes()
        run_id = announced.get("run_id", "?")
        try:
            digest = check_fab(content, announced.get("hash", ""), load_approval(approved))
            if announced.get("app") and announced["app"] != fab_identity(content):
                raise AppNotApproved(f"the run announces app {announced['app']} but its bundle is "
                                     f"{fab_identity(content)}: refused (Flower would load another folder)")
        except AppNotApproved as refusal:
            _say(f"REFUSED run {run_id}: {refusal}")
            raise
        _say(f"approved run {run_id}: app {fab_identity(content)}, FAB sha256 {digest[:16]}...")
        return install(content, *args, **kwargs)

    runner.pull_task_input, runner.install_from_fab = pull_and_note, install_if_approved


def refuse_task(command: str) -> NoReturn:
    """Body of the stubs for every task type but ``flwr-clientapp``: this site runs no such process."""
    _say(f"REFUSED: the SuperExec asked for `{command}`; this site runs only ClientApps of the app it approved")
    sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    """Cold path: ``app_gate.py --approved FILE --real FLWR_CLIENTAPP -- ARGS``: guard, then Flower's own main."""
    ap = argparse.ArgumentParser(description="Run Flower's flwr-clientapp, installing only the approved app.")
    ap.add_argument("--approved", type=Path, required=True)
    ap.add_argument("--real", type=Path, required=True, help="Flower's flwr-clientapp script")
    ap.add_argument("--entry", default="flwr.supernode.cli.flwr_clientapp:flwr_clientapp",
                    help="module:function of Flower's flwr-clientapp main")
    ap.add_argument("args", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    sys.argv = [str(a.real), *(a.args[1:] if a.args[:1] == ["--"] else a.args)]
    sys.path[0] = str(a.real.parent)  # what Flower's own script sees: its folder first, not this one
    guard(a.approved)
    module, func = a.entry.split(":")
    getattr(importlib.import_module(module), func)()
    return 0


if __name__ == "__main__":
    sys.exit(main())

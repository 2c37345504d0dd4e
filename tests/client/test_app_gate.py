"""client/app_gate.py: a site installs only the app bundle it approved; real FABs built by Flower's own builder.

The whole path with real processes (a SuperNode refusing another app, warm and cold): tests/integration/
test_deploy.py; the launcher and supervisor calling the gate: tests/client/test_warm_start.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from flwr.cli.build import build_fab_from_disk

from client import app_gate, warm_start
from client.app_gate import AppNotApproved, build_app_fab, check_fab, load_approval, record_approval

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "1.0.0"
description = "a test app"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "{publisher}"

[tool.flwr.app.components]
serverapp = "pkg.server:app"
clientapp = "pkg.client:app"

[tool.flwr.app.config]
"""


def _app(folder: Path, *, name: str = "approved", publisher: str = "site-test", client: str = "X = 1\n") -> Path:
    (folder / "pkg").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name, publisher=publisher))
    (folder / "pkg" / "__init__.py").write_text("")
    (folder / "pkg" / "client.py").write_text(client)
    (folder / "pkg" / "server.py").write_text("Y = 2\n")
    (folder / "README.md").write_text("# test app\n")
    return folder


@pytest.fixture
def approved(tmp_path):
    app = _app(tmp_path / "approved")
    return app, record_approval(tmp_path / "approved-app.json", app), tmp_path / "approved-app.json"


def test_the_site_builds_the_same_bytes_flwr_run_would_send(tmp_path):
    app = _app(tmp_path / "app")
    (app / ".gitignore").write_text(".venv/\nruns/\n/tmp/\n")
    for skipped in (".venv/lib/site.py", "runs/x/summary.json", "tmp/notes.md", "pkg/__pycache__/c.py"):
        (app / skipped).parent.mkdir(parents=True, exist_ok=True)
        (app / skipped).write_text("ignored\n")
    (app / "sub" / "tmp").mkdir(parents=True)
    (app / "sub" / "tmp" / "kept.py").write_text("K = 1\n")  # /tmp/ is anchored: sub/tmp is not ignored
    (app / "outside.py").symlink_to(tmp_path / "elsewhere.py")
    (tmp_path / "elsewhere.py").write_text("Z = 3\n")
    ours = build_app_fab(app)
    assert ours == build_fab_from_disk(app)  # Flower's `flwr run` / `flwr build` path, byte for byte
    files = app_gate.fab_files(ours)
    assert "sub/tmp/kept.py" in files and not any(p.startswith((".venv", "runs", "tmp/")) for p in files)
    assert app_gate.fab_identity(ours) == "site-test/approved 1.0.0"


def test_the_approved_bundle_passes(approved):
    app, approval, path = approved
    content = build_fab_from_disk(app)
    digest = hashlib.sha256(content).hexdigest()
    assert check_fab(content, digest, load_approval(path)) == digest == approval.fab_sha256
    raw = json.loads(path.read_text())
    assert raw["app"] == "site-test/approved 1.0.0" and raw["source"] == str(app.resolve())
    assert raw["files"]["pkg/client.py"] == hashlib.sha256(b"X = 1\n").hexdigest()


def test_one_changed_file_is_refused_and_named(approved, tmp_path):
    _, approval, _ = approved
    other = build_fab_from_disk(_app(tmp_path / "changed", client="X = 2  # exfiltrate\n"))
    with pytest.raises(AppNotApproved, match=r"the same app with other files \(changed: pkg/client\.py\)") as err:
        check_fab(other, hashlib.sha256(other).hexdigest(), approval)
    assert hashlib.sha256(other).hexdigest()[:16] in str(err.value) and approval.fab_sha256[:16] in str(err.value)
    assert "Nothing of it was unpacked or run" in str(err.value)


def test_another_app_is_refused(approved, tmp_path):
    _, approval, _ = approved
    rogue = build_fab_from_disk(_app(tmp_path / "rogue", name="rogue", publisher="not-the-operator"))
    with pytest.raises(AppNotApproved, match=r"app not-the-operator/rogue 1\.0\.0 .* another app altogether"):
        check_fab(rogue, hashlib.sha256(rogue).hexdigest(), approval)


def test_bytes_that_are_not_what_they_are_announced_as_are_refused(approved):
    app, approval, _ = approved
    content = build_fab_from_disk(app)
    with pytest.raises(AppNotApproved, match="not to the 0000000000000000... it was announced as"):
        check_fab(content, "0" * 64, approval)
    with pytest.raises(AppNotApproved, match="not a readable app bundle"):
        check_fab(b"not a zip", "", approval)


def test_without_a_readable_approval_everything_is_refused(tmp_path):
    for text in (None, "{}", '{"schema": "fedfusion-approved-app/1", "fab-sha256": "short"}', "not json"):
        path = tmp_path / "approved-app.json"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        with pytest.raises(AppNotApproved, match="runs nothing until `fedfusion site join`"):
            load_approval(path)


def test_guard_installs_only_the_approved_bundle(approved, tmp_path, monkeypatch):
    """The wrapped ``install_from_fab`` of Flower's ClientApp process: approved bytes go through, others never."""
    import flwr.supernode.runtime.run_clientapp as runner

    app, approval, path = approved
    installed: list[bytes] = []
    monkeypatch.setattr(runner, "install_from_fab", lambda content, *a, **k: installed.append(content) or tmp_path)
    good = build_fab_from_disk(app)
    bad = build_fab_from_disk(_app(tmp_path / "rogue", name="rogue", publisher="not-the-operator"))

    current: dict[str, object] = {}
    monkeypatch.setattr(runner, "pull_task_input", lambda client: ("msg", "ctx", current["run"], current["fab"]))
    app_gate.guard(path)  # what the launcher does in every message-process, before Flower's code runs

    def pulled(content: bytes, *, fab_id: str) -> bytes:  # Flower pulls the task's run and FAB, then installs
        current["run"] = SimpleNamespace(run_id=7, fab_id=fab_id, fab_version="1.0.0")
        current["fab"] = SimpleNamespace(hash_str=hashlib.sha256(content).hexdigest(), content=content)
        runner.pull_task_input(None)
        return content

    assert runner.install_from_fab(pulled(good, fab_id="site-test/approved"), skip_prompt=True) == tmp_path
    assert installed == [good]
    with pytest.raises(AppNotApproved, match="another app altogether"):
        runner.install_from_fab(pulled(bad, fab_id="not-the-operator/rogue"), skip_prompt=True)
    with pytest.raises(AppNotApproved, match="announces app site-test/other 1.0.0"):  # Flower would load another folder
        runner.install_from_fab(pulled(good, fab_id="site-test/other"), skip_prompt=True)
    assert installed == [good]


def test_every_other_program_the_superexec_starts_is_a_refusing_stub(tmp_path):
    from flwr.supercore.constant import TASK_TYPE_TO_COMMAND

    assert set(warm_start.REFUSED_COMMANDS) == set(TASK_TYPE_TO_COMMAND.values()) - {"flwr-clientapp"}
    bindir = tmp_path / "bin"
    warm_start.write_launcher(bindir, real=tmp_path / "flwr-clientapp", approved=tmp_path / "approved-app.json")

    for command in warm_start.REFUSED_COMMANDS:
        env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
        p = subprocess.run([command, "--runtime-api-address", "127.0.0.1:1"], capture_output=True, text=True,
                           timeout=30, env=env)
        assert p.returncode == 1 and f"REFUSED: the SuperExec asked for `{command}`" in p.stderr

"""common/runtime/app_files.py: a staged app bundles to exactly the FAB of its folder, without walking ignored folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from common.config import APP_DIR
from common.runtime.app_files import app_files, stage_app


def _app(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "1.0.0"\n\n[tool.flwr.app]\npublisher = "tester"\n\n'
        '[tool.flwr.app.components]\nserverapp = "pkg.server:app"\nclientapp = "pkg.client:app"\n')
    (root / ".gitignore").write_text(".venv/\nbig/images/\n*.pyc\n")
    (root / "pkg" / "server.py").write_text("app = None\n")
    (root / "pkg" / "client.py").write_text("app = None\n")
    (root / "pkg" / "cached.pyc").write_bytes(b"\0")
    (root / "README.md").write_text("demo\n")
    for ignored in (root / ".venv" / "lib", root / "big" / "images"):
        ignored.mkdir(parents=True)
        for i in range(3):
            (ignored / f"f{i}.py").write_text("x = 1\n")
    (root / "big" / "kept.md").write_text("kept\n")
    os.symlink(root / "README.md", root / "link.md")  # Flower skips symlinks; so must we
    return root


def test_the_staged_app_bundles_to_the_same_fab_byte_for_byte(tmp_path):
    app = _app(tmp_path / "demo")
    staged = stage_app(app, tmp_path / "stage")
    assert staged.name == "demo"
    assert build_fab_from_disk(staged) == build_fab_from_disk(app)


def test_ignored_folders_and_symlinks_are_not_collected(tmp_path):
    app = _app(tmp_path / "demo")
    got = set(app_files(app))
    assert not any(p.startswith((".venv/", "big/images/")) for p in got)
    assert "link.md" not in got
    assert {"pyproject.toml", ".gitignore", "pkg/server.py", "big/kept.md", "README.md"} <= got
    # *.pyc is a file pattern, not a folder: collected here, dropped by Flower's own filter (same FAB above)
    assert "pkg/cached.pyc" in got


def test_a_negated_pattern_prunes_nothing(tmp_path):
    app = _app(tmp_path / "demo")
    (app / ".gitignore").write_text(".venv/\n!.venv/lib/f0.py\n")
    assert ".venv/lib/f0.py" in app_files(app)
    assert build_fab_from_disk(stage_app(app, tmp_path / "stage")) == build_fab_from_disk(app)


def test_staging_refuses_an_existing_folder(tmp_path):
    app = _app(tmp_path / "demo")
    stage_app(app, tmp_path / "stage")
    with pytest.raises(FileExistsError, match="new folder only"):
        stage_app(app, tmp_path / "stage")


def test_this_checkout_stages_to_the_fab_flwr_run_would_build(tmp_path):
    assert build_fab_from_disk(stage_app(APP_DIR, tmp_path)) == build_fab_from_disk(APP_DIR)

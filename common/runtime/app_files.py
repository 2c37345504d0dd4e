"""The files of a Flower app folder that its FAB can hold, found without walking what .gitignore ignores.

Flower's ``flwr run APP_DIR`` builds the FAB with ``flwr.cli.utils.collect_files``, which walks EVERY file under the
folder (resolving each path) and only then drops what .gitignore ignores. In a checkout that holds its own
``.venv`` (``make`` puts it there: ~57,000 files) or prepared data (Fashion-MNIST's 60,000 PNGs under
``data/fashion-mnist/images``), that walk took 5.6 s of every ``fedfusion simulate`` (2026-12-03, BENCHMARKS.md),
before the run even started; Flower's floor app, in a folder of its own, pays nothing. So:

* :func:`app_files` walks like ``collect_files`` (no symlinks, nothing resolving outside the root) but does not
  descend into folders the app's .gitignore ignores (with a negated ``!`` pattern it prunes nothing);
* :func:`stage_app` copies those files into a folder of their own, which ``flwr run`` then bundles.

Pruning is only a shortcut: Flower filters those files out again by the same .gitignore, so the FAB built from the
staged copy is byte for byte the FAB of the original folder (``tests/common/test_runtime_app_files.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["app_files", "stage_app"]


def app_files(root: Path) -> dict[str, Path]:
    """``{relative POSIX path: path}`` of the files under ``root`` that Flower's FAB build considers."""
    from flwr.cli.utils import build_pathspec, load_gitignore_patterns

    root = Path(root)
    ignore = root / ".gitignore"
    patterns = load_gitignore_patterns(ignore.read_bytes()) if ignore.is_file() else []
    spec = build_pathspec(patterns) if not any(p.lstrip().startswith("!") for p in patterns) else None
    resolved, files = root.resolve(), {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        if spec is not None:
            dirnames[:] = [d for d in dirnames
                           if not spec.match_file(f"{d}/" if rel_dir == "." else f"{rel_dir}/{d}/")]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink() and path.resolve().is_relative_to(resolved):
                files[path.relative_to(root).as_posix()] = path
    return files


def stage_app(root: Path, dest: Path) -> Path:
    """Copy the app in ``root`` (:func:`app_files`) to a new folder ``dest/<root's name>`` and return it.

    The folder keeps ``root``'s name (Flower checks an app folder's name) and holds a snapshot: editing the checkout
    during the run changes nothing in it.
    """
    root = Path(root).resolve()
    staged = Path(dest) / root.name
    if staged.exists():
        raise FileExistsError(f"{staged} exists: an app is staged into a new folder only")
    for rel, path in app_files(root).items():
        target = staged / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return staged

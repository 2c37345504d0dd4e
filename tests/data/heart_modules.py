"""The heart example's data-preparation script (data/uci-heart-disease/prepare.py: domain code, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "data" / "uci-heart-disease" / "prepare.py"
_spec = importlib.util.spec_from_file_location("heart_prepare", _PATH)
assert _spec is not None and _spec.loader is not None
prepare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prepare)

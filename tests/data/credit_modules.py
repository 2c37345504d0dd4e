"""The bank example's data-preparation modules (data/german-credit/*.py: domain code, not a package), for tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

FOLDER = Path(__file__).resolve().parents[2] / "data" / "german-credit"


def load(name: str) -> ModuleType:
    """``data/german-credit/<name>.py`` as a module (``canonical`` or ``prepare``)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, FOLDER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

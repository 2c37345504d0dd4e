"""The packages' layering: ``client/`` and ``server/`` import only ``common/`` of ours (never ``simulations/``,
``benchmarks/`` or each other), and ``common/`` imports none of them. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OURS = {"client", "server", "common", "simulations", "benchmarks"}
ALLOWED = {"client": {"client", "common"}, "server": {"server", "common"}, "common": {"common"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {str(p.relative_to(REPO)): sorted(_imports(p) - ALLOWED[package])
             for p in sorted((REPO / package).rglob("*.py"))}
    assert not {k: v for k, v in wrong.items() if v}, f"{package}/ reaches outside {sorted(ALLOWED[package])}"

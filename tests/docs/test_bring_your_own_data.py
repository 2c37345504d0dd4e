"""docs/bring-your-own-data.md runs as written: every ``bash`` block, in order, in one shell; every ``toml file=NAME``
block written to ``$WORK/NAME`` first. So the page and what is tested cannot drift.

The walk ends in a real simulation (3 clinics, DP, 3 rounds) and a passing audit: the third domain (WDBC breast
cancer, real values in CONSTRUCTED clinic files) trains and audits with configuration only.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "bring-your-own-data.md"
EXAMPLE = ROOT / "data" / "breast-cancer"
_BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def blocks() -> list[tuple[str, dict[str, str], str]]:
    """The page's fenced blocks: (language, {key: value} from the info string, body)."""
    out = []
    for lang, info, body in _BLOCK.findall(PAGE.read_text()):
        out.append((lang, dict(re.findall(r"(\w+)=(\S+)", info)), body))
    return out


def script() -> str:
    """One bash script: the page's shell blocks, with its named TOML blocks written where they stand."""
    parts = []
    for lang, info, body in blocks():
        if lang == "bash":
            parts.append(body)
        elif lang == "toml" and "file" in info:
            assert "FEDFUSION_DOC_EOF" not in body
            parts.append(f'cat > "$WORK/{info["file"]}" <<\'FEDFUSION_DOC_EOF\'\n{body}FEDFUSION_DOC_EOF\n')
    return "\n".join(parts)


def test_the_pages_config_is_the_packaged_example() -> None:
    files = {info["file"]: body for lang, info, body in blocks() if lang == "toml" and "file" in info}
    assert set(files) == {"schema.toml", "north.toml", "south.toml", "east.toml", "scenario.toml"}
    for name in ("schema.toml", "north.toml", "south.toml", "east.toml"):
        assert files[name] == (EXAMPLE / name).read_text(), name
    packaged = tomllib.loads((ROOT / "simulations" / "scenarios" / "breast-cancer.toml").read_text())
    assert tomllib.loads(files["scenario.toml"])["sites"] == packaged["sites"]
    commands = script()
    for command in ("schema infer", "site init", "site check", "simulate", "audit"):
        assert f"fedfusion {command}" in commands
    assert "import " not in commands and "python" not in commands  # configuration only: no Python on the page


@pytest.mark.slow
def test_every_command_on_the_page_runs(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = {**os.environ, "WORK": str(work), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script()], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1500)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (work / "draft-schema.toml").is_file() and (work / "draft-north.toml").is_file()
    assert "public ranges (or center and scale)" in proc.stderr  # schema infer said what to confirm
    assert "OK: ready to join (nothing was sent)" in proc.stdout  # site check
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary["completed"] and set(summary["sites"]) == {"north", "south", "east"}
    for site in summary["sites"].values():
        assert site["rounds_trained"] == 3 and 0 < site["epsilon"] <= 4.0 + 1e-6
    assert "Wisconsin" in summary["data_note"] and "UCI Heart Disease" not in json.dumps(summary)
    assert "PASSED" in proc.stdout  # the audit (exit 0, or the script would have stopped)

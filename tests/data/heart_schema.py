"""The heart example's canonical columns and vocabularies, read from its schema (as the old loader's constants)."""

from __future__ import annotations

from pathlib import Path

from common.data.schema import load_schema

SCHEMA = load_schema(Path(__file__).resolve().parents[2] / "data" / "schemas" / "heart.toml")
#: the columns a mapping fills (the generated note and image are built, never read)
CANONICAL_COLUMNS = tuple(f.name for f in SCHEMA.features if f.generated is None)
#: categorical input features -> their vocabulary
CATEGORIES = {f.name: f.vocabulary for f in SCHEMA.features if f.type == "categorical" and f.role == "feature"}
#: a ``[scenario]`` table naming the heart schema and the repository's data folder (the sites' mapping paths are
#: relative to it), for scenario files that tests write (appended after [[sites]])
SCENARIO_SCHEMA = f'\n[scenario]\nschema = "{SCHEMA.path}"\ndata-dir = "{SCHEMA.path.parents[1]}"\n'

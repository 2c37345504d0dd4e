"""Scenario text for integration tests: real UCI hospitals read through the shipped schema and mapping."""

from __future__ import annotations

from common.config import APP_DIR


def scenario_head(name: str, description: str) -> str:
    """The ``[scenario]`` table: the heart schema and the repository's data folder, as absolute paths."""
    return (f'[scenario]\nname = "{name}"\nschema = "{APP_DIR / "data" / "schemas" / "heart.toml"}"\n'
            f'data-dir = "{APP_DIR / "data"}"\ndescription = "{description}"\n')


def hospital(name: str, modalities: tuple[str, ...], max_records: int) -> str:
    """One ``[[sites]]`` table: hospital ``name``'s rows of the UCI export, with its public max-records."""
    mods = ", ".join(f'"{m}"' for m in modalities)
    return (f'\n[[sites]]\nname = "{name}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
            f'select = {{ hospital = "{name}" }}\nmodalities = [{mods}]\nprivacy = {{ max-records = {max_records} }}\n')

"""What leaves a site whose own file allows copies (``duplicate-records = "allow"``): never the number of copies.

``max-copies=k`` (the largest number of training records that are copies of one another, common/data/duplicates.py)
is a count of the site's rows that its ε does not cover. It belongs in the site's OWN ledger (the audit reads it
there and warns about group privacy), and never in its train reply. The site here is the breast-cancer clinic
"north" (real WDBC values; layout CONSTRUCTED) with one real record copied 50 times under new ids by this test
(CONSTRUCTED), deployed (its own ``site.toml``), and every train message goes through the real ClientApp handler
(``client.app.app``), once per way a site answers a train message: DP-SGD, central mode, without DP, and a decline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Message

from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.privacy.entry import statement_copies
from common.privacy.ledger import Ledger
from common.records import CENTRAL_NOISE_MULTIPLIER, PRIVACY, STATUS_DECLINED, STATUS_TRAINED
from tests.client.messages import send_train
from tests.data.north_copies import copy_example

# what the copies statement (common.privacy.entry.copies_statement) says, in any of its parts
COPY_WORDS = ("max-copies", "duplicate-records", "group-privacy", "copies", "protected as a group")

# case -> (the site's own [privacy] keys beside duplicate-records, run settings, message config, the reply's status,
#          whether the site's ledger states the copies)
CASES = {
    "dp-sgd": ("max-records = 300\n", {}, {}, STATUS_TRAINED, True),
    "central": ('max-records = 300\nprivacy-mode = "central"\n', {"privacy-mode": "central"},
                {CENTRAL_NOISE_MULTIPLIER: 4.0}, STATUS_TRAINED, True),
    "without-dp": ("max-records = 300\ndp = false\n", {"dp": False}, {}, STATUS_TRAINED, False),  # its row: ε = ∞
    # more training rows (with the copies) than its public bound: it declines, nothing is released
    "declined": ("max-records = 100\n", {}, {}, STATUS_DECLINED, False),
}


def _deployed_site(tmp_path: Path, own_privacy: str) -> tuple[Path, Path]:
    """North with 50 copies of its first record, its scenario and its own site.toml; (site.toml, scenario)."""
    data = copy_example(tmp_path / "data", copies=True)
    scenario = tmp_path / "north-scenario.toml"
    scenario.write_text(f'[scenario]\nname = "north-only"\nschema = "{data / "schema.toml"}"\ndata-dir = "{data}"\n\n'
                        '[[sites]]\nname = "north"\nsource = "mapped"\nmapping = "north.toml"\n'
                        'modalities = ["tabular"]\nprivacy = { max-records = 300 }\n')
    site = tmp_path / "site.toml"
    site.write_text(f'[site]\nname = "north"\nsource = "mapped"\nmapping = "north.toml"\ndata-dir = "{data}"\n'
                    f'state-dir = "{tmp_path / "state"}"\nscenario = "{scenario}"\nmodalities = ["tabular"]\n'
                    f'[privacy]\nduplicate-records = "allow"\n{own_privacy}')
    return site, scenario


def _everything_said(reply: Message) -> list[str]:
    """Every text the reply carries: record names, keys, and every value that is not an array."""
    said: list[str] = []
    if reply.has_error():
        return [str(reply.error.reason)]
    for name, record in reply.content.items():
        said.append(name)
        if isinstance(record, ArrayRecord):
            said.extend(record.keys())
            continue
        for key, value in record.items():
            said.append(str(key))
            said.extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return said


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_train_reply_never_carries_the_number_of_copies(tmp_path: Path, case: str) -> None:
    own, settings, message_config, status, ledger_states_copies = CASES[case]
    site, scenario = _deployed_site(tmp_path, own)
    run_config = app_defaults() | {"num-server-rounds": 1, "scenario-file": str(scenario), "batch-size": 32} | settings
    run = parse_run_config(run_config)
    state = initial_trainable_state(build_model(run.model, scenario=load_scenario(scenario), seed=0))

    reply = send_train(site, run_config, ArrayRecord(state), federation_id="fed-copies", message_config=message_config)

    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    privacy = reply.content.config_records[PRIVACY]
    assert privacy["status"] == status, (privacy["code"], privacy["reason"])
    leaked = [text for text in _everything_said(reply) if any(word in text for word in COPY_WORDS)]
    assert leaked == [], f"the {case} reply says how many of the site's records are copies: {leaked}"
    # not vacuous: the site trained on the copies it allows, and its OWN ledger states how many (the audit's source)
    rows = Ledger(tmp_path / "state" / "ledger.sqlite").entries(site="north")
    assert rows, "the site recorded nothing"
    stated = {statement_copies(r.reason) for r in rows}
    if ledger_states_copies:
        assert len(stated) == 1 and stated.pop() > 20, [r.reason for r in rows]
    else:
        assert stated == {1}, [r.reason for r in rows]

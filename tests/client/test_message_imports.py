"""What a site's message-process imports: a site without image files never loads Pillow (issue 15's start-up cost).

Each Ray actor, and each deployed message-process without warm start, imports what its first message needs. Pillow
is imported only by ``common.data.images`` and only where an image file is read; here the packaged hospitals
scenario's VA Long Beach (tabular only, real UCI rows) handles a real train message, folded evaluation included,
through ``client.app.app`` in a fresh interpreter, and the test asserts that it trained and never imported PIL.
(Opacus, its SciPy and torch._dynamo are needed by every DP-SGD message: BENCHMARKS.md says where they come from.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# one train message to partition 3 of the packaged hospitals scenario (va_long_beach: tabular only), as Flower's
# simulation engine hands it to the ClientApp; prints the reply's status and which of the named modules are loaded
ONE_MESSAGE = """
import json, sys
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app
from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.records import ARRAYS, CONFIG, EVALUATE_GLOBAL, PRIVACY

out, watched = sys.argv[1], sys.argv[2].split(",")
run_config = app_defaults() | {"out-dir": out + "/out", "site-state-root": out + "/sites",
                               "site-cache-root": out + "/cache", "federation-id": "fed-imports"}
run = parse_run_config(run_config)
state = initial_trainable_state(build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0))
TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 4
msg = Message(content=RecordDict({ARRAYS: ArrayRecord(state), CONFIG: ConfigRecord(
    {"server-round": 1, "federation-id": "fed-imports", EVALUATE_GLOBAL: True})}), dst_node_id=4,
    message_type=MessageType.TRAIN)
context = Context(run_id=1, node_id=4, node_config={"partition-id": 3, "num-partitions": 4}, state=RecordDict(),
                  run_config=run_config)
reply = app(msg, context)
print(json.dumps({"status": reply.content[PRIVACY]["status"], "evaluated": "evaluation" in reply.content,
                  "loaded": [m for m in watched if m in sys.modules]}))
"""


def _fresh(code: str, *args: str) -> str:
    """stdout of ``code`` run by a fresh interpreter at the repository root."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_loading_the_client_app_imports_no_pillow():
    out = _fresh("import sys, client.app\nprint('PIL' in sys.modules)")
    assert out.split() == ["False"]


def test_a_tabular_site_trains_and_evaluates_without_pillow(tmp_path):
    reply = json.loads(_fresh(ONE_MESSAGE, str(tmp_path), "PIL,opacus").splitlines()[-1])
    # opacus is listed as the control: the message did run DP-SGD in this process
    assert reply == {"status": "trained", "evaluated": True, "loaded": ["opacus"]}


def test_an_image_file_is_still_read_with_pillow(tmp_path):
    """The lazy import is the same code: a PNG whose size differs from the schema's is read and resized."""
    code = ("import sys, numpy as np\n"
            "from common.data.images import load_image\n"
            "assert 'PIL' not in sys.modules\n"
            "from PIL import Image\n"
            "Image.fromarray(np.full((4, 6), 255, dtype=np.uint8), mode='L').save(sys.argv[1])\n"
            "a = load_image(sys.argv[1], size=(2, 3), channels=1)\n"
            "print(a.shape, float(a.min()), float(a.max()))\n")
    assert _fresh(code, str(tmp_path / "white.png")).split() == ["(1,", "2,", "3)", "1.0", "1.0"]

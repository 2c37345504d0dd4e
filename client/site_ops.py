"""A partner site's commands: write its config and key pair, join a federation, leave it.

Plain glue around ``flower-supernode``; no Flower handlers here (those are in ``client/app.py``).
A site folder made by ``fedfusion site init DIR`` looks like::

    DIR/site.toml              the site config (read by `site check`, by `site join` and by the ClientApp)
    DIR/keys/site_ecdsa        the site's private key (OpenSSH ECDSA P-384, 0600): never leaves the site
    DIR/keys/site_ecdsa.pub    its public key: send it to the federation operator
    DIR/data/                  only with --example-data: a GENERATED example export + mapping + schema
    DIR/state/                 state-dir: ledger.sqlite (the site's privacy ledger), cache/, flwr-home/, logs/

``fedfusion site check`` lives in :mod:`client.site_check`.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from client.warm_start import supervisor_command
from common.config import APP_DIR, MODALITIES, ConfigError, SiteConfig, app_defaults, load_site_file, parse_run_config
from common.pki import make_site_keypair
from common.runtime.processes import free_port
from common.runtime.service import ServiceError, flower_env, read_pid, run_foreground, start_detached, stop_pidfile

__all__ = [
    "KEY_NAME",
    "SiteError",
    "SiteInit",
    "key_path",
    "init_site",
    "site_template",
    "supernode_command",
    "join_federation",
    "stop_site",
]

KEY_NAME = "site_ecdsa"  # DIR/keys/site_ecdsa(.pub), next to site.toml


class SiteError(RuntimeError):
    """A site command cannot go on; the message says what to do."""


@dataclass(frozen=True)
class SiteInit:
    """What ``site init`` asks for; every path absolute."""

    folder: Path  # the site folder (site.toml, keys/, state/)
    name: str  # the site's name (its ledger key; the operator registers its key under it)
    source: str = "mapped-csv"  # data source: mapped-csv (own export + mapping) | uci-heart (canonical CSV)
    data_dir: Path | None = None  # the site's data folder (default: DIR/data)
    mapping: str = ""  # mapped-csv: mapping TOML, relative to data_dir (default mappings/<name>.toml)
    hospital: str = ""  # uci-heart: which hospital's rows
    modalities: tuple[str, ...] = ("tabular", "text")
    device: str = "auto"  # auto | cpu | cuda
    target_epsilon: float = 4.0  # ε one run's planned training reaches
    epsilon_budget: float = 8.0  # lifetime ε of this dataset
    delta: float = 0.0  # 0 = default strictly below 1/max-records
    max_records: int | None = None  # PUBLIC bound on the training records; None: proposed from the data
    state_dir: Path | None = None  # default DIR/state
    example_data: str = ""  # copy the GENERATED example export of this hospital into DIR/data


def key_path(config: Path) -> Path:
    """The private key ``site init`` wrote next to ``config``."""
    return Path(config).resolve().parent / "keys" / KEY_NAME


def _toml(value: object) -> str:
    return json.dumps(value)  # TOML basic strings and arrays of them accept JSON syntax


def _data_paths(req: SiteInit, data_dir: Path) -> list[str]:
    """One comment line per modality: where its data come from."""
    if req.source == "mapped-csv":
        export = "the export named by [file] path in " + str(data_dir / req.mapping)
        try:
            from common.data.mapping import load_mapping

            export = str(load_mapping(data_dir / req.mapping).file.path.resolve())
        except Exception:  # not written yet: `site check` will say what is wrong
            pass
    else:
        export = str(data_dir / "uci-heart-disease" / "heart_disease_uci.csv") + f" (rows of {req.hospital!r})"
    lines = {"tabular": f"{export}", "text": "clinical notes GENERATED from the same rows' categorical fields "
                                              "(no separate file)",
             "image": "not provided by this data source"}
    return [f"#   {m:<8} {lines[m]}" for m in req.modalities]


def site_template(req: SiteInit, *, data_dir: Path, state_dir: Path) -> str:
    """The commented ``site.toml`` for ``req`` (``common.config.load_site_file`` reads it)."""
    src = (f'mapping = {_toml(req.mapping)}   # mapping TOML, relative to data-dir (or absolute): file, layout, '
           f'units, codes\n# hospital = "..."   # only if the export holds several hospitals'
           if req.source == "mapped-csv" else
           f'hospital = {_toml(req.hospital)}   # which hospital\'s rows of the canonical CSV')
    return f"""\
# fedfusion site configuration. Read by `fedfusion site check`, by `fedfusion site join`, and by this
# site's ClientApp (flower-supernode gets --node-config 'site-config="{req.folder / 'site.toml'}"').
# Every path is absolute. Nothing in this file is sent to the federation.

[site]
# The site's name: its key in every privacy ledger; the operator registers your public key under it.
name = {_toml(req.name)}

# Data source: "mapped-csv" = your own export read through a mapping file (data/mappings/README.md in the
# fedfusion repository); "uci-heart" = the canonical UCI Heart Disease CSV, filtered by hospital.
source = {_toml(req.source)}
{src}

# The site's data folder.
data-dir = {_toml(str(data_dir))}

# Modalities this site holds; the data path of each:
{chr(10).join(_data_paths(req, data_dir))}
modalities = {_toml(list(req.modalities))}

# Training device: "auto" (CUDA if present, else CPU), "cpu" or "cuda".
device = {_toml(req.device)}

# The site's own state: privacy ledger (ledger.sqlite), caches (frozen text embeddings), Flower's files
# (flwr-home/), logs/. Back it up and never delete it: the ledger is what keeps your data's privacy budget
# from being spent twice, across rounds, runs and rejoins.
state-dir = {_toml(str(state_dir))}

# Keep the frozen text encoder's features of your notes in state-dir/cache/ (derived from patient notes; they
# never leave this machine). false: recompute them in every message (slower rounds; nothing derived on disk).
feature-cache = true

# Start each message's training process from a supervisor that has already imported Flower, torch and Opacus
# (forked, so it costs ~0.5 s instead of ~6 s a round; client/warm_start.py). false: Flower's own fresh process.
warm-start = true

# Send the per-message timing split (compute/setup/startup seconds) in replies. It grows with the number of
# rows and the DP batch sizes (a side channel), so it is off unless you choose to share it.
report-timing = false

[privacy]
# Sample-level differential privacy of this site's dataset (add/remove one record). Each value is the LIMIT this
# site accepts: a run may ask for more privacy (a smaller epsilon, ...), never less; such a round is declined,
# naming the setting, and nothing is released.
{_max_records_line(req)}
target-epsilon = {req.target_epsilon!r}   # ε one run's planned training reaches (the noise is calibrated to it)
epsilon-budget = {req.epsilon_budget!r}   # lifetime ε: the site declines any round that would exceed it
delta = {req.delta!r}   # δ; 0 = default strictly below 1/max-records
# dp = false                 # allow runs WITHOUT differential privacy when a run asks (recorded as ε = ∞)
# privacy-mode = "central"   # allow central mode when a run asks: the server sees this site's raw model updates
"""


_PUBLIC = ("# PUBLIC: an upper bound on this site's training records, sent to the federation. The sample rate, the\n"
           "# steps, δ and the weight of this site's updates derive from it. Declare one you will not exceed: with\n"
           "# more training rows the site declines (and that decline itself shows it holds more).\n")


def _max_records_line(req: SiteInit) -> str:
    if req.max_records:
        return _PUBLIC + f"max-records = {int(req.max_records)}"
    return _PUBLIC + "# max-records = ...   REQUIRED before this site can train (site init could not read the data)"


def propose_max_records(rows: int) -> int:
    """``rows`` rounded UP to two significant digits (303 -> 310, 1234 -> 1300): a proposal, never below."""
    magnitude = 10 ** max(0, len(str(int(rows))) - 2)
    return -(-int(rows) // magnitude) * magnitude


def max_records_line(config: Path) -> str:
    """What ``site init`` says about the bound it wrote into ``config``."""
    import tomllib

    value = tomllib.loads(Path(config).read_text()).get("privacy", {}).get("max-records")
    return (f"{value}  (PUBLIC: the federation sees it; edit [privacy] max-records if it is not the bound you "
            "want to declare)" if value else "NOT SET: edit [privacy] max-records (a PUBLIC bound on your training "
            "records) before joining")


def _proposal(config: Path) -> int | None:
    """max-records proposed from the rows the site's data holds now (train and test), or None if unreadable."""
    try:
        from common.data.sources import load_site_data

        site = load_site_file(config, run=parse_run_config(app_defaults()))
        train, test = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir, seed=0)
        return propose_max_records(len(train) + len(test))
    except Exception:  # noqa: BLE001 - no data yet: the file says the bound is required
        return None


def _copy_example(hospital: str, data_dir: Path) -> str:
    """Copy the repository's GENERATED export of ``hospital`` with its mapping and schema; return the mapping."""
    from common.data.mapping import load_mapping

    src_root = APP_DIR / "data"
    mapping = src_root / "mappings" / f"{hospital}.toml"
    if not mapping.is_file():
        names = sorted(p.stem for p in (src_root / "mappings").glob("*.toml")) if src_root.is_dir() else []
        raise SiteError(f"no example data for {hospital!r} in {src_root / 'mappings'}; available: {names}")
    m = load_mapping(mapping)
    for src in (mapping, m.schema.path, m.file.path):
        rel = Path(src).resolve().relative_to(src_root.resolve())
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, data_dir / rel)
    return f"mappings/{hospital}.toml"


def init_site(req: SiteInit, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``DIR/site.toml`` and the site's key pair; return (config, public key).

    Raises
    ------
    SiteError
        If ``DIR/site.toml`` exists (and not ``force``), or the written config does not validate.
    """
    folder = req.folder.expanduser().resolve()
    config = folder / "site.toml"
    if config.exists() and not force:
        raise SiteError(f"{config} exists; edit it, or pass --force to overwrite it and make a new key pair")
    if (req.state_dir or folder / "state").expanduser().joinpath("ledger.sqlite").exists():
        raise SiteError(f"{folder} already has a privacy ledger, whose signed heads are anchored to this site's "
                        "key: keep the key and edit site.toml by hand instead of re-initialising")
    if req.source not in ("mapped-csv", "uci-heart"):
        raise SiteError(f"--source must be mapped-csv or uci-heart (got {req.source!r})")
    if any(m not in MODALITIES for m in req.modalities):
        raise SiteError(f"--modalities must be drawn from {MODALITIES} (got {list(req.modalities)})")
    data_dir = (req.data_dir or folder / "data").expanduser().resolve()
    state_dir = (req.state_dir or folder / "state").expanduser().resolve()
    mapping = req.mapping or (f"mappings/{req.name}.toml" if req.source == "mapped-csv" else "")
    if req.source == "uci-heart" and not req.hospital:
        raise SiteError("--source uci-heart needs --hospital (cleveland, hungary, switzerland, va_long_beach)")
    folder.mkdir(parents=True, exist_ok=True)
    if req.example_data:
        if req.source != "mapped-csv":
            raise SiteError("--example-data copies a mapped export: use it with --source mapped-csv")
        mapping = _copy_example(req.example_data, data_dir)
    full = SiteInit(**{**req.__dict__, "folder": folder, "mapping": mapping})
    config.write_text(site_template(full, data_dir=data_dir, state_dir=state_dir))
    if full.max_records is None:  # propose a bound from the data it holds now (rounded up; the file says PUBLIC)
        proposed = _proposal(config)
        if proposed:
            full = SiteInit(**{**full.__dict__, "max_records": proposed})
            config.write_text(site_template(full, data_dir=data_dir, state_dir=state_dir))
    try:
        load_site_file(config, run=parse_run_config(app_defaults()))
    except ConfigError as err:
        config.unlink()  # nothing half-made stays behind
        raise SiteError(f"the config would not validate: {err}") from None
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)  # ledger, cached features of the notes, links to the key: this site's user only
    keys = make_site_keypair(folder / "keys" / KEY_NAME, comment=f"fedfusion-site-{req.name}")
    _link_signing_key(keys.private_key, state_dir)
    return config, keys.public_key


def _link_signing_key(private_key: Path, state_dir: Path) -> None:
    """Sign the ledger's heads with the key the operator registers: ``<state-dir>/site_key`` -> the site key.

    ``common.privacy.signing`` reads ``<state-dir>/site_key`` (and ``.pub``); linking them to the SuperNode
    key makes the signed ledger heads the server records traceable to the registered site.
    """
    for src, dst in ((private_key, state_dir / "site_key"),
                     (private_key.with_name(private_key.name + ".pub"), state_dir / "site_key.pub")):
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        dst.symlink_to(src)


def _load(config: Path) -> SiteConfig:
    try:
        return load_site_file(config, run=parse_run_config(app_defaults()))
    except ConfigError as err:
        raise SiteError(str(err)) from None


def supernode_command(config: Path, *, superlink: str, root_cert: Path, key: Path, port: int) -> list[str]:
    """The ``flower-supernode`` command line for the site config ``config`` (absolute)."""
    if '"' in str(config) or "'" in str(config):
        raise SiteError(f"the site config path may not contain quotes: {config}")
    return [str(Path(sys.executable).parent / "flower-supernode"),
            "--superlink", superlink,
            "--root-certificates", str(root_cert),
            "--auth-supernode-private-key", str(key),
            "--host", "127.0.0.1", "--port", str(port),  # this site's own ClientAppIo port (local only)
            # quoted: unquoted, Flower opens a value ending in .toml as a node-config file
            "--node-config", f"site-config={json.dumps(str(config))}"]


def join_federation(config: Path, *, superlink: str, root_cert: Path, key: Path | None = None,
                    port: int | None = None, detach: bool = False) -> int:
    """Start this site's ``flower-supernode``: TLS to the SuperLink, authenticated with the site key.

    Parameters
    ----------
    config
        The site's ``site.toml``.
    superlink
        ``HOST:PORT`` of the federation's SuperLink.
    root_cert
        The federation's CA certificate (``ca.crt`` from the operator).
    key
        The site's private key (default: ``keys/site_ecdsa`` next to ``config``).
    port
        Local port of the SuperNode's ClientAppIo API (default: a free one); each SuperNode on a
        machine needs its own.
    detach
        Run in the background (PID in ``<state-dir>/supernode.pid``); otherwise until Ctrl-C.

    Returns
    -------
    int
        0 when detached and running; otherwise the SuperNode's exit code (305: key not registered).
    """
    config = Path(config).expanduser().resolve()
    site = _load(config)
    key = Path(key).expanduser().resolve() if key else key_path(config)
    root_cert = Path(root_cert).expanduser().resolve()
    for what, path in (("private key", key), ("root certificate", root_cert)):
        if not path.is_file():
            raise SiteError(f"{what} {path} not found")
    if key.stat().st_mode & 0o077:
        raise SiteError(f"private key {key} is readable by others; run: chmod 600 {key}")
    if ":" not in superlink:
        raise SiteError(f"--superlink must be HOST:PORT (got {superlink!r})")
    state = site.state_dir
    pidfile, log = state / "supernode.pid", state / "logs" / "supernode.log"
    if read_pid(pidfile) is not None:
        raise SiteError(f"site '{site.spec.name}' is already joined (PID file {pidfile}); "
                        f"`fedfusion site stop {config}` first")
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)  # as site init makes it (a state-dir made by hand may be wider)
    (state / "flwr-home").mkdir(exist_ok=True)
    cmd = supernode_command(config, superlink=superlink, root_cert=root_cert, key=key, port=port or free_port())
    if site.warm_start:
        cmd = supervisor_command(cmd, state_dir=state)
    env = flower_env(state / "flwr-home")
    if not detach:
        print(f"site '{site.spec.name}' joining {superlink} (log {log}); Ctrl-C leaves", flush=True)
        code = run_foreground(cmd, env=env, log=log)
        if code == 305:
            print(f"site '{site.spec.name}': the SuperLink refused this site's key. Send "
                  f"{key.with_name(key.name + '.pub')} to the operator to register, then join again.", file=sys.stderr)
        return code
    try:
        pid = start_detached(cmd, env=env, log=log, pidfile=pidfile, port=None)
    except ServiceError as err:
        raise SiteError(f"the SuperNode did not start: {err}") from None
    print(f"site '{site.spec.name}' joined {superlink}: SuperNode PID {pid} (PID file {pidfile}, log {log})")
    return 0


def stop_site(config: Path) -> bool:
    """Stop a SuperNode started with ``site join --detach``; True if one was running."""
    return stop_pidfile(_load(Path(config).expanduser().resolve()).state_dir / "supernode.pid")

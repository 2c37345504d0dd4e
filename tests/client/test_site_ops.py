"""`fedfusion site init / check` and the SuperNode command line, without starting Flower."""

from __future__ import annotations

import stat

import pytest

from client.site_check import check_site, format_check
from client.site_ops import SiteError, SiteInit, init_site, key_path, supernode_command
from common.config import ConfigError, app_defaults, load_site_file, parse_run_config


@pytest.fixture
def cleveland(tmp_path):
    config, pub = init_site(SiteInit(folder=tmp_path / "site", name="cleveland", example_data="cleveland"))
    return config, pub


def test_init_writes_a_valid_config_keys_and_links_the_ledger_signing_key(cleveland):
    config, pub = cleveland
    site = load_site_file(config, run=parse_run_config(app_defaults()))
    assert site.spec.name == "cleveland" and site.spec.source == "mapped-csv"
    assert site.spec.modalities == ("tabular", "text")
    assert site.state_dir == config.parent / "state" and site.data_dir == config.parent / "data"
    assert site.privacy.target_epsilon == 4.0 and site.privacy.epsilon_budget == 8.0
    assert site.warm_start and site.feature_cache and site.privacy.noise_seed == "secret"
    assert not site.report_timing  # a side channel of the row count: off unless the site chooses it
    # the public bound is proposed from the rows its export holds (303, rounded up) and the file says PUBLIC
    assert site.privacy.max_records == 310
    text = config.read_text()
    assert "PUBLIC" in text.split("max-records = 310")[0].rsplit("[privacy]", 1)[1]
    assert "processed.cleveland.data" in text  # the data path of the tabular modality is named
    assert stat.S_IMODE(key_path(config).stat().st_mode) == 0o600
    assert stat.S_IMODE(site.state_dir.stat().st_mode) == 0o700  # ledger and cached note features: the site only
    assert pub.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert (site.state_dir / "site_key").resolve() == key_path(config)
    assert (site.state_dir / "site_key.pub").resolve() == pub


def test_the_proposed_bound_is_rounded_up_never_down():
    from client.site_ops import propose_max_records

    assert [propose_max_records(n) for n in (7, 86, 303, 310, 1234, 99_001)] == [7, 86, 310, 310, 1300, 100_000]


def test_init_refuses_to_overwrite_and_refuses_new_keys_once_a_ledger_exists(cleveland):
    config, _ = cleveland
    with pytest.raises(SiteError, match="exists"):
        init_site(SiteInit(folder=config.parent, name="cleveland", example_data="cleveland"))
    (config.parent / "state" / "ledger.sqlite").write_bytes(b"")
    with pytest.raises(SiteError, match="privacy ledger"):
        init_site(SiteInit(folder=config.parent, name="cleveland", example_data="cleveland"), force=True)


def test_check_counts_rows_per_modality_and_sends_nothing(cleveland):
    config, _ = cleveland
    report = check_site(config)
    assert report.ok, report.errors
    assert (report.train_rows, report.test_rows) == (212, 91)
    counts = {c.modality: (c.train, c.test) for c in report.modalities}
    assert counts == {"tabular": (212, 91), "text": (212, 91)}
    assert report.missing_modalities == []
    assert "OK: ready to join" in format_check(report)


def test_check_reports_a_missing_modality(tmp_path):
    config, _ = init_site(SiteInit(folder=tmp_path / "va", name="va_long_beach", example_data="va_long_beach",
                                   modalities=("tabular",)))
    report = check_site(config)
    assert report.ok and report.missing_modalities == ["text"]


def test_check_names_file_line_and_column_of_a_bad_value(cleveland):
    config, _ = cleveland
    export = config.parent / "data" / "uci-heart-disease" / "exports" / "processed.cleveland.data"
    lines = export.read_text().splitlines()
    fields = lines[16].split(",")
    fields[2] = "7.0"  # cp: no such code
    lines[16] = ",".join(fields)
    export.write_text("\n".join(lines) + "\n")
    report = check_site(config)
    assert not report.ok
    assert "processed.cleveland.data" in report.errors[0] and "line 17" in report.errors[0]
    assert "'cp'" in report.errors[0]
    assert "NOT READY" in format_check(report)


def test_check_names_the_config_key_of_a_bad_setting(cleveland):
    config, _ = cleveland
    config.write_text(config.read_text().replace('device = "auto"', 'device = "tpu"'))
    report = check_site(config)
    assert not report.ok and "device" in report.errors[0] and str(config) in report.errors[0]


def test_check_refuses_a_key_readable_by_others(cleveland):
    config, _ = cleveland
    key_path(config).chmod(0o644)
    report = check_site(config)
    assert any("readable by others" in e for e in report.errors)


def test_supernode_command_quotes_the_site_config_and_uses_tls_and_the_key(cleveland, tmp_path):
    config, _ = cleveland
    cmd = supernode_command(config, superlink="127.0.0.1:9092", root_cert=tmp_path / "ca.crt",
                            key=key_path(config), port=12345)
    assert cmd[cmd.index("--node-config") + 1] == f'site-config="{config}"'
    assert cmd[cmd.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(key_path(config))
    assert cmd[cmd.index("--port") + 1] == "12345" and "--insecure" not in cmd


def test_warm_start_can_be_switched_off_and_must_be_a_boolean(cleveland):
    config, _ = cleveland
    run = parse_run_config(app_defaults())
    config.write_text(config.read_text().replace("warm-start = true", "warm-start = false"))
    assert load_site_file(config, run=run).warm_start is False
    config.write_text(config.read_text().replace("warm-start = false", 'warm-start = "yes"'))
    with pytest.raises(ConfigError, match=r"site\.toml \[site\].*warm-start"):
        load_site_file(config, run=run)

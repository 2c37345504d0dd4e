"""DP-SGD's noise and batch sampling must not be computable from the run config (client/dp_random.py)."""

from __future__ import annotations

import pytest
import torch

from client.dp_random import NOISE_SEED_SOURCES, dp_randomness
from common.config import NOISE_SEEDS, ConfigError, app_defaults, load_site_file, parse_run_config, privacy_terms


def _draw(rng) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(4, generator=rng.sampling), torch.randn(4, generator=rng.noise)


def test_every_setting_value_has_a_source():
    assert set(NOISE_SEED_SOURCES) == set(NOISE_SEEDS)


def test_secret_seeds_differ_every_time_even_with_the_same_public_inputs():
    a, b = (dp_randomness("secret", run_seed=0, site="cleveland", server_round=1) for _ in range(2))
    (sa, na), (sb, nb) = _draw(a), _draw(b)
    assert not torch.equal(sa, sb) and not torch.equal(na, nb)


def test_run_seed_is_reproducible_and_differs_per_site_and_round():
    same = [_draw(dp_randomness("run-seed", run_seed=7, site="cleveland", server_round=2)) for _ in range(2)]
    assert torch.equal(same[0][0], same[1][0]) and torch.equal(same[0][1], same[1][1])
    for other in (dict(site="hungary", server_round=2), dict(site="cleveland", server_round=3)):
        s, n = _draw(dp_randomness("run-seed", run_seed=7, **other))
        assert not torch.equal(s, same[0][0]) and not torch.equal(n, same[0][1])
    rng = dp_randomness("run-seed", run_seed=7, site="cleveland", server_round=2)
    # sampling and noise are separate streams, not one generator used twice
    assert not torch.equal(torch.rand(4, generator=rng.sampling), torch.rand(4, generator=rng.noise))


def test_unknown_source_is_refused_by_name():
    with pytest.raises(ValueError, match="noise-seed must be one of"):
        dp_randomness("public", run_seed=0, site="x", server_round=1)


def _train(make_job, initial_state, tmp_path, name: str, site_privacy: dict | None = None,
           **settings) -> dict[str, torch.Tensor]:
    job = make_job(round_=1, run_id=f"r-{name}", site_privacy=site_privacy,
                   **{"site-state-root": str(tmp_path / name)} | settings)
    out = job.train(initial_state(job))
    assert out.privacy["noise-seed"] == settings.get("noise-seed", "secret")
    return out.arrays


def test_the_same_public_inputs_give_different_updates_by_default(make_job, initial_state, tmp_path):
    """Same run config, site, data, global model and round: with secret seeds the updates differ.

    Before client/dp_random.py the noise was torch's global RNG seeded with ``seed * 1000 + round``: the
    server that set ``seed`` could recompute it, and every site drew from the same seeded stream in a round.
    """
    a = _train(make_job, initial_state, tmp_path, "a")
    b = _train(make_job, initial_state, tmp_path, "b")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_run_seed_makes_a_simulation_repeatable(make_job, initial_state, tmp_path):
    # the site's own table must allow run-seed AND the run must ask for it (a request alone is refused)
    allow = {"site_privacy": {"noise-seed": "run-seed"}, "noise-seed": "run-seed"}
    torch.manual_seed(1)  # the global RNG plays no part in DP sampling or noise
    a = _train(make_job, initial_state, tmp_path, "a", **allow)
    torch.manual_seed(2)
    b = _train(make_job, initial_state, tmp_path, "b", **allow)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _site_file(tmp_path, privacy: str = "") -> object:
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "cleveland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "cleveland" }}\n'
                 f'modalities = ["tabular"]\nstate-dir = "{tmp_path / "state"}"\n{privacy}')
    return f


def test_a_deployed_site_never_takes_its_noise_seed_from_the_run(tmp_path):
    run = parse_run_config(app_defaults() | {"noise-seed": "run-seed"})
    assert run.privacy.noise_seed == "run-seed"
    site = load_site_file(_site_file(tmp_path, "[privacy]\nmax-records = 400\n"), run=run)
    assert site.privacy.noise_seed == "secret"
    terms = privacy_terms(site.privacy, run)  # the run's request is refused, naming the setting
    assert terms.refused and [r.key for r in terms.refusals] == ["noise-seed"]


def test_a_deployed_site_config_asking_for_run_seed_is_refused(tmp_path):
    path = _site_file(tmp_path, '[privacy]\nnoise-seed = "run-seed"\n')
    with pytest.raises(ConfigError, match=r"site\.toml \[privacy\]: 'noise-seed' must be \"secret\""):
        load_site_file(path, run=parse_run_config(app_defaults()))

"""What a run may ask of a site's privacy: the site's own file is the limit; a request for less is refused.

Issue 10, finding 1: the server's run config could switch a site's DP off (``dp = false``) or send it to central
mode, and the site took it. Now every privacy setting of a run is a request, compared with the site's own file.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.config import app_defaults, parse_run_config, privacy_terms, site_privacy
from common.privacy.accountant import default_delta


def _run(**requests):
    return parse_run_config(app_defaults() | requests)


def _own(**keys):
    return site_privacy({"max-records": 200} | keys, "test site file")


def test_the_defaults_ask_exactly_what_a_file_without_privacy_keys_allows():
    terms = privacy_terms(_own(), _run())
    assert not terms.refused and terms.mode == "sample"
    assert terms.settings.max_records == 200 and terms.settings.target_epsilon == 4.0


@pytest.mark.parametrize(("request_", "key"), [
    ({"dp": False}, "dp"),
    ({"privacy-mode": "central"}, "privacy-mode"),
    ({"target-epsilon": 6.0}, "target-epsilon"),
    ({"epsilon-budget": 9.0}, "epsilon-budget"),
    ({"noise-seed": "run-seed"}, "noise-seed"),
    ({"delta": 0.004}, "delta"),  # the site's default below 1/200 is 5e-4
])
def test_a_request_for_less_privacy_is_refused_naming_the_setting(request_, key):
    terms = privacy_terms(_own(), _run(**request_))
    assert terms.refused and [r.key for r in terms.refusals] == [key]
    assert terms.reason().startswith(f"{key}: the run asks for")


def test_what_the_site_file_allows_the_run_may_ask_for():
    own = _own(**{"dp": False, "privacy-mode": "central", "target-epsilon": 6.0, "epsilon-budget": 12.0})
    assert privacy_terms(own, _run(dp=False)).mode == "none"
    assert privacy_terms(own, _run(**{"privacy-mode": "central"})).mode == "central"
    terms = privacy_terms(own, _run(**{"target-epsilon": 6.0, "epsilon-budget": 12.0}))
    assert not terms.refused and terms.settings.target_epsilon == 6.0
    # a file that allows no DP still trains WITH DP when the run asks for it (more privacy)
    assert privacy_terms(own, _run()).mode == "sample"


def test_more_privacy_than_the_file_is_what_the_site_applies():
    terms = privacy_terms(_own(), _run(**{"target-epsilon": 1.0, "epsilon-budget": 2.0, "secure-mode": True,
                                          "delta": 1e-5}))
    assert not terms.refused
    s = terms.settings
    assert (s.target_epsilon, s.epsilon_budget, s.secure_mode, s.delta) == (1.0, 2.0, True, 1e-5)


def test_accountant_and_clipping_are_the_files_when_it_sets_them():
    keys = {"accountant": "rdp", "max-grad-norm": 0.5}
    terms = privacy_terms(_own(**keys), _run(accountant="prv", **{"max-grad-norm": 2.0}),
                          file_keys={"max-records": 200, **keys})
    assert (terms.settings.accountant, terms.settings.max_grad_norm) == ("rdp", 0.5)
    terms = privacy_terms(_own(), _run(accountant="rdp", **{"max-grad-norm": 2.0}), file_keys={"max-records": 200})
    assert (terms.settings.accountant, terms.settings.max_grad_norm) == ("rdp", 2.0)


def test_central_mode_uses_the_sites_own_limits_not_the_runs_sample_settings():
    own = _own(**{"privacy-mode": "central", "epsilon-budget": 30.0})
    terms = privacy_terms(own, _run(**{"privacy-mode": "central", "target-epsilon": 1.0}))
    assert terms.mode == "central" and terms.settings.epsilon_budget == 30.0 and not terms.refused


@settings(max_examples=60, deadline=None)
@given(target=st.floats(0.1, 20.0), budget_extra=st.floats(0.0, 20.0), allowed_target=st.floats(0.1, 20.0),
       allowed_extra=st.floats(0.0, 20.0), delta=st.sampled_from([0.0, 1e-6, 1e-5, 1e-4, 4e-4, 1e-3, 1e-2]))
def test_property_refused_exactly_when_some_request_is_less_private(target, budget_extra, allowed_target,
                                                                    allowed_extra, delta):
    own = _own(**{"target-epsilon": allowed_target, "epsilon-budget": allowed_target + allowed_extra})
    run = _run(**{"target-epsilon": target, "epsilon-budget": target + budget_extra, "delta": delta})
    terms = privacy_terms(own, run)
    less = (target > allowed_target or target + budget_extra > allowed_target + allowed_extra
            or delta > default_delta(200))
    assert terms.refused == less
    if not less:  # what the site applies is the request, never more than its file
        assert terms.settings.target_epsilon == target <= own.target_epsilon
        assert terms.settings.epsilon_budget <= own.epsilon_budget
        assert (terms.settings.delta or default_delta(200)) <= default_delta(200)


def test_a_refusal_does_not_depend_on_what_else_is_asked():
    base = _own()
    for flip in ({"dp": False}, {"noise-seed": "run-seed"}):
        assert privacy_terms(base, _run(**flip, **{"target-epsilon": 1.0})).refused
    assert privacy_terms(replace(base, enabled=False), _run(dp=False)).mode == "none"

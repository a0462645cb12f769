"""Deployment-time rescue with a fake backend whose failures carry their signature:
routing picks the matching intervention, the budget is a hard cap, the trace accounts for
every token, and the same seed gives the same rescue."""

from __future__ import annotations

import pytest

from analysis_fakes import THRESHOLDS, AnswerTask, SignatureBackend
from fixable.analysis.rescue import rescue
from fixable.analysis.routing import SignatureRouter
from fixable.errors import ConfigError
from fixable.types import Problem, rollout_seed


def _problem(kind: str) -> Problem:
    return Problem(
        id=f"fake/{kind}", prompt=f"{kind}: what is 6 x 7?", answer="0042", task="answers"
    )


def _router():
    return SignatureRouter(thresholds=THRESHOLDS)


def test_a_probe_success_returns_at_once():
    backend = SignatureBackend()
    res = rescue(_problem("easy"), backend, AnswerTask(), budget_tokens=1000, router=_router())
    assert res.solved and res.stopped == "probe solved" and res.phase == "probe"
    assert len(res.trace) == 1 and res.features == {}
    assert res.sample_index == 0 and res.answer == "0042"


@pytest.mark.parametrize(
    "kind,setting",
    [("hot", "temperature(T=1.3)"), ("cold", "temperature(T=0.3)"), ("mix", "mix(alpha=0.5)")],
)
def test_failures_are_routed_by_their_signature_and_rescued(kind, setting):
    backend = SignatureBackend()
    res = rescue(
        _problem(kind), backend, AnswerTask(), budget_tokens=2000, router=_router(), seed=3
    )
    assert res.route["setting"] == setting
    assert res.solved and res.stopped == "rescued" and res.setting == setting
    assert res.tokens_spent <= 2000
    assert res.tokens_spent == pytest.approx(sum(c.cost_tokens for c in res.trace))
    phases = [c.phase for c in res.trace]
    assert phases[0] == "probe" and "score" in phases and phases[-1] == "rescue"
    for call in res.trace:
        if call.setting.startswith("mix"):
            assert call.cost_tokens == 2 * call.tokens
    assert res.features["reference_drift_available"]


def test_the_budget_is_a_hard_cap():
    for budget in (100, 333, 1000):
        res = rescue(
            _problem("never"),
            SignatureBackend(length=37),
            AnswerTask(),
            budget_tokens=budget,
            router=_router(),
        )
        assert not res.solved and res.stopped == "budget exhausted"
        assert res.tokens_spent <= budget
        if budget >= 1000:
            assert res.tokens_spent > budget - 2 * 37  # the budget is actually used


def test_same_seed_same_rescue_and_seeds_follow_the_sampling_scheme():
    def cold_rescue(seed):
        return rescue(
            _problem("cold"),
            SignatureBackend(),
            AnswerTask(),
            budget_tokens=800,
            router=_router(),
            seed=seed,
        )

    a, b, c = cold_rescue(5), cold_rescue(5), cold_rescue(6)
    assert a.to_dict() == b.to_dict()
    assert a.trace[0].seeds != c.trace[0].seeds
    key = f"fake-policy/{_problem('cold').id}"
    assert a.trace[0].seeds == [rollout_seed(5, key, "probe/retry", i) for i in range(8)]


def test_an_unfitted_median_router_is_refused():
    with pytest.raises(ConfigError, match="thresholds"):
        rescue(_problem("hot"), SignatureBackend(), AnswerTask(), budget_tokens=500)
    fitted = SignatureRouter().fit(
        __import__("pandas").DataFrame(
            {
                "reference_drift": [0.0, 2.0],
                "answer_dispersion": [0.0, 1.0],
                "trajectory_uncertainty": [0.1, 3.0],
            }
        )
    )
    res = rescue(
        _problem("hot"), SignatureBackend(), AnswerTask(), budget_tokens=500, router=fitted
    )
    assert res.route["thresholds"]["trajectory_uncertainty"] == pytest.approx(1.55)


def test_without_a_reference_drift_is_unavailable_and_mix_is_not_offered():
    res = rescue(
        _problem("mix"),
        SignatureBackend(reference=False),
        AnswerTask(),
        budget_tokens=600,
        router=_router(),
    )
    assert res.features["reference_drift"] is None
    assert not res.features["reference_drift_available"]
    assert all(not s.startswith("mix") for s in res.route["settings"])
    assert res.route["branch"] != "toward_reference"


def test_a_bare_verifier_leaves_dispersion_unknown():
    res = rescue(
        _problem("hot"),
        SignatureBackend(),
        lambda text: text.endswith("#0042"),
        budget_tokens=600,
        router=_router(),
    )
    assert res.features["answer_dispersion"] is None
    assert res.route["setting"] == "temperature(T=1.3)"


def test_arguments_are_validated():
    with pytest.raises(ConfigError, match="budget_tokens must be > 0"):
        rescue(_problem("hot"), SignatureBackend(), AnswerTask(), budget_tokens=0, router=_router())
    with pytest.raises(ConfigError, match="k must be"):
        rescue(
            _problem("hot"),
            SignatureBackend(),
            AnswerTask(),
            budget_tokens=10,
            k=0,
            router=_router(),
        )

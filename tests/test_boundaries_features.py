"""The failure features at their edges: K = 1, 2 and 3 in answer dispersion, partly missing
entropies, empty completions, top-k entropies, and failures that are not failures.

Expected values are closed forms or direct loops over the rows written in the test, never
the output of ``failure_features`` itself. Token-level lists are stored as float32, hence
the 1e-6 tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_tables import probe, rows_table
from fixable.features import failure_features


def _one(rows, problem: str = "p", **kwargs):
    f = failure_features(rows_table(rows), **kwargs)
    return f.set_index("problem_id").loc[problem]


def _normalised_entropy(answers: list) -> float:
    """Shannon entropy of the answers (None its own category) / log K, by a direct loop."""
    k = len(answers)
    counts: dict = {}
    for a in answers:
        counts[("none",) if a is None else a] = counts.get(("none",) if a is None else a, 0) + 1
    h = 0.0
    for c in counts.values():
        h -= c / k * math.log(c / k)
    return h / math.log(k)


# ── answer dispersion: K = 1 is undefined, K = 2 is not ───────────────────────────────


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["a", "b"], 1.0),  # two different wrong answers: log 2 / log 2
        (["a", "a"], 0.0),
        (["a", None], 1.0),  # "no answer" is a category of its own
        ([None, None], 0.0),
        (["a", "a", "b"], (math.log(3) - 2 / 3 * math.log(2)) / math.log(3)),
        (["a", "b", None], 1.0),
    ],
)
def test_dispersion_with_two_and_three_probes(answers, expected):
    row = _one(probe("p", answers))
    assert row["n_probes"] == len(answers)
    assert row["answer_dispersion"] == pytest.approx(expected, abs=1e-6)
    assert row["answer_dispersion"] == pytest.approx(_normalised_entropy(answers), abs=1e-6)
    assert row["n_distinct_answers"] == len({("none",) if a is None else a for a in answers})


def test_dispersion_of_one_probe_is_undefined_and_of_two_is_defined():
    assert math.isnan(_one(probe("p", ["a"]))["answer_dispersion"])
    assert _one(probe("p", ["a", "b"]))["answer_dispersion"] == 1.0


def test_a_problem_with_one_correct_probe_is_not_a_failure():
    rows = probe("solved", ["1", "2"], correct=[False, True]) + probe("failed", ["1", "2"])
    features = failure_features(rows_table(rows))
    assert features["problem_id"].tolist() == ["failed"]


# ── trajectory uncertainty: one missing rollout is enough to make it unavailable ───────


ENTROPIES = [[0.2, 0.4], [1.0], [0.3, 0.3, 0.6], [2.0, 0.0]]


def test_uncertainty_is_the_mean_of_per_rollout_means_when_nothing_is_missing():
    row = _one(probe("p", ["a"] * 4, entropies=ENTROPIES))
    expected = sum(sum(e) / len(e) for e in ENTROPIES) / len(ENTROPIES)
    assert row["trajectory_uncertainty"] == pytest.approx(expected, abs=1e-6)
    assert row["fork_entropy"] == pytest.approx(
        sum(max(e) for e in ENTROPIES) / len(ENTROPIES), abs=1e-6
    )
    assert row["entropy_kind"] == "full"


@pytest.mark.parametrize("n_missing", [1, 2, 4])
@pytest.mark.parametrize("missing_as", [None, []], ids=["null", "empty"])
def test_partly_missing_entropies_make_uncertainty_unavailable(n_missing, missing_as):
    entropies = [missing_as] * n_missing + ENTROPIES[n_missing:]
    row = _one(probe("p", ["a"] * 4, entropies=entropies))
    assert math.isnan(row["trajectory_uncertainty"]) and math.isnan(row["fork_entropy"])
    assert row["entropy_kind"] == "missing"


@pytest.mark.parametrize(
    "kinds, expected_kind",
    [(["full"] * 4, "full"), (["topk"] * 4, "topk"), (["topk"] + ["full"] * 3, "mixed")],
)
def test_topk_entropies_are_flagged_and_dropped_on_request(kinds, expected_kind):
    rows = probe("p", ["a"] * 4, entropies=ENTROPIES)
    for row, kind in zip(rows, kinds, strict=True):
        row["entropy_kind"] = kind
    flagged = _one(rows)
    assert flagged["entropy_kind"] == expected_kind
    assert not math.isnan(flagged["trajectory_uncertainty"])
    strict = _one(rows, require_full_entropy=True)
    assert math.isnan(strict["trajectory_uncertainty"]) == (expected_kind != "full")


# ── reference drift: empty completions have none ──────────────────────────────────────


LOGPROBS = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0], [-0.1, -0.1]]
REFERENCE = [[-1.5, -2.5], [-0.5], [-1.0, -1.0, -1.0], [-0.3, -0.2]]


def test_drift_is_the_mean_per_token_log_ratio_by_a_direct_loop():
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, ref_logprobs=REFERENCE))
    per_rollout = [
        sum(p - r for p, r in zip(ps, rs, strict=True)) / len(ps)
        for ps, rs in zip(LOGPROBS, REFERENCE, strict=True)
    ]
    assert row["reference_drift"] == pytest.approx(np.mean(per_rollout), abs=1e-6)
    assert bool(row["reference_drift_available"])


@pytest.mark.parametrize("n_empty", [1, 4])
def test_empty_completions_have_no_drift_not_a_drift_of_zero(n_empty):
    policy = [[]] * n_empty + LOGPROBS[n_empty:]
    reference = [[]] * n_empty + REFERENCE[n_empty:]
    entropies = [[]] * n_empty + ENTROPIES[n_empty:]
    row = _one(
        probe("p", ["a"] * 4, policy_logprobs=policy, ref_logprobs=reference, entropies=entropies)
    )
    assert math.isnan(row["reference_drift"])
    assert not bool(row["reference_drift_available"])


def test_one_rollout_without_reference_makes_the_failure_drift_unavailable():
    reference = [None] + REFERENCE[1:]
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, ref_logprobs=reference))
    assert math.isnan(row["reference_drift"]) and not bool(row["reference_drift_available"])


def test_length_normalised_nll_and_mean_tokens_by_a_direct_loop():
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, entropies=ENTROPIES))
    assert row["length_normalised_nll"] == pytest.approx(
        np.mean([-sum(ps) / len(ps) for ps in LOGPROBS]), abs=1e-6
    )
    assert row["mean_tokens"] == pytest.approx(np.mean([len(e) for e in ENTROPIES]))

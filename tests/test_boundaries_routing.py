"""Compute-matched draws (``Outcomes``) at their boundaries: the capped mask exactly at R,
a float's noise past it and half a draw past it; the success estimate against the pass@k
closed form; which failures and settings an evaluation can use.

The routing *evaluation* (strategies, bootstrap, curves) is protocol v2's and is tested
with it; these tests go through ``rescue_matrix`` and ``Outcomes`` only.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd
import pytest

from analysis_tables import rescue, rows_table
from fixable.analysis.labels import rescue_matrix
from fixable.analysis.routing import Outcomes
from fixable.errors import DataError

SETTINGS = ["retry", "mix(alpha=0.5)"]


# ── capped draws: exactly R is not capped, R and a bit more is ────────────────────────


def _outcomes(n: int = 8):
    rows = rescue("p", "retry", 2, n, tokens=10) + rescue(
        "p", "mix(alpha=0.5)", 2, n, tokens=10, cost_factor=2.0
    )
    return Outcomes.from_matrix(rescue_matrix(rows_table(rows)), SETTINGS)


@pytest.mark.parametrize(
    "budget, want, capped",
    [
        (7.5, [7.5, 3.75], [False, False]),
        (8.0, [8.0, 4.0], [False, False]),  # exactly R retry draws: all recorded, not capped
        (8.0 * (1 + 1e-13), [8.0, 4.0], [False, False]),  # float noise is not a cap
        (8.5, [8.0, 4.25], [True, False]),  # half a draw past R is
        (16.0, [8.0, 8.0], [True, False]),
        (16.5, [8.0, 8.0], [True, True]),
    ],
)
def test_capped_mask_at_and_past_the_recorded_samples(budget, want, capped):
    draws, mask = _outcomes(8).draws(budget)
    assert draws[0] == pytest.approx(np.array(want), abs=1e-9)
    assert mask[0].tolist() == capped


def _pass_at(n: int, c: int, d: int) -> float:
    """P(at least one of d draws without replacement from n, c of them correct succeeds)."""
    return 1.0 - comb(n - c, d) / comb(n, d)


def test_success_is_the_pass_at_k_of_the_draws_the_budget_buys():
    outcomes = _outcomes(8)  # retry: 2 of 8 correct, cost 10; mix: 2 of 8, cost 20
    assert outcomes.success(4)[0].tolist() == pytest.approx([_pass_at(8, 2, 4), _pass_at(8, 2, 2)])
    half = outcomes.success(4, share=0.5)  # a budget of 2 retry-equivalents
    assert half[0].tolist() == pytest.approx([_pass_at(8, 2, 2), _pass_at(8, 2, 1)])
    # 3 retry-equivalents buy 1.5 mix draws: halfway between 1 and 2 draws
    mid = outcomes.success(3)[0, 1]
    assert mid == pytest.approx((_pass_at(8, 2, 1) + _pass_at(8, 2, 2)) / 2)
    capped = outcomes.success(100)  # capped at R = 8 draws: 1 - C(6, 8)/C(8, 8) = 1
    assert capped.tolist() == [[1.0, 1.0]]


def test_outcomes_hold_the_matrix_figures_per_failure_and_setting():
    rows = rescue("a", "retry", 1, 4, tokens=10) + rescue("a", "mix(alpha=0.5)", 3, 5, tokens=7)
    rows += rescue("b", "retry", 0, 6, tokens=30) + rescue("b", "mix(alpha=0.5)", 2, 2, tokens=5)
    outcomes = Outcomes.from_matrix(rescue_matrix(rows_table(rows)))
    assert outcomes.settings == sorted(SETTINGS) and len(outcomes) == 2
    assert outcomes.keys.to_dict("list") == {"model": ["m", "m"], "problem_id": ["a", "b"]}
    mix, retry = outcomes.settings.index("mix(alpha=0.5)"), outcomes.settings.index("retry")
    assert outcomes.n[:, [retry, mix]].tolist() == [[4, 5], [6, 2]]
    assert outcomes.successes[:, [retry, mix]].tolist() == [[1, 3], [0, 2]]
    assert outcomes.cost[:, [retry, mix]].tolist() == [[10, 7], [30, 5]]
    assert outcomes.unit_cost.tolist() == [10, 30]  # the retry cost: the budget's unit
    assert list(outcomes.keys.index) == [0, 1] and list(outcomes.keys.columns) == [
        "model",
        "problem_id",
    ]
    only_b = outcomes.subset([False, True])
    assert len(only_b) == 1 and only_b.keys["problem_id"].tolist() == ["b"]
    assert list(only_b.keys.columns) == ["model", "problem_id"] and list(only_b.keys.index) == [0]
    assert only_b.settings == outcomes.settings
    assert only_b.n.tolist() == outcomes.n[1:].tolist()
    assert only_b.cost.tolist() == outcomes.cost[1:].tolist()
    assert only_b.successes.tolist() == outcomes.successes[1:].tolist()
    assert only_b.unit_cost.tolist() == [30]


def test_failures_lacking_a_setting_are_left_out_and_said_so(caplog):
    rows = rescue("a", "retry", 1, 4) + rescue("a", "mix(alpha=0.5)", 1, 4)
    rows += rescue("b", "retry", 1, 4)  # no mix samples
    matrix = rescue_matrix(rows_table(rows))
    with caplog.at_level("WARNING", logger="fixable.analysis.routing"):
        outcomes = Outcomes.from_matrix(matrix, SETTINGS)
    assert outcomes.keys["problem_id"].tolist() == ["a"]
    assert [r.getMessage() for r in caplog.records] == [
        "1 failures lack rescue samples for some setting; left out of routing evaluation"
    ]
    assert outcomes.settings == SETTINGS  # in the order asked for
    chosen = Outcomes.from_matrix(
        matrix, SETTINGS, pd.DataFrame({"model": ["m"], "problem_id": ["a"]})
    )
    assert chosen.keys["problem_id"].tolist() == ["a"] and chosen.n.tolist() == [[4, 4]]


def test_outcomes_need_retry_and_samples_of_every_setting():
    matrix = rescue_matrix(
        rows_table(rescue("a", "retry", 1, 4) + rescue("a", "mix(alpha=0.5)", 1, 4))
    )
    with pytest.raises(DataError, match=r"needs the retry setting .*settings present: \['mix"):
        Outcomes.from_matrix(matrix, ["mix(alpha=0.5)"])
    with pytest.raises(DataError) as caught:
        Outcomes.from_matrix(matrix, ["retry", "dola(layer=1)"])
    assert str(caught.value) == "no rescue samples at all for settings ['dola(layer=1)']"
    assert np.isfinite(Outcomes.from_matrix(matrix).cost).all()


def test_settings_of_errors_only_are_missing_and_one_sample_is_enough(caplog):
    errors = [
        {"problem_id": "c", "phase": "rescue", "setting": "mix(alpha=0.5)", "intervention": "mix",
         "status": "error", "sample_index": 0, "entropies": None, "n_tokens": 0, "cost_tokens": 0.0}
    ]  # fmt: skip
    rows = rescue("a", "retry", 1, 1) + rescue("a", "mix(alpha=0.5)", 0, 1)  # one sample each
    rows += rescue("b", "retry", 1, 4) + rescue("b", "mix(alpha=0.5)", 1, 4)
    rows += rescue("c", "retry", 1, 4) + errors  # mix: errors only, no sample
    with caplog.at_level("WARNING", logger="fixable.analysis.routing"):
        outcomes = Outcomes.from_matrix(rescue_matrix(rows_table(rows)), SETTINGS)
    assert outcomes.keys["problem_id"].tolist() == ["a", "b"]
    assert outcomes.n.tolist() == [[1, 1], [4, 4]]
    assert [r.getMessage() for r in caplog.records] == [
        "1 failures lack rescue samples for some setting; left out of routing evaluation"
    ]


def test_the_failures_asked_for_come_in_the_order_asked():
    rows = []
    for problem in ("a", "b", "c"):
        rows += rescue(problem, "retry", 1, 4) + rescue(problem, "mix(alpha=0.5)", 2, 4)
    matrix = rescue_matrix(rows_table(rows))
    asked = pd.DataFrame({"model": ["m", "m"], "problem_id": ["c", "a"]})
    outcomes = Outcomes.from_matrix(matrix, SETTINGS, asked)
    assert outcomes.keys["problem_id"].tolist() == ["c", "a"]

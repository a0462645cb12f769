"""Regime labels and compute costs at their boundaries.

Every threshold of SPEC §3.3 is tested exactly at, just below and just above it; the
uncertain flag where an interval ends exactly on a threshold; the best-setting interval
with several bounded settings; and the cost fallback when a shard lacks ``cost_tokens``.

Expected values are worked out by hand from the rules (or, for interval bounds, from the
Wilson formula written out below), never by calling the code under test. The tests go
through the public functions (``rescue_matrix``, ``label_failures``, ...) only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_tables import rescue, rows_table
from fixable.analysis.labels import (
    LabelThresholds,
    label_counts,
    label_failures,
    rates_wide,
    rescue_matrix,
)
from fixable.analysis.routing import Outcomes
from fixable.errors import ConfigError

N = 1000  # rescue samples per setting: rates of k/1000 sit exactly on the 0.05 / 0.5 grid


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The 95 % Wilson score interval, written out (the oracle for interval bounds)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _label(rows, thresholds: LabelThresholds | None = None, problem: str = "p"):
    thresholds = thresholds or LabelThresholds()
    labels = label_failures(rescue_matrix(rows_table(rows), thresholds), thresholds)
    return labels.set_index("problem_id").loc[problem]


# ── the three thresholds, exactly at, just below and just above ────────────────────────


@pytest.mark.parametrize(
    "hits, expected",
    [(49, "structural"), (50, "resamplable"), (51, "resamplable")],
    ids=["below", "at", "above"],
)
def test_resample_threshold_is_inclusive(hits, expected):
    assert 50 / N == 0.05  # the grid: 50/1000 is the float 0.05 itself
    rows = rescue("p", "retry", hits, N) + rescue("p", "temperature(T=0.3)", 0, N)
    assert _label(rows)["label"] == expected


@pytest.mark.parametrize(
    "hits, expected",
    [(499, "steerable-weak"), (500, "steerable-hard"), (501, "steerable-hard")],
    ids=["below", "at", "above"],
)
def test_steer_hard_threshold_is_inclusive(hits, expected):
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", hits, N)
    assert _label(rows)["label"] == expected


@pytest.mark.parametrize(
    "hits, expected",
    [(49, "structural"), (50, "steerable-weak"), (51, "steerable-weak")],
    ids=["below", "at", "above"],
)
def test_steer_weak_threshold_is_inclusive(hits, expected):
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", hits, N)
    assert _label(rows)["label"] == expected


@pytest.mark.parametrize(
    "retry_hits, best_hits, expected",
    [
        (1, 0, "resamplable"),  # 1/4 = 0.25: at the stated threshold
        (0, 3, "steerable-hard"),  # 3/4 = 0.75: at steer_hard
        (0, 2, "steerable-weak"),  # 2/4 = 0.5: at steer_weak, below steer_hard
        (0, 1, "structural"),  # 1/4 = 0.25: below steer_weak
    ],
)
def test_stated_thresholds_are_the_ones_applied(retry_hits, best_hits, expected):
    thresholds = LabelThresholds(resample=0.25, steer_hard=0.75, steer_weak=0.5)
    rows = rescue("p", "retry", retry_hits, 4) + rescue("p", "dola(layer=1)", best_hits, 4)
    assert _label(rows, thresholds)["label"] == expected


def test_retry_is_never_a_bounded_setting():
    """A high retry rate decides ``resamplable`` and never counts as the best intervention."""
    rows = rescue("p", "retry", 40, 100) + rescue("p", "mix(alpha=0.5)", 0, 100)
    row = _label(rows, LabelThresholds(resample=0.5))
    assert row["label"] == "structural"
    assert row["best_rate"] == 0.0 and pd_isna(row["best_setting"])


def pd_isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ── the uncertain flag where an interval ends exactly on a threshold ───────────────────


def test_retry_interval_ending_on_the_threshold_is_uncertain():
    """8/8 retries: the Wilson interval is [0.68, 1.0] and 1.0 is the threshold itself."""
    rows = rescue("p", "retry", 8, 8) + rescue("p", "mix(alpha=0.5)", 0, 8)
    row = _label(rows, LabelThresholds(resample=1.0, steer_hard=1.0))
    assert row["label"] == "resamplable"
    assert row["retry_high"] == 1.0 and row["retry_low"] < 1.0
    assert row["uncertain"] and "retry" in row["uncertain_reason"]


def test_best_interval_ending_on_the_threshold_is_uncertain():
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", 8, 8)
    row = _label(rows, LabelThresholds(steer_hard=1.0))
    assert row["label"] == "steerable-hard"
    assert row["best_high"] == 1.0
    assert row["uncertain"] and "1" in row["uncertain_reason"]


def test_intervals_clear_of_every_threshold_are_certain():
    # retry 0/1000: upper bound 0.0038 < 0.05; best 900/1000: [0.88, 0.92], clear of 0.5
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", 900, N)
    row = _label(rows)
    assert row["label"] == "steerable-hard" and not row["uncertain"]
    assert row["uncertain_reason"] == ""


@pytest.mark.parametrize(
    "retry_hits, n, uncertain",
    [(0, 32, True), (0, 80, False)],  # Wilson upper bound of 0/n: 0.107 at 32, 0.046 at 80
)
def test_retry_upper_bound_just_above_or_below_the_threshold(retry_hits, n, uncertain):
    high = _wilson(retry_hits, n)[1]
    assert (high >= 0.05) == uncertain  # the oracle agrees with the stated case
    rows = rescue("p", "retry", retry_hits, n) + rescue("p", "mix(alpha=0.5)", n, n)
    row = _label(rows)
    assert row["retry_high"] == pytest.approx(high, abs=1e-12)
    assert bool(row["uncertain"]) == uncertain


# ── the best-setting interval with several bounded settings ────────────────────────────


def test_best_interval_takes_the_largest_low_and_the_largest_high():
    """Interval of max_i r_i = [max_i low_i, max_i high_i] (SPEC §3.3)."""
    rows = (
        rescue("p", "retry", 0, N)
        + rescue("p", "mix(alpha=0.5)", 90, 100)  # [0.826, 0.945]
        + rescue("p", "temperature(T=0.3)", 0, 100)  # [0, 0.037]
        + rescue("p", "dola(layer=1)", 40, 40)  # [0.912, 1.0]: largest high, not the best rate
    )
    row = _label(rows)
    assert row["best_setting"] == "dola(layer=1)"
    assert row["best_low"] == pytest.approx(max(_wilson(90, 100)[0], _wilson(40, 40)[0]))
    assert row["best_high"] == 1.0
    # [0.91, 1.0] straddles neither 0.5 nor 0.05; the smallest low (0) would straddle both
    assert row["label"] == "steerable-hard" and not row["uncertain"]


def test_best_interval_low_is_the_max_over_settings_not_the_best_rate_alone():
    rows = (
        rescue("p", "retry", 0, N)
        + rescue("p", "mix(alpha=0.5)", 9, 10)  # rate 0.9, low 0.596
        + rescue("p", "temperature(T=0.3)", 850, 1000)  # rate 0.85, low 0.826
    )
    row = _label(rows)
    assert row["best_setting"] == "mix(alpha=0.5)"
    assert row["best_low"] == pytest.approx(_wilson(850, 1000)[0])
    assert row["best_high"] == pytest.approx(_wilson(9, 10)[1])
    assert not row["uncertain"]


# ── the cost fallback: tokens × forward passes per token ──────────────────────────────


_SETTINGS = ("retry", "mix(alpha=0.5)", "temperature(T=1.5)", "checkpoint(step=2)", "dola(layer=1)")


def _rows_without_costs(tokens: int = 12):
    rows = []
    for setting in _SETTINGS:
        rows += rescue("p", setting, 1, 4, tokens=tokens)
    for row in rows:
        row["cost_tokens"] = None
    return rows


@pytest.mark.parametrize("how", ["null cells", "no column"])
def test_cost_fallback_charges_mix_twice_and_the_rest_once(how):
    table = rows_table(_rows_without_costs(tokens=12))
    if how == "no column":
        table = table.drop(["cost_tokens"])
    matrix = rescue_matrix(table).set_index("setting")
    expected = {s: 12.0 * (2 if s.startswith("mix") else 1) for s in _SETTINGS}
    assert matrix["cost_per_sample"].to_dict() == expected


def test_cost_fallback_fills_only_the_missing_cells():
    rows = rescue("p", "mix(alpha=0.5)", 0, 2, tokens=10)
    rows[0]["cost_tokens"] = 7.0  # recorded: kept as it is
    rows[1]["cost_tokens"] = None  # missing: 10 tokens × 2 passes
    matrix = rescue_matrix(rows_table(rows)).set_index("setting")
    assert matrix.loc["mix(alpha=0.5)", "cost_per_sample"] == (7.0 + 20.0) / 2


def test_fallback_cost_halves_the_draws_a_mix_affords():
    matrix = rescue_matrix(rows_table(_rows_without_costs(tokens=12)))
    outcomes = Outcomes.from_matrix(matrix, ["retry", "mix(alpha=0.5)"])
    draws, capped = outcomes.draws(budget=4)
    assert draws.tolist() == [[4.0, 2.0]] and not capped.any()


# ── what is not labelled, and why a label is uncertain ────────────────────────────────


def _error_rows(problem: str, setting: str, n: int) -> list[dict]:
    return [
        {
            "problem_id": problem,
            "phase": "rescue",
            "setting": setting,
            "intervention": setting.split("(")[0],
            "status": "error",
            "sample_index": 100 + j,
            "entropies": None,
            "n_tokens": 0,
            "cost_tokens": 0.0,
        }
        for j in range(n)
    ]


def test_a_setting_with_only_backend_errors_has_no_rate_and_no_interval():
    rows = rescue("p", "retry", 0, N) + _error_rows("p", "mix(alpha=0.5)", 3)
    matrix = rescue_matrix(rows_table(rows)).set_index("setting")
    mix = matrix.loc["mix(alpha=0.5)"]
    assert (mix["n"], mix["successes"], mix["n_errors"]) == (0, 0, 3)
    assert math.isnan(mix["rate"]) and math.isnan(mix["low"]) and math.isnan(mix["high"])
    assert math.isnan(mix["cost_per_sample"])  # errors hold no sample, so no cost either
    row = _label(rows)  # no bounded samples: not labelled (retry alone says "not resamplable")
    assert pd_isna(row["label"]) and not row["uncertain"] and row["uncertain_reason"] == ""


def test_resamplable_needs_no_bounded_setting_and_unlabelled_needs_retry():
    rows = rescue("r", "retry", 100, N) + rescue("s", "mix(alpha=0.5)", 500, N)
    labels = label_failures(rescue_matrix(rows_table(rows))).set_index("problem_id")
    assert labels.loc["r", "label"] == "resamplable"
    assert pd_isna(labels.loc["r", "best_rate"])
    assert pd_isna(labels.loc["s", "label"])  # no retry samples: nothing to decide on
    assert pd_isna(labels.loc["s", "r_retry"])


def test_no_best_setting_when_nothing_rescued_anything():
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", 0, N)
    rows += rescue("p", "temperature(T=0.3)", 0, N)
    row = _label(rows)
    assert row["label"] == "structural" and pd_isna(row["best_setting"])
    assert row["best_rate"] == 0.0 and row["n_best"] == N


def test_uncertain_reasons_name_each_straddled_threshold():
    # retry 0/40: [0, 0.088] straddles 0.05; best 2/4: [0.15, 0.85] straddles 0.5 (not 0.05)
    rows = rescue("p", "retry", 0, 40) + rescue("p", "mix(alpha=0.5)", 2, 4)
    row = _label(rows)
    assert row["label"] == "steerable-hard"
    assert row["uncertain_reason"] == (
        "retry interval straddles 0.05; best-intervention interval straddles 0.5"
    )
    # best 1/10: [0.018, 0.40] straddles 0.05 only
    rows = rescue("q", "retry", 0, N) + rescue("q", "mix(alpha=0.5)", 1, 10)
    row = _label(rows, problem="q")
    assert row["label"] == "steerable-weak"
    assert row["uncertain_reason"] == "best-intervention interval straddles 0.05"


def test_a_resamplable_label_ignores_the_best_intervention_interval():
    rows = rescue("p", "retry", 500, N) + rescue("p", "mix(alpha=0.5)", 2, 4)
    row = _label(rows)
    assert row["label"] == "resamplable" and not row["uncertain"]


def test_the_beta_interval_and_level_are_the_ones_applied():
    from scipy import stats

    thresholds = LabelThresholds(interval="beta", level=0.8)
    rows = rescue("p", "retry", 3, 20) + rescue("p", "mix(alpha=0.5)", 9, 10)
    row = _label(rows, thresholds)
    assert row["retry_low"] == pytest.approx(stats.beta(1 + 3, 1 + 17).ppf(0.1))
    assert row["retry_high"] == pytest.approx(stats.beta(1 + 3, 1 + 17).ppf(0.9))
    assert row["label"] == "resamplable"


# ── counts of each regime, the wide table of rates, the thresholds themselves ─────────


def test_label_counts_with_and_without_the_uncertain_labels():
    rows = (
        rescue("a", "retry", 0, N)
        + rescue("a", "mix(alpha=0.5)", 900, N)  # steerable-hard, certain
        + rescue("b", "retry", 0, N)
        + rescue("b", "mix(alpha=0.5)", 2, 4)  # steerable-hard, uncertain
        + rescue("c", "retry", 300, N)  # resamplable, certain
        + rescue("c", "mix(alpha=0.5)", 0, N)
        + rescue("d", "mix(alpha=0.5)", 0, N)  # no retry: unlabelled
    )
    labels = label_failures(rescue_matrix(rows_table(rows)))
    counts = label_counts(labels)
    assert (counts["n_failures"], counts["n_labelled"], counts["n_certain"]) == (4, 3, 2)
    hard = counts["regimes"]["steerable-hard"]
    assert hard["all"]["count"] == 2 and hard["all"]["n"] == 3
    assert hard["all"]["value"] == pytest.approx(2 / 3)
    assert (hard["all"]["low"], hard["all"]["high"]) == pytest.approx(_wilson(2, 3))
    assert hard["certain_only"]["count"] == 1 and hard["certain_only"]["n"] == 2
    assert hard["certain_only"]["value"] == 0.5
    assert counts["regimes"]["structural"]["all"]["count"] == 0
    assert counts["regimes"]["structural"]["all"]["value"] == 0.0
    beta = label_counts(labels, LabelThresholds(interval="beta"))
    assert beta["regimes"]["steerable-hard"]["all"]["interval"].startswith("beta")


def test_rates_wide_has_one_column_per_setting():
    rows = rescue("p", "retry", 1, 4) + rescue("p", "mix(alpha=0.5)", 3, 4)
    rows += rescue("q", "retry", 0, 2)
    wide = rates_wide(rescue_matrix(rows_table(rows))).set_index("problem_id")
    assert list(wide.columns) == ["model", "rescue[mix(alpha=0.5)]", "rescue[retry]"]
    assert (
        wide.loc["p", "rescue[retry]"] == 0.25 and wide.loc["p", "rescue[mix(alpha=0.5)]"] == 0.75
    )
    assert wide.loc["q", "rescue[retry]"] == 0.0 and pd_isna(
        wide.loc["q", "rescue[mix(alpha=0.5)]"]
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resample": 1.0},
        {"steer_hard": 1.0},
        {"steer_weak": 0.5, "steer_hard": 0.5},  # equal is allowed
        {"level": 0.5},
        {"interval": "beta"},
    ],
)
def test_thresholds_accept_their_edges(kwargs):
    t = LabelThresholds(**kwargs)
    assert all(t.to_dict()[k] == v for k, v in kwargs.items())
    assert LabelThresholds.parse(",".join(f"{k}={v}" for k, v in kwargs.items())) == t


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resample": 0.0}, "label threshold resample must be in (0, 1], got 0.0"),
        ({"steer_weak": 1.01}, "label threshold steer_weak must be in (0, 1], got 1.01"),
        (
            {"steer_weak": 0.51, "steer_hard": 0.5},
            "label threshold steer_weak (0.51) must not exceed steer_hard (0.5)",
        ),
        ({"level": 1.0}, "interval level must be in (0, 1), got 1.0"),
        ({"level": 0.0}, "interval level must be in (0, 1), got 0.0"),
        ({"interval": "bayes"}, "interval must be one of wilson, beta, got 'bayes'"),
    ],
)
def test_thresholds_refuse_what_is_past_their_edges(kwargs, message):
    with pytest.raises(ConfigError) as caught:
        LabelThresholds(**kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("steer_hard", "cannot read threshold 'steer_hard'; write e.g. 'steer_hard=0.5'"),
        ("hard=0.5", "unknown threshold 'hard'; known: resample, steer_hard, steer_weak, interval, level"),
        ("resample=lots", "threshold resample must be a number, got 'lots'"),
    ],
)  # fmt: skip
def test_threshold_text_errors_say_how_to_fix_them(text, message):
    with pytest.raises(ConfigError) as caught:
        LabelThresholds.parse(text)
    assert str(caught.value) == message


def test_threshold_text_ignores_blanks_and_empty_parts():
    assert LabelThresholds.parse(" resample = 0.1 ,, interval = beta ,") == LabelThresholds(
        resample=0.1, interval="beta"
    )
    assert LabelThresholds.parse("") == LabelThresholds()


def test_a_value_holding_an_equals_sign_is_read_whole():
    with pytest.raises(ConfigError) as caught:
        LabelThresholds.parse("interval=beta=2")
    assert str(caught.value) == "interval must be one of wilson, beta, got 'beta=2'"


# ── boundaries of the inputs: one sample, no bounded setting, an empty matrix ──────────


def test_one_sample_is_a_sample():
    """A setting with n = 1 has a rate (0 or 1) and is used; n = 0 is not."""
    rows = rescue("p", "retry", 1, 1) + rescue("p", "mix(alpha=0.5)", 0, 1)
    row = _label(rows)
    assert row["label"] == "resamplable" and row["n_retry"] == 1 and row["r_retry"] == 1.0
    rows = rescue("q", "retry", 0, 1) + rescue("q", "mix(alpha=0.5)", 1, 1)
    row = _label(rows, problem="q")
    assert row["label"] == "steerable-hard" and row["n_best"] == 1 and row["best_rate"] == 1.0


LABEL_COLUMNS = [
    "model",
    "problem_id",
    "n_retry",
    "r_retry",
    "retry_low",
    "retry_high",
    "best_setting",
    "best_rate",
    "n_best",
    "best_low",
    "best_high",
    "label",
    "uncertain",
    "uncertain_reason",
]


def test_labels_carry_the_figures_they_were_decided_on():
    rows = rescue("p", "retry", 3, 60) + rescue("p", "mix(alpha=0.5)", 45, 50)
    labels = label_failures(rescue_matrix(rows_table(rows)))
    assert list(labels.columns) == LABEL_COLUMNS
    row = labels.iloc[0]
    assert (row["n_retry"], row["r_retry"]) == (60, 0.05)
    assert (row["retry_low"], row["retry_high"]) == pytest.approx(_wilson(3, 60))
    assert (row["best_setting"], row["best_rate"], row["n_best"]) == ("mix(alpha=0.5)", 0.9, 50)
    assert (row["best_low"], row["best_high"]) == pytest.approx(_wilson(45, 50))


def test_without_any_bounded_setting_the_best_columns_are_empty():
    rows = rescue("a", "retry", 0, N) + rescue("b", "retry", 100, N)
    labels = label_failures(rescue_matrix(rows_table(rows)))
    assert list(labels.columns) == LABEL_COLUMNS
    assert (
        labels[["best_setting", "best_rate", "n_best", "best_low", "best_high"]].isna().all().all()
    )
    assert pd_isna(labels.loc[0, "label"]) and labels.loc[1, "label"] == "resamplable"


def test_an_empty_matrix_gives_an_empty_table_with_the_key_and_label_columns():
    empty = rescue_matrix(rows_table(rescue("p", "retry", 0, 2))).iloc[0:0]
    labels = label_failures(empty)
    assert labels.empty and list(labels.columns) == ["model", "problem_id", "label", "uncertain"]


def test_an_unlabelled_failure_before_labelled_ones_leaves_their_reasons_in_place(caplog):
    rows = rescue("a", "mix(alpha=0.5)", 1, 4)  # no retry: unlabelled, sorts first
    rows += rescue("b", "retry", 0, 40) + rescue("b", "mix(alpha=0.5)", 2, 4)
    with caplog.at_level("WARNING", logger="fixable.analysis.labels"):
        labels = label_failures(rescue_matrix(rows_table(rows))).set_index("problem_id")
    assert pd_isna(labels.loc["a", "label"]) and labels.loc["a", "uncertain_reason"] == ""
    assert labels.loc["b", "uncertain_reason"].startswith("retry interval straddles 0.05")
    assert [r.getMessage() for r in caplog.records] == [
        "1 failures have no retry or no bounded rescue samples: left unlabelled"
    ]


def test_an_interval_starting_exactly_on_a_threshold_does_not_straddle_it():
    """Straddling is low < threshold <= high: an interval from 0.5 up is at or above 0.5."""
    rows = rescue("p", "retry", 0, N) + rescue("p", "mix(alpha=0.5)", 6, 10)
    matrix = rescue_matrix(rows_table(rows))
    mix = matrix["setting"] == "mix(alpha=0.5)"
    matrix.loc[mix, ["low", "high"]] = [0.5, 0.7]  # an interval given by the caller
    row = label_failures(matrix).iloc[0]
    assert row["label"] == "steerable-hard" and not row["uncertain"], row["uncertain_reason"]
    matrix.loc[mix, ["low", "high"]] = [np.nextafter(0.5, 0.0), 0.7]  # just below: straddles
    assert label_failures(matrix).iloc[0]["uncertain"]


def test_label_counts_use_the_stated_level():
    rows = rescue("a", "retry", 0, N) + rescue("a", "mix(alpha=0.5)", 900, N)
    rows += rescue("b", "retry", 300, N) + rescue("b", "mix(alpha=0.5)", 0, N)
    rows += rescue("c", "retry", 300, N) + rescue("c", "mix(alpha=0.5)", 0, N)
    labels = label_failures(rescue_matrix(rows_table(rows)))
    counts = label_counts(labels, LabelThresholds(level=0.8))
    z80 = 1.2815515655446004
    hard = counts["regimes"]["steerable-hard"]
    assert (hard["all"]["low"], hard["all"]["high"]) == pytest.approx(_wilson(1, 3, z80))
    assert (hard["certain_only"]["low"], hard["certain_only"]["high"]) == pytest.approx(
        _wilson(1, 3, z80)
    )


MATRIX_COLUMNS = [
    "model",
    "problem_id",
    "setting",
    "intervention",
    "n",
    "successes",
    "n_errors",
    "cost_per_sample",
    "rate",
    "low",
    "high",
]


def test_the_matrix_has_one_sorted_row_per_failure_and_setting_with_integer_counts():
    rows = rescue("b", "temperature(T=0.3)", 1, 2) + rescue("b", "retry", 0, 2)
    rows += rescue("a", "mix(alpha=0.5)", 2, 3, cost_factor=2.0)
    rows[0]["correct"] = None  # ungraded: not a success
    matrix = rescue_matrix(rows_table(rows))
    assert list(matrix.columns) == MATRIX_COLUMNS
    assert list(zip(matrix["problem_id"], matrix["setting"], strict=True)) == [
        ("a", "mix(alpha=0.5)"),
        ("b", "retry"),
        ("b", "temperature(T=0.3)"),
    ]
    assert matrix["intervention"].tolist() == ["mix", "retry", "temperature"]
    assert matrix["n"].dtype.kind == "i" and matrix["successes"].dtype.kind == "i"
    assert matrix["successes"].tolist() == [2, 0, 0]  # b's one "correct" row was ungraded
    assert matrix["rate"].tolist() == [2 / 3, 0.0, 0.0]
    assert matrix["cost_per_sample"].tolist() == [20.0, 10.0, 10.0]


def test_recorded_costs_need_no_token_counts():
    rows = rescue("p", "retry", 1, 2, tokens=10) + rescue("p", "mix(alpha=0.5)", 1, 2, tokens=4)
    table = rows_table(rows).drop(["n_tokens"])
    matrix = rescue_matrix(table).set_index("setting")
    # cost_tokens as recorded (rescue() records tokens x 1 here, even for mix)
    assert matrix["cost_per_sample"].to_dict() == {"mix(alpha=0.5)": 4.0, "retry": 10.0}


def test_without_costs_or_token_counts_the_cost_is_unknown_not_guessed():
    rows = rescue("p", "retry", 1, 2)
    for row in rows:
        row["cost_tokens"] = None
    matrix = rescue_matrix(rows_table(rows).drop(["n_tokens"]))
    assert math.isnan(matrix.loc[0, "cost_per_sample"]) and matrix.loc[0, "rate"] == 0.5

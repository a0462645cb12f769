"""The typed, versioned structure of ``analysis.json`` (format ``fixable-analysis``, version 2).

Version 2 is protocol v2 (SPEC §3): labels from the labelling part and scores from the
scoring part, a router frozen on calibration models, topography on held-out models, every
headline beside its control. The report and ``summary.json`` read the sections through
these types (``read_analysis`` refuses other versions with the command that fixes it), not
through dotted string paths. Every estimate is an ``EstimateDict`` (value with interval)
or a ``SpreadDict`` (mean ± std over repetitions or held-out units).
"""

from __future__ import annotations

from typing import Any, TypedDict

from fixable.errors import DataError

FORMAT, FORMAT_VERSION = "fixable-analysis", 2


class EstimateDict(TypedDict):
    value: float | None
    low: float | None
    high: float | None
    n: int
    interval: str


class SpreadDict(TypedDict, total=False):
    mean: float | None
    std: float | None
    n: int
    per_model: dict[str, float]


class NullDict(TypedDict, total=False):
    """A null distribution: its mean, spread, 95th percentile, and where the observed value falls."""

    accuracies: list[float]
    values: list[float]
    mean: float
    std: float
    q95: float
    n_permutations: int
    observed: float
    p_value: float
    percentile: float
    how: str


class HeldOutScore(TypedDict, total=False):
    accuracy: SpreadDict
    interval: EstimateDict
    pooled: float
    n: int
    n_models: int
    how: str


class TopographySection(TypedDict, total=False):
    protocol_version: int
    classes: list[str]
    n_failures: int
    n_models: int
    protocol: dict[str, str]
    classifier: HeldOutScore
    majority: HeldOutScore
    majority_in_folds: HeldOutScore
    failure_rate_only: HeldOutScore | None
    features_plus_failure_rate: HeldOutScore | None  # the nested comparison
    beyond_failure_rate: dict[str, Any] | None  # its gain over failure rate only
    matched: list[dict[str, Any]]  # the accuracy-matched views (when sets were named)
    model_centroid: HeldOutScore
    text_baseline: HeldOutScore | None
    null: NullDict
    seed_as_label: dict[str, Any] | None  # training seed named in leave-one-method-out folds
    confusion: dict[str, Any]
    ablations: dict[str, HeldOutScore]
    paper: dict[str, float]


class SubsetScores(TypedDict, total=False):
    n: int
    n_models: int
    rates: dict[str, EstimateDict]  # strategy → rescue within budget (scoring part)
    lift: dict[str, EstimateDict]  # baseline → routed − baseline
    lift_over_best_fixed: dict[str, EstimateDict]  # strategy → strategy − best fixed
    oracle_gap_closed: EstimateDict


class RoutingSection(TypedDict, total=False):
    protocol_version: int
    budget_samples: float
    budget_unit: str
    capped_share: float
    routed_share: dict[str, float]
    router_charge: dict[str, Any]
    thresholds: dict[str, dict[str, float]]
    calibration: dict[str, Any]
    subsets: dict[str, SubsetScores]  # "all", "steerable-hard"
    curves: dict[str, Any]
    best_fixed_choices: list[str]
    scored_on: str
    n_failures_evaluated: int


class RegimeAgreement(TypedDict, total=False):
    nmi: float | None
    ari: float | None
    purity: float | None
    majority_share: float
    n: int


class RegimeMethod(TypedDict, total=False):
    n_regimes: int
    agreement: RegimeAgreement
    bootstrap_stability: EstimateDict
    probe_split_stability: dict[str, Any]
    null: dict[str, NullDict]  # "nmi", "purity", "probe_split_ari" under permuted features


class AnalysisDict(TypedDict, total=False):
    format: str
    format_version: int
    created: str
    fixable_version: str
    sources: list[dict]
    config: dict
    paper: dict
    data: dict
    features: dict
    labels: dict | None
    regimes: dict
    routing: RoutingSection | None
    topography: TopographySection | None
    transfer: dict | None
    skipped: dict[str, str]
    notes: list[str]


def read_analysis(result: dict) -> AnalysisDict:
    """``result`` (analysis.json's content) checked to be this version's structure."""
    if result.get("format") != FORMAT:
        raise DataError(f"not a fixable analysis (format {result.get('format')!r})")
    version = result.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"analysis.json is format version {version}, this fixable reads version "
            f"{FORMAT_VERSION} (protocol v2): re-run `fixable analyze RUN` or "
            "`fixable report RUN --reanalyze`"
        )
    return result  # type: ignore[return-value]

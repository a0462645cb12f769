"""Routing failures to interventions, and its compute-matched evaluation (SPEC §3.6).

A ``Router`` maps failure features to one intervention setting per failure. The default
``SignatureRouter`` is training-free: a fixed decision list over the three features whose
thresholds are the medians of the features over the failures being routed (or constants
the user states, or medians of an earlier set of failures via ``fit``), never fitted to
rescue outcomes:

1. ``reference_drift`` above its threshold → back toward the reference: the earliest
   ``checkpoint`` (one forward pass per token, so a compute-matched budget buys twice the
   draws of a ``mix``), else ``mix`` (the α closest to 0.5); skipped when drift is
   unavailable (no reference);
2. else ``answer_dispersion`` above its threshold → ``retry``;
3. else ``trajectory_uncertainty`` below its threshold → temperature *up* (largest T > 1);
4. else → temperature *down* (smallest T < 1), else ``dola``.

A branch whose intervention is not in the evaluated grid falls back to ``retry``.

Evaluation is compute-matched: every strategy gets the same extra token budget per failed
problem, ``B(x) = b × c_retry(x)`` where ``c_retry(x)`` is the mean cost of one retry sample
of that problem ("b retry-equivalent samples"). A setting whose samples cost ``c_s(x)``
tokens (``cost_tokens``: tokens × forward passes, so ``mix`` pays double) affords
``d = B / c_s`` draws, and the chance that one of them succeeds is estimated without bias
from its R recorded samples by ``success_within`` (pass@k, interpolated for fractional d).
Draws beyond R cannot be estimated and are capped at R (a conservative figure for that
setting); the share of capped cells is reported. The budget is met in expectation over
sample lengths, not per sample.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fixable.analysis.stats import Estimate, group_weights, percentile_interval, success_within
from fixable.errors import ConfigError, DataError
from fixable.features import FAILURE_KEY, axis_feature
from fixable.interventions import checkpoint_order, parse_intervention

logger = logging.getLogger(__name__)

RETRY = "retry"
# The rule reads one signature feature per intervention axis (fixable.features' table), in
# the order of its decision list: reference drift, answer dispersion, trajectory uncertainty.
ROUTER_AXES = ("reference", "retry", "temperature")
ROUTER_FEATURES = tuple(axis_feature(axis) for axis in ROUTER_AXES)
STRATEGIES = ("routed", "retry", "best_fixed", "uniform", "random", "oracle")
BASELINES = ("retry", "best_fixed", "uniform", "random", "oracle")


@runtime_checkable
class Router(Protocol):
    """Anything that maps a table of failure features to one setting label per row.

    ``settings`` are the labels that may be returned (e.g. ``"temperature(T=0.3)"``)."""

    def route(self, features: pd.DataFrame, settings: Sequence[str]) -> list[str]: ...


def _param(setting: str):
    try:
        return parse_intervention(setting)
    except Exception:  # a label this version cannot parse is simply not chosen by the rule
        return None


TOWARD_REFERENCE = ("checkpoint", "mix")


def choose_settings(
    settings: Sequence[str], toward_reference: str = "checkpoint"
) -> dict[str, str | None]:
    """The concrete setting behind each branch of the rule, from the available ``settings``;
    ``toward_reference`` names the kind the drift branch tries first (the other is its
    fallback)."""
    if toward_reference not in TOWARD_REFERENCE:
        raise ConfigError(
            f"toward_reference must be one of {', '.join(TOWARD_REFERENCE)}, got {toward_reference!r}"
        )
    parsed = [(s, _param(s)) for s in settings]
    mixes = sorted((abs(p.value - 0.5), p.value, s) for s, p in parsed if p and p.kind == "mix")
    checkpoints = sorted(
        (checkpoint_order(p.value), s) for s, p in parsed if p and p.kind == "checkpoint"
    )
    temps = [(p.value, s) for s, p in parsed if p and p.kind == "temperature"]
    hot = sorted(t for t in temps if t[0] > 1.0)
    cold = sorted(t for t in temps if t[0] < 1.0)
    dolas = sorted(s for s, p in parsed if p and p.kind == "dola")
    return {
        "toward_reference": _first(
            [c[1] for c in checkpoints[:1]], [m[2] for m in mixes[:1]], toward_reference
        ),
        "retry": RETRY if RETRY in settings else None,
        "temperature_up": hot[-1][1] if hot else None,
        "temperature_down": cold[0][1] if cold else (dolas[0] if dolas else None),
    }


def _first(checkpoints: list[str], mixes: list[str], prefer: str) -> str | None:
    order = checkpoints + mixes if prefer == "checkpoint" else mixes + checkpoints
    return order[0] if order else None


class SignatureRouter(BaseEstimator):
    """The training-free routing rule of SPEC §3.6 (see the module docstring).

    Args:
        thresholds: ``"median"`` (medians over the failures being routed, or over the
            failures given to ``fit``) or a mapping feature → constant threshold.
        toward_reference: which kind the drift branch tries first, ``"checkpoint"`` (the
            default: one forward pass per token) or ``"mix"`` (the first version of the
            rule); the other is its fallback.
        calibration_models: the models whose failures set constant ``thresholds`` (e.g.
            the shipped defaults); ``fit`` records its own in ``calibration_models_``. The
            analysis refuses to evaluate a router on its calibration models (or flags it).
    """

    def __init__(
        self,
        thresholds: str | Mapping[str, float] = "median",
        toward_reference: str = "checkpoint",
        calibration_models: Sequence[str] = (),
    ):
        self.thresholds = thresholds
        self.toward_reference = toward_reference
        self.calibration_models = calibration_models

    def fit(self, features: pd.DataFrame, y=None):
        """Fix the thresholds from ``features`` (medians) or the given constants — never
        from rescue outcomes, which this router is not shown."""
        self.thresholds_ = self._thresholds_of(features)
        # which models' failures set the thresholds: evaluating the router on them is
        # refused (or flagged) by the analysis (protocol v2)
        self.calibration_models_ = (
            sorted(set(features["model"].astype(str))) if "model" in features else []
        )
        return self

    def _thresholds_of(self, features: pd.DataFrame) -> dict[str, float]:
        if isinstance(self.thresholds, str):
            if self.thresholds != "median":
                raise ConfigError(
                    f"router thresholds must be 'median' or a mapping, got {self.thresholds!r}"
                )
            return {
                f: float(np.nanmedian(features[f].to_numpy(dtype=float)))
                if f in features and features[f].notna().any()
                else float("nan")
                for f in ROUTER_FEATURES
            }
        unknown = set(self.thresholds) - set(ROUTER_FEATURES)
        if unknown:
            raise ConfigError(
                f"router thresholds for unknown features {sorted(unknown)}; known: {', '.join(ROUTER_FEATURES)}"
            )
        return {f: float(self.thresholds.get(f, np.nan)) for f in ROUTER_FEATURES}

    def thresholds_for(self, features: pd.DataFrame) -> dict[str, float]:
        return self.thresholds_ if hasattr(self, "thresholds_") else self._thresholds_of(features)

    def decide(self, features: pd.DataFrame, settings: Sequence[str]) -> pd.DataFrame:
        """Per failure: the setting, the branch of the rule that chose it, and the thresholds."""
        t = self.thresholds_for(features)
        chosen = choose_settings(settings, self.toward_reference)
        n = len(features)

        def col(name):
            return features[name].to_numpy(dtype=float) if name in features else np.full(n, np.nan)

        drift_f, dispersion_f, uncertainty_f = ROUTER_FEATURES
        drift, dispersion, uncertainty = col(drift_f), col(dispersion_f), col(uncertainty_f)
        branch = np.full(n, "temperature_down", dtype=object)
        with np.errstate(invalid="ignore"):
            branch = np.where(uncertainty < t[uncertainty_f], "temperature_up", branch)
            branch = np.where(dispersion > t[dispersion_f], "retry", branch)
            branch = np.where(drift > t[drift_f], "toward_reference", branch)
        setting = np.array([chosen[b] or RETRY for b in branch], dtype=object)
        fallback = np.array([chosen[b] is None for b in branch])
        return pd.DataFrame(
            {"setting": setting, "branch": branch, "fallback_to_retry": fallback},
            index=features.index,
        )

    def route(self, features: pd.DataFrame, settings: Sequence[str]) -> list[str]:
        return list(self.decide(features, settings)["setting"])


def route_failures(
    router: Router, features: pd.DataFrame, settings: Sequence[str], *, by: str | None = None
) -> np.ndarray:
    """Route every failure. With ``by=None`` (the analysis' default) the thresholds are
    medians over all failures together: the three features are on scales shared by every
    model (nats per token, normalised entropy), and a model whose failures drift far from
    its reference should send more of them back toward it. With ``by="model"`` each
    model's failures are routed on their own, which sends half of every model's failures
    to each side of every threshold by construction."""
    if by is None or by not in features:
        routed = router.route(features, settings)
    else:
        routed = pd.Series(index=features.index, dtype=object)
        for _, part in features.groupby(by, sort=False):
            routed.loc[part.index] = router.route(part, settings)
        routed = routed.to_list()
    routed = np.asarray(routed, dtype=object)
    unknown = sorted(set(routed) - set(settings))
    if unknown:
        raise DataError(
            f"router returned settings not in the grid: {unknown}; grid: {list(settings)}"
        )
    return routed


@dataclass
class Outcomes:
    """Rescue outcomes of F failures × S settings, aligned for compute-matched evaluation."""

    keys: pd.DataFrame  # (model, problem_id), one row per failure
    settings: list[str]
    n: np.ndarray  # (F, S) recorded samples
    successes: np.ndarray  # (F, S) correct among them
    cost: np.ndarray  # (F, S) mean cost (tokens × passes) of one sample
    unit_cost: np.ndarray  # (F,) mean cost of one retry sample: the budget's unit

    @classmethod
    def from_matrix(
        cls,
        matrix: pd.DataFrame,
        settings: Sequence[str] | None = None,
        failures: pd.DataFrame | None = None,
    ) -> Outcomes:
        """From a ``rescue_matrix``; failures lacking any of the settings are left out (logged)."""
        settings = list(settings) if settings is not None else sorted(matrix["setting"].unique())
        if RETRY not in settings:
            raise DataError(
                f"compute-matched evaluation needs the retry setting (its cost is the "
                f"budget's unit); settings present: {settings}"
            )
        wide = matrix[matrix["n"] > 0].pivot_table(
            index=FAILURE_KEY,
            columns="setting",
            values=["n", "successes", "cost_per_sample"],
            aggfunc="first",
        )
        if failures is not None:
            wide = wide.reindex(pd.MultiIndex.from_frame(failures[FAILURE_KEY]))
        present = [s for s in settings if ("n", s) in wide.columns]
        missing_settings = sorted(set(settings) - set(present))
        if missing_settings:
            raise DataError(f"no rescue samples at all for settings {missing_settings}")
        complete = wide[[("n", s) for s in settings]].notna().all(axis=1)
        dropped = int((~complete).sum())
        if dropped:
            logger.warning(
                "%d failures lack rescue samples for some setting; left out of routing evaluation",
                dropped,
            )
        wide = wide[complete]
        n = wide["n"][settings].to_numpy(dtype=float)
        successes = wide["successes"][settings].to_numpy(dtype=float)
        cost = wide["cost_per_sample"][settings].to_numpy(dtype=float)
        unit = cost[:, settings.index(RETRY)]
        keys = wide.index.to_frame(index=False)
        return cls(keys, settings, n, successes, cost, unit)

    def __len__(self) -> int:
        return len(self.keys)

    def draws(self, budget: float, share: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Draws each setting affords with ``share`` of a budget of ``budget`` retry-equivalent
        samples, capped at R, and a mask of the capped cells."""
        want = budget * share * self.unit_cost[:, None] / self.cost
        return np.minimum(want, self.n), want > self.n + 1e-9

    def success(self, budget: float, share: float = 1.0) -> np.ndarray:
        """(F, S): estimated chance that a setting rescues a failure within the budget."""
        draws, _ = self.draws(budget, share)
        return success_within(self.n, self.successes, draws)

    def subset(self, mask) -> Outcomes:
        mask = np.asarray(mask, dtype=bool)
        return Outcomes(
            self.keys[mask].reset_index(drop=True),
            self.settings,
            self.n[mask],
            self.successes[mask],
            self.cost[mask],
            self.unit_cost[mask],
        )


class BestFixedIntervention(BaseEstimator):
    """The single setting with the highest mean rescue-within-budget on the failures it is
    fitted on: the "best fixed intervention" baseline, which is trained, so it is always
    evaluated on failures it was not chosen on."""

    def __init__(self, budget: float = 16):
        self.budget = budget

    def fit(self, outcomes: Outcomes, y=None):
        if len(outcomes) == 0:
            raise DataError("cannot choose a best fixed intervention from zero failures")
        means = np.nanmean(outcomes.success(self.budget), axis=0)
        self.scores_ = dict(zip(outcomes.settings, map(float, means), strict=True))
        self.setting_ = outcomes.settings[int(np.nanargmax(means))]
        return self

    def predict(self, outcomes: Outcomes) -> np.ndarray:
        check_is_fitted(self, "setting_")
        return np.full(len(outcomes), self.setting_, dtype=object)


def cross_fitted_best_fixed(
    outcomes: Outcomes, budget: float, *, n_folds: int = 2, random_state=0
) -> tuple[np.ndarray, list[str]]:
    """Best fixed setting for every failure, chosen on the *other* folds (folds of problems,
    so one problem failed by several models never sits on both sides)."""
    problems = outcomes.keys["problem_id"].astype(str).to_numpy()
    unique = np.unique(problems)
    rng = np.random.default_rng(random_state)
    fold_of = dict(zip(unique, rng.permutation(len(unique)) % n_folds, strict=True))
    folds = np.array([fold_of[p] for p in problems])
    chosen = np.empty(len(outcomes), dtype=object)
    choices = []
    for f in range(n_folds):
        test = folds == f
        if not test.any():
            continue
        train = ~test
        if not train.any():  # a single problem: nothing held out to choose on
            chosen[test] = RETRY
            choices.append(RETRY)
            continue
        setting = BestFixedIntervention(budget).fit(outcomes.subset(train)).setting_
        chosen[test] = setting
        choices.append(setting)
    return chosen, choices


def strategy_values(
    outcomes: Outcomes,
    routed: np.ndarray,
    budget: float,
    *,
    best_fixed: np.ndarray | None = None,
    random_state=0,
) -> pd.DataFrame:
    """(F × strategy): each failure's estimated chance of rescue within ``budget`` under
    routing and every baseline."""
    p = outcomes.success(budget)
    col = {s: i for i, s in enumerate(outcomes.settings)}
    rows = np.arange(len(outcomes))
    if best_fixed is None:
        best_fixed, _ = cross_fitted_best_fixed(outcomes, budget, random_state=random_state)
    uniform_single = outcomes.success(budget, share=1.0 / len(outcomes.settings))
    values = {
        "routed": p[rows, [col[s] for s in routed]],
        "retry": p[:, col[RETRY]],
        "best_fixed": p[rows, [col[s] for s in best_fixed]],
        # settings' samples are independent, so the chance all fail is the product
        "uniform": 1.0 - np.prod(1.0 - uniform_single, axis=1),
        # random routing, in expectation over the uniformly random choice
        "random": p.mean(axis=1),
        "oracle": p.max(axis=1),
    }
    return pd.DataFrame(values)


def _summaries(values: pd.DataFrame, groups, weights: np.ndarray, level: float = 0.95) -> dict:
    v = values.to_numpy(dtype=float)
    point = v.mean(axis=0)
    totals = weights.sum(axis=1, keepdims=True)
    reps = (weights @ v) / totals
    names = list(values.columns)
    idx = {s: i for i, s in enumerate(names)}
    n = len(values)
    unit = f"bootstrap-percentile {level:.0%} over problems ({len(weights)} resamples)"
    rates = {
        s: Estimate(float(point[i]), *percentile_interval(reps[:, i], level), n, unit).to_dict()
        for s, i in idx.items()
    }
    lifts = {}
    for base in BASELINES:
        d = reps[:, idx["routed"]] - reps[:, idx[base]]
        lifts[base] = Estimate(
            float(point[idx["routed"]] - point[idx[base]]), *percentile_interval(d, level), n, unit
        ).to_dict()
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = point[idx["oracle"]] - point[idx["retry"]]
        closed = (point[idx["routed"]] - point[idx["retry"]]) / gap if gap > 0 else np.nan
        gap_reps = (reps[:, idx["routed"]] - reps[:, idx["retry"]]) / (
            reps[:, idx["oracle"]] - reps[:, idx["retry"]]
        )
    gap_reps = np.where(np.isfinite(gap_reps), gap_reps, np.nan)
    return {
        "n": n,
        "rates": rates,
        "lift": lifts,
        "oracle_gap_closed": Estimate(
            float(closed),
            *percentile_interval(gap_reps, level),
            n,
            unit + "; (routed - retry) / (oracle - retry)",
        ).to_dict(),
    }


def evaluate_routing(
    outcomes: Outcomes,
    routed: np.ndarray,
    *,
    budget: float,
    labels: Sequence | None = None,
    subsets: Sequence[str] = ("steerable-hard",),
    budgets: Sequence[float] | None = None,
    n_boot: int = 2000,
    random_state=0,
) -> dict:
    """Compute-matched evaluation of a routing against every baseline, on all failures and
    on each labelled subset: rates, lifts with bootstrap 95 % intervals, the share of the
    oracle gap closed, and rescue@budget curves for ``budgets`` (default 1..R)."""
    if len(outcomes) == 0:
        raise DataError("no failures with complete rescue outcomes to evaluate routing on")
    routed = np.asarray(routed, dtype=object)
    if len(routed) != len(outcomes):
        raise DataError(f"routed has {len(routed)} settings for {len(outcomes)} failures")
    groups = outcomes.keys["problem_id"].astype(str).to_numpy()
    best_fixed, choices = cross_fitted_best_fixed(outcomes, budget, random_state=random_state)
    values = strategy_values(outcomes, routed, budget, best_fixed=best_fixed)
    _, capped = outcomes.draws(budget)
    result = {
        "budget_samples": float(budget),
        "budget_unit": "retry-equivalent samples per failed problem (b × mean retry cost in tokens)",
        "capped_share": float(capped.mean()),
        "best_fixed_choices": choices,
        "routed_share": {s: float(np.mean(routed == s)) for s in outcomes.settings},
        "subsets": {},
    }
    masks = {"all": np.ones(len(outcomes), dtype=bool)}
    if labels is not None:
        labels = np.asarray(labels, dtype=object)
        for name in subsets:
            masks[name] = labels == name
    rng = np.random.default_rng(random_state)
    for name, mask in masks.items():
        if mask.sum() == 0:
            result["subsets"][name] = {"n": 0}
            continue
        weights = group_weights(groups[mask], n_boot, rng)
        result["subsets"][name] = _summaries(
            values[mask].reset_index(drop=True), groups[mask], weights
        )

    max_r = int(np.nanmin(outcomes.n))
    budgets = list(budgets) if budgets is not None else list(range(1, max_r + 1))
    curves = {"budgets": budgets}
    for name, mask in masks.items():
        if mask.sum() == 0:
            continue
        weights = group_weights(groups[mask], min(n_boot, 500), rng)
        per_budget = {
            s: {"value": [], "low": [], "high": [], "n": int(mask.sum())} for s in STRATEGIES
        }
        for b in budgets:
            vb = strategy_values(
                outcomes.subset(mask),
                routed[mask],
                b,
                best_fixed=cross_fitted_best_fixed(outcomes, b, random_state=random_state)[0][mask],
            )
            v = vb.to_numpy(dtype=float)
            reps = (weights @ v) / weights.sum(axis=1, keepdims=True)
            for i, s in enumerate(vb.columns):
                lo, hi = percentile_interval(reps[:, i])
                per_budget[s]["value"].append(float(v[:, i].mean()))
                per_budget[s]["low"].append(lo)
                per_budget[s]["high"].append(hi)
        curves[name] = per_budget
    result["curves"] = curves
    result["per_failure"] = values.assign(
        model=outcomes.keys["model"].to_numpy(),
        problem_id=groups,
        routed_setting=routed,
        best_fixed_setting=best_fixed,
    )
    return result

"""Protocol v2 routing evaluation (SPEC §3.6): a router frozen on calibration models, scored
on held-out samples of held-out models, beside the controls that separate per-failure
signal from per-model allocation, with hierarchical bootstrap intervals that refit every
fitted or chosen quantity inside each replicate.

What is fitted or chosen, and on what:

- **router thresholds**: medians of the three features over the failures of the
  *calibration* models, never over the failures being routed. ``calibration_groups``
  splits the models into groups (training seeds where there are several; else two halves
  of the models, alternating within each family; a single model: two halves of its
  problems); the failures
  of each group are routed with thresholds frozen on the other groups (both ways).
- **best fixed intervention**: chosen on the *labelling part* of the other fold of problems
  (two folds by problem hash), scored on the scoring part.
- **oracle**: per failure, the setting best on its labelling part, scored on its scoring part.
- **subsets** (steerable-hard …): labels of the labelling part.

Strategies scored on the scoring part, compute-matched (``Outcomes``): ``routed``;
``routed_charged`` (the router pays for teacher-forcing its K probe rollouts under the
reference to compute reference drift, in retry-equivalent samples, as ``fixable rescue``
pays in deployment); ``retry``; ``best_fixed``; ``uniform`` (budget split over every
setting); ``random`` (a uniformly random setting); ``random_shares`` (a random setting drawn
with the router's own branch shares: its allocation, without any signal);
``shuffled_within_model`` (the router's routes shuffled among each model's failures: each
model keeps its allocation, the per-failure signal is destroyed — exact expectation over
shuffles); ``oracle``.

Intervals: a hierarchical bootstrap — models resampled with replacement within each
calibration group, then failures (problems) with replacement within each drawn model — in
which the thresholds, the routes, the routers' shares and the best fixed choice are refitted
on every replicate's weights. A fitted router (``RoutingData.refit_routes``) is refitted
there too, so its intervals carry the variance of fitting it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fixable.analysis.routing import RETRY, ROUTER_FEATURES, Outcomes, choose_settings
from fixable.analysis.stats import Estimate, percentile_interval
from fixable.errors import DataError

logger = logging.getLogger(__name__)

STRATEGIES_V2 = (
    "routed",
    "routed_charged",
    "retry",
    "best_fixed",
    "uniform",
    "random",
    "random_shares",
    "shuffled_within_model",
    "oracle",
)
BRANCHES = ("toward_reference", "retry", "temperature_up", "temperature_down")
N_PROBLEM_FOLDS = 2


def _problem_fold(problem_id: str, n_folds: int = N_PROBLEM_FOLDS) -> int:
    digest = hashlib.blake2b(str(problem_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n_folds


def calibration_groups(failures: pd.DataFrame) -> tuple[str, np.ndarray]:
    """How the router's calibration is held out, and each failure's group.

    Training seeds where the failures' models have two or more (seed 0 <-> seed 1); else
    two halves of the models, alternating by name within each family, so that both halves
    hold models of every family (features are on family-specific scales: calibrating one
    family on another is the transfer question, reported by ``transfer``); a single
    model: two halves of its problems (by problem hash). A failure of group g is routed
    with thresholds frozen on the failures of every other group."""
    models = failures["model"].astype(str).to_numpy()
    seeds = failures["seed"] if "seed" in failures else pd.Series([None] * len(failures))
    families = failures["family"] if "family" in failures else pd.Series([None] * len(failures))
    if seeds.notna().all() and seeds.nunique() >= 2:
        return "seeds", np.array([f"seed {s}" for s in seeds], dtype=object)
    unique = sorted(set(models))
    if len(unique) >= 2:
        family_of = dict(zip(models, families.astype(object).fillna("").to_numpy(), strict=True))
        half, seen = {}, {}
        for m in unique:
            f = family_of[m]
            half[m] = f"models {'AB'[seen.get(f, 0) % 2]}"
            seen[f] = seen.get(f, 0) + 1
        if len(set(half.values())) < 2:  # one model per family: alternate over all models
            half = {m: f"models {'AB'[i % 2]}" for i, m in enumerate(unique)}
        return "model halves", np.array([half[m] for m in models], dtype=object)
    problems = failures["problem_id"].astype(str).to_numpy()
    return "problem halves", np.array(
        [f"problems {'AB'[_problem_fold(p)]}" for p in problems], dtype=object
    )


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of ``values`` (n,) under each row of ``weights`` (B, n); NaN values ignored.
    With unit weights it is the ordinary median (the two middle values averaged)."""
    values = np.asarray(values, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    ok = np.isfinite(values)
    v, w = values[ok], weights[:, ok]
    if v.size == 0:
        return np.full(len(weights), np.nan)
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[:, order]
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1:]
    half = total / 2
    lower = np.argmax(cum >= half - 1e-9, axis=1)
    upper = np.argmax(cum > half + 1e-9, axis=1)
    out = (v[lower] + v[upper]) / 2
    return np.where(total[:, 0] > 0, out, np.nan)


@dataclass
class RoutingData:
    """Everything the v2 evaluation needs, aligned by failure (F rows)."""

    score: Outcomes  # scoring part
    label: Outcomes  # labelling part, same failures in the same order
    features: np.ndarray  # (F, 3) ROUTER_FEATURES
    models: np.ndarray  # (F,) model names
    problems: np.ndarray  # (F,) problem ids
    groups: np.ndarray  # (F,) calibration group
    labels: np.ndarray  # (F,) regime label from the labelling part (or None)
    charge: np.ndarray  # (F,) router's scoring cost in retry-equivalent samples
    # (F,) which failures are evaluated (a declared calibration subset is not); None: all
    evaluate: np.ndarray | None = None
    fixed_routes: np.ndarray | None = None  # (F,) setting labels of a caller's router
    # a router refitted on each bootstrap replicate: (B, F) weights -> (B, F) setting
    # indices (e.g. learned_routing.RefittedKNNRouter); its routes under unit weights are
    # the point routes. None: the routes are the rule's, or ``fixed_routes`` frozen
    refit_routes: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        n = len(self.score)
        if self.evaluate is None:
            self.evaluate = np.ones(n, dtype=bool)
        if len(self.label) != n or list(self.label.settings) != list(self.score.settings):
            raise DataError(
                "labelling and scoring outcomes must hold the same failures and settings"
            )
        for name in ("features", "models", "problems", "groups", "labels", "charge"):
            if len(getattr(self, name)) != n:
                raise DataError(f"{name} has {len(getattr(self, name))} rows for {n} failures")


class FrozenRouting:
    """The signature rule with thresholds frozen per calibration group; vectorised over
    bootstrap replicates (rows of a weight matrix).

    ``fixed`` (a mapping feature → threshold) freezes constant thresholds for every failure
    instead (a router calibrated elsewhere, e.g. the shipped defaults): nothing is refitted."""

    def __init__(self, data: RoutingData, toward_reference: str = "checkpoint", fixed=None):
        self.data = data
        settings = list(data.score.settings)
        chosen = choose_settings(settings, toward_reference)
        self.branch_setting = {b: settings.index(chosen[b] or RETRY) for b in BRANCHES}
        self.fallback = {b: chosen[b] is None for b in BRANCHES}
        self.fixed = (
            None if fixed is None else {f: float(fixed.get(f, np.nan)) for f in ROUTER_FEATURES}
        )
        self.group_names = sorted(set(data.groups))
        self.fixed_routes = (
            None
            if data.fixed_routes is None
            else np.array([settings.index(r) for r in data.fixed_routes])
        )

    def thresholds(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Per evaluation group: (B, 3) thresholds frozen on the other groups' failures."""
        B = len(weights)
        if self.fixed is not None:
            t = np.array([self.fixed[f] for f in ROUTER_FEATURES])
            return {g: np.tile(t, (B, 1)) for g in self.group_names}
        out = {}
        for g in self.group_names:
            other = self.data.groups != g
            if not other.any():  # a single group: nothing to calibrate on without leaking
                raise DataError(
                    "the router needs calibration failures outside the evaluated ones; "
                    "only one calibration group"
                )
            cols = [
                weighted_median(self.data.features[other, j], weights[:, other])
                for j in range(len(ROUTER_FEATURES))
            ]
            out[g] = np.stack(cols, axis=1)
        return out

    def routes(self, weights: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(B, F) setting index of every failure under each replicate's thresholds, and the
        thresholds per group."""
        B, F = weights.shape
        if self.data.refit_routes is not None:
            return np.asarray(self.data.refit_routes(weights)), {}
        if self.fixed_routes is not None:
            return np.broadcast_to(self.fixed_routes, (B, F)), {}
        per_group = self.thresholds(weights)
        t = np.empty((B, F, len(ROUTER_FEATURES)))
        for g, values in per_group.items():
            t[:, self.data.groups == g, :] = values[:, None, :]
        x = self.data.features[None, :, :]
        drift, disp, unc = (x[..., ROUTER_FEATURES.index(f)] for f in ROUTER_FEATURES)
        with np.errstate(invalid="ignore"):
            branch = np.full((B, F), 3, dtype=np.int8)  # temperature_down
            branch = np.where(unc < t[..., 2], 2, branch)  # temperature_up
            branch = np.where(disp > t[..., 1], 1, branch)  # retry
            branch = np.where(drift > t[..., 0], 0, branch)  # toward_reference
        lookup = np.array([self.branch_setting[b] for b in BRANCHES])
        return lookup[branch], per_group


def hierarchical_weights(
    models: np.ndarray, strata: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """(n_boot, F) replicate weights: within each stratum, models drawn with replacement,
    then each drawn model's failures drawn with replacement (a failure's weight counts
    how often it was drawn)."""
    F = len(models)
    weights = np.zeros((n_boot, F))
    members: dict[str, dict[str, np.ndarray]] = {}
    for i, (s, m) in enumerate(zip(strata, models, strict=True)):
        members.setdefault(str(s), {}).setdefault(str(m), []).append(i)
    layout = [
        [np.asarray(idx) for _, idx in sorted(per_model.items())]
        for _, per_model in sorted(members.items())
    ]
    for b in range(n_boot):
        for stratum in layout:
            for pick in rng.integers(0, len(stratum), len(stratum)):
                idx = stratum[pick]
                counts = rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)))
                weights[b, idx] += counts
    return weights


def _model_codes(models: np.ndarray) -> tuple[np.ndarray, int]:
    uniques, codes = np.unique(models.astype(str), return_inverse=True)
    return codes, len(uniques)


def strategy_matrix(
    data: RoutingData,
    routes: np.ndarray,
    weights: np.ndarray,
    budget: float,
) -> dict[str, np.ndarray]:
    """(B, F) value of every strategy for every failure under each replicate: the estimated
    chance of rescue within ``budget`` retry-equivalent samples on the scoring part."""
    B, F = weights.shape
    S = len(data.score.settings)
    P = data.score.success(budget)  # (F, S)
    L = data.label.success(budget)
    charged_budget = np.maximum(budget - data.charge, 0.0)[:, None]
    Pc = data.score.success(charged_budget)
    rows = np.arange(F)
    retry = data.score.settings.index(RETRY)

    # best fixed: chosen on the labelling part of the other fold of problems, per replicate
    folds = np.array([_problem_fold(p) for p in data.problems])
    best = np.empty((B, F), dtype=int)
    for f in range(N_PROBLEM_FOLDS):
        test = folds == f
        if not test.any():
            continue
        train = ~test
        if not train.any():
            best[:, test] = retry
            continue
        score = weights[:, train] @ np.nan_to_num(L[train])  # (B, S)
        best[:, test] = np.argmax(score, axis=1)[:, None]
    # ties (e.g. nothing rescued in the labelling part) go to the setting with the best
    # labelling-part mean, not to whichever setting sorts first
    L0 = np.nan_to_num(L, nan=-1.0)
    oracle = np.argmax(L0 + 1e-9 * np.nan_to_num(L).mean(axis=0), axis=1)

    # the router's allocation: overall and per model, under each replicate's weights
    onehot = np.zeros((B, F, S))
    np.put_along_axis(onehot, routes[..., None], 1.0, axis=2)
    wsum = weights.sum(axis=1, keepdims=True)
    shares = np.einsum("bf,bfs->bs", weights, onehot) / np.where(wsum > 0, wsum, np.nan)
    codes, n_models = _model_codes(data.models)
    model_shares = np.zeros((B, n_models, S))
    for m in range(n_models):
        own = codes == m
        model_shares[:, m] = np.einsum("bf,bfs->bs", weights[:, own], onehot[:, own])
    totals = model_shares.sum(axis=2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        model_shares = model_shares / totals
    # a model with no weight in this replicate: its own routes (it does not count anyway)
    empty = ~(totals[..., 0] > 0)
    if empty.any():
        for b, m in zip(*np.nonzero(empty), strict=True):
            own = codes == m
            model_shares[b, m] = onehot[b, own].mean(axis=0)

    uniform_single = data.score.success(budget, share=1.0 / S)
    values = {
        "routed": np.take_along_axis(np.broadcast_to(P, (B, F, S)), routes[..., None], 2)[..., 0],
        "routed_charged": np.take_along_axis(np.broadcast_to(Pc, (B, F, S)), routes[..., None], 2)[
            ..., 0
        ],
        "retry": np.broadcast_to(P[:, retry], (B, F)),
        "best_fixed": np.take_along_axis(np.broadcast_to(P, (B, F, S)), best[..., None], 2)[..., 0],
        "uniform": np.broadcast_to(1.0 - np.prod(1.0 - uniform_single, axis=1), (B, F)),
        "random": np.broadcast_to(P.mean(axis=1), (B, F)),
        "random_shares": np.nan_to_num(shares) @ P.T,
        "shuffled_within_model": np.einsum("bfs,fs->bf", model_shares[:, codes, :], P),
        "oracle": np.broadcast_to(P[rows, oracle], (B, F)),
    }
    return values


def _means(values: dict[str, np.ndarray], weights: np.ndarray, mask: np.ndarray) -> dict:
    w = weights[:, mask]
    total = w.sum(axis=1)
    total = np.where(total > 0, total, np.nan)
    return {s: (w * v[:, mask]).sum(axis=1) / total for s, v in values.items()}


def _estimate(point: float, reps: np.ndarray, n: int, unit: str, level: float) -> dict:
    lo, hi = percentile_interval(reps, level)
    return Estimate(float(point), lo, hi, int(n), unit).to_dict()


def evaluate_frozen_routing(
    data: RoutingData,
    *,
    budget: float,
    subsets: Sequence[str] = ("steerable-hard",),
    budgets: Sequence[float] | None = None,
    n_boot: int = 1000,
    n_boot_curves: int = 200,
    toward_reference: str = "checkpoint",
    fixed_thresholds=None,
    random_state: int = 0,
    level: float = 0.95,
    chunk: int = 100,
) -> dict:
    """Rates, lifts and rescue@budget curves of the frozen router and every control, on all
    failures and each subset, with hierarchical bootstrap intervals (see module docstring)."""
    F = len(data.score)
    if F == 0:
        raise DataError("no failures with complete rescue outcomes to evaluate routing on")
    router = FrozenRouting(data, toward_reference, fixed_thresholds)
    rng = np.random.default_rng(random_state)
    ones = np.ones((1, F))
    point_routes, point_thresholds = router.routes(ones)
    masks = {"all": np.asarray(data.evaluate, dtype=bool)}
    for name in subsets:
        masks[name] = masks["all"] & (np.asarray(data.labels, dtype=object) == name)
    if data.refit_routes is not None:
        refitted = "the router refitted on each replicate (failures resampled within every model), best fixed refitted"
    elif data.fixed_routes is None and fixed_thresholds is None:
        refitted = "thresholds, routes and best fixed refitted"
    else:
        refitted = "routes frozen by the router, best fixed refitted"
    unit = (
        f"hierarchical bootstrap-percentile {level:.0%} (models within calibration groups, "
        f"then problems within models; {refitted}; {n_boot} resamples)"
    )
    weights_all = hierarchical_weights(data.models, data.groups, n_boot, rng)

    def replicate_means(weights, b):
        """Per subset, per strategy: (B,) replicate means, in chunks to bound memory."""
        out = {name: {s: [] for s in STRATEGIES_V2} for name in masks}
        for start in range(0, len(weights), chunk):
            w = weights[start : start + chunk]
            routes, _ = router.routes(w)
            values = strategy_matrix(data, routes, w, b)
            for name, mask in masks.items():
                if not mask.any():
                    continue
                for s, v in _means(values, w, mask).items():
                    out[name][s].append(v)
        return {
            name: {s: np.concatenate(v) if v else np.array([]) for s, v in per.items()}
            for name, per in out.items()
        }

    point_values = strategy_matrix(data, point_routes, ones, budget)
    reps = replicate_means(weights_all, budget)
    settings = list(data.score.settings)
    result = {
        "budget_samples": float(budget),
        "budget_unit": "retry-equivalent samples per failed problem (b × mean retry cost in tokens)",
        "capped_share": float(data.score.draws(budget)[1].mean()),
        "routed_share": {
            s: float(np.mean(point_routes[0][masks["all"]] == i)) for i, s in enumerate(settings)
        },
        "router_charge": {
            "mean_samples": float(np.mean(data.charge)),
            "max_samples": float(np.max(data.charge)),
            "how": "teacher-forced scoring of the K probe rollouts under the reference (one "
            "pass per probe token), in retry-equivalent samples: sum of probe tokens / mean "
            "retry cost; 0 where reference drift is unavailable",
        },
        "thresholds": {
            g: dict(zip(ROUTER_FEATURES, map(float, t[0]), strict=True))
            for g, t in point_thresholds.items()
        },
        "subsets": {},
    }
    for name, mask in masks.items():
        n = int(mask.sum())
        if n == 0:
            result["subsets"][name] = {"n": 0}
            continue
        point = {s: float(v[0, mask].mean()) for s, v in point_values.items()}
        r = reps[name]
        block = {
            "n": n,
            "n_models": int(len(set(data.models[mask]))),
            "rates": {s: _estimate(point[s], r[s], n, unit, level) for s in STRATEGIES_V2},
            "lift": {
                base: _estimate(
                    point["routed"] - point[base], r["routed"] - r[base], n, unit, level
                )
                for base in STRATEGIES_V2
                if base != "routed"
            },
            "lift_over_best_fixed": {
                s: _estimate(point[s] - point["best_fixed"], r[s] - r["best_fixed"], n, unit, level)
                for s in STRATEGIES_V2
                if s != "best_fixed"
            },
        }
        gap = point["oracle"] - point["retry"]
        with np.errstate(invalid="ignore", divide="ignore"):
            closed = (point["routed"] - point["retry"]) / gap if gap > 0 else np.nan
            gap_reps = (r["routed"] - r["retry"]) / (r["oracle"] - r["retry"])
        gap_reps = np.where(np.isfinite(gap_reps), gap_reps, np.nan)
        block["oracle_gap_closed"] = _estimate(
            closed, gap_reps, n, unit + "; (routed - retry) / (oracle - retry)", level
        )
        result["subsets"][name] = block

    max_r = int(np.nanmin(data.score.n))
    budgets = list(budgets) if budgets is not None else list(range(1, max_r + 1))
    curve_weights = weights_all[: max(1, min(n_boot_curves, n_boot))]
    curves: dict = {"budgets": budgets}
    for name, mask in masks.items():
        if not mask.any():
            continue
        curves[name] = {
            s: {"value": [], "low": [], "high": [], "n": int(mask.sum())} for s in STRATEGIES_V2
        }
    for b in budgets:
        pv = strategy_matrix(data, point_routes, ones, b)
        rb = replicate_means(curve_weights, b)
        for name, mask in masks.items():
            if not mask.any():
                continue
            for s in STRATEGIES_V2:
                lo, hi = percentile_interval(rb[name][s], level)
                curves[name][s]["value"].append(float(pv[s][0, mask].mean()))
                curves[name][s]["low"].append(lo)
                curves[name][s]["high"].append(hi)
    result["curves"] = curves
    best_choice = _best_fixed_choices(data, budget)
    result["best_fixed_choices"] = best_choice
    result["per_failure"] = pd.DataFrame(
        {s: v[0] for s, v in point_values.items()}
        | {
            "model": data.models,
            "problem_id": data.problems,
            "routed_setting": [settings[i] for i in point_routes[0]],
            "oracle_setting": [settings[i] for i in _oracle_choice(data, budget)],
            "calibration_group": data.groups,
            "router_charge": data.charge,
        }
    )
    return result


def _oracle_choice(data: RoutingData, budget: float) -> np.ndarray:
    """Per failure: the index of the setting best on its labelling part (as in the oracle)."""
    L = data.label.success(budget)
    L0 = np.nan_to_num(L, nan=-1.0)
    return np.argmax(L0 + 1e-9 * np.nan_to_num(L).mean(axis=0), axis=1)


def _best_fixed_choices(data: RoutingData, budget: float) -> list[str]:
    L = np.nan_to_num(data.label.success(budget))
    folds = np.array([_problem_fold(p) for p in data.problems])
    out = []
    for f in range(N_PROBLEM_FOLDS):
        train = folds != f
        if (folds == f).any() and train.any():
            out.append(data.score.settings[int(np.argmax(L[train].mean(axis=0)))])
    return out

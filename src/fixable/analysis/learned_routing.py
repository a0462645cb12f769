"""A learned router, fitted leave-one-model-out: the comparator for the training-free rule.

The signature rule (``routing.SignatureRouter``) maps three features to a setting by fixed
branches. Whether the features *carry* per-failure routing information is a separate
question from whether that rule reads it. This module answers it with the plainest
router that can learn from rescue outcomes without seeing the failures it is scored on:

* to route the failures of model *m*, it standardises the router features with the mean
  and standard deviation of the failures of **every other model** (never *m*'s);
* for each failure of *m* it takes the ``k`` nearest failures of the other models and
  picks the setting with the highest mean **labelling-part** rescue among them, at the
  evaluation budget;
* a failure with a missing feature gets the setting best on average over the other
  models' labelling parts.

``columns`` restricts the router to some of the features: the *free router* reads answer
dispersion (F1) and trajectory uncertainty (F2) only, which come with the probes, and so
costs nothing beyond them (no teacher-forced pass under the reference for drift, F3).

Its routes are then evaluated frozen by protocol v2 (``evaluation.evaluate_frozen_routing``),
scored on the scoring part, with the same nulls as the rule. In the pooled evaluation the
router is refitted on every bootstrap replicate (``RefittedKNNRouter``), so its intervals
carry the variance of fitting it; the per-model evaluation keeps its point routes frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fixable.analysis.evaluation import RoutingData
from fixable.analysis.routing import ROUTER_FEATURES
from fixable.errors import DataError
from fixable.features import axis_feature

#: neighbours per routed failure; fixed before the router was first run, not tuned
DEFAULT_K = 25
#: what the free router reads: every router feature but reference drift (F3), whose
#: teacher-forced pass under the reference is the router's only cost beyond the probes
FREE_FEATURES = tuple(f for f in ROUTER_FEATURES if f != axis_feature("reference"))


def leave_one_model_out_routes(
    data: RoutingData,
    budget: float,
    k: int = DEFAULT_K,
    columns: Sequence[int] | None = None,
) -> np.ndarray:
    """(F,) setting labels: each model's failures routed by a k-nearest-neighbour router
    fitted on the other models' features and labelling-part outcomes. ``columns``: the
    indices of ``data.features`` it reads (default: all)."""
    fit = RefittedKNNRouter(data, budget, k=k, columns=columns)
    settings = list(data.score.settings)
    return np.array([settings[i] for i in fit(np.ones((1, len(data.models))))[0]], dtype=object)


class RefittedKNNRouter:
    """The leave-one-model-out k-NN router as a function of bootstrap weights: called with
    (B, F) replicate weights (how often each failure was drawn), it refits the router on
    each replicate and returns (B, F) setting indices. A failure drawn c times counts c
    times: in the standardisation (weighted mean and standard deviation of the other
    models' drawn failures), among the k nearest neighbours (the nearest drawn failures
    up to a total weight of k, the last one in part) and in the fallback setting. With
    every weight one this is the router of ``leave_one_model_out_routes``. Passed as
    ``RoutingData.refit_routes``, it puts the variance of fitting the router into
    protocol v2's intervals."""

    def __init__(
        self,
        data: RoutingData,
        budget: float,
        k: int = DEFAULT_K,
        columns: Sequence[int] | None = None,
    ):
        if k < 1:
            raise DataError(f"the learned router needs k >= 1 neighbours, got {k}")
        self.models = np.asarray(data.models).astype(str)
        if len(set(self.models)) < 2:
            raise DataError("a leave-one-model-out router needs failures of at least two models")
        x = np.asarray(data.features, dtype=float)
        if columns is not None:
            if not len(columns):
                raise DataError("the learned router needs at least one feature column")
            x = x[:, list(columns)]
        self.x = x
        self.k = k
        self.complete = np.isfinite(x).all(axis=1)
        self.success = np.nan_to_num(data.label.success(budget))  # (F, S), labelling part
        for model in sorted(set(self.models)):
            if not (self.complete & (self.models != model)).any():
                raise DataError(f"no other model's failures have features to route {model} by")

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=float)
        out = np.empty(weights.shape, dtype=int)
        success, x = self.success, self.x
        for model in sorted(set(self.models)):
            test = self.models == model
            rows = np.flatnonzero(test & self.complete)
            train = np.flatnonzero(~test & self.complete)
            # squared differences per feature, shared by every replicate: standardising
            # divides them by the replicate's variances (the means cancel)
            diff = (x[rows][:, None, :] - x[train][None, :, :]) ** 2  # (rows, train, J)
            for b, w in enumerate(weights):
                drawn = ~test & (w > 0)
                if not drawn.any():  # no other model drawn: fall back to all of them
                    drawn, w = ~test, np.ones_like(w)
                score = w[drawn] @ success[drawn] + 1e-9 * success[drawn].sum(axis=0)
                out[b, test] = int(np.argmax(score))
                wt = w[train]
                if len(rows) == 0 or not (wt > 0).any():
                    continue
                out[b, rows] = self._nearest_best(diff, x[train], wt, success[train])
        return out

    def _nearest_best(self, diff, x_train, wt, success) -> np.ndarray:
        """The best setting among each routed row's k nearest drawn training failures."""
        mean = np.average(x_train, axis=0, weights=wt)
        var = np.average((x_train - mean) ** 2, axis=0, weights=wt)
        var = np.where(var > 0, var, 1.0)
        d = diff @ (1.0 / var)  # (rows, train) squared standardised distances
        d[:, wt <= 0] = np.inf  # not drawn in this replicate
        # every drawn failure weighs at least one: the k nearest hold weight >= k
        n = min(self.k, int((wt > 0).sum()))
        near = np.argpartition(d, n - 1, axis=1)[:, :n]
        near = np.take_along_axis(near, np.argsort(np.take_along_axis(d, near, 1), 1), 1)
        wn = wt[near]  # (rows, n), nearest first
        before = np.cumsum(wn, axis=1) - wn
        take = np.clip(np.minimum(wn, self.k - before), 0.0, None)
        value = np.einsum("rn,rns->rs", take, success[near]) / take.sum(1)[:, None]
        # ties go to the setting better on average over the training models
        value = value + 1e-9 * success.mean(axis=0)
        return np.argmax(value, axis=1)

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
scored on the scoring part, with the same nulls as the rule; their intervals leave out the
variance of fitting it. As a sensitivity check the pooled evaluation is repeated with the
router refitted on every bootstrap replicate (``RefittedKNNRouter``); a k-NN refitted on
a resample is weaker than the one evaluated, so that interval leans low.
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
    return RefittedKNNRouter(data, budget, k=k, columns=columns).point_routes()


class RefittedKNNRouter:
    """The leave-one-model-out k-NN router, refitted per bootstrap replicate.

    Called with (B, F) replicate weights, it returns (B, F) setting indices. A row of all
    ones is the point fit: every failure of the other models counts once. Any other row is
    a replicate: the router is refitted on a fresh resample of the failures *within* every
    other model (problems drawn with replacement, each model kept once; the draws are
    seeded by ``random_state`` and the order of the calls). The set of models stays whole
    on purpose: the replicate weights of the evaluation also resample models, but a router
    fitted on the ~63 % of distinct models that one model-level draw keeps is a weaker
    router than the one being evaluated, and refitting on it biases the interval low. A
    failure drawn c times counts c times: in the standardisation (weighted variances of the
    other models' drawn failures), among the k nearest neighbours (the nearest drawn
    failures up to a total weight of k, the last one in part) and in the fallback setting
    for a failure without features. Passed as ``RoutingData.refit_routes``, it brings the
    variance of fitting the router into protocol v2's pooled intervals, with a low lean:
    duplicates in a resample shrink the neighbourhood, so a refit is weaker than the
    router being evaluated."""

    def __init__(
        self,
        data: RoutingData,
        budget: float,
        k: int = DEFAULT_K,
        columns: Sequence[int] | None = None,
        random_state: int = 0,
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
        self.settings = list(data.score.settings)
        self.complete = np.isfinite(x).all(axis=1)
        self.success = np.nan_to_num(data.label.success(budget))  # (F, S), labelling part
        self.rng = np.random.default_rng(random_state)
        for model in sorted(set(self.models)):
            if not (self.complete & (self.models != model)).any():
                raise DataError(f"no other model's failures have features to route {model} by")

    def point_routes(self) -> np.ndarray:
        """(F,) setting labels of the point fit (every failure counted once)."""
        indices = self(np.ones((1, len(self.models))))[0]
        return np.array([self.settings[i] for i in indices], dtype=object)

    def training_weights(self, n: int) -> np.ndarray:
        """(n, F) weights of n refits: failures resampled within every model."""
        out = np.zeros((n, len(self.models)))
        members = [np.flatnonzero(self.models == m) for m in sorted(set(self.models))]
        for b in range(n):
            for idx in members:
                out[b, idx] = self.rng.multinomial(len(idx), np.full(len(idx), 1.0 / len(idx)))
        return out

    def __call__(self, weights: np.ndarray) -> np.ndarray:
        weights = np.asarray(weights, dtype=float)
        point = (weights == 1).all(axis=1)
        train_w = np.ones_like(weights)
        if (~point).any():
            train_w[~point] = self.training_weights(int((~point).sum()))
        out = np.empty(weights.shape, dtype=int)
        success, x = self.success, self.x
        for model in sorted(set(self.models)):
            test = self.models == model
            rows = np.flatnonzero(test & self.complete)
            train = np.flatnonzero(~test & self.complete)
            # squared differences per feature, shared by every refit: standardising
            # divides them by the refit's variances (the means cancel)
            diff = (x[rows][:, None, :] - x[train][None, :, :]) ** 2  # (rows, train, J)
            for b, w in enumerate(train_w):
                drawn = ~test & (w > 0)
                score = w[drawn] @ success[drawn] + 1e-9 * success[drawn].sum(axis=0)
                out[b, test] = int(np.argmax(score))
                if len(rows):
                    out[b, rows] = self._nearest_best(diff, x[train], w[train], success[train])
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

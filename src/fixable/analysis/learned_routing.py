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
scored on the scoring part, with the same nulls as the rule. The bootstrap resamples
problems and models with these routes fixed: the variance of fitting the router is not in
the intervals.
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
    if k < 1:
        raise DataError(f"the learned router needs k >= 1 neighbours, got {k}")
    models = np.asarray(data.models).astype(str)
    if len(set(models)) < 2:
        raise DataError("a leave-one-model-out router needs failures of at least two models")
    settings = list(data.score.settings)
    success = np.nan_to_num(data.label.success(budget))  # (F, S), labelling part only
    x = np.asarray(data.features, dtype=float)
    if columns is not None:
        if not len(columns):
            raise DataError("the learned router needs at least one feature column")
        x = x[:, list(columns)]
    complete = np.isfinite(x).all(axis=1)
    routes = np.empty(len(models), dtype=object)
    for model in sorted(set(models)):
        test = models == model
        train = ~test & complete
        if not train.any():
            raise DataError(f"no other model's failures have features to route {model} by")
        fallback = int(np.argmax(success[~test].mean(axis=0)))
        routes[test] = settings[fallback]
        rows = np.flatnonzero(test & complete)
        if len(rows) == 0:
            continue
        mean = x[train].mean(axis=0)
        std = x[train].std(axis=0)
        std = np.where(std > 0, std, 1.0)
        z_train = (x[train] - mean) / std
        z_test = (x[rows] - mean) / std
        neighbours = min(k, len(z_train))
        d = ((z_test[:, None, :] - z_train[None, :, :]) ** 2).sum(axis=2)
        nearest = np.argpartition(d, neighbours - 1, axis=1)[:, :neighbours]
        value = success[train][nearest].mean(axis=1)  # (rows, S)
        # ties go to the setting better on average over the training models
        value = value + 1e-9 * success[train].mean(axis=0)
        routes[rows] = [settings[i] for i in np.argmax(value, axis=1)]
    return routes

"""The leave-one-model-out k-NN router: it learns a feature → setting map that holds across
models, and what it routes a model's failures to never depends on that model's outcomes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fixable.analysis.evaluation import RoutingData, evaluate_frozen_routing
from fixable.analysis.learned_routing import leave_one_model_out_routes
from fixable.analysis.routing import Outcomes
from fixable.errors import DataError

SETTINGS = ["retry", "temperature(T=0.3)", "checkpoint(c=first)"]


def _data(n_per_model=40, models=("a", "b", "c", "d"), seed=0, flip_model=None) -> RoutingData:
    """Failures whose first feature decides which of two settings rescues them (low →
    T=0.3, high → checkpoint); retry rescues none. ``flip_model``'s outcomes are swapped."""
    rng = np.random.default_rng(seed)
    rows = [(m, f"p{i:03d}") for m in models for i in range(n_per_model)]
    F = len(rows)
    x = rng.uniform(0, 1, size=(F, 3))
    high = x[:, 0] > 0.5
    successes = np.zeros((F, 3))
    successes[:, 1] = np.where(high, 0, 8)
    successes[:, 2] = np.where(high, 8, 0)
    if flip_model is not None:
        flip = np.array([m == flip_model for m, _ in rows])
        successes[flip, 1], successes[flip, 2] = (
            successes[flip, 2].copy(),
            successes[flip, 1].copy(),
        )
    keys = pd.DataFrame(rows, columns=["model", "problem_id"])
    n = np.full((F, 3), 8.0)

    def outcomes():
        return Outcomes(keys, SETTINGS, n, successes.copy(), np.ones((F, 3)), np.ones(F))

    return RoutingData(
        score=outcomes(),
        label=outcomes(),
        features=x,
        models=keys["model"].to_numpy(),
        problems=keys["problem_id"].to_numpy(),
        groups=np.full(F, "g", dtype=object),
        labels=np.full(F, "steerable-hard", dtype=object),
        charge=np.zeros(F),
    )


def test_learns_the_map_the_other_models_share():
    data = _data()
    routes = leave_one_model_out_routes(data, budget=4, k=5)
    expected = np.where(data.features[:, 0] > 0.5, "checkpoint(c=first)", "temperature(T=0.3)")
    assert np.mean(routes == expected) > 0.9
    frozen = evaluate_frozen_routing(
        RoutingData(**{**data.__dict__, "fixed_routes": routes}),
        budget=4,
        n_boot=20,
        n_boot_curves=2,
    )
    lift = frozen["subsets"]["all"]["lift_over_best_fixed"]
    assert lift["routed"]["value"] > 0.3  # best fixed rescues about half
    assert lift["routed"]["value"] > lift["shuffled_within_model"]["value"] + 0.3


def test_a_models_own_outcomes_never_reach_its_routes():
    # model "a"'s outcomes are the opposite of everyone else's: its routes follow the others,
    # so they are wrong for it; a router that peeked at "a" would get them right
    plain, flipped = _data(), _data(flip_model="a")
    a = plain.models == "a"
    routes_plain = leave_one_model_out_routes(plain, budget=4, k=5)
    routes_flipped = leave_one_model_out_routes(flipped, budget=4, k=5)
    assert (routes_plain[a] == routes_flipped[a]).all()
    assert not (routes_plain[~a] == routes_flipped[~a]).all()  # "a" does inform the others


def test_missing_features_fall_back_and_one_model_is_refused():
    data = _data()
    data.features[0] = np.nan
    routes = leave_one_model_out_routes(data, budget=4, k=5)
    assert routes[0] in SETTINGS
    with pytest.raises(DataError, match="at least two models"):
        leave_one_model_out_routes(_data(models=("a",)), budget=4)


def test_columns_restrict_what_the_router_reads():
    # the deciding feature is column 0: a router reading only columns 1 and 2 cannot learn
    # the map, one reading column 0 alone learns it as well as one reading all three
    data = _data()
    expected = np.where(data.features[:, 0] > 0.5, "checkpoint(c=first)", "temperature(T=0.3)")
    alone = leave_one_model_out_routes(data, budget=4, k=5, columns=[0])
    blind = leave_one_model_out_routes(data, budget=4, k=5, columns=[1, 2])
    assert np.mean(alone == expected) > 0.9
    assert np.mean(blind == expected) < 0.75
    with pytest.raises(DataError, match="at least one feature"):
        leave_one_model_out_routes(data, budget=4, k=5, columns=[])


def test_the_free_router_reads_neither_drift_nor_its_cost():
    from fixable.analysis.learned_routing import FREE_FEATURES
    from fixable.analysis.routing import ROUTER_FEATURES

    assert "reference_drift" in ROUTER_FEATURES
    assert "reference_drift" not in FREE_FEATURES
    assert set(FREE_FEATURES) < set(ROUTER_FEATURES) and len(FREE_FEATURES) == 2


def test_refitted_on_bootstrap_weights():
    from fixable.analysis.learned_routing import RefittedKNNRouter

    data = _data(flip_model="b")
    F = len(data.models)
    settings = list(data.score.settings)
    fit = RefittedKNNRouter(data, budget=4, k=1, random_state=3)
    # a row of ones is the point fit, the router of leave_one_model_out_routes
    ones = fit(np.ones((1, F)))[0]
    assert [settings[i] for i in ones] == list(leave_one_model_out_routes(data, budget=4, k=1))
    # any other row is a refit on failures resampled within every model: with k = 1 the
    # nearest neighbour often changes, so the routes differ from the point fit and between
    # replicates, and the same seed gives the same refits
    w = np.full((4, F), 2.0)
    refits = fit(w)
    assert (refits != ones).any(axis=1).all()
    assert (refits[0] != refits[1]).any()
    again = RefittedKNNRouter(data, budget=4, k=1, random_state=3)
    again(np.ones((1, F)))
    assert (again(w) == refits).all()
    # every model is kept whole: its resampled failures count as many as it has
    t = RefittedKNNRouter(data, budget=4, k=1).training_weights(5)
    for m in set(data.models):
        assert (t[:, data.models == m].sum(axis=1) == (data.models == m).sum()).all()


def test_the_pooled_interval_includes_refitting():
    from fixable.analysis.learned_routing import RefittedKNNRouter

    data = _data(flip_model="b")
    fit = RefittedKNNRouter(data, budget=4, k=1)
    routes = leave_one_model_out_routes(data, budget=4, k=1)
    frozen = RoutingData(**{**data.__dict__, "fixed_routes": routes})
    refit = RoutingData(**{**data.__dict__, "fixed_routes": routes, "refit_routes": fit})
    kw = dict(budget=4, n_boot=60, n_boot_curves=2)
    a = evaluate_frozen_routing(frozen, **kw)["subsets"]["all"]["lift_over_best_fixed"]
    b = evaluate_frozen_routing(refit, **kw)["subsets"]["all"]["lift_over_best_fixed"]
    assert a["routed"]["value"] == b["routed"]["value"]  # same point routes
    assert "refitted on each replicate" in b["routed"]["interval"]
    assert "refitted on each replicate" not in a["routed"]["interval"]

"""One contract over every estimator of the analysis (scikit-learn conventions):
``__init__`` only stores its arguments, no learned state before ``fit``, ``fit`` returns
self, learned state ends in ``_``, clones are unfitted twins, and the same
``random_state`` gives the same result."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from analysis_tables import rescue, rows_table
from fixable.analysis.labels import rescue_matrix
from fixable.analysis.regimes import RegimeClusterer
from fixable.analysis.routing import BestFixedIntervention, Outcomes, SignatureRouter
from fixable.analysis.topography import MethodClassifier, TextBaselineClassifier
from fixable.features import FEATURES


def _features(n=60, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 3)), columns=list(FEATURES))
    frame["model"] = "m"
    frame["problem_id"] = [f"p{i}" for i in range(n)]
    y = np.where(frame["reference_drift"] > 0, "rl", "sft")
    return frame, y


def _texts():
    frame, y = _features()
    docs = [("abc " if label == "rl" else "xyz ") + str(i) for i, label in enumerate(y)]
    return docs, y


def _outcomes():
    rows = []
    for i in range(6):
        rows += rescue(f"p{i}", "retry", i % 3, 16) + rescue(
            f"p{i}", "temperature(T=0.3)", 2 * (i % 2), 16
        )
    return Outcomes.from_matrix(rescue_matrix(rows_table(rows)))


def _result(name, est, data):
    if name.startswith("clusterer"):
        return est.predict(data[0])
    if name == "router":
        return est.route(
            data[0], ["retry", "temperature(T=0.3)", "temperature(T=1.3)", "mix(alpha=0.5)"]
        )
    if name == "best_fixed":
        return est.setting_
    return est.predict(data[0])


CASES = {
    "clusterer_gmm": (
        lambda: RegimeClusterer(method="gmm", max_regimes=3, random_state=3),
        _features,
    ),
    "clusterer_kmeans": (
        lambda: RegimeClusterer(method="kmeans", max_regimes=3, random_state=3),
        _features,
    ),
    "method_classifier": (lambda: MethodClassifier(random_state=3), _features),
    "text_baseline": (lambda: TextBaselineClassifier(random_state=3), _texts),
    "router": (lambda: SignatureRouter(), _features),
    "best_fixed": (lambda: BestFixedIntervention(budget=4), lambda: (_outcomes(), None)),
}


def _fit(est, data):
    X, y = data
    return est.fit(X, y) if y is not None else est.fit(X)


def _learned(est):
    return sorted(k for k in vars(est) if k.endswith("_") and not k.startswith("_"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_estimator_contract(name):
    make, data_of = CASES[name]
    est = make()
    data = data_of()
    # __init__ stores its arguments as given, and nothing else
    params = est.get_params(deep=False)
    signature = inspect.signature(type(est).__init__)
    assert set(params) == set(signature.parameters) - {"self"}
    assert set(vars(est)) == set(params)
    assert not _learned(est)
    # fit returns self and leaves learned state ending in "_"
    assert _fit(est, data) is est
    assert _learned(est)
    # a clone is an unfitted twin with the same parameters
    twin = clone(est)
    assert twin.get_params(deep=False).keys() == params.keys()
    assert not _learned(twin)
    # the same random_state gives the same result
    again = _fit(make(), data_of())
    first, second = _result(name, est, data), _result(name, again, data)
    assert np.array_equal(np.asarray(first, dtype=object), np.asarray(second, dtype=object))


@pytest.mark.parametrize(
    "name", ["clusterer_gmm", "method_classifier", "text_baseline", "best_fixed"]
)
def test_predicting_before_fit_is_refused(name):
    make, data_of = CASES[name]
    X, _ = data_of()
    with pytest.raises(NotFittedError):
        make().predict(X)

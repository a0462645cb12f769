"""Topography: which post-training method left this failure behind? (SPEC §3.7)

A classifier predicts the method (sft / rl / distill / rft, from the model's metadata) from
one failure's features.

Protocol v2 (``topography``): evaluated on **held-out models** — leave-one-seed-out where
every method has models of two or more training seeds, else leave-one-model-out — so a
classifier can never win by recognising a model it was trained on. Accuracy is reported per
held-out model, as mean ± std across held-out models (and a bootstrap interval over them),
with a confusion matrix. Beside it, in exactly the same folds: the majority class (its
share, and the training folds' majority), **failure rate only** (one number per model: its
probe failure rate), **per-model feature centroid** (every failure replaced by its model's
mean features), the text baseline, and a **null** in which the method labels are permuted
across models (``n_null`` permutations; where the real score falls in it). A model-identity
signal without a method signal scores at that null. And the **seed-as-label null**
(``seed_as_label``): the same classifier asked to name the model's training seed in
leave-one-method-out folds, which must land at chance. The **nested comparison**
(``features_plus_failure_rate``, ``beyond_failure_rate``): the same classifier given the
features *and* the failure rate, beside failure rate only, in the same folds, and their
per-held-out-model difference: do the failures carry method information beyond the
model's accuracy? And the **accuracy-matched view** (``matched``): all of that again on
the failures of a set of methods named by the caller, chosen beforehand from the models'
accuracies (``zoo.accuracy_matched_methods``), never from these rollouts.

Protocol v1 (``topography_by_problem``, kept for the tests that show why it was replaced):
grouped K-fold cross-validation with problems as groups, repeated over seeds. Every model
sits in every training fold, so a classifier can learn model identity, and per-model
quantities (failure rate, feature centroids) score as well as the features. Beside it:
the majority-class share, the training folds' majority predicted in the same folds, and,
in exactly the same folds, the text baseline (TF-IDF of character n-grams over the failed
rollouts' text, logistic regression), the "not by reading them" control. Every model is
fitted inside ``grouped_cv`` on training folds only; the vocabulary and the
standardisation included.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, check_random_state

from fixable.analysis.regimes import feature_matrix
from fixable.analysis.stats import bootstrap_mean_estimate, mean_std, rate_estimate
from fixable.errors import ConfigError, DataError
from fixable.features import FEATURES, ablation_features, signature_features

logger = logging.getLogger(__name__)


class MethodClassifier(ClassifierMixin, BaseEstimator):
    """Standardised features → multinomial logistic regression.

    Args:
        features: feature columns used when X is a DataFrame.
        C: inverse regularisation strength.
        random_state: seed, resolved in ``fit``.
    """

    def __init__(
        self, features: Sequence[str] | None = FEATURES, C: float = 1.0, random_state=None
    ):
        self.features = features
        self.C = C
        self.random_state = random_state

    def fit(self, X, y):
        values = feature_matrix(X, self.features)
        rng = check_random_state(self.random_state)
        self.pipeline_ = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=self.C, max_iter=2000, random_state=int(rng.randint(2**31 - 1))),
        ).fit(values, np.asarray(y))
        self.classes_ = self.pipeline_.classes_
        self.n_features_in_ = values.shape[1]
        return self

    def predict(self, X):
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict(feature_matrix(X, self.features))


class TextBaselineClassifier(ClassifierMixin, BaseEstimator):
    """TF-IDF over character n-grams of the failed rollouts' text → logistic regression.

    X is a sequence of documents (one per failure) or a DataFrame with a ``text`` column."""

    def __init__(
        self,
        ngram_range: tuple[int, int] = (1, 3),
        analyzer: str = "char_wb",
        max_features: int = 20000,
        C: float = 1.0,
        random_state=None,
    ):
        self.ngram_range = ngram_range
        self.analyzer = analyzer
        self.max_features = max_features
        self.C = C
        self.random_state = random_state

    @staticmethod
    def _docs(X) -> list[str]:
        if isinstance(X, pd.DataFrame):
            if "text" not in X:
                raise DataError(
                    "the text baseline needs a 'text' column (see fixable.features.failure_texts)"
                )
            X = X["text"]
        return [str(x) for x in X]

    def fit(self, X, y):
        rng = check_random_state(self.random_state)
        self.pipeline_ = make_pipeline(
            TfidfVectorizer(
                analyzer=self.analyzer,
                ngram_range=tuple(self.ngram_range),
                max_features=self.max_features,
                sublinear_tf=True,
            ),
            LogisticRegression(C=self.C, max_iter=2000, random_state=int(rng.randint(2**31 - 1))),
        ).fit(self._docs(X), np.asarray(y))
        self.classes_ = self.pipeline_.classes_
        return self

    def predict(self, X):
        check_is_fitted(self, "pipeline_")
        return self.pipeline_.predict(self._docs(X))


def _take(X, idx):
    if isinstance(X, pd.DataFrame):
        return X.iloc[idx]
    if isinstance(X, np.ndarray):
        return X[idx]
    return [X[i] for i in idx]


def grouped_cv(
    estimator, X, y, groups, *, n_splits: int = 5, n_seeds: int = 10, random_state: int = 0
) -> dict:
    """Out-of-fold predictions of ``estimator`` under grouped, stratified K-fold CV,
    repeated over ``n_seeds`` shufflings. Fits a fresh clone on training folds only.

    Returns per-seed accuracies, the pooled confusion matrix, and each row's share of
    correct out-of-fold predictions over seeds (for a grouped bootstrap interval)."""
    y = np.asarray(y, dtype=object).astype(str)
    groups = np.asarray(groups).astype(str)
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"grouped cross-validation needs at least 2 problems, got {n_groups}")
    if n_splits > n_groups:
        logger.warning(
            "only %d problems: using %d folds instead of %d", n_groups, n_groups, n_splits
        )
        n_splits = n_groups
    classes = sorted(set(y))
    accuracies, correct_sum = [], np.zeros(len(y))
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for seed in range(n_seeds):
        folds = StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=random_state + seed
        )
        predicted = np.empty(len(y), dtype=object)
        for fold, (train, test) in enumerate(folds.split(np.zeros(len(y)), y, groups)):
            model = clone(estimator)
            if "random_state" in model.get_params():
                model.set_params(random_state=random_state + 1000 * seed + fold)
            model.fit(_take(X, train), y[train])
            predicted[test] = model.predict(_take(X, test))
        hit = predicted == y
        accuracies.append(float(hit.mean()))
        correct_sum += hit
        confusion += confusion_matrix(y, predicted.astype(str), labels=classes)
    return {
        "accuracies": accuracies,
        "confusion": confusion,
        "classes": classes,
        "row_accuracy": correct_sum / n_seeds,
        "n_splits": n_splits,
    }


def _summary(cv: dict, groups, *, n_boot: int, random_state: int) -> dict:
    row = cv["row_accuracy"]
    interval = bootstrap_mean_estimate(row, groups, n_boot=n_boot, random_state=random_state)
    return {
        "accuracy": mean_std(cv["accuracies"]) | {"per_seed": cv["accuracies"]},
        "interval": interval.to_dict(),
        "n": int(len(row)),
    }


def topography_by_problem(
    features: pd.DataFrame,
    methods,
    *,
    texts: Sequence[str] | None = None,
    feature_sets: dict[str, Sequence[str]] | None = None,
    n_splits: int = 5,
    n_seeds: int = 10,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict:
    """Protocol v1 (problem-grouped CV; see the module docstring for why it is not the
    default): accuracy of the features, the majority class and the text baseline in the
    same grouped CV, a confusion matrix, and feature ablations.

    ``methods`` holds each failure's post-training method; failures with no method (None)
    are left out. ``feature_sets`` defaults to: the three features, each alone, each left
    out, the ablation variants, and all six (sets with unavailable features are skipped)."""
    methods = pd.Series(list(methods), index=features.index, dtype=object)
    keep = methods.notna().to_numpy()
    features, methods = features[keep], methods[keep]
    if texts is not None:
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
    classes = sorted(methods.unique())
    if len(classes) < 2:
        raise DataError(
            f"topography needs failures of at least 2 post-training methods, got {classes}"
        )
    groups = features["problem_id"].astype(str).to_numpy()
    y = methods.astype(str).to_numpy()
    main, unavailable, feature_sets = _feature_sets(features, feature_sets)

    common = {"n_splits": n_splits, "n_seeds": n_seeds, "random_state": random_state}
    out = {
        "classes": classes,
        "n_failures": int(len(y)),
        "n_problems": int(len(np.unique(groups))),
        "class_counts": {c: int((y == c).sum()) for c in classes},
        "features_used": main,
        "unavailable_features": unavailable,
        "protocol": {
            "cv": f"StratifiedGroupKFold(n_splits={n_splits}) by problem, {n_seeds} seeds",
            "interval": "grouped bootstrap over problems of each failure's out-of-fold accuracy "
            "averaged over seeds",
        },
    }
    cv = grouped_cv(MethodClassifier(features=main), features, y, groups, **common)
    out["classifier"] = _summary(cv, groups, n_boot=n_boot, random_state=random_state)
    out["confusion"] = {
        "labels": cv["classes"],
        "matrix": cv["confusion"].tolist(),
        "note": "rows: true method, columns: predicted; summed over folds and seeds",
    }
    # the majority-class baseline is the most frequent method's share (what "+20 points
    # over the majority class" refers to); predicting the training folds' majority in the
    # same folds is reported beside it: with balanced methods it falls *below* the share,
    # because stratified folds make the training majority a test-fold minority
    counts = pd.Series(y).value_counts()
    share = float(counts.iloc[0] / len(y))
    out["majority"] = {
        "accuracy": {"mean": share, "std": 0.0, "n": n_seeds, "per_seed": [share] * n_seeds},
        "interval": rate_estimate(int(counts.iloc[0]), len(y)).to_dict(),
        "n": int(len(y)),
        "how": f"share of the most frequent method ({counts.index[0]})",
    }
    in_folds = grouped_cv(DummyClassifier(strategy="most_frequent"), features, y, groups, **common)
    out["majority_in_folds"] = _summary(in_folds, groups, n_boot=n_boot, random_state=random_state)
    if texts is not None:
        text = grouped_cv(
            TextBaselineClassifier(), np.asarray(texts, dtype=object), y, groups, **common
        )
        out["text_baseline"] = _summary(text, groups, n_boot=n_boot, random_state=random_state)
    else:
        out["text_baseline"] = None
    out["ablations"] = {}
    for name, cols in feature_sets.items():
        if list(cols) == main and name == "features":
            out["ablations"][name] = out["classifier"] | {"features": list(cols)}
            continue
        res = grouped_cv(MethodClassifier(features=list(cols)), features, y, groups, **common)
        out["ablations"][name] = _summary(res, groups, n_boot=n_boot, random_state=random_state) | {
            "features": list(cols)
        }
    return out


# --------------------------------------------------------------------------- protocol v2


def held_out_folds(models, methods, seeds=None) -> tuple[str, np.ndarray]:
    """Each failure's held-out fold: its model's training seed when every method has models
    of two or more seeds (leave-one-seed-out), else its model (leave-one-model-out)."""
    models = np.asarray(models, dtype=object).astype(str)
    methods = np.asarray(methods, dtype=object).astype(str)
    if seeds is not None:
        seeds = pd.Series(list(seeds), dtype=object)
        if seeds.notna().all() and seeds.nunique() >= 2:
            frame = pd.DataFrame({"method": methods, "seed": seeds.astype(str).to_numpy()})
            per_method = frame.groupby("method")["seed"].nunique()
            if (per_method >= 2).all():
                return "leave-one-seed-out", np.array([f"seed {s}" for s in frame["seed"]])
    return "leave-one-model-out", models


def held_out_predictions(estimator, X, y, folds, *, random_state: int = 0) -> np.ndarray:
    """Out-of-fold predictions: for each fold, a fresh clone fitted on the other folds."""
    y = np.asarray(y, dtype=object).astype(str)
    folds = np.asarray(folds, dtype=object).astype(str)
    predicted = np.empty(len(y), dtype=object)
    for i, fold in enumerate(sorted(set(folds))):
        test = np.flatnonzero(folds == fold)
        train = np.flatnonzero(folds != fold)
        if len(train) == 0:
            raise DataError("held-out evaluation needs at least two folds (models or seeds)")
        model = clone(estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=random_state + i)
        if len(set(y[train])) < 2:  # one class left to learn: predict it
            predicted[test] = y[train][0]
            continue
        model.fit(_take(X, train), y[train])
        predicted[test] = model.predict(_take(X, test))
    return predicted.astype(str)


def per_model_accuracy(predicted, y, models) -> dict[str, float]:
    hit = np.asarray(predicted).astype(str) == np.asarray(y).astype(str)
    frame = pd.DataFrame({"model": np.asarray(models).astype(str), "hit": hit})
    return {str(m): float(v) for m, v in frame.groupby("model")["hit"].mean().items()}


def _held_out_summary(predicted, y, models, *, n_boot: int, random_state: int) -> dict:
    per_model = per_model_accuracy(predicted, y, models)
    values = np.array(list(per_model.values()))
    interval = bootstrap_mean_estimate(
        values,
        np.arange(len(values)),
        n_boot=n_boot,
        random_state=random_state,
        unit="held-out models",
    )
    return {
        "accuracy": mean_std(values) | {"per_model": per_model},
        "interval": interval.to_dict(),
        "pooled": float(np.mean(np.asarray(predicted).astype(str) == np.asarray(y).astype(str))),
        "n": int(len(y)),
        "n_models": int(len(values)),
    }


def permutation_null(
    estimator,
    X,
    y,
    models,
    folds,
    *,
    n_permutations: int = 20,
    observed: float | None = None,
    strata=None,
    random_state: int = 0,
) -> dict:
    """Held-out accuracy (mean over held-out models) with the method labels permuted across
    models (each model keeps one label; the labels' counts over models are kept), over
    ``n_permutations`` permutations, and where ``observed`` falls in that distribution.
    ``strata`` (one value per row, constant within a model): permute only among the models
    of the same stratum, so every stratum keeps its own labels' counts."""
    y = np.asarray(y, dtype=object).astype(str)
    models = np.asarray(models, dtype=object).astype(str)
    unique = sorted(set(models))
    label_of = {}
    for m in unique:
        labels = set(y[models == m])
        if len(labels) != 1:
            raise DataError(f"model {m} has failures of several methods: {sorted(labels)}")
        label_of[m] = labels.pop()
    rng = np.random.default_rng(random_state)
    original = np.array([label_of[m] for m in unique])
    if strata is None:
        blocks = [np.arange(len(unique))]
    else:
        strata = np.asarray(strata, dtype=object).astype(str)
        stratum_of = {m: strata[models == m][0] for m in unique}
        blocks = [
            np.array([i for i, m in enumerate(unique) if stratum_of[m] == s])
            for s in sorted(set(stratum_of.values()))
        ]
    scores, permutations = [], []
    for _ in range(n_permutations):
        permuted = original.copy()
        for block in blocks:
            permuted[block] = rng.permutation(original[block])
        shuffled = dict(zip(unique, permuted, strict=True))
        y_perm = np.array([shuffled[m] for m in models])
        predicted = held_out_predictions(estimator, X, y_perm, folds, random_state=random_state)
        scores.append(float(np.mean(list(per_model_accuracy(predicted, y_perm, models).values()))))
        permutations.append([shuffled[m] for m in unique])
    scores_arr = np.asarray(scores)
    out = {
        "accuracies": scores,
        "mean": float(scores_arr.mean()),
        "std": float(scores_arr.std(ddof=1)) if len(scores) > 1 else 0.0,
        "q95": float(np.quantile(scores_arr, 0.95)),
        "n_permutations": int(n_permutations),
        "n_distinct_permutations": int(len({tuple(p) for p in permutations})),
        "how": "method labels permuted across models (each model keeps a single label), "
        "classifier refitted in the same held-out folds",
    }
    if observed is not None:
        out["observed"] = float(observed)
        out["p_value"] = float((1 + np.sum(scores_arr >= observed - 1e-12)) / (1 + len(scores)))
        out["percentile"] = float(np.mean(scores_arr < observed))
    return out


def seed_as_label(
    estimator,
    X,
    seeds,
    methods,
    models,
    *,
    n_null: int = 20,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict:
    """The seed-as-label null: the same held-out-model classifier asked to name each
    failure's model's *training seed* instead of its method.

    A seed index means nothing across methods (``posttrain`` derives data order and
    sampling from the method and the seed together), so the folds are **leave-one-method-
    out**: the classifier learns seeds on three methods' models and names the seeds of the
    fourth method's models, never seen. Nothing true links "seed 0 of sft" to "seed 0 of
    rl", so it must land at chance (1 / number of seeds): above it, the evaluation leaks
    something that is neither method nor seed (a bug, or a seed shared across methods by
    the recipes). Reported like the method classifier (mean ± std over held-out models, a
    bootstrap interval), beside chance, the training folds' majority seed and a null with
    the seed labels permuted among each method's models; ``at_chance``: chance lies in the
    interval."""
    seeds = np.asarray(
        [f"s{int(s)}" if float(s).is_integer() else f"s{s}" for s in seeds], dtype=object
    )
    methods = np.asarray(methods, dtype=object).astype(str)
    models = np.asarray(models, dtype=object).astype(str)
    labels = sorted(set(seeds))
    if len(labels) < 2 or len(set(methods)) < 2:
        raise DataError(
            "the seed-as-label null needs models of at least 2 training seeds and 2 methods, "
            f"got seeds {labels} and methods {sorted(set(methods))}"
        )
    folds = np.array([f"method {m}" for m in methods])
    predicted = held_out_predictions(estimator, X, seeds, folds, random_state=random_state)
    out = _held_out_summary(predicted, seeds, models, n_boot=n_boot, random_state=random_state)
    chance = 1.0 / len(labels)
    majority = held_out_predictions(
        DummyClassifier(strategy="most_frequent"), X, seeds, folds, random_state=random_state
    )
    out |= {
        "labels": labels,
        "chance": chance,
        "at_chance": bool(out["interval"]["low"] <= chance <= out["interval"]["high"]),
        "majority_in_folds": _held_out_summary(
            majority, seeds, models, n_boot=n_boot, random_state=random_state
        ),
        "null": permutation_null(
            estimator,
            X,
            seeds,
            models,
            folds,
            n_permutations=n_null,
            observed=out["accuracy"]["mean"],
            strata=methods,
            random_state=random_state,
        ),
        "how": "the method classifier's features, asked for the model's training seed; "
        f"leave-one-method-out ({len(set(folds))} folds): seeds learned on the other "
        "methods' models, named on the held-out method's models",
    }
    # permuted within each method: every method keeps its seeds' counts, so the training
    # folds stay as balanced as the real ones (permuting across all models unbalances them
    # and pulls that null below chance, as the training folds' majority does)
    out["null"]["how"] = (
        "seed labels permuted among the models of each method (each model keeps a single "
        "label), classifier refitted in the same leave-one-method-out folds"
    )
    return out


def topography(
    features: pd.DataFrame,
    methods,
    *,
    texts: Sequence[str] | None = None,
    failure_rates: dict[str, float] | None = None,
    seeds=None,
    feature_sets: dict[str, Sequence[str]] | None = None,
    matched_methods: Sequence[Sequence[str]] | None = None,
    n_null: int = 20,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict:
    """Protocol v2: method-from-failure accuracy on held-out models (see the module
    docstring), every baseline and the permutation null in the same folds, and ablations.

    ``features`` needs a ``model`` column; ``methods`` holds each failure's method (None:
    left out); ``seeds`` each failure's model's training seed (for leave-one-seed-out);
    ``failure_rates`` model → probe failure rate (the failure-rate-only baseline and the
    nested comparison); ``matched_methods``: sets of accuracy-matched methods, each chosen
    before the run (the ``matched`` list, one section per set; each redraws its folds on
    its own models)."""
    methods = pd.Series(list(methods), index=features.index, dtype=object)
    keep = methods.notna().to_numpy()
    features, methods = features[keep], methods[keep]
    if texts is not None:
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
    if seeds is not None:
        seeds = [s for s, k in zip(list(seeds), keep, strict=True) if k]
    classes = sorted(methods.unique())
    if len(classes) < 2:
        raise DataError(
            f"topography needs failures of at least 2 post-training methods, got {classes}"
        )
    models = features["model"].astype(str).to_numpy()
    if len(set(models)) < 3:
        raise DataError(
            f"held-out-model topography needs at least 3 models, got {sorted(set(models))}"
        )
    y = methods.astype(str).to_numpy()
    scheme, folds = held_out_folds(models, y, seeds)
    main, unavailable, feature_sets = _feature_sets(features, feature_sets)

    rs = random_state
    model_methods = pd.Series(y, index=models).groupby(level=0).first()
    methods_with_one_model = sorted(m for m, n in model_methods.value_counts().items() if n < 2)
    out = {
        "protocol_version": 2,
        "classes": classes,
        "n_failures": int(len(y)),
        "n_models": int(len(set(models))),
        "class_counts": {c: int((y == c).sum()) for c in classes},
        "models_per_class": {c: int((model_methods == c).sum()) for c in classes},
        "features_used": main,
        "unavailable_features": unavailable,
        "protocol": {
            "cv": f"{scheme}: trained on the other models, tested on models never seen "
            f"({len(set(folds))} folds)",
            "interval": "mean ± std across held-out models; 95 % interval: bootstrap over "
            "held-out models of the mean per-model accuracy",
        },
    }
    if methods_with_one_model:
        out["note"] = (
            f"methods with a single model ({', '.join(methods_with_one_model)}) cannot be "
            "predicted for that model: its method is absent from every training fold"
        )

    def run(estimator, X) -> tuple[np.ndarray, dict]:
        predicted = held_out_predictions(estimator, X, y, folds, random_state=rs)
        return predicted, _held_out_summary(predicted, y, models, n_boot=n_boot, random_state=rs)

    predicted, out["classifier"] = run(MethodClassifier(features=main), features)
    out["confusion"] = {
        "labels": classes,
        "matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        "note": "rows: true method, columns: predicted; each failure once (held out)",
    }
    counts = pd.Series(y).value_counts()
    share = float(counts.iloc[0] / len(y))
    out["majority"] = {
        "accuracy": {"mean": share, "std": 0.0, "n": 1},
        "interval": rate_estimate(int(counts.iloc[0]), len(y)).to_dict(),
        "n": int(len(y)),
        "how": f"share of the most frequent method ({counts.index[0]})",
    }
    _, out["majority_in_folds"] = run(DummyClassifier(strategy="most_frequent"), features)
    out["majority_in_folds"]["how"] = (
        "the training folds' most frequent method, predicted for the held-out models"
    )
    out |= _nested_comparison(features, y, models, folds, failure_rates, main, n_boot, rs)
    centroids = features.groupby("model")[main].transform("mean")
    _, out["model_centroid"] = run(MethodClassifier(features=main), centroids)
    out["model_centroid"]["how"] = "every failure replaced by its model's mean features"
    if texts is not None:
        _, out["text_baseline"] = run(TextBaselineClassifier(), np.asarray(texts, dtype=object))
    else:
        out["text_baseline"] = None
    observed = out["classifier"]["accuracy"]["mean"]
    out["null"] = permutation_null(
        MethodClassifier(features=main),
        features,
        y,
        models,
        folds,
        n_permutations=n_null,
        observed=observed,
        random_state=rs,
    )
    out["seed_as_label"] = None
    try:
        if seeds is None:
            raise DataError("no training seeds given")
        if pd.Series(seeds, dtype=object).isna().any():
            raise DataError("some models have no training seed")
        out["seed_as_label"] = seed_as_label(
            MethodClassifier(features=main),
            features,
            seeds,
            y,
            models,
            n_null=n_null,
            n_boot=n_boot,
            random_state=rs,
        )
    except DataError as e:
        out["seed_as_label_skipped"] = str(e)
    out["ablations"] = {}
    for name, cols in feature_sets.items():
        if list(cols) == main and name == "features":
            out["ablations"][name] = out["classifier"] | {"features": list(cols)}
            continue
        _, res = run(MethodClassifier(features=list(cols)), features)
        out["ablations"][name] = res | {"features": list(cols)}
    if matched_methods:
        out["matched"] = [
            matched_topography(
                features,
                y,
                chosen,
                seeds=seeds,
                failure_rates=failure_rates,
                main=main,
                n_null=n_null,
                n_boot=n_boot,
                random_state=rs,
            )
            for chosen in matched_methods
        ]
    return out


def _nested_comparison(
    features: pd.DataFrame,
    y: np.ndarray,
    models: np.ndarray,
    folds: np.ndarray,
    failure_rates: dict[str, float] | None,
    main: list[str],
    n_boot: int,
    random_state: int,
) -> dict:
    """Failure rate only, features + failure rate (the same ``MethodClassifier``: its
    standardisation and regression are fitted on the training folds only, in the same
    folds), and the gain of the second over the first per held-out model, with a
    bootstrap interval over held-out models. Without failure rates: all None."""
    if failure_rates is None:
        return {
            "failure_rate_only": None,
            "features_plus_failure_rate": None,
            "beyond_failure_rate": None,
        }
    with_rate = features.assign(failure_rate=[float(failure_rates[m]) for m in models])

    def run(columns: list[str]) -> dict:
        predicted = held_out_predictions(
            MethodClassifier(features=columns), with_rate, y, folds, random_state=random_state
        )
        return _held_out_summary(predicted, y, models, n_boot=n_boot, random_state=random_state)

    rate_only = run(["failure_rate"]) | {"how": "one number per model: its probe failure rate"}
    both = run([*main, "failure_rate"]) | {
        "how": "the failure's features and its model's probe failure rate, one classifier"
    }
    a = both["accuracy"]["per_model"]
    b = rate_only["accuracy"]["per_model"]
    gain = np.array([a[m] - b[m] for m in sorted(a)])
    interval = bootstrap_mean_estimate(
        gain,
        np.arange(len(gain)),
        n_boot=n_boot,
        random_state=random_state,
        unit="held-out models",
    ).to_dict()
    beyond = {
        "gain": interval,
        "models_better": int((gain > 1e-12).sum()),
        "models_worse": int((gain < -1e-12).sum()),
        "models_equal": int((np.abs(gain) <= 1e-12).sum()),
        "verdict": "features add method information beyond the failure rate"
        if interval["low"] > 0
        else "features add nothing measurable beyond the failure rate"
        if interval["high"] >= 0
        else "features + failure rate do worse than failure rate alone",
        "how": "per held-out model: accuracy of features + failure rate minus failure rate "
        "only (same classifier, same folds); mean and bootstrap interval over held-out models",
    }
    return {
        "failure_rate_only": rate_only,
        "features_plus_failure_rate": both,
        "beyond_failure_rate": beyond,
    }


def matched_topography(
    features: pd.DataFrame,
    methods,
    matched_methods: Sequence[str],
    *,
    seeds=None,
    failure_rates: dict[str, float] | None = None,
    main: list[str] | None = None,
    n_null: int = 20,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict:
    """Held-out-model topography restricted to the failures of ``matched_methods`` (a set
    chosen before the run, e.g. ``zoo.accuracy_matched_methods``): the features, the
    majority share and the training folds' majority, failure rate only, features + failure
    rate and its gain, and the methods-permuted null, in folds redrawn on these models
    only. ``methods`` as in ``topography`` (None: left out); ``main``: the feature columns
    (default: the three features)."""
    matched = sorted({str(m) for m in matched_methods})
    methods = np.asarray(list(methods), dtype=object)
    keep = np.array([m is not None and str(m) in matched for m in methods])
    absent = sorted(set(matched) - {str(m) for m in methods[keep]})
    out: dict = {"methods": matched}
    if absent or len(matched) < 2:
        out["skipped"] = (
            f"the matched methods need failures of at least 2 methods; absent: {absent}"
            if absent
            else f"the matched view needs at least 2 methods, got {matched}"
        )
        return out
    sub = features[keep]
    y = methods[keep].astype(str)
    models = sub["model"].astype(str).to_numpy()
    if len(set(models)) < 3:
        out["skipped"] = (
            f"held-out-model topography needs at least 3 models, got {sorted(set(models))}"
        )
        return out
    sub_seeds = None if seeds is None else [s for s, k in zip(list(seeds), keep, strict=True) if k]
    scheme, folds = held_out_folds(models, y, sub_seeds)
    main = main or [f for f in signature_features() if f in sub]
    predicted = held_out_predictions(
        MethodClassifier(features=main), sub, y, folds, random_state=random_state
    )
    model_methods = pd.Series(y, index=models).groupby(level=0).first()
    out |= {
        "n_failures": int(len(y)),
        "n_models": int(len(set(models))),
        "class_counts": {c: int((y == c).sum()) for c in matched},
        "models_per_class": {c: int((model_methods == c).sum()) for c in matched},
        "protocol": {"cv": f"{scheme} on the matched methods' models ({len(set(folds))} folds)"},
        "classifier": _held_out_summary(
            predicted, y, models, n_boot=n_boot, random_state=random_state
        ),
        "confusion": {
            "labels": matched,
            "matrix": confusion_matrix(y, predicted, labels=matched).tolist(),
        },
    }
    counts = pd.Series(y).value_counts()
    out["majority"] = {
        "accuracy": {"mean": float(counts.iloc[0] / len(y)), "std": 0.0, "n": 1},
        "interval": rate_estimate(int(counts.iloc[0]), len(y)).to_dict(),
        "n": int(len(y)),
        "how": f"share of the most frequent method ({counts.index[0]})",
    }
    majority = held_out_predictions(
        DummyClassifier(strategy="most_frequent"), sub, y, folds, random_state=random_state
    )
    out["majority_in_folds"] = _held_out_summary(
        majority, y, models, n_boot=n_boot, random_state=random_state
    )
    out |= _nested_comparison(sub, y, models, folds, failure_rates, main, n_boot, random_state)
    out["null"] = permutation_null(
        MethodClassifier(features=main),
        sub,
        y,
        models,
        folds,
        n_permutations=n_null,
        observed=out["classifier"]["accuracy"]["mean"],
        random_state=random_state,
    )
    return out


def _feature_sets(features: pd.DataFrame, feature_sets: dict | None) -> tuple[list, list, dict]:
    """(the three features known for every failure, the unavailable ones, the feature sets
    to score): the three features, each alone
    and each left out, and the ablation variants, among those known for every failure;
    or the caller's sets, checked against what is available."""
    signature, ablations = signature_features(), ablation_features()
    available = [f for f in (*signature, *ablations) if f in features and features[f].notna().all()]
    unavailable = [f for f in (*signature, *ablations) if f not in available]
    main = [f for f in signature if f in available]
    if not main:
        raise DataError("no feature is available for every failure; topography cannot run")
    if feature_sets is not None:
        for name, cols in feature_sets.items():
            bad = [c for c in cols if c not in available]
            if bad:
                raise ConfigError(f"feature set {name!r} uses unavailable features {bad}")
        return main, unavailable, feature_sets
    sets = {"features": main}
    for f in main:
        sets[f"only {f}"] = [f]
        if len(main) > 1:
            sets[f"without {f}"] = [g for g in main if g != f]
    variants = [f for f in ablations if f in available]
    if variants:
        sets["ablation variants"] = variants
        sets["features + variants"] = main + variants
    return main, unavailable, sets

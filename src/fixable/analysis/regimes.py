"""Regimes from features: unsupervised clustering of the standardised failure signature,
how stable the clusters are, and how well they agree with the rescue-based labels.

``RegimeClusterer`` is a scikit-learn-style estimator: a Gaussian mixture whose number of
components is chosen by BIC (``method="gmm"``), or k-means (``method="kmeans"``) whose k
is given or chosen by the silhouette score (k-means has no likelihood, so no BIC). The
standardisation (a ``StandardScaler``) is part of the fitted state, so a clusterer fitted
on one model family carries that family's scaling to another (see ``transfer``).

Stability (SPEC §3.5) is the adjusted Rand index (ARI) between the clustering of all
failures and the clustering refitted on a bootstrap resample (compared on all failures),
and between clusterings of independent probe sets (``split_stability``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClusterMixin, clone
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.mixture import GaussianMixture
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, check_random_state

from fixable.analysis.stats import Estimate, percentile_interval
from fixable.errors import ConfigError, DataError
from fixable.features import FEATURES

logger = logging.getLogger(__name__)


def feature_matrix(X, features: Sequence[str] | None) -> np.ndarray:
    """The named feature columns of a DataFrame (or an array as is), checked for NaN."""
    if isinstance(X, pd.DataFrame):
        names = list(features if features is not None else FEATURES)
        missing = [f for f in names if f not in X.columns]
        if missing:
            raise DataError(
                f"feature table lacks {', '.join(missing)}; known columns: {', '.join(map(str, X.columns))}"
            )
        values = X[names].to_numpy(dtype=float)
    else:
        values = np.asarray(X, dtype=float)
        if values.ndim != 2:
            raise DataError(f"features must be a 2-d table, got shape {values.shape}")
    if np.isnan(values).any():
        bad = np.isnan(values).any(axis=1).sum()
        raise DataError(
            f"{bad} failures have unavailable features (NaN); choose available features "
            "(see the table's *_available / entropy_kind columns) or drop those rows"
        )
    return values


class RegimeClusterer(ClusterMixin, BaseEstimator):
    """Clusters failures by their standardised features.

    Args:
        method: ``"gmm"`` (Gaussian mixture, k by BIC) or ``"kmeans"`` (k by silhouette).
        n_regimes: fixed number of clusters; None chooses it from ``1..max_regimes``
            (k-means: ``2..max_regimes``).
        max_regimes: largest number of clusters tried.
        features: the feature columns used when X is a DataFrame.
        covariance_type: the mixture's covariance structure.
        n_init: restarts per fit (the best is kept).
        random_state: seed or ``RandomState``, resolved in ``fit``.
    """

    def __init__(
        self,
        method: str = "gmm",
        n_regimes: int | None = None,
        max_regimes: int = 6,
        features: Sequence[str] | None = FEATURES,
        covariance_type: str = "full",
        n_init: int = 3,
        random_state=None,
    ):
        self.method = method
        self.n_regimes = n_regimes
        self.max_regimes = max_regimes
        self.features = features
        self.covariance_type = covariance_type
        self.n_init = n_init
        self.random_state = random_state

    def _make(self, k: int, seed: int):
        if self.method == "gmm":
            return GaussianMixture(
                n_components=k,
                covariance_type=self.covariance_type,
                n_init=self.n_init,
                random_state=seed,
                reg_covar=1e-4,
            )
        return KMeans(n_clusters=k, n_init=self.n_init, random_state=seed)

    def fit(self, X, y=None):
        if self.method not in ("gmm", "kmeans"):
            raise ConfigError(f"clustering method must be 'gmm' or 'kmeans', got {self.method!r}")
        values = feature_matrix(X, self.features)
        n = len(values)
        if n < 2:
            raise DataError(f"clustering needs at least 2 failures, got {n}")
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        self.scaler_ = StandardScaler().fit(values)
        z = self.scaler_.transform(values)
        low = 1 if self.method == "gmm" else 2
        if self.n_regimes is not None:
            if not 1 <= self.n_regimes <= n:
                raise ConfigError(
                    f"n_regimes must be in [1, {n}] (the number of failures), got {self.n_regimes}"
                )
            candidates = [self.n_regimes]
        else:
            candidates = list(range(low, max(low, min(self.max_regimes, n - 1)) + 1))
        self.scores_ = {}
        best, best_score = None, np.inf
        for k in candidates:
            with warnings.catch_warnings():
                # bootstrap resamples repeat points, so k-means may find fewer distinct
                # clusters than asked: expected here, and the score below accounts for it
                warnings.simplefilter("ignore", ConvergenceWarning)
                model = self._make(k, seed).fit(z)
            if self.method == "gmm":
                score = float(model.bic(z))  # lower is better
            else:
                labels = model.labels_
                score = -float(silhouette_score(z, labels)) if 1 < len(set(labels)) < n else np.inf
            self.scores_[k] = score
            if score < best_score or best is None:
                best, best_score = model, score
        self.model_ = best
        self.n_regimes_ = int(best.n_components if self.method == "gmm" else best.n_clusters)
        self.labels_ = self.model_.predict(z)
        self.n_features_in_ = values.shape[1]
        return self

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict(self.scaler_.transform(feature_matrix(X, self.features)))

    def regime_means(self, X) -> pd.DataFrame:
        """Each cluster's mean feature values (in the features' own units) and size."""
        check_is_fitted(self, "model_")
        values = feature_matrix(X, self.features)
        labels = self.predict(X)
        names = (
            list(self.features)
            if isinstance(X, pd.DataFrame) and self.features
            else [f"x{i}" for i in range(values.shape[1])]
        )
        frame = pd.DataFrame(values, columns=names)
        frame["regime"] = labels
        out = frame.groupby("regime").mean()
        out["n"] = frame.groupby("regime").size()
        return out


def purity(clusters, labels) -> float:
    """Share of failures whose label is their cluster's most common label."""
    frame = pd.DataFrame({"c": np.asarray(clusters), "l": np.asarray(labels, dtype=object)})
    if frame.empty:
        return float("nan")
    return float(frame.groupby("c")["l"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(frame))


def agreement(clusters, labels) -> dict:
    """NMI, ARI and purity of clusters against regime labels (failures without a label left out)."""
    clusters = np.asarray(clusters)
    labels = pd.Series(labels, dtype=object)
    keep = labels.notna().to_numpy()
    c, lab = clusters[keep], labels[keep].astype(str).to_numpy()
    if len(c) == 0:
        return {"nmi": None, "ari": None, "purity": None, "n": 0}
    return {
        "nmi": float(normalized_mutual_info_score(lab, c)),
        "ari": float(adjusted_rand_score(lab, c)),
        "purity": purity(c, lab),
        "majority_share": float(pd.Series(lab).value_counts().iloc[0] / len(lab)),
        "n": int(len(c)),
    }


def bootstrap_stability(
    clusterer: RegimeClusterer, X, *, n_boot: int = 50, random_state=0, groups=None
) -> tuple[Estimate, list[float]]:
    """ARI between the clustering of all failures and clusterings refitted on bootstrap
    resamples (resampling ``groups``, e.g. problems, when given), compared on all failures."""
    rng = np.random.default_rng(random_state)
    reference = clone(clusterer).set_params(random_state=int(rng.integers(2**31 - 1))).fit(X)
    reference_labels = reference.predict(X)
    n = len(reference_labels)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    uniques, codes = np.unique(groups.astype(str), return_inverse=True)
    members = [np.flatnonzero(codes == g) for g in range(len(uniques))]
    scores = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(uniques), len(uniques))
        idx = np.concatenate([members[g] for g in picked])
        sample = X.iloc[idx] if isinstance(X, pd.DataFrame) else np.asarray(X)[idx]
        try:
            refit = (
                clone(clusterer).set_params(random_state=int(rng.integers(2**31 - 1))).fit(sample)
            )
        except (DataError, ConfigError, ValueError) as e:
            logger.debug("bootstrap resample could not be clustered: %s", e)
            continue
        scores.append(float(adjusted_rand_score(reference_labels, refit.predict(X))))
    lo, hi = percentile_interval(scores)
    value = float(np.mean(scores)) if scores else float("nan")
    return Estimate(
        value,
        lo,
        hi,
        n,
        f"mean ARI over {len(scores)} bootstrap refits; "
        "interval: 2.5-97.5 percentiles of the refits",
    ), scores


def split_stability(
    clusterer: RegimeClusterer, subsets: list[pd.DataFrame], *, key: Sequence[str], random_state=0
) -> dict:
    """ARI between clusterings fitted separately on independent probe sets of the same
    failures (each subset a feature table), on the failures they share, for every pair."""
    rng = np.random.default_rng(random_state)
    labelled = []
    for subset in subsets:
        model = clone(clusterer).set_params(random_state=int(rng.integers(2**31 - 1))).fit(subset)
        labelled.append(
            pd.Series(model.predict(subset), index=pd.MultiIndex.from_frame(subset[list(key)]))
        )
    pairs = []
    for i in range(len(labelled)):
        for j in range(i + 1, len(labelled)):
            common = labelled[i].index.intersection(labelled[j].index)
            if len(common) >= 2:
                pairs.append(
                    {
                        "a": i,
                        "b": j,
                        "n": int(len(common)),
                        "ari": float(adjusted_rand_score(labelled[i][common], labelled[j][common])),
                    }
                )
    aris = [p["ari"] for p in pairs]
    return {"ari": float(np.mean(aris)) if aris else None, "pairs": pairs}


def _permute_columns(X: pd.DataFrame, columns: Sequence[str], rng: np.random.Generator):
    out = X.copy()
    for c in columns:
        out[c] = rng.permutation(out[c].to_numpy())
    return out


def _null_summary(values: list[float], observed) -> dict:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"values": [], "mean": None, "std": None, "q95": None, "n_permutations": 0}
    out = {
        "values": [float(x) for x in v],
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "q95": float(np.quantile(v, 0.95)),
        "n_permutations": int(v.size),
    }
    if observed is not None and np.isfinite(observed):
        out["observed"] = float(observed)
        out["p_value"] = float((1 + np.sum(v >= observed - 1e-12)) / (1 + v.size))
        out["percentile"] = float(np.mean(v < observed))
    return out


def permuted_feature_null(
    clusterer: RegimeClusterer,
    X: pd.DataFrame,
    labels,
    *,
    observed: dict,
    subsets: list[pd.DataFrame] | None = None,
    key: Sequence[str] = ("model", "problem_id"),
    n_null: int = 20,
    random_state=0,
) -> dict:
    """The regime headlines under a null that keeps each feature's distribution and
    destroys its joint structure and its link to the labels: every feature column permuted
    independently across failures, the clusterer refitted at the observed number of
    regimes (``observed["n_regimes"]``). ``observed`` holds the real ``nmi``, ``purity``
    and ``probe_split_ari``; for the probe-split ARI every probe subset
    is permuted independently. Returns one null distribution per headline."""
    rng = np.random.default_rng(random_state)
    columns = list(clusterer.features or FEATURES)
    # the null clusters at the observed number of regimes (BIC on permuted features would
    # mostly choose one regime, a null that agrees with nothing by construction)
    if observed.get("n_regimes"):
        clusterer = clone(clusterer).set_params(n_regimes=int(observed["n_regimes"]), n_init=1)
    nmi, pur, split = [], [], []
    for _ in range(n_null):
        permuted = _permute_columns(X, columns, rng)
        seed = int(rng.integers(2**31 - 1))
        try:
            fitted = clone(clusterer).set_params(random_state=seed).fit(permuted)
        except (DataError, ConfigError, ValueError) as e:
            logger.debug("a permuted table could not be clustered: %s", e)
            continue
        a = agreement(fitted.predict(permuted), labels)
        nmi.append(a["nmi"])
        pur.append(a["purity"])
        if subsets:
            perm_subsets = [_permute_columns(s, columns, rng) for s in subsets]
            split.append(
                split_stability(clusterer, perm_subsets, key=list(key), random_state=seed)["ari"]
            )
    out = {
        "how": f"each feature permuted independently across failures, clusterer refitted at "
        f"the observed k ({n_null} permutations)",
        "nmi": _null_summary(nmi, observed.get("nmi")),
        "purity": _null_summary(pur, observed.get("purity")),
    }
    if subsets:
        out["probe_split_ari"] = _null_summary(split, observed.get("probe_split_ari"))
    return out

"""Transfer across model families (SPEC §3.8): every fitted or chosen quantity is fitted on
one family's failures and evaluated on another's, in both directions, beside the figure
obtained within the evaluated family.

Quantities: the feature standardisation (how far the target's features sit from the
source's scale), the cluster model (agreement of its clusters with the target's regime
labels), the topography classifier (accuracy on the target's methods; also with the
standardisation refitted on the target's unlabelled features), the best fixed intervention
(its rescue rate on the target at the budget) and the router's median thresholds (routed
rescue rate on the target). Protocol v2: the in-family classifier is evaluated on held-out
models of the family (leave-one-seed-out, else leave-one-model-out); the best fixed
intervention is chosen on the *labelling part* (of the source family, or of the other fold
of the family's problems) and scored on the target's *scoring part*; the router's
thresholds are frozen on the source family, or in family on the family's other
calibration group (seeds, else halves of its models), never on the failures routed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.preprocessing import StandardScaler

from fixable.analysis.evaluation import calibration_groups
from fixable.analysis.regimes import RegimeClusterer, agreement, feature_matrix
from fixable.analysis.routing import (
    BestFixedIntervention,
    Outcomes,
    SignatureRouter,
    cross_fitted_best_fixed,
    route_failures,
)
from fixable.analysis.stats import bootstrap_mean_estimate
from fixable.analysis.topography import (
    MethodClassifier,
    held_out_folds,
    held_out_predictions,
    per_model_accuracy,
)
from fixable.features import FAILURE_KEY, FEATURES

logger = logging.getLogger(__name__)


def _grouped_mean(values, groups, n_boot, random_state) -> dict:
    return bootstrap_mean_estimate(
        values, groups, n_boot=n_boot, random_state=random_state
    ).to_dict()


def transfer(
    features: pd.DataFrame,
    *,
    feature_cols: Sequence[str] = FEATURES,
    labels: Sequence | None = None,
    outcomes: Outcomes | None = None,
    label_outcomes: Outcomes | None = None,
    budget: float = 16,
    clusterer: RegimeClusterer | None = None,
    n_seeds: int = 3,
    n_boot: int = 1000,
    random_state: int = 0,
) -> dict:
    """Both directions between every pair of families in ``features["family"]``.

    ``features`` needs columns ``family``, ``method`` (None where unknown) and
    ``feature_cols``; ``labels`` aligns with its rows; ``outcomes`` holds the scoring
    part's rescue outcomes and ``label_outcomes`` the labelling part's, aligned with it
    (failures missing from them are left out of the routing quantities)."""
    feature_cols = list(feature_cols)
    families = sorted(f for f in features["family"].dropna().unique())
    if len(families) < 2:
        return {
            "families": families,
            "note": "transfer needs failures of two model families",
            "pairs": [],
        }
    clusterer = clusterer or RegimeClusterer(features=feature_cols, random_state=random_state)
    labels = pd.Series(
        list(labels) if labels is not None else [None] * len(features),
        index=features.index,
        dtype=object,
    )
    out = {
        "families": families,
        "features": feature_cols,
        "budget_samples": float(budget),
        "pairs": [],
    }
    outcome_index = None
    if outcomes is not None:
        outcome_index = pd.MultiIndex.from_frame(outcomes.keys[FAILURE_KEY])
    for source in families:
        for target in families:
            src = features[features["family"] == source]
            tgt = features[features["family"] == target]
            pair = {
                "source": source,
                "target": target,
                "in_family": source == target,
                "n_source": int(len(src)),
                "n_target": int(len(tgt)),
            }

            # standardisation: where the target sits on the source's scale
            scaler = StandardScaler().fit(feature_matrix(src, feature_cols))
            z = scaler.transform(feature_matrix(tgt, feature_cols))
            pair["standardisation"] = {
                f: {"target_mean_z": float(z[:, i].mean()), "target_std_z": float(z[:, i].std())}
                for i, f in enumerate(feature_cols)
            }

            # cluster model (fitted on the source family; in-family: on the target itself)
            fit_on = tgt if source == target else src
            if len(fit_on) < 2:
                pair["clusters"] = {
                    "skipped": f"{len(fit_on)} failure(s) of family {target if source == target else source}: "
                    "too few to cluster"
                }
            else:
                fitted = clone(clusterer).fit(fit_on)
                pair["clusters"] = agreement(fitted.predict(tgt), labels.loc[tgt.index]) | {
                    "n_regimes": int(fitted.n_regimes_)
                }

            # topography classifier
            pair["classifier"] = _classifier_transfer(
                src, tgt, feature_cols, source == target, n_seeds, n_boot, random_state
            )

            # best fixed intervention and router thresholds
            if outcomes is not None:
                pair.update(
                    _routing_transfer(
                        src,
                        tgt,
                        outcomes,
                        label_outcomes if label_outcomes is not None else outcomes,
                        outcome_index,
                        budget,
                        source == target,
                        n_boot,
                        random_state,
                    )
                )
            out["pairs"].append(pair)
    return out


def _classifier_transfer(src, tgt, cols, in_family, n_seeds, n_boot, random_state) -> dict:
    src = src[src["method"].notna()]
    tgt = tgt[tgt["method"].notna()]
    shared = sorted(set(src["method"]) & set(tgt["method"]))
    if len(shared) < 2:
        return {"note": f"fewer than 2 methods shared between families: {shared}"}
    src = src[src["method"].isin(shared)]
    tgt = tgt[tgt["method"].isin(shared)]
    groups = tgt["problem_id"].astype(str).to_numpy()
    y_t = tgt["method"].astype(str).to_numpy()
    majority = float(pd.Series(y_t).value_counts().iloc[0] / len(y_t))
    if in_family:
        models = tgt["model"].astype(str).to_numpy()
        seeds = tgt["seed"].tolist() if "seed" in tgt else None
        scheme, folds = held_out_folds(models, y_t, seeds)
        per_method = tgt.groupby("method")["model"].nunique()
        if len(set(folds)) < 2 or (per_method < 2).any():
            return {
                "note": "in-family held-out models impossible: a method has a single model in "
                "this family (its method would be absent from training)",
                "majority_share": majority,
                "classes": shared,
            }
        predicted = held_out_predictions(
            MethodClassifier(features=cols), tgt, y_t, folds, random_state=random_state
        )
        hit = predicted == y_t
        return {
            "accuracy": _grouped_mean(hit, models, n_boot, random_state),
            "per_model": per_model_accuracy(predicted, y_t, models),
            "how": f"{scheme} within the family",
            "majority_share": majority,
            "classes": shared,
        }
    model = MethodClassifier(features=cols, random_state=random_state).fit(
        src, src["method"].astype(str)
    )
    hit = model.predict(tgt) == y_t
    # the same weights on the target's own standardisation (fitted without labels)
    lr = model.pipeline_[-1]
    z = StandardScaler().fit_transform(feature_matrix(tgt, cols))
    hit_restd = lr.predict(z) == y_t
    return {
        "accuracy": _grouped_mean(hit, groups, n_boot, random_state),
        "accuracy_target_standardisation": _grouped_mean(hit_restd, groups, n_boot, random_state),
        "how": "fitted on all source failures, evaluated on all target failures",
        "majority_share": majority,
        "classes": shared,
    }


def _routing_transfer(
    src, tgt, outcomes, label_outcomes, outcome_index, budget, in_family, n_boot, random_state
) -> dict:
    def outcomes_of(frame, which=outcomes) -> Outcomes:
        keys = pd.MultiIndex.from_frame(frame[FAILURE_KEY])
        return which.subset(outcome_index.isin(keys))

    out_s, out_t = outcomes_of(src, label_outcomes), outcomes_of(tgt)
    lab_t = outcomes_of(tgt, label_outcomes)
    if len(out_s) == 0 or len(out_t) == 0:
        return {"best_fixed": {"note": "no rescue outcomes for one of the families"}}
    # the target's feature rows in the order of its outcome rows
    tgt_rows = (
        tgt.set_index(FAILURE_KEY)
        .loc[pd.MultiIndex.from_frame(out_t.keys[FAILURE_KEY])]
        .reset_index()
    )
    groups = out_t.keys["problem_id"].astype(str).to_numpy()
    p = out_t.success(budget)
    col = {s: i for i, s in enumerate(out_t.settings)}
    rows = np.arange(len(out_t))
    if in_family:
        # chosen on the labelling part of the other fold of problems, scored on the scoring part
        chosen, choices = cross_fitted_best_fixed(lab_t, budget, random_state=random_state)
        best = {
            "setting": choices,
            "how": "cross-fitted: chosen on the labelling part of the other half of the "
            "family's problems, scored on the scoring part",
        }
    else:
        setting = BestFixedIntervention(budget).fit(out_s).setting_
        chosen = np.full(len(out_t), setting, dtype=object)
        best = {
            "setting": setting,
            "how": "chosen on the labelling part of all source failures, scored on the "
            "target's scoring part",
        }
    best["rescue"] = _grouped_mean(p[rows, [col[s] for s in chosen]], groups, n_boot, random_state)

    if in_family:
        scheme, cal = calibration_groups(tgt_rows)
        if len(set(cal)) < 2:
            return {"best_fixed": best}
        routed = np.empty(len(tgt_rows), dtype=object)
        for g in sorted(set(cal)):
            router = SignatureRouter().fit(tgt_rows[cal != g])
            routed[cal == g] = route_failures(router, tgt_rows[cal == g], out_t.settings)
        how = f"thresholds frozen on the family's other calibration group ({scheme})"
    else:
        router = SignatureRouter().fit(src)
        routed = route_failures(router, tgt_rows, out_t.settings, by=None)
        how = "median thresholds of the source family"
    routed_rescue = {
        "rescue": _grouped_mean(p[rows, [col[s] for s in routed]], groups, n_boot, random_state),
        "how": how,
    }
    return {"best_fixed": best, "router_thresholds": routed_rescue}

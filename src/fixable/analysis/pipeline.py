"""Run the whole recoverability analysis over one or more runs and write ``analysis.json``,
the per-failure table and markdown/CSV tables (structure documented in docs/analysis.md).

``analyze`` is what ``fixable analyze`` calls: features → rescue matrix and labels →
regimes (GMM and k-means, stability, agreement) → routing with compute-matched evaluation
→ topography → transfer. Each stage that lacks what it needs (no rescue phase, one
family, no method metadata) is reported as skipped with the reason, never faked.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fixable import schema
from fixable.analysis.labels import (
    REGIMES,
    LabelThresholds,
    label_counts,
    label_failures,
    rates_wide,
    rescue_matrix,
)
from fixable.analysis.paper import PAPER, topography_text
from fixable.analysis.regimes import (
    RegimeClusterer,
    agreement,
    bootstrap_stability,
    split_stability,
)
from fixable.analysis.routing import Outcomes, SignatureRouter, evaluate_routing, route_failures
from fixable.analysis.topography import topography
from fixable.analysis.transfer import transfer
from fixable.errors import ConfigError, DataError, FixableError
from fixable.features import (
    ABLATIONS,
    FAILURE_KEY,
    FEATURES,
    as_table,
    failed_problems,
    failure_features,
    failure_texts,
    probe_subsets,
)

logger = logging.getLogger(__name__)

FORMAT, FORMAT_VERSION = "fixable-analysis", 1
METADATA_KEYS = ("family", "method", "seed")
UNUSED_COLUMNS = ("token_ids", "logprobs")
PER_TOKEN_COLUMNS = ("entropies", "policy_logprobs", "ref_logprobs")


@dataclass
class AnalysisConfig:
    """Everything that changes the analysis' figures; stored in analysis.json."""

    thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    budget: float | None = None  # headline budget in retry-equivalent samples; None: R // 2
    n_boot: int = 1000  # bootstrap resamples for intervals
    n_seeds: int = 10  # topography CV repetitions
    n_splits: int = 5  # topography CV folds
    stability_boot: int = 30  # bootstrap refits for cluster stability
    max_regimes: int = 6  # largest k tried by the clusterers
    require_full_entropy: bool = False  # top-k entropies make trajectory uncertainty unavailable
    # the router's median thresholds: over all failures together (None) or per "model"
    route_by: str | None = None
    random_state: int = 0
    # BLAS/OpenMP threads while analysing: the tables are small (hundreds of rows), where
    # thread start-up and contention cost more than they give (timed once by hand: a GMM
    # fit took 2.4 s with default threads on a loaded 2-core machine, 0.12 s with one);
    # None leaves them as set
    threads: int | None = 1

    def __post_init__(self):
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"budget must be > 0 retry-equivalent samples, got {self.budget!r}")
        for name in ("n_boot", "n_seeds", "n_splits", "stability_boot", "max_regimes"):
            if getattr(self, name) < (2 if name == "n_splits" else 1):
                raise ConfigError(f"{name} must be a positive count, got {getattr(self, name)!r}")
        if self.route_by not in (None, "model"):
            raise ConfigError(
                f"route_by must be None (thresholds over all failures) or 'model', got {self.route_by!r}"
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.to_dict()
        return d


@dataclass
class Analysis:
    """The result of ``analyze``: the JSON document, the per-failure table, and the
    curves/tables written beside it."""

    result: dict
    failures: pd.DataFrame
    tables: dict[str, pd.DataFrame]


def load_runs(
    paths: Sequence[str | Path], models: Sequence[str] | None = None
) -> tuple[pa.Table, list[dict]]:
    """The rollouts of every run (with a ``run`` column naming it) and their provenance;
    with ``models`` (names or shell-style patterns such as ``"*-s1"``), only those models'."""
    from fixable.store import Run

    tables, sources = [], []
    for i, path in enumerate(paths):
        run = Run(path)
        # the analysis reads per-token lists of probe rollouts only (features); rescue
        # rollouts are counted, so their lists stay in the store (on a 16-model study this
        # cut peak memory from 1.5 GB to well under half, measured once by hand)
        probe_columns = [c for c in schema.ROLLOUTS.names if c not in UNUSED_COLUMNS]
        rescue_columns = [c for c in probe_columns if c not in PER_TOKEN_COLUMNS]
        probes = run.rollouts(where="phase = 'probe'", columns=probe_columns)
        rescues = run.rollouts(where="phase <> 'probe'", columns=rescue_columns)
        for column in PER_TOKEN_COLUMNS:
            rescues = rescues.append_column(
                probes.schema.field(column),
                pa.nulls(rescues.num_rows, probes.schema.field(column).type),
            )
        table = pa.concat_tables([probes, rescues.select(probes.column_names)])
        name = f"{i}:{Path(path).name}"
        tables.append(table.append_column("run", pa.array([name] * table.num_rows, pa.string())))
        manifest = run.manifest
        sources.append(
            {
                "run": name,
                "path": str(Path(path).resolve()),
                "run_seed": manifest.get("run_seed"),
                "schema_version": manifest.get("schema_version"),
                "rollouts": table.num_rows,
                "models": sorted(manifest.get("models", {})),
            }
        )
    if not tables:
        raise ConfigError("no runs given; write `fixable analyze RUN [RUN ...]`")
    table = pa.concat_tables(tables)
    if models:
        present = sorted(set(table.column("model").unique().to_pylist()))
        chosen = [m for m in present if any(fnmatch.fnmatchcase(m, p) for p in models)]
        if not chosen:
            raise ConfigError(
                f"no model of the runs matches {', '.join(models)}; they hold: {', '.join(present)}"
            )
        table = table.filter(pc.is_in(table.column("model"), pa.array(chosen)))
        for source in sources:
            source["models"] = [m for m in source["models"] if m in chosen]
    # the same rollout (key and seed) in two runs would count twice; runs of other seeds
    # hold other samples of the same keys and are pooled
    keys = table.select([*schema.KEY, "seed", "run"]).to_pandas()
    repeated = keys.duplicated(subset=[*schema.KEY, "seed"], keep=False)
    if repeated.any():
        runs = sorted(keys.loc[repeated, "run"].unique())
        raise DataError(
            f"{int(repeated.sum())} rollouts appear in more than one of the runs {runs} "
            "(same key and seed): pass each run once"
        )
    return table, sources


def model_metadata(
    models: Sequence[str], model_info: Mapping[str, Mapping] | None = None
) -> dict[str, dict]:
    """family / method / seed of each model: from ``model_info`` where given, else the zoo's
    model card; unknown models get None (and leave topography and transfer without them)."""
    out = {}
    for model in models:
        info = dict(model_info.get(model, {})) if model_info else {}
        source = "model_info" if info else None
        if not info:
            info = _zoo_card(model)
            source = "zoo card" if info else None
        out[model] = {k: info.get(k) for k in METADATA_KEYS} | {"source": source}
    return out


def _zoo_card(model: str) -> dict:
    try:
        from fixable.organism import zoo
    except ImportError:
        return {}
    try:
        card = zoo.card(model)
    except (FixableError, KeyError, FileNotFoundError, ValueError) as e:
        logger.info("no zoo card for %s: %s", model, e)
        return {}
    return {k: card.get(k) for k in METADATA_KEYS} | {"source": "zoo card"}


def _clean(value):
    """JSON-ready: numpy scalars to Python, NaN/inf to None, frames to records."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, pd.DataFrame):
        return _clean(value.to_dict(orient="records"))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def analyze(
    rollouts,
    *,
    model_info: Mapping[str, Mapping] | None = None,
    config: AnalysisConfig | None = None,
    router=None,
    sources: list[dict] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Analysis:
    """The full analysis of a rollouts table (or a store ``Run``)."""
    config = config or AnalysisConfig()
    if config.threads is None:
        return _analyze(
            rollouts,
            model_info=model_info,
            config=config,
            router=router,
            sources=sources,
            progress=progress,
        )
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=config.threads):
        return _analyze(
            rollouts,
            model_info=model_info,
            config=config,
            router=router,
            sources=sources,
            progress=progress,
        )


def _analyze(
    rollouts, *, model_info, config: AnalysisConfig, router, sources, progress
) -> Analysis:
    progress = progress or (lambda stage: None)
    table = as_table(rollouts)
    notes: list[str] = []
    skipped: dict[str, str] = {}
    rs = config.random_state

    progress("features")
    status = failed_problems(table)
    features = failure_features(table, require_full_entropy=config.require_full_entropy)
    if features.empty:
        raise DataError(
            "no failed problems in these rollouts (a failure is 0 of K probe rollouts "
            "correct); sample a probe phase first: `fixable sample --phase probe ...`"
        )
    models = sorted(status["model"].unique())
    meta = model_metadata(models, model_info)
    for key in METADATA_KEYS:
        features[key] = features["model"].map(lambda m, k=key: meta[m][k])
    available = [f for f in FEATURES if features[f].notna().all()]
    unavailable = {}
    for f in FEATURES:
        if f not in available:
            n_missing = int(features[f].isna().sum())
            why = {
                "reference_drift": "no reference log-probs (ref_logprobs null: no reference model was scored)",
                "trajectory_uncertainty": "missing or top-k-only entropies (require_full_entropy)",
                "answer_dispersion": "K = 1 probe rollout: dispersion undefined",
            }[f]
            unavailable[f] = f"{n_missing} of {len(features)} failures: {why}"
    if not available:
        raise DataError(
            "none of the three features is available for every failure: "
            + "; ".join(unavailable.values())
        )
    entropy_kinds = features["entropy_kind"].value_counts().to_dict()
    if set(entropy_kinds) - {"full"}:
        notes.append(
            f"trajectory uncertainty is a flagged top-k estimate for some failures: {entropy_kinds}"
        )

    data = {"n_rollouts": int(table.num_rows), "n_failures": int(len(features)), "models": {}}
    probe_k = features["n_probes"]
    data["K"] = {"min": int(probe_k.min()), "max": int(probe_k.max())}
    for model in models:
        s = status[status["model"] == model]
        n_fail = int(s["failed"].sum())
        data["models"][model] = meta[model] | {
            "n_problems": int(len(s)),
            "n_failed": n_fail,
            "failure_rate": n_fail / len(s) if len(s) else None,
        }

    progress("labels")
    matrix = rescue_matrix(table, config.thresholds)
    labels = label_failures(matrix, config.thresholds)
    failures = features.merge(labels, on=FAILURE_KEY, how="left")
    if not matrix.empty:
        failures = failures.merge(rates_wide(matrix), on=FAILURE_KEY, how="left")
        settings = sorted(matrix["setting"].unique())
        r_values = matrix.loc[matrix["n"] > 0, "n"]
        data["settings"] = settings
        data["R"] = {"min": int(r_values.min()), "max": int(r_values.max())}
        label_section = label_counts(failures, config.thresholds)
        label_section["thresholds"] = config.thresholds.to_dict()
        label_section["per_model"] = {
            m: label_counts(failures[failures["model"] == m], config.thresholds) for m in models
        }
        n_zero = config.thresholds.resample
        label_section["note"] = (
            "a label is uncertain when an interval it was decided on straddles a threshold; "
            f"with R = {data['R']['min']}, 0 retry successes have an upper bound of "
            f"{_zero_upper(data['R']['min'], config.thresholds):.3f} vs the {n_zero:g} threshold"
        )
    else:
        settings = []
        label_section = None
        skipped["labels"] = skipped["routing"] = (
            "no rescue phase in these rollouts (run `fixable sample --phase rescue`)"
        )
        failures["label"] = None
        failures["uncertain"] = None

    progress("regimes")
    regimes = _regimes(table, failures, available, config, notes)
    for method in ("gmm", "kmeans"):
        if regimes.get(method, {}).get("assignments") is not None:
            failures[f"regime_{method}"] = regimes[method].pop("assignments")

    progress("routing")
    routing, per_failure, outcomes = None, None, None
    if settings and "retry" in settings:
        outcomes = Outcomes.from_matrix(matrix, settings, failures=failures)
        rows = (
            failures.set_index(FAILURE_KEY)
            .loc[pd.MultiIndex.from_frame(outcomes.keys[FAILURE_KEY])]
            .reset_index()
        )
        router = router if router is not None else SignatureRouter()
        routed = route_failures(router, rows, settings, by=config.route_by)
        budget = config.budget if config.budget is not None else max(1, data["R"]["min"] // 2)
        routing = evaluate_routing(
            outcomes,
            routed,
            budget=budget,
            labels=rows["label"].to_numpy(),
            subsets=("steerable-hard",),
            n_boot=config.n_boot,
            random_state=rs,
        )
        per_failure = routing.pop("per_failure")
        routing["router"] = repr(router)
        if isinstance(router, SignatureRouter):
            parts = (
                rows.groupby(config.route_by, sort=False) if config.route_by else [("all", rows)]
            )
            decided = pd.concat([router.decide(part, settings) for _, part in parts])
            rows = rows.assign(route_branch=decided.loc[rows.index, "branch"].to_numpy())
            parts = rows.groupby(config.route_by) if config.route_by else [("all", rows)]
            routing["route_by"] = config.route_by or "all failures"
            routing["thresholds"] = {g: router.thresholds_for(part) for g, part in parts}
        routing["n_failures_evaluated"] = int(len(outcomes))
        routing["paper"] = {"routing_lift_steerable_hard": PAPER["routing_lift_steerable_hard"]}
        routed_cols = per_failure.rename(
            columns={
                s: f"within_budget[{s}]"
                for s in per_failure.columns
                if s in ("routed", "retry", "best_fixed", "uniform", "random", "oracle")
            }
        )
        failures = failures.merge(routed_cols, on=FAILURE_KEY, how="left")
        if "route_branch" in rows:
            failures = failures.merge(
                rows[FAILURE_KEY + ["route_branch"]], on=FAILURE_KEY, how="left"
            )
    elif settings:
        skipped["routing"] = "the rescue phase has no retry setting (the budget's unit)"

    progress("topography")
    topo = None
    has_method = features["method"].notna() & (features["method"] != "base")
    methods = features["method"].where(has_method)
    if methods.dropna().nunique() >= 2:
        texts = failure_texts(table, features[FAILURE_KEY])
        texts = texts.reindex(pd.MultiIndex.from_frame(features[FAILURE_KEY])).fillna("").tolist()
        try:
            topo = topography(
                features,
                methods,
                texts=texts,
                n_splits=config.n_splits,
                n_seeds=config.n_seeds,
                n_boot=config.n_boot,
                random_state=rs,
            )
            topo["paper"] = PAPER["topography_accuracy"]
        except DataError as e:
            skipped["topography"] = str(e)
    else:
        skipped["topography"] = (
            "fewer than 2 post-training methods among the failures' models "
            "(method metadata comes from the zoo card or --model-info)"
        )

    progress("transfer")
    trans = None
    if features["family"].dropna().nunique() >= 2:
        trans = transfer(
            features.assign(method=methods),
            feature_cols=available,
            labels=failures["label"].to_numpy(),
            outcomes=outcomes,  # the routing's outcomes (None when routing did not run)
            budget=routing["budget_samples"] if routing else 16,
            clusterer=RegimeClusterer(
                features=available, max_regimes=config.max_regimes, random_state=rs
            ),
            n_boot=config.n_boot,
            random_state=rs,
        )
    else:
        skipped["transfer"] = "failures of fewer than two model families"

    result = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "fixable_version": _version(),
        "sources": sources or [],
        "config": config.to_dict(),
        "paper": PAPER,
        "data": data,
        "features": {
            "used": available,
            "unavailable": unavailable,
            "entropy_kind_counts": entropy_kinds,
            "ablations": list(ABLATIONS),
            "summary": _feature_summary(features),
        },
        "labels": label_section,
        "regimes": regimes,
        "routing": routing,
        "topography": topo,
        "transfer": trans,
        "skipped": skipped,
        "notes": notes,
    }
    tables = _tables(result, failures)
    return Analysis(_clean(result), failures, tables)


def _zero_upper(r: int, thresholds: LabelThresholds) -> float:
    from fixable.analysis.stats import rate_interval

    return float(rate_interval(0, r, thresholds.interval, thresholds.level)[1])


def _version() -> str:
    from fixable import __version__

    return __version__


def _feature_summary(features: pd.DataFrame) -> dict:
    out = {}
    for f in (*FEATURES, *ABLATIONS):
        by_model = features.groupby("model")[f].agg(["mean", "median", "std", "count"])
        out[f] = {
            "all": {
                "mean": features[f].mean(),
                "median": features[f].median(),
                "std": features[f].std(),
                "n": int(features[f].notna().sum()),
            },
            "per_model": by_model.to_dict(orient="index"),
        }
    return out


def _regimes(table, failures, available, config, notes) -> dict:
    rs = config.random_state
    out = {"features_used": available}
    if len(failures) < 4:
        out["skipped"] = f"{len(failures)} failures: too few to cluster"
        return out
    labels = failures["label"].to_numpy()
    groups = failures["problem_id"].astype(str).to_numpy()
    how, subsets = probe_subsets(table)
    subset_features = []
    for _, sub in subsets:
        f = failure_features(sub, require_full_entropy=config.require_full_entropy)
        f = f.merge(failures[FAILURE_KEY], on=FAILURE_KEY).dropna(subset=available)
        subset_features.append(f)
    if how.startswith("halves"):
        notes.append(
            "stability across probe seeds: only one probe seed, so the K probes were split "
            "into two halves by sample_index parity and features recomputed on each half"
        )
    for method in ("gmm", "kmeans"):
        clusterer = RegimeClusterer(
            method=method, features=available, max_regimes=config.max_regimes, random_state=rs
        )
        fitted = clusterer.fit(failures)
        assignments = fitted.predict(failures)
        stability, _ = bootstrap_stability(
            clusterer, failures, n_boot=config.stability_boot, random_state=rs, groups=groups
        )
        if all(len(s) >= 4 for s in subset_features):
            split = split_stability(clusterer, subset_features, key=FAILURE_KEY, random_state=rs)
        else:
            split = {"ari": None, "pairs": [], "note": "too few failures in a probe subset"}
        means = fitted.regime_means(failures)
        label_mix = pd.crosstab(
            pd.Series(assignments, name="regime"),
            pd.Series(pd.Series(labels).fillna("unlabelled").to_numpy(), name="label"),
        )
        out[method] = {
            "n_regimes": fitted.n_regimes_,
            "selection": {
                "criterion": "BIC (lower is better)"
                if method == "gmm"
                else "negative silhouette (lower is better)",
                "scores": {str(k): v for k, v in fitted.scores_.items()},
            },
            "regime_means": {str(k): v for k, v in means.to_dict(orient="index").items()},
            "labels_per_regime": {str(k): v for k, v in label_mix.to_dict(orient="index").items()},
            "agreement": agreement(assignments, labels),
            "bootstrap_stability": stability.to_dict(),
            "probe_split_stability": split | {"how": how},
            "assignments": assignments,
        }
    return out


def _tables(result: dict, failures: pd.DataFrame) -> dict[str, pd.DataFrame]:
    tables: dict[str, pd.DataFrame] = {}
    labels = result.get("labels")
    if labels:
        rows = []
        for regime in REGIMES:
            r = labels["regimes"][regime]
            rows.append(
                {
                    "label": regime,
                    "count": r["all"]["count"],
                    "share": r["all"]["value"],
                    "low": r["all"]["low"],
                    "high": r["all"]["high"],
                    "count_certain": r["certain_only"]["count"],
                    "share_certain": r["certain_only"]["value"],
                }
            )
        tables["labels"] = pd.DataFrame(rows)
    routing = result.get("routing")
    if routing:
        rows = []
        for subset, s in routing["subsets"].items():
            if not s.get("n"):
                continue
            for strategy, e in s["rates"].items():
                lift = s["lift"].get(strategy) if strategy != "routed" else None
                rows.append(
                    {
                        "subset": subset,
                        "strategy": strategy,
                        "n": e["n"],
                        "rescue": e["value"],
                        "low": e["low"],
                        "high": e["high"],
                        "routed_lift": None if lift is None else lift["value"],
                        "lift_low": None if lift is None else lift["low"],
                        "lift_high": None if lift is None else lift["high"],
                    }
                )
        tables["routing"] = pd.DataFrame(rows)
        rows = []
        curves = routing["curves"]
        for subset, per in curves.items():
            if subset == "budgets":
                continue
            for strategy, v in per.items():
                for b, val, lo, hi in zip(
                    curves["budgets"], v["value"], v["low"], v["high"], strict=True
                ):
                    rows.append(
                        {
                            "subset": subset,
                            "strategy": strategy,
                            "budget": b,
                            "rescue": val,
                            "low": lo,
                            "high": hi,
                            "n": v["n"],
                        }
                    )
        tables["curves"] = pd.DataFrame(rows)
    topo = result.get("topography")
    if topo:
        rows = [
            {"predictor": "majority class (share)", **_acc_row(topo["majority"])},
            {"predictor": "training-fold majority", **_acc_row(topo["majority_in_folds"])},
        ]
        if topo.get("text_baseline"):
            rows.append({"predictor": "text baseline (TF-IDF)", **_acc_row(topo["text_baseline"])})
        for name, res in topo["ablations"].items():
            rows.append({"predictor": name, **_acc_row(res)})
        rows.append(
            {
                "predictor": "paper (its models)",
                "accuracy_mean": PAPER["topography_accuracy"]["mean"],
                "accuracy_std": PAPER["topography_accuracy"]["std"],
            }
        )
        tables["topography"] = pd.DataFrame(rows)
        conf = topo["confusion"]
        tables["confusion"] = pd.DataFrame(
            conf["matrix"], index=pd.Index(conf["labels"], name="true"), columns=conf["labels"]
        ).reset_index()
    trans = result.get("transfer")
    if trans and trans.get("pairs"):
        rows = []
        for p in trans["pairs"]:
            row = {
                "source": p["source"],
                "target": p["target"],
                "in_family": p["in_family"],
                "cluster_nmi": p["clusters"].get("nmi"),
                "cluster_purity": p["clusters"].get("purity"),
            }
            acc = p["classifier"].get("accuracy")
            if acc:
                row |= {
                    "classifier_accuracy": acc["value"],
                    "classifier_low": acc["low"],
                    "classifier_high": acc["high"],
                }
            if "best_fixed" in p and "rescue" in p["best_fixed"]:
                e = p["best_fixed"]["rescue"]
                row |= {
                    "best_fixed": str(p["best_fixed"]["setting"]),
                    "best_fixed_rescue": e["value"],
                    "best_fixed_low": e["low"],
                    "best_fixed_high": e["high"],
                }
            if "router_thresholds" in p:
                e = p["router_thresholds"]["rescue"]
                row |= {
                    "routed_rescue": e["value"],
                    "routed_low": e["low"],
                    "routed_high": e["high"],
                }
            rows.append(row)
        tables["transfer"] = pd.DataFrame(rows)
    return tables


def _acc_row(res: dict) -> dict:
    acc, interval = res["accuracy"], res["interval"]
    return {
        "accuracy_mean": acc["mean"],
        "accuracy_std": acc["std"],
        "low": interval["low"],
        "high": interval["high"],
        "n": res["n"],
    }


def write_analysis(analysis: Analysis, out_dir: str | Path) -> list[Path]:
    """Write analysis.json, failures.parquet/.csv, one CSV per table and tables.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "analysis.json"
    path.write_text(json.dumps(_clean(analysis.result), indent=2, sort_keys=False) + "\n")
    written.append(path)
    failures = analysis.failures.copy()
    for col in failures.columns:  # parquet wants one type per column
        if failures[col].dtype == object:
            failures[col] = failures[col].map(
                lambda v: v if v is None or isinstance(v, str) else str(v)
            )
    failures.to_parquet(out / "failures.parquet", index=False)
    failures.to_csv(out / "failures.csv", index=False)
    written += [out / "failures.parquet", out / "failures.csv"]
    md = [f"# fixable analysis\n\n{_summary_lines(analysis.result)}\n"]
    for name, frame in analysis.tables.items():
        frame.to_csv(out / f"{name}.csv", index=False)
        written.append(out / f"{name}.csv")
        if name != "curves":
            md.append(f"## {name}\n\n{_markdown(frame)}\n")
    (out / "tables.md").write_text("\n".join(md))
    written.append(out / "tables.md")
    return written


def _markdown(frame: pd.DataFrame) -> str:
    def fmt(v):
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _summary_lines(result: dict) -> str:
    lines = [
        f"- failures: {result['data']['n_failures']} across {len(result['data']['models'])} models"
    ]
    if result.get("routing"):
        sh = result["routing"]["subsets"].get("steerable-hard", {})
        if sh.get("n"):
            lift = sh["lift"]["best_fixed"]
            lines.append(
                f"- routing lift over best fixed on steerable-hard (n={sh['n']}): "
                f"{_pts(lift['value'])} [{_pts(lift['low'])}, {_pts(lift['high'])}] points "
                f"(paper: +{PAPER['routing_lift_steerable_hard'] * 100:.1f})"
            )
    if result.get("topography"):
        acc = result["topography"]["classifier"]["accuracy"]
        maj = result["topography"]["majority"]["accuracy"]
        lines.append(
            f"- topography accuracy: {acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f} % "
            f"(majority {maj['mean'] * 100:.1f} %; paper: {topography_text()})"
        )
    for stage, why in result.get("skipped", {}).items():
        lines.append(f"- {stage} skipped: {why}")
    return "\n".join(lines)


def _pts(x) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}"

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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fixable import schema
from fixable.analysis.evaluation import (
    STRATEGIES_V2,
    RoutingData,
    calibration_groups,
    evaluate_frozen_routing,
)
from fixable.analysis.labels import (
    LABEL_PHASE,
    REGIMES,
    SPLIT_RULE,
    LabelThresholds,
    label_counts,
    label_failures,
    rates_wide,
    rescue_matrix,
)
from fixable.analysis.paper import PAPER, topography_text
from fixable.analysis.recovery import known_truth_recovery
from fixable.analysis.regimes import (
    RegimeClusterer,
    agreement,
    bootstrap_stability,
    permuted_feature_null,
    split_stability,
)
from fixable.analysis.result import FORMAT, FORMAT_VERSION
from fixable.analysis.routing import (
    ROUTER_FEATURES,
    Outcomes,
    SignatureRouter,
    route_failures,
)
from fixable.analysis.thresholds import FamilyRouter
from fixable.analysis.topography import topography
from fixable.analysis.transfer import transfer
from fixable.errors import ConfigError, DataError, FixableError
from fixable.features import (
    FAILURE_KEY,
    ablation_features,
    as_table,
    axis_feature,
    failed_problems,
    failure_features,
    failure_texts,
    feature,
    probe_subsets,
    signature_features,
)

logger = logging.getLogger(__name__)

METADATA_KEYS = ("family", "method", "seed")
UNUSED_COLUMNS = ("token_ids", "logprobs")
PER_TOKEN_COLUMNS = ("entropies", "policy_logprobs", "ref_logprobs")


@dataclass
class AnalysisConfig:
    """Everything that changes the analysis' figures; stored in analysis.json."""

    thresholds: LabelThresholds = field(default_factory=LabelThresholds)
    budget: float | None = None  # headline budget in retry-equivalent samples; None: R_score // 2
    n_boot: int = 1000  # bootstrap resamples for intervals
    n_seeds: int = 10  # v1 only: topography CV repetitions (v2 folds are held-out models)
    n_splits: int = 5  # v1 only: topography CV folds
    n_null: int = 20  # permutations of every null (topography labels, regime features)
    stability_boot: int = 30  # bootstrap refits for cluster stability
    max_regimes: int = 6  # largest k tried by the clusterers
    require_full_entropy: bool = False  # top-k entropies make trajectory uncertainty unavailable
    # models (names or patterns) whose failures calibrate the router and are not evaluated;
    # empty: cross-calibration (seeds, else halves of the models within families, both ways)
    calibration: tuple = ()
    # evaluate a caller's router on models it was calibrated on: refused unless True, and
    # then flagged in analysis.json
    allow_calibration_overlap: bool = False
    random_state: int = 0
    # BLAS/OpenMP threads while analysing: the tables are small (hundreds of rows), where
    # thread start-up and contention cost more than they give (timed once by hand: a GMM
    # fit took 2.4 s with default threads on a loaded 2-core machine, 0.12 s with one);
    # None leaves them as set
    threads: int | None = 1
    # a router frozen elsewhere instead of cross-calibration within the run: "shipped" (the
    # package's per-family thresholds, analysis/router_thresholds.json) or the path of a
    # thresholds file of that format; None: calibration groups (seeds, else model halves)
    frozen_router: str | None = None
    # a known truth per failure (a positive control): the problem-metadata field holding it
    # (e.g. "key" on chains-planted), mapped per model through the model's truth map where it
    # has one (model_info "truth_map", or a planted card's mixture); None: no recovery section
    truth: str | None = None
    # also evaluate a k-nearest-neighbour router fitted leave-one-model-out on the other
    # models' labelling parts (analysis/learned_routing.py): does the signature carry
    # per-failure routing information the rule does not read? Result in routing["learned"];
    # the same router on F1 and F2 only (free: no teacher-forced pass) in
    # routing["learned_free"]
    learned_router: bool = False
    # topography's accuracy-matched views: sets of post-training methods whose failures it
    # is rerun on, each chosen before the run from the models' accuracies (e.g. the zoo's
    # ``accuracy_matched_methods``), never from the rollouts analysed; written
    # "distill,rft" (one set) or a list of such; empty: no such view
    matched_methods: tuple = ()

    def __post_init__(self):
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"budget must be > 0 retry-equivalent samples, got {self.budget!r}")
        for name in ("n_boot", "n_seeds", "n_splits", "stability_boot", "max_regimes"):
            if getattr(self, name) < (2 if name == "n_splits" else 1):
                raise ConfigError(f"{name} must be a positive count, got {getattr(self, name)!r}")
        if self.n_null < 20:
            raise ConfigError(f"n_null must be at least 20 permutations, got {self.n_null!r}")
        if isinstance(self.calibration, str):
            self.calibration = (self.calibration,)
        self.matched_methods = _method_sets(self.matched_methods)
        self.calibration = tuple(str(c) for c in self.calibration)
        if self.frozen_router is not None:
            self.frozen_router = str(self.frozen_router)
            if self.frozen_router != "shipped" and not Path(self.frozen_router).is_file():
                raise ConfigError(
                    f"frozen_router must be 'shipped' or a router-thresholds file, got "
                    f"{self.frozen_router!r} (no such file)"
                )
            if self.calibration:
                raise ConfigError("give either calibration models or frozen_router, not both")
        if self.truth is not None and not str(self.truth).strip():
            raise ConfigError("truth must name a problem-metadata field (e.g. 'key')")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = self.thresholds.to_dict()
        d["calibration"] = list(self.calibration)
        d["matched_methods"] = [list(s) for s in self.matched_methods]
        return d


def _method_sets(value) -> tuple[tuple[str, ...], ...]:
    """Sets of post-training methods: "a,b", ["a,b", "c,d"] or [["a", "b"], ...]; each
    names at least two methods (a ConfigError otherwise)."""
    if isinstance(value, str):
        value = [value]
    sets = []
    for item in value or ():
        names = item.split(",") if isinstance(item, str) else [str(m) for m in item]
        names = tuple(sorted({n.strip() for n in names if n.strip()}))
        if len(names) < 2:
            raise ConfigError(
                "every set of matched methods must name at least 2 post-training methods "
                f"(e.g. 'distill,rft'), got {list(names)}"
            )
        sets.append(names)
    return tuple(sets)


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
        probes = run.rollouts(columns=probe_columns, phase="probe")
        rescues = run.rollouts(columns=rescue_columns, exclude={"phase": "probe"})
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
    signature = signature_features()
    available = [f for f in signature if features[f].notna().all()]
    unavailable = {}
    for f in signature:
        if f not in available:
            n_missing = int(features[f].isna().sum())
            why = feature(f).unavailable
            unavailable[f] = f"{n_missing} of {len(features)} failures: {why}"
    if not available:
        raise DataError(
            "none of the signature features is available for every failure: "
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
    # protocol v2: labels, subsets and every choice from the labelling part; every strategy
    # scored on the scoring part (labels.select_part: sample-index parity)
    matrix = rescue_matrix(table, config.thresholds, part="label")
    score_matrix = rescue_matrix(table, config.thresholds, part="score")
    sweep = rescue_matrix(table, config.thresholds, part=None)
    labels = label_failures(matrix, config.thresholds)
    failures = features.merge(labels, on=FAILURE_KEY, how="left")
    if not matrix.empty:
        failures = failures.merge(rates_wide(matrix), on=FAILURE_KEY, how="left")
        settings = sorted(matrix["setting"].unique())
        data["settings"] = settings
        data["R"] = _count_range(sweep)
        data["R_label"] = _count_range(matrix)
        data["R_score"] = _count_range(score_matrix)
        data["split"] = SPLIT_RULE
        label_section = label_counts(failures, config.thresholds)
        label_section["thresholds"] = config.thresholds.to_dict()
        label_section["part"] = "labelling part: " + SPLIT_RULE
        label_section["per_model"] = {
            m: label_counts(failures[failures["model"] == m], config.thresholds) for m in models
        }
        r_label = data["R_label"]["min"]
        label_section["note"] = (
            "a label is uncertain when an interval it was decided on straddles a threshold; "
            f"with R_label = {r_label}, 0 retry successes have an upper bound of "
            f"{_zero_upper(r_label, config.thresholds):.3f} vs the "
            f"{config.thresholds.resample:g} threshold; sequential labelling "
            "(`fixable label`) samples uncertain failures further to certify them"
        )
        label_section["samples_spent"] = int(matrix["n"].sum())
        # of which sequential labelling (phase "label", `fixable label`) added
        label_section["sequential_samples"] = int(
            pc.sum(pc.equal(table["phase"], LABEL_PHASE)).as_py() or 0
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
    if router is None and config.frozen_router is not None:
        router = _frozen_router(config.frozen_router)
    routing, score_outcomes, label_outcomes = None, None, None
    if settings and "retry" in settings and score_matrix.empty:
        skipped["routing"] = (
            "no scoring part: every rescue sample has an even sample index (R = 1); "
            "sample R >= 2 rescue rollouts per setting"
        )
    elif settings and "retry" in settings:
        label_outcomes, score_outcomes = _aligned_outcomes(matrix, score_matrix, settings, failures)
        rows = (
            failures.set_index(FAILURE_KEY)
            .loc[pd.MultiIndex.from_frame(score_outcomes.keys[FAILURE_KEY])]
            .reset_index()
        )
        routing = _routing(rows, label_outcomes, score_outcomes, data, config, router)
        per_failure = routing.pop("per_failure")
        for key in ("learned", "learned_free"):
            learned = (routing.get(key) or {}).pop("per_failure", None)
            if learned is not None:
                failures = failures.merge(learned, on=FAILURE_KEY, how="left")
        routing["paper"] = {"routing_lift_steerable_hard": PAPER["routing_lift_steerable_hard"]}
        keep = [c for c in per_failure.columns if c in STRATEGIES_V2]
        routed_cols = per_failure.rename(columns={s: f"within_budget[{s}]" for s in keep})
        failures = failures.merge(routed_cols, on=FAILURE_KEY, how="left")
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
                failure_rates={m: data["models"][m]["failure_rate"] for m in models},
                seeds=features["seed"].tolist(),
                matched_methods=config.matched_methods or None,
                n_null=config.n_null,
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
            outcomes=score_outcomes,  # the scoring part (None when routing did not run)
            label_outcomes=label_outcomes,
            budget=routing["budget_samples"] if routing else 16,
            clusterer=RegimeClusterer(
                features=available, max_regimes=config.max_regimes, random_state=rs
            ),
            n_boot=config.n_boot,
            random_state=rs,
        )
    else:
        skipped["transfer"] = "failures of fewer than two model families"

    recovery = None
    if config.truth is not None:
        progress("recovery")
        try:
            meta = _problem_meta(rollouts, sources)
            failures["truth"] = _truth_column(meta, failures, config.truth, models, model_info)
            recovery = known_truth_recovery(
                failures, truth="truth", n_null=config.n_null, random_state=rs
            )
            recovery["field"] = config.truth
            recovery["truth_maps"] = {
                m: _truth_map(m, model_info) for m in models if _truth_map(m, model_info)
            }
        except DataError as e:
            skipped["recovery"] = str(e)

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
            "ablations": list(ablation_features()),
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
    if recovery is not None:
        result["recovery"] = recovery
    tables = _tables(result, failures)
    return Analysis(_clean(result), failures, tables)


def _frozen_router(source: str):
    from fixable.analysis.thresholds import FamilyRouter, load_defaults

    doc = load_defaults() if source == "shipped" else load_defaults(source)
    return FamilyRouter(doc)


def _truth_map(model: str, model_info: Mapping[str, Mapping] | None) -> dict | None:
    """The model's map from the truth field's values to its truths: ``model_info[model]
    ["truth_map"]``, else its zoo card's planted mixture (key → mechanism); None: none."""
    info = (model_info or {}).get(model) or {}
    if info.get("truth_map"):
        return {str(k): v for k, v in info["truth_map"].items()}
    try:
        from fixable.organism import zoo

        card = zoo.card(model)
    except (ImportError, FixableError, KeyError, FileNotFoundError, ValueError):
        return None
    mixture = (card.get("planted") or {}).get("mixture")
    return {str(k): v for k, v in mixture.items()} if mixture else None


def _problem_meta(rollouts, sources) -> pd.Series:
    """problem_id → its metadata JSON, from the problems table of the run(s) analysed."""
    from fixable.store import Run

    runs = [rollouts] if hasattr(rollouts, "problems") else []
    runs += [Run(s["path"]) for s in sources or [] if s.get("path")]
    frames = [r.problems().select(["problem_id", "meta"]).to_pandas() for r in runs]
    frames = [f for f in frames if len(f)]
    if not frames:
        raise DataError(
            "a known truth needs the problems' metadata: analyse runs from the store "
            "(their problems table), not a bare rollouts table"
        )
    return pd.concat(frames).drop_duplicates("problem_id").set_index("problem_id")["meta"]


def _truth_column(meta: pd.Series, failures: pd.DataFrame, field: str, models, model_info):
    """Per failure: its problem's ``meta[field]``, through its model's truth map if any."""

    def value_of(problem_id):
        raw = meta.get(problem_id)
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else (raw or {})
        except json.JSONDecodeError:
            return None
        return parsed.get(field) if isinstance(parsed, dict) else None

    maps = {m: _truth_map(m, model_info) for m in models}
    values = []
    for model, problem_id in zip(failures["model"], failures["problem_id"], strict=True):
        v = value_of(problem_id)
        if v is None:
            values.append(None)
            continue
        truth_map = maps.get(model)
        values.append(truth_map.get(str(v)) if truth_map else str(v))
    return pd.Series(values, index=failures.index, dtype=object)


def _count_range(matrix: pd.DataFrame) -> dict:
    r = matrix.loc[matrix["n"] > 0, "n"] if not matrix.empty else pd.Series([], dtype=int)
    if r.empty:
        return {"min": 0, "max": 0}
    return {"min": int(r.min()), "max": int(r.max())}


def _aligned_outcomes(label_matrix, score_matrix, settings, failures):
    """The labelling and scoring parts' outcomes of the failures complete in both, aligned."""
    label = Outcomes.from_matrix(label_matrix, settings, failures=failures)
    score = Outcomes.from_matrix(score_matrix, settings, failures=failures)
    lk = pd.MultiIndex.from_frame(label.keys[FAILURE_KEY])
    sk = pd.MultiIndex.from_frame(score.keys[FAILURE_KEY])
    common = sk[sk.isin(lk)]
    if len(common) < len(sk) or len(common) < len(lk):
        logger.warning(
            "%d failures lack a labelling or scoring part for some setting; left out of routing",
            max(len(sk), len(lk)) - len(common),
        )
    label = label.subset(lk.isin(common))
    score = score.subset(sk.isin(common))
    order = pd.MultiIndex.from_frame(label.keys[FAILURE_KEY])
    position = pd.Series(np.arange(len(order)), index=order)
    label = label.subset(np.ones(len(label), dtype=bool))
    take = position.loc[pd.MultiIndex.from_frame(score.keys[FAILURE_KEY])].to_numpy()
    label = Outcomes(
        label.keys.iloc[take].reset_index(drop=True),
        label.settings,
        label.n[take],
        label.successes[take],
        label.cost[take],
        label.unit_cost[take],
    )
    return label, score


def _calibration(rows: pd.DataFrame, config: AnalysisConfig) -> tuple[str, np.ndarray, np.ndarray]:
    """The calibration scheme, each failure's group and which failures are evaluated."""
    if config.calibration:
        calibrating = np.array(
            [any(fnmatch.fnmatchcase(m, p) for p in config.calibration) for m in rows["model"]]
        )
        if calibrating.all() or not calibrating.any():
            raise ConfigError(
                f"calibration {list(config.calibration)} must name some but not all of the "
                f"models {sorted(set(rows['model']))}"
            )
        groups = np.where(calibrating, "calibration", "evaluation").astype(object)
        return "declared calibration models", groups, ~calibrating
    scheme, groups = calibration_groups(rows)
    return scheme, groups, np.ones(len(rows), dtype=bool)


def _routing(rows, label_outcomes, score_outcomes, data, config, router) -> dict:
    """Protocol v2 routing: a router frozen on calibration models, scored on the scoring part."""
    settings = list(score_outcomes.settings)
    scheme, groups, evaluate = _calibration(rows, config)
    if isinstance(router, FamilyRouter):  # calibrated on other models: one bootstrap stratum
        groups = np.full(len(rows), "evaluated", dtype=object)
    models_evaluated = sorted(set(rows.loc[evaluate, "model"]))
    calibration = {
        "scheme": scheme,
        "groups": {
            str(g): sorted(set(rows.loc[groups == g, "model"])) for g in sorted(set(groups))
        },
        "evaluated_models": models_evaluated,
        "evaluated_on_calibration": False,
    }
    fixed_thresholds, fixed_routes, toward = None, None, "checkpoint"
    if router is not None:
        calibrated_on = set(
            getattr(router, "calibration_models_", None)
            or getattr(router, "calibration_models", None)
            or ()
        )
        overlap = sorted(calibrated_on & set(models_evaluated))
        if overlap:
            if not config.allow_calibration_overlap:
                raise DataError(
                    f"the router was calibrated on {', '.join(overlap)}, which it would be "
                    "evaluated on; evaluate it on other models (--model) or calibrate it "
                    "elsewhere (allow_calibration_overlap=True reports it, flagged)"
                )
            calibration["evaluated_on_calibration"] = True
            calibration["flag"] = (
                f"FLAGGED: the router was calibrated on {', '.join(overlap)} and is evaluated "
                "on them; its figures are not held out"
            )
        calibration["scheme"] = "the caller's router"
        calibration["calibrated_on"] = (
            sorted(calibrated_on) or "unknown (not declared by the router)"
        )
        if isinstance(router, SignatureRouter) and (
            hasattr(router, "thresholds_") or router.thresholds != "median"
        ):
            fixed_thresholds = router.thresholds_for(rows)
            toward = router.toward_reference
        elif isinstance(router, SignatureRouter):
            toward = router.toward_reference  # median thresholds: frozen by calibration groups
            calibration["scheme"] = scheme
        else:
            fixed_routes = np.asarray(route_failures(router, rows, settings), dtype=object)
    # the router's teacher-forced scoring of its K probes under the reference (F3)
    drift_used = (
        rows["reference_drift"].notna().to_numpy()
        if "reference_drift" in rows
        else np.zeros(len(rows), bool)
    )
    probe_tokens = (rows["n_probes"] * rows["mean_tokens"]).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        charge = np.where(drift_used, probe_tokens / score_outcomes.unit_cost, 0.0)
    charge = np.nan_to_num(charge)
    routing_data = RoutingData(
        score=score_outcomes,
        label=label_outcomes,
        features=rows[list(ROUTER_FEATURES)].to_numpy(dtype=float)
        if set(ROUTER_FEATURES) <= set(rows.columns)
        else np.full((len(rows), 3), np.nan),
        models=rows["model"].astype(str).to_numpy(),
        problems=rows["problem_id"].astype(str).to_numpy(),
        groups=groups,
        labels=rows["label"].to_numpy(),
        charge=charge,
        evaluate=evaluate,
        fixed_routes=fixed_routes,
    )
    budget = config.budget if config.budget is not None else max(1, data["R_score"]["min"] // 2)
    routing = evaluate_frozen_routing(
        routing_data,
        budget=budget,
        subsets=("steerable-hard",),
        n_boot=config.n_boot,
        n_boot_curves=min(config.n_boot, 200),
        toward_reference=toward,
        fixed_thresholds=fixed_thresholds,
        random_state=config.random_state,
    )
    routing["per_model"] = _per_model_routing(
        routing_data, routing["per_failure"], budget, toward, config
    )
    if config.learned_router:
        from fixable.analysis.learned_routing import FREE_FEATURES

        routing["learned"] = _learned_routing(routing_data, budget, toward, config)
        routing["learned_free"] = _learned_routing(
            routing_data, budget, toward, config, features=FREE_FEATURES
        )
    routing["protocol_version"] = 2
    routing["calibration"] = calibration
    routing["router"] = repr(router) if router is not None else repr(SignatureRouter())
    routing["scored_on"] = "scoring part: odd sample indices of the rescue sweep"
    routing["n_failures_evaluated"] = int(evaluate.sum())
    if fixed_thresholds is not None:
        routing["thresholds"] = {"fixed": fixed_thresholds}
    family_thresholds = getattr(router, "thresholds", None) if fixed_routes is not None else None
    if isinstance(family_thresholds, Mapping) and all(
        isinstance(v, Mapping) for v in family_thresholds.values()
    ):
        routing["thresholds"] = {f"family {f}": dict(t) for f, t in family_thresholds.items()}
        calibration["scheme"] = (
            "frozen per-family thresholds, calibrated on other models: "
            + ", ".join(calibration.get("calibrated_on") or [])
        )
    return routing


def _learned_routing(
    data: RoutingData, budget, toward, config, features: tuple[str, ...] = ROUTER_FEATURES
) -> dict:
    """The leave-one-model-out k-NN router's routes on ``features`` (some of
    ROUTER_FEATURES), evaluated frozen like the rule's: pooled and per model, with the same
    strategies and nulls. Without reference drift it teacher-forces nothing and is charged
    nothing (its charged figures equal its uncharged ones)."""
    from fixable.analysis.learned_routing import DEFAULT_K, RefittedKNNRouter

    if len(set(data.models)) < 2:
        return {"skipped": "a leave-one-model-out router needs at least two models"}
    columns = [ROUTER_FEATURES.index(f) for f in features]
    fit = RefittedKNNRouter(data, budget, k=DEFAULT_K, columns=columns)
    routes = fit.point_routes()
    charge = data.charge if axis_feature("reference") in features else np.zeros_like(data.charge)
    learned = replace(data, fixed_routes=routes, charge=charge)
    r = _evaluate_at_budget(learned, budget, toward, config)
    per_failure = r.pop("per_failure")
    # a sensitivity check, not the headline interval: the router refitted inside every
    # bootstrap replicate on failures resampled within each other model. A k-NN refitted on
    # a resample (duplicates shrink its neighbourhood) is weaker than the one evaluated, so
    # this interval leans low: it bounds the fitting variance pessimistically
    refit = _evaluate_at_budget(
        replace(learned, refit_routes=fit), budget, toward, config, n_boot=min(config.n_boot, 500)
    )
    refitted = {
        name: (block.get("lift_over_best_fixed") or {}).get("routed")
        for name, block in refit["subsets"].items()
        if block.get("n")
    }
    column = "learned_setting" if tuple(features) == ROUTER_FEATURES else "free_setting"
    return {
        "router": f"k-nearest neighbours (k={DEFAULT_K}) on standardised "
        + ", ".join(features)
        + ", fitted leave-one-model-out on the other models' labelling parts",
        "features": list(features),
        "intervals": "routes frozen (the variance of fitting the router is not included); "
        "refitted_lift_over_best_fixed: the pooled lift with the router refitted in every "
        "replicate on failures resampled within each other model (leans low: a k-NN "
        "refitted on a resample is weaker than the one evaluated)",
        "refitted_lift_over_best_fixed": refitted,
        "routed_share": r["routed_share"],
        "best_fixed_choices": r["best_fixed_choices"],
        "subsets": r["subsets"],
        "per_model": _per_model_routing(learned, per_failure, budget, toward, config),
        "per_failure": per_failure[["model", "problem_id", "routed_setting"]].rename(
            columns={"routed_setting": column}
        ),
    }


def _evaluate_at_budget(data: RoutingData, budget, toward, config, n_boot=None) -> dict:
    """v2's frozen evaluation at the headline budget only (no curves): on all failures and
    on steerable-hard."""
    return evaluate_frozen_routing(
        data,
        budget=budget,
        subsets=("steerable-hard",),
        budgets=[budget],
        n_boot=config.n_boot if n_boot is None else n_boot,
        n_boot_curves=1,
        toward_reference=toward,
        random_state=config.random_state,
    )


def _per_model_routing(data: RoutingData, per_failure, budget, toward, config) -> dict:
    """Protocol v2's evaluation within each evaluated model: the routes the pooled
    evaluation chose (its point routes; frozen, not refitted per replicate), best fixed
    chosen on the other fold of the model's own problems, bootstrap over its problems. The
    within-model shuffled routes are the permuted-features null of a rule that routes each
    failure on its own features (permuting features among a model's failures permutes its
    routes); ``random_shares`` keeps the router's shares."""
    routes = per_failure["routed_setting"].to_numpy(dtype=object)
    out = {}
    evaluate = np.asarray(data.evaluate, dtype=bool)
    for model in sorted(set(data.models[evaluate])):
        mask = evaluate & (data.models == model)
        sub = RoutingData(
            score=data.score.subset(mask),
            label=data.label.subset(mask),
            features=data.features[mask],
            models=data.models[mask],
            problems=data.problems[mask],
            groups=np.full(int(mask.sum()), "model", dtype=object),
            labels=np.asarray(data.labels, dtype=object)[mask],
            charge=data.charge[mask],
            fixed_routes=routes[mask],
        )
        r = _evaluate_at_budget(sub, budget, toward, config)
        out[model] = {
            "n": int(mask.sum()),
            "routed_share": r["routed_share"],
            "best_fixed_choices": r["best_fixed_choices"],
            "subsets": r["subsets"],
        }
    return out


def _zero_upper(r: int, thresholds: LabelThresholds) -> float:
    from fixable.analysis.stats import rate_interval

    return float(rate_interval(0, r, thresholds.interval, thresholds.level)[1])


def _version() -> str:
    from fixable import __version__

    return __version__


def _feature_summary(features: pd.DataFrame) -> dict:
    out = {}
    for f in (*signature_features(), *ablation_features()):
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
        agree = agreement(assignments, labels)
        null = permuted_feature_null(
            clusterer,
            failures,
            labels,
            observed={
                "n_regimes": fitted.n_regimes_,
                "nmi": agree.get("nmi"),
                "purity": agree.get("purity"),
                "probe_split_ari": split.get("ari"),
            },
            subsets=subset_features if all(len(s) >= 4 for s in subset_features) else None,
            key=FAILURE_KEY,
            n_null=config.n_null,
            random_state=rs,
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
            "agreement": agree,
            "null": null,
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
                over_best = s.get("lift_over_best_fixed", {}).get(strategy)
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
                        "minus_best_fixed": None if over_best is None else over_best["value"],
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
        rows = [{"predictor": "features (F1-F3)", **_acc_row(topo["classifier"])}]
        rows.append({"predictor": "majority class (share)", **_acc_row(topo["majority"])})
        rows.append({"predictor": "training-fold majority", **_acc_row(topo["majority_in_folds"])})
        for key, name in (
            ("failure_rate_only", "failure rate only (one number per model)"),
            ("features_plus_failure_rate", "features + failure rate (nested)"),
            ("model_centroid", "per-model feature centroid"),
            ("text_baseline", "text baseline (TF-IDF)"),
        ):
            if topo.get(key):
                rows.append({"predictor": name, **_acc_row(topo[key])})
        rows += _gain_rows(topo.get("beyond_failure_rate"), "")
        null = topo.get("null") or {}
        rows.append(
            {
                "predictor": f"null: methods permuted across models ({null.get('n_permutations')})",
                "accuracy_mean": null.get("mean"),
                "accuracy_std": null.get("std"),
                "high": null.get("q95"),
            }
        )
        seed = topo.get("seed_as_label")
        if seed:
            rows.append(
                {
                    "predictor": f"seed-as-label null: training seed, leave-one-method-out "
                    f"(chance {seed['chance'] * 100:.1f} %)",
                    **_acc_row(seed),
                }
            )
        for name, res in topo["ablations"].items():
            if name != "features":
                rows.append({"predictor": name, **_acc_row(res)})
        rows.append(
            {
                "predictor": "paper (its models)",
                "accuracy_mean": PAPER["topography_accuracy"]["mean"],
                "accuracy_std": PAPER["topography_accuracy"]["std"],
            }
        )
        for matched in topo.get("matched") or ():
            rows += _matched_rows(matched)
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
    """The headline figures, each beside its control (what ``fixable analyze`` prints)."""
    lines = [
        f"- failures: {result['data']['n_failures']} across {len(result['data']['models'])} models"
    ]
    routing = result.get("routing")
    if routing:
        for subset in ("all", "steerable-hard"):
            block = routing["subsets"].get(subset, {})
            if not block.get("n"):
                continue
            lift = block["lift"]["best_fixed"]
            over = block["lift_over_best_fixed"]
            lines.append(
                f"- routing lift over best fixed, {subset} (n={block['n']}, scoring part, "
                f"budget {routing['budget_samples']:g}): {_pts(lift['value'])} "
                f"[{_pts(lift['low'])}, {_pts(lift['high'])}] points; within-model shuffled "
                f"routes {_pts(over['shuffled_within_model']['value'])}, random with the "
                f"router's shares {_pts(over['random_shares']['value'])}, router charged for "
                f"F3 {_pts(over['routed_charged']['value'])}"
                + (
                    f" (paper: +{PAPER['routing_lift_steerable_hard'] * 100:.1f})"
                    if subset == "steerable-hard"
                    else ""
                )
            )
    if result.get("topography"):
        topo = result["topography"]
        acc = topo["classifier"]["accuracy"]
        null = topo.get("null") or {}
        fr = (topo.get("failure_rate_only") or {}).get("accuracy", {}).get("mean")
        lines.append(
            f"- topography on held-out models: {acc['mean'] * 100:.1f} ± {acc['std'] * 100:.1f} % "
            f"(majority {topo['majority']['accuracy']['mean'] * 100:.1f} %; failure rate only "
            f"{'n/a' if fr is None else f'{fr * 100:.1f} %'}; permuted-methods null "
            f"{null.get('mean', float('nan')) * 100:.1f} %, p = {null.get('p_value', float('nan')):.2f}; "
            f"paper: {topography_text()})"
        )
        lines += _topography_nested_lines(topo)
        seed = topo.get("seed_as_label")
        if seed:
            lines.append(
                f"- seed-as-label null (training seed, leave-one-method-out): "
                f"{seed['accuracy']['mean'] * 100:.1f} % [{seed['interval']['low'] * 100:.1f}, "
                f"{seed['interval']['high'] * 100:.1f}] vs chance {seed['chance'] * 100:.1f} % "
                f"({'at chance' if seed['at_chance'] else 'NOT at chance'})"
            )
    gmm = (result.get("regimes") or {}).get("gmm")
    if gmm and gmm.get("agreement", {}).get("nmi") is not None:
        a, null = gmm["agreement"], gmm.get("null", {})
        lines.append(
            f"- regimes (GMM, k={gmm['n_regimes']}): NMI with labels {a['nmi']:.3f} "
            f"(permuted-feature null {_num(null.get('nmi', {}).get('mean'))}); purity "
            f"{a['purity']:.3f} vs majority share {a['majority_share']:.3f}"
        )
    for stage, why in result.get("skipped", {}).items():
        lines.append(f"- {stage} skipped: {why}")
    return "\n".join(lines)


def _gain_rows(beyond: dict | None, prefix: str) -> list[dict]:
    """The nested comparison's gain (features + failure rate minus failure rate only) as
    a topography table row."""
    if not beyond:
        return []
    gain = beyond["gain"]
    return [
        {
            "predictor": f"{prefix}gain of features + failure rate over failure rate only "
            f"(better on {beyond['models_better']}, worse on {beyond['models_worse']} "
            "held-out models)",
            "accuracy_mean": gain["value"],
            "low": gain["low"],
            "high": gain["high"],
        }
    ]


def _matched_rows(matched: dict | None) -> list[dict]:
    """The accuracy-matched view's rows of the topography table."""
    if not matched or matched.get("skipped"):
        return []
    prefix = f"matched ({', '.join(matched['methods'])}): "
    rows = [{"predictor": f"{prefix}features (F1-F3)", **_acc_row(matched["classifier"])}]
    rows.append({"predictor": f"{prefix}majority class (share)", **_acc_row(matched["majority"])})
    rows.append(
        {"predictor": f"{prefix}training-fold majority", **_acc_row(matched["majority_in_folds"])}
    )
    for key, name in (
        ("failure_rate_only", "failure rate only"),
        ("features_plus_failure_rate", "features + failure rate (nested)"),
    ):
        if matched.get(key):
            rows.append({"predictor": f"{prefix}{name}", **_acc_row(matched[key])})
    rows += _gain_rows(matched.get("beyond_failure_rate"), prefix)
    null = matched["null"]
    rows.append(
        {
            "predictor": f"{prefix}null: methods permuted across models ({null['n_permutations']})",
            "accuracy_mean": null["mean"],
            "accuracy_std": null["std"],
            "high": null["q95"],
        }
    )
    return rows


def _topography_nested_lines(topo: dict) -> list[str]:
    """Summary lines of the nested comparison and the accuracy-matched view."""
    lines = []

    def nested(section: dict, where: str) -> None:
        both, rate = section.get("features_plus_failure_rate"), section.get("failure_rate_only")
        beyond = section.get("beyond_failure_rate")
        if not (both and rate and beyond):
            return
        g = beyond["gain"]
        lines.append(
            f"- {where}features + failure rate {both['accuracy']['mean'] * 100:.1f} % vs failure "
            f"rate only {rate['accuracy']['mean'] * 100:.1f} %: gain {_pts(g['value'])} "
            f"[{_pts(g['low'])}, {_pts(g['high'])}] points over {rate['n_models']} held-out "
            f"models ({beyond['verdict']})"
        )

    nested(topo, "nested: ")
    for matched in topo.get("matched") or ():
        if matched.get("skipped"):
            lines.append(
                f"- accuracy-matched view ({', '.join(matched['methods'])}) skipped: "
                f"{matched['skipped']}"
            )
            continue
        acc, null = matched["classifier"]["accuracy"], matched["null"]
        lines.append(
            f"- accuracy-matched methods ({', '.join(matched['methods'])}; {matched['n_models']} "
            f"models, {matched['n_failures']} failures): features {acc['mean'] * 100:.1f} ± "
            f"{acc['std'] * 100:.1f} % (majority {matched['majority']['accuracy']['mean'] * 100:.1f} "
            f"%; permuted-methods null {null['mean'] * 100:.1f} %, p = {null['p_value']:.2f})"
        )
        nested(matched, f"accuracy-matched ({', '.join(matched['methods'])}): ")
    return lines


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _pts(x) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}"

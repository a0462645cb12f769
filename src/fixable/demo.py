"""The whole study as one call: probe, rescue sweep, analysis (with transfer) and report
on the shipped zoo, written to one run directory — what ``fixable demo`` runs.

``run_demo(DemoConfig(...), out)`` samples every model with the organism backend through
``fixable.sampling`` (so an interrupted demo resumes by key: re-running it continues
where it stopped and never samples a key twice), then runs ``fixable.analysis`` over the
run and writes the report with ``fixable.report``. Three presets ship: ``DEMO`` (the
default: both families, all four post-training methods, minutes on a laptop), ``QUICK``
(the same pipeline, smaller) and the run files under ``studies/`` — ``studies/full.toml``
is the paper-scale study, where problems are added until every model has at least
``min_failures`` failures.

A run file is TOML with the fields of ``DemoConfig``; ``[task_options]``,
``[backend_options]`` and ``[analysis]`` (fields of ``AnalysisConfig``, thresholds as
``[analysis.thresholds]``) are tables. The resolved configuration is stored in the run's
manifest under ``"demo"``, so ``fixable demo --config RUN`` reproduces a run.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixable.config import RunConfig
from fixable.errors import ConfigError, FixableError

logger = logging.getLogger(__name__)

# Settings sampled in the rescue sweep. ``checkpoint(c=first)`` is the earliest
# intermediate checkpoint of each model's own post-training run (see _concrete).
DEFAULT_INTERVENTIONS = (
    "retry",
    "temperature(T=0.3)",
    "temperature(T=0.6)",
    "temperature(T=1.3)",
    "mix(alpha=0.5)",
    "checkpoint(c=first)",
)
_ANALYSIS_TABLE = "analysis"
# the fields a study shares with fixable.config.RunConfig: their defaults and checks
_RUN_FIELDS = (
    "task",
    "task_options",
    "problems",
    "problem_seed",
    "split",
    "k",
    "r",
    "interventions",
    "seed",
    "max_tokens",
    "batch_size",
    "backend",
    "backend_options",
)


@dataclass(frozen=True)
class DemoConfig:
    """What the demo samples and analyses; stored resolved in the run's manifest.

    A study is a ``fixable.config.RunConfig`` (what ``fixable sample --phase sweep`` would
    sample: ``run_config``) plus an ``AnalysisConfig`` (the ``[analysis]`` table:
    ``analysis_config``), and three fields of its own: which zoo models (``seeds``) and how
    many problems (``min_failures``, ``max_problems``). The sampling fields take their
    defaults and their checks from ``RunConfig``; only where the demo's choice differs
    (``problems``, ``interventions``, ``batch_size``) is it stated here."""

    models: tuple[str, ...] = ()  # zoo models; empty: every post-trained model with seed in `seeds`
    seeds: tuple[int, ...] = (0,)  # which training seeds of each method (when models is empty)
    task: str = RunConfig.task  # registry name of the task
    task_options: dict = field(default_factory=dict)  # passed to the task's constructor
    problems: int = 240  # problems probed per model (the first round when min_failures is set)
    min_failures: int | None = None  # probe more problems until each model has this many failures
    max_problems: int | None = None  # ... but never more than this many problems per model
    problem_seed: int = RunConfig.problem_seed  # which problems a generated task draws
    split: str = RunConfig.split  # the task split problems come from (never the training split)
    k: int = RunConfig.k  # probe rollouts per problem
    # rescue rollouts per failed problem and setting: even sample indices label, odd score
    r: int = RunConfig.r
    interventions: tuple[str, ...] = DEFAULT_INTERVENTIONS  # the rescue grid
    seed: int = RunConfig.seed  # run seed: every rollout's seed derives from it and its key
    max_tokens: int = RunConfig.max_tokens  # longest completion, in tokens
    batch_size: int = 512  # requests per backend call (results do not depend on it)
    backend: str = RunConfig.backend  # registry name of the engine
    backend_options: dict = field(default_factory=dict)  # passed to the backend's constructor
    # fields of fixable.analysis.pipeline.AnalysisConfig (its defaults where not given)
    analysis: dict = field(default_factory=dict)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        models = (self.models,) if isinstance(self.models, str) else tuple(self.models or ())
        set_("models", tuple(str(m) for m in models))
        seeds = (self.seeds,) if isinstance(self.seeds, int) else tuple(self.seeds or ())
        set_("seeds", tuple(_count("seeds", s, 0) for s in seeds))
        if not self.models and not self.seeds:
            raise ConfigError(
                "seeds must name at least one training seed (e.g. [0]) when models is empty"
            )
        if not isinstance(self.analysis, Mapping):
            raise ConfigError(f"analysis must be a table of name = value, got {self.analysis!r}")
        set_("analysis", dict(self.analysis))
        if isinstance(self.interventions, str):
            set_("interventions", (self.interventions,))
        # the sampling fields: RunConfig's checks and normal forms (the zoo's models are
        # chosen when the demo runs; a stand-in name lets RunConfig check the rest now)
        run = self.run_config(self.models or ("zoo",))
        for name in _RUN_FIELDS:
            set_(name, getattr(run, name))
        if self.problems is None:
            raise ConfigError("problems must be an integer, got None")
        if self.min_failures is not None:
            set_("min_failures", _count("min_failures", self.min_failures, 1))
        if self.max_problems is not None:
            set_("max_problems", _count("max_problems", self.max_problems, self.problems))
        set_("k", _count("k", self.k, 2))  # answer dispersion needs at least two probes
        if "retry" not in self.interventions:
            raise ConfigError(
                f"interventions must include retry (the budget's unit and the resamplable test), got {list(self.interventions)}"
            )
        self.analysis_config()  # validate now, not after an hour of sampling

    def run_config(self, models: Sequence[str] | None = None, **changes: Any) -> RunConfig:
        """The sampling half of the study: the ``RunConfig`` of a sweep of ``models``
        (default: ``models``, or the zoo models ``demo_models`` chooses)."""
        fields = {name: getattr(self, name) for name in _RUN_FIELDS}
        if isinstance(fields["interventions"], str):
            fields["interventions"] = (fields["interventions"],)
        if fields["interventions"] == ():
            raise ConfigError("interventions must include retry, got []")
        return RunConfig(
            models=tuple(models) if models else tuple(demo_models(self)),
            phase="sweep",
            **(fields | changes),
        )

    def analysis_config(self):
        """The ``AnalysisConfig`` of the ``[analysis]`` table."""
        from fixable.analysis.labels import LabelThresholds
        from fixable.analysis.pipeline import AnalysisConfig

        options = dict(self.analysis)
        known = {f.name for f in dataclasses.fields(AnalysisConfig)}
        for name in options:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"unknown analysis field {name!r}.{hint} Known: {', '.join(sorted(known))}"
                )
        thresholds = options.pop("thresholds", None)
        try:
            if isinstance(thresholds, Mapping):
                options["thresholds"] = LabelThresholds(**thresholds)
            elif isinstance(thresholds, str):
                options["thresholds"] = LabelThresholds.parse(thresholds)
            return AnalysisConfig(**options)
        except TypeError as e:
            raise ConfigError(f"analysis: {e}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in ("models", "seeds", "interventions"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "configuration") -> DemoConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        for name in d:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise ConfigError(f"{source}: unknown field {name!r}.{hint}")
        try:
            return cls(**d)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> DemoConfig:
        return dataclasses.replace(self, **changes)


def study_defaults() -> dict:
    """Every field of a study file with its default, ``analysis`` holding those of
    ``AnalysisConfig``: what ``fixable demo --help`` shows."""
    from fixable.analysis.pipeline import AnalysisConfig

    defaults = DemoConfig().to_dict()
    defaults["analysis"] = AnalysisConfig().to_dict()
    return defaults


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")
    return value


# The default demo: seed-0 models of both families and all four methods; a few minutes of
# sampling per model on two CPU cores. QUICK is the same pipeline at a smaller scale.
DEMO = DemoConfig()
QUICK = DemoConfig(
    problems=64,
    k=8,
    r=16,
    interventions=(
        "retry",
        "temperature(T=0.3)",
        "temperature(T=1.3)",
        "mix(alpha=0.5)",
        "checkpoint(c=first)",
    ),
    analysis={"n_boot": 200, "n_seeds": 3, "stability_boot": 10},
)


# The planted testbed (docs/organism.md), the demo's positive control: models whose
# failures follow mechanisms planted per problem key, on ``chains-planted``, with one
# setting of the grid aimed at each mechanism; routed by the natural zoo's frozen
# thresholds (nothing fitted on a planted model) and scored against the planted truth.
# studies/planted.toml is the study at full scale; these are the demo's smaller versions
# (the same models, task and grid; a test checks).
PLANTED_MODELS = (
    "llama-planted-bal",
    "llama-planted-half",
    "llama-planted-most",
    "llama-planted-single",
    "gpt-planted-bal",
    "gpt-planted-single",
)
PLANTED_GRID = (
    "retry",
    "temperature(T=0.3)",
    "temperature(T=0.6)",
    "temperature(T=1.3)",
    "mix(alpha=0.5)",
    "checkpoint(c=step-300)",
    "dola(layer=2)",
)
PLANTED_ANALYSIS = {"frozen_router": "shipped", "truth": "key", "learned_router": True}
PLANTED = DemoConfig(
    models=PLANTED_MODELS,
    task="chains-planted",
    problems=120,
    r=16,
    interventions=PLANTED_GRID,
    max_tokens=80,
    analysis=PLANTED_ANALYSIS,
)
PLANTED_QUICK = PLANTED.replace(
    models=("llama-planted-bal", "gpt-planted-bal"),
    problems=40,
    r=8,
    analysis={**PLANTED_ANALYSIS, "n_boot": 200, "stability_boot": 5},
)


def control_dir(out: str | Path) -> Path:
    """Where the demo's positive control (the planted testbed) is written: beside ``out``."""
    out = Path(out)
    return out.with_name(f"{out.name}-planted")


def load_config(source: str | Path) -> DemoConfig:
    """A DemoConfig from a TOML run file, a run directory or its manifest.json (reproduce)."""
    from fixable.config import tomllib

    path = Path(source)
    if path.is_dir():
        path = path / "manifest.json"
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read demo run file {path}: {e.strerror or e}") from None
    if path.suffix == ".json":
        try:
            manifest = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {e.lineno}: not valid JSON: {e.msg}") from None
        demo = manifest.get("demo") if isinstance(manifest, dict) else None
        if not demo or "config" not in demo:
            raise ConfigError(
                f"{path} records no demo configuration (was it written by `fixable demo`?)"
            )
        return DemoConfig.from_dict(demo["config"], source=str(path))
    try:
        fields = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    try:
        return DemoConfig.from_dict(fields, source=str(path))
    except ConfigError as e:
        # point at the line that sets the field, when the message names one
        from fixable.config import _line_of

        for name in fields:
            if f"{name} " in str(e) or f"{name!r}" in str(e):
                line = _line_of(text, name)
                if line is not None:
                    raise ConfigError(f"{e} (line {line})") from None
        raise


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class DemoEvent:
    """Where the demo stands; passed to the ``progress`` callback."""

    stage: str  # "sample", "analysis", "report" or "done"
    model: str | None = None
    index: int = 0  # 1-based index of the model being sampled
    n_models: int = 0
    sampling: Any = None  # a fixable.sampling.Progress during "sample"
    detail: str = ""  # what is happening ("probe round 2: 480 problems", a figure's name …)


@dataclass
class DemoResult:
    """What ``run_demo`` did and where it put it."""

    run: Path
    config: DemoConfig
    models: list[str]
    failures: dict[str, int]  # per model: failures that reached the analysis
    problems: dict[str, int]  # per model: problems probed
    report: Path
    summary: dict
    seconds: dict[str, float]  # wall time per stage


# --------------------------------------------------------------------------- the pipeline


def demo_models(config: DemoConfig) -> list[str]:
    """The models to study: ``config.models``, or every post-trained zoo model whose
    training seed is in ``config.seeds`` (both families, the four methods of
    ``zoo.DEMO_METHODS``; the planted testbed, which needs its own task, and broad SFT,
    built for the fair topography zoo, are left out)."""
    if config.models:
        return list(config.models)
    from fixable.organism import zoo

    present = zoo.list_models()
    chosen = []
    for name in present:
        info = _zoo_info(name)
        if info.get("method") not in zoo.DEMO_METHODS:  # not bases, planted, broad SFT
            continue
        if info.get("seed") in config.seeds:
            chosen.append(name)
    if not chosen:
        have = ", ".join(present) or "nothing"
        raise ConfigError(
            f"no post-trained zoo models with seed in {list(config.seeds)} (the zoo holds {have}); "
            "build the zoo with `fixable zoo build`"
        )
    return chosen


def _zoo_info(name: str) -> dict:
    from fixable.organism import zoo

    try:
        card = zoo.card(name)
    except (FixableError, KeyError, FileNotFoundError, ValueError):
        parts = name.split("-")  # zoo names are family-method-sSEED
        seed = parts[2][1:] if len(parts) == 3 and parts[2][1:].isdigit() else None
        return {
            "family": parts[0],
            "method": parts[1] if len(parts) > 1 else None,
            "seed": int(seed) if seed is not None else None,
        }
    return {k: card.get(k) for k in ("family", "method", "seed")}


def _grid(labels: Sequence[str]) -> list:
    from fixable.interventions import parse_intervention

    return [parse_intervention(label) for label in labels]


def _concrete(intervention, model: str, checkpoints: Callable[[str], Mapping[str, Path]]):
    """``checkpoint(c=first)`` / ``checkpoint(c=last)`` → the earliest / latest intermediate
    checkpoint of ``model``'s own run; every other intervention as it is. One grid then
    serves models whose runs saved checkpoints at different steps, and the setting label
    in the store stays the same for every model, which the rescue matrix needs."""
    from fixable.interventions import SYMBOLIC_CHECKPOINTS, resolve_checkpoint

    if intervention.kind != "checkpoint" or intervention.value not in SYMBOLIC_CHECKPOINTS:
        return intervention
    # zoo.checkpoints lists them by step
    return resolve_checkpoint(intervention, list(checkpoints(model) or {}), model=model)


class CheckpointAlias:
    """Wraps a backend so that ``checkpoint(c=first|last)`` samples the model's concrete
    checkpoint while the rollouts keep the symbolic label (every other call passes through)."""

    def __init__(self, backend, checkpoints: Callable[[str], Mapping[str, Path]]):
        self._backend = backend
        self._checkpoints = checkpoints
        self.name = backend.name
        self.capabilities = backend.capabilities

    def __getattr__(self, name):
        if name.startswith("__") or name == "_backend":  # unpickling a copy (worker processes)
            raise AttributeError(name)
        return getattr(self._backend, name)

    @property
    def model_name(self) -> str:
        return self._backend.model_name

    def generate(self, requests, intervention):
        return self._backend.generate(
            requests, _concrete(intervention, self.model_name, self._checkpoints)
        )

    def score(self, prompts, completions, *, which: str = "policy"):
        return self._backend.score(prompts, completions, which=which)

    def identity(self) -> dict:
        """The wrapped backend's identity plus what each symbolic checkpoint stands for."""
        ident = getattr(self._backend, "identity", None)
        out = dict(ident()) if callable(ident) else {}
        available = list(self._checkpoints(self.model_name) or {})
        if available:
            out["checkpoint_aliases"] = {"first": available[0], "last": available[-1]}
        return out


def _default_backend_factory(config: DemoConfig) -> Callable[[str], Any]:
    from fixable.registry import backends

    def make(model: str):
        return backends.create(config.backend, model, **config.backend_options)

    return make


def _zoo_checkpoints(model: str) -> Mapping[str, Path]:
    from fixable.organism import zoo

    return zoo.checkpoints(model)


# the fields whose change changes the rollouts: a run made with other values is not resumed
_CONTENT = (
    "task",
    "task_options",
    "problem_seed",
    "split",
    "k",
    "r",
    "seed",
    "max_tokens",
    "backend",
)


def _record(run, config: DemoConfig, command: str | None) -> None:
    """Store the configuration in the manifest; ``Run.record_study`` refuses resuming a
    run made with another one."""
    run.record_study("demo", config.to_dict(), content=_CONTENT, command=command)


def _probe_until_enough(
    backend, task, problems_all, run, config, model, progress, emit, executor=None
) -> list:
    """Probe the first ``config.problems`` problems, then more, until ``model`` has
    ``min_failures`` failures or ``max_problems`` problems; returns the problems probed."""
    from fixable.protocol import failed_problems
    from fixable.sampling import PROBE, sample

    n = config.problems
    options = dict(
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        config=config.to_dict(),
        progress=progress,
        executor=executor,
    )
    round_ = 1
    while True:
        chosen = problems_all[:n]
        emit(f"probe round {round_}: {n} problems")
        sample(backend, task, chosen, run, phase=PROBE, n=config.k, run_seed=config.seed, **options)
        failed = failed_problems(run, backend.model_name, [p.id for p in chosen], k=config.k)
        cap = config.max_problems or len(problems_all)
        if config.min_failures is None or len(failed) >= config.min_failures or n >= cap:
            if config.min_failures is not None and len(failed) < config.min_failures:
                logger.warning(
                    "%s: %d failures in %d problems (max_problems), fewer than min_failures=%d",
                    model,
                    len(failed),
                    n,
                    config.min_failures,
                )
            return chosen
        # grow in proportion to the failure rate seen so far, with 10 % to spare
        rate = max(len(failed), 1) / n
        n = min(cap, max(n + 1, math.ceil(config.min_failures / rate * 1.1)))
        round_ += 1


def run_demo(
    config: DemoConfig = DEMO,
    out: str | Path = "runs/demo",
    *,
    backend_factory: Callable[[str], Any] | None = None,
    model_info: Mapping[str, Mapping] | None = None,
    checkpoints: Callable[[str], Mapping[str, Path]] | None = None,
    report: bool = True,
    command: str | None = None,
    threads: int | None = 1,
    workers: int = 1,
    progress: Callable[[DemoEvent], None] | None = None,
    control: DemoConfig | None = None,
) -> DemoResult:
    """Probe, rescue sweep, analysis (with transfer) and report, resumable by key.

    Args:
        config: what to sample and analyse (``DEMO``, ``QUICK`` or ``load_config(file)``).
        out: the run directory; an existing one made with the same configuration resumes.
        backend_factory: model name → backend (default: ``config.backend`` from the registry).
        model_info: family/method/seed per model for models the zoo has no card for.
        checkpoints: model → its intermediate checkpoints (default: the zoo's).
        report: write report.html, figures and summary.json at the end.
        command: the command line recorded in the manifest (for the report's provenance).
        threads: torch threads while the demo runs (None: leave torch's setting). The zoo
            models are 64 wide: one thread is fastest, and several threads on a busy
            machine are many times slower (docs/demo.md has the measurement). Results
            do not depend on it.
        workers: sampling processes (``fixable.executors.ProcessExecutor``), each with
            ``threads`` torch threads (one if None); ``fixable demo`` uses two on a machine
            with two cores or more. Results do not depend on it: each process samples whole
            units with its own copy of the backend, and a rollout's tokens are a function of
            its key. More than one needs a backend that can be pickled.
        progress: called with a ``DemoEvent`` as the demo goes.
        control: a known-truth study (``PLANTED``, ``PLANTED_QUICK``) run first through
            the same pipeline into ``control_dir(out)`` and shown in the report as its
            positive control; None: none.
    """
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    executor = None
    if workers > 1:
        from fixable.executors import ProcessExecutor

        executor = ProcessExecutor(workers, threads=threads or 1)
    try:
        control_run = None
        if control is not None:
            control_run = control_dir(out)
            _run_demo(
                control,
                control_run,
                backend_factory,
                model_info,
                checkpoints,
                False,
                command,
                progress or (lambda event: None),
                executor,
            )
        return _run_demo(
            config,
            Path(out),
            backend_factory,
            model_info,
            checkpoints,
            report,
            command,
            progress or (lambda event: None),
            executor,
            control_run,
        )
    finally:
        if executor is not None:
            executor.close()
        torch.set_num_threads(previous_threads)


def _run_demo(
    config,
    out,
    backend_factory,
    model_info,
    checkpoints,
    report,
    command,
    emit,
    executor=None,
    control_run: Path | None = None,
) -> DemoResult:
    from fixable.analysis.pipeline import analyze, load_runs, write_analysis
    from fixable.backends.base import check_capabilities
    from fixable.protocol import rescue_failures
    from fixable.store import Run

    seconds: dict[str, float] = {}
    started = time.monotonic()
    models = demo_models(config)
    task = _build_task(config)
    # with min_failures, problems are drawn up to max_problems and probed a prefix at a time
    # (a generated task's first n problems are the same whatever n is asked for)
    n_drawn = (
        config.max_problems or config.problems * 20 if config.min_failures else config.problems
    )
    problems_all = task.problems(n_drawn, seed=config.problem_seed, split=config.split)
    run = Run.create(out)
    _record(run, config, command)
    if control_run is not None:  # the report shows it as the positive control
        run.update_manifest(
            lambda m: m["demo"].__setitem__("positive_control", str(Path(control_run).resolve()))
        )
    factory = backend_factory or _default_backend_factory(config)
    checkpoints = checkpoints or _zoo_checkpoints
    problems_per_model: dict[str, int] = {}
    failures: dict[str, int] = {}

    for index, model in enumerate(models, 1):

        def forward(p, model=model, index=index):
            emit(DemoEvent("sample", model, index, len(models), sampling=p))

        def note(detail: str, model=model, index=index):
            emit(DemoEvent("sample", model, index, len(models), detail=detail))

        backend = CheckpointAlias(factory(model), checkpoints)
        try:
            grid = _grid(config.interventions)
            check_capabilities(backend, grid)
            for intervention in grid:  # a symbolic checkpoint must exist before sampling starts
                _concrete(intervention, backend.model_name, checkpoints)
            chosen = _probe_until_enough(
                backend, task, problems_all, run, config, model, forward, note, executor
            )
            # the rescue half of fixable.protocol.sweep, over the failures of every round
            failed, _ = rescue_failures(
                backend,
                task,
                chosen,
                run,
                k=config.k,
                r=config.r,
                interventions=grid,
                run_seed=config.seed,
                progress=forward,
                on_failed=lambda ids, grid=grid: note(
                    f"rescue sweep: {len(ids)} failures x {len(grid)} settings x {config.r}"
                ),
                max_tokens=config.max_tokens,
                batch_size=config.batch_size,
                config=config.to_dict(),
                executor=executor,
            )
        finally:
            close = getattr(backend._backend, "close", None)
            if callable(close):
                close()
        problems_per_model[backend.model_name] = len(chosen)
        failures[backend.model_name] = len(failed)
    seconds["sampling"] = time.monotonic() - started

    t = time.monotonic()
    emit(DemoEvent("analysis", detail="features, labels, regimes, routing, topography, transfer"))
    info = {m: _zoo_info(m) for m in models if not (model_info and m in model_info)}
    info.update(model_info or {})
    table, sources = load_runs([out])
    analysis = analyze(
        table,
        model_info=info,
        config=config.analysis_config(),
        sources=sources,
        progress=lambda stage: emit(DemoEvent("analysis", detail=stage)),
    )
    write_analysis(analysis, out)
    seconds["analysis"] = time.monotonic() - t

    report_path = out / "report.html"
    summary: dict = {}
    if report:
        from fixable.report import build_report

        t = time.monotonic()
        files = build_report(
            out,
            model_info=info,
            analysis_config=config.analysis_config(),
            progress=lambda stage: emit(DemoEvent("report", detail=stage)),
        )
        report_path = files.html
        summary = json.loads(files.summary.read_text())
        seconds["report"] = time.monotonic() - t
    else:
        from fixable.report.summary import build_summary

        summary = build_summary(analysis.result, run=str(out.resolve()))
    seconds["total"] = time.monotonic() - started
    run.update_manifest(lambda m: m["demo"].__setitem__("seconds", seconds))
    emit(DemoEvent("done", detail=str(report_path)))
    return DemoResult(
        out, config, models, failures, problems_per_model, report_path, summary, seconds
    )


def _build_task(config: DemoConfig):
    from fixable.tasks import get_task

    try:
        return get_task(config.task, **config.task_options)
    except TypeError as e:
        raise ConfigError(f"task_options for {config.task!r}: {e}") from None


# --------------------------------------------------------------------------- headline table


def headline_table(summary: dict) -> list[tuple[str, str, str, str]]:
    """(figure, ours with its interval, its control or null, the paper's) rows for the end
    of the demo (protocol v2: every figure beside its control)."""
    from fixable.analysis.paper import PAPER, topography_text

    rows = {row["id"]: row for row in summary.get("headline", [])}
    paper = summary.get("paper") or PAPER

    def pct(x):
        return "n/a" if x is None else f"{x * 100:.1f} %"

    def pts(x):
        return "n/a" if x is None else f"{x * 100:+.1f}"

    def num(x):
        return "n/a" if x is None else f"{x:.2f}"

    out = []
    topo = rows.get("topography_accuracy") or {}
    if topo.get("value") is not None:
        c = topo.get("controls") or {}
        ours = f"{pct(topo['value'])} ± {pct(topo.get('std'))} [{pct(topo.get('low'))}, {pct(topo.get('high'))}]"
        control = (
            f"majority {pct(c.get('majority_class'))}, failure rate only "
            f"{pct(c.get('failure_rate_only'))}, model centroid {pct(c.get('model_centroid'))}, "
            f"text {pct(c.get('text_baseline'))}, permuted-methods null "
            f"{pct(c.get('null_methods_permuted_mean'))} (p = {num(c.get('null_p_value'))})"
        )
        if c.get("seed_as_label") is not None:
            control += (
                f", seed-as-label null {pct(c['seed_as_label'])} "
                f"(chance {pct(c.get('seed_as_label_chance'))})"
            )
    else:
        ours, control = f"not computed: {topo.get('skipped', 'no topography')}", "–"
    out.append(
        (
            "topography, held-out models",
            ours,
            control,
            f"{topography_text(paper)} (+{paper['topography_accuracy']['over_majority'] * 100:.0f} over majority)",
        )
    )
    for row_id, name, ref in (
        ("routing_lift_all_vs_best_fixed", "routing lift vs best fixed, all", "–"),
        (
            "routing_lift_steerable_hard_vs_best_fixed",
            "routing lift vs best fixed, steerable-hard",
            f"+{paper['routing_lift_steerable_hard'] * 100:.1f} points",
        ),
    ):
        lift = rows.get(row_id) or {}
        if lift.get("value") is not None:
            c = lift.get("controls") or {}
            ours = f"{pts(lift['value'])} points [{pts(lift.get('low'))}, {pts(lift.get('high'))}], n={lift.get('n')}"
            control = (
                f"shuffled within model {pts(c.get('shuffled_within_model'))}, random with "
                f"router's shares {pts(c.get('random_with_router_shares'))}, router charged "
                f"for F3 {pts(c.get('router_charged_for_scoring'))}"
            )
        else:
            ours, control = f"not computed: {lift.get('skipped', 'no routing')}", "–"
        out.append((name, ours, control, ref))
    for row_id, name in (
        ("learned_router_lift_all_vs_best_fixed", "learned router vs best fixed, all"),
        (
            "learned_router_lift_steerable_hard_vs_best_fixed",
            "learned router vs best fixed, steerable-hard",
        ),
        ("free_router_lift_all_vs_best_fixed", "free router (F1, F2) vs best fixed, all"),
        (
            "free_router_lift_steerable_hard_vs_best_fixed",
            "free router (F1, F2) vs best fixed, steerable-hard",
        ),
    ):
        lift = rows.get(row_id) or {}
        if lift.get("value") is not None:  # only when the analysis evaluated it
            c = lift.get("controls") or {}
            charged = (
                f", charged for F3 {pts(c.get('router_charged_for_scoring'))}"
                if row_id.startswith("learned")
                else " (charged nothing: reads no F3)"
            )
            refit = c.get("interval_with_router_refitted")
            refit = (
                f"; refitted in the bootstrap [{pts(refit[0])}, {pts(refit[1])}]" if refit else ""
            )
            out.append(
                (
                    name,
                    f"{pts(lift['value'])} points [{pts(lift.get('low'))}, "
                    f"{pts(lift.get('high'))}], n={lift.get('n')}",
                    f"shuffled within model {pts(c.get('shuffled_within_model'))}{charged}{refit}",
                    "–",
                )
            )
    gap = rows.get("oracle_gap_closed_all") or {}
    if gap.get("value") is not None:
        out.append(
            (
                "oracle gap closed (all failures)",
                f"{pct(gap['value'])} [{pct(gap.get('low'))}, {pct(gap.get('high'))}]",
                "0 % = retry, 100 % = oracle chosen on the labelling part",
                "–",
            )
        )
    for row_id, name in (
        ("regime_nmi_gmm", "regimes: NMI with labels"),
        ("regime_purity_gmm", "regimes: purity"),
        ("regime_probe_split_ari_gmm", "regimes: probe-split ARI"),
    ):
        row = rows.get(row_id)
        if row and row.get("value") is not None:
            c = row.get("controls") or {}
            control = f"permuted-feature null {num(c.get('null_permuted_features_mean'))}"
            if "majority_label_share" in c:
                control += f", majority label share {num(c.get('majority_label_share'))}"
            out.append((name, num(row["value"]), control, "–"))
    for row_id, row in rows.items():
        if row_id.startswith("transfer_topography_") and row.get("value") is not None:
            out.append(
                (
                    f"topography {row['name'].split(', ', 1)[1]}",
                    f"{pct(row['value'])} [{pct(row.get('low'))}, {pct(row.get('high'))}]",
                    f"majority {pct((row.get('controls') or {}).get('majority_share'))}",
                    "transfers across families",
                )
            )
    shares = [
        rows.get(f"share_{r}")
        for r in ("resamplable", "steerable-hard", "steerable-weak", "structural")
    ]
    if all(s and s.get("value") is not None for s in shares):
        certain = [(s.get("controls") or {}).get("certain_count") for s in shares]
        out.append(
            (
                "failures: resamplable / steer-hard / steer-weak / structural",
                " / ".join(f"{s['value'] * 100:.0f}" for s in shares) + " %",
                "certain labels: " + " / ".join("?" if c is None else str(c) for c in certain),
                "–",
            )
        )
    return out


def format_headline(summary: dict) -> str:
    rows = [
        ("", "this run (95 % CI)", "control / null (same protocol)", "paper (its models)"),
        *headline_table(summary),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def control_lines(control_run: str | Path) -> list[str]:
    """What the end of the demo prints of its positive control: per model, the router's lift
    over best fixed (all failures, steerable-hard) beside the within-model shuffled routes,
    and how well the regime labels and the router's choice recover the planted truth."""
    path = Path(control_run) / "analysis.json"
    if not path.is_file():
        return [f"positive control: no analysis at {path}"]
    result = json.loads(path.read_text())

    def pts(x):
        return "n/a" if x is None else f"{x * 100:+.1f}"

    lines = [
        "positive control (planted testbed, truth known before sampling; "
        f"{path}): router − best fixed, points [95 % CI] (shuffled within model)"
    ]
    per_model = ((result.get("routing") or {}).get("per_model")) or {}
    for model, entry in per_model.items():
        cells = []
        for subset in ("all", "steerable-hard"):
            block = (entry.get("subsets") or {}).get(subset) or {}
            over = block.get("lift_over_best_fixed") or {}
            lift = over.get("routed") or {}
            null = over.get("shuffled_within_model") or {}
            if not block.get("n"):
                cells.append(f"{subset}: none")
                continue
            cells.append(
                f"{subset} (n={block['n']}): {pts(lift.get('value'))} "
                f"[{pts(lift.get('low'))}, {pts(lift.get('high'))}] ({pts(null.get('value'))})"
            )
        lines.append(f"  {model}: " + "; ".join(cells))
    pooled = ((result.get("recovery") or {}).get("pooled")) or {}
    for column, name in (("label", "regime labels"), ("routed_setting", "router's choice")):
        block = pooled.get(column) or {}
        if block.get("nmi") is not None:
            lines.append(
                f"  truth recovered by the {name}: NMI {block['nmi']:.2f} "
                f"(null {block['null']['nmi_mean']:.2f}, p = {block['null']['p_value']:.3f})"
            )
    return lines

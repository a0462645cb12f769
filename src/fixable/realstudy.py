"""The real-model study in two steps: choose the benchmark slice from the bases' pass@1
alone (``fixable real select``), then study the post-trained variants on it
(``fixable real study``).

**Select.** A run file (``studies/real-select.toml``) names the base models, candidate
slices (a task and its options: GSM8K few-shot by number of solution steps, MATH-500 by
level, ...) and a band. Each base samples ``k`` rollouts at the default setting on
``problems`` problems of each slice, drawn from the slice's half 0 (``half=0``: the
records at even positions; the study probes half 1, so the choice never sees a problem
the study is scored on, nor any variant's sample, nor any rescue). The rule, fixed
before anything is measured: a slice qualifies when every base's pass@1 lies inside the
band (default 10–70 %); among those, the one whose base farthest from ``target`` is
nearest to it wins (ties: the earlier candidate). When none qualifies nothing is chosen:
``selection.json`` says so with every measurement, and the study refuses to start.

**Study.** ``studies/real.toml`` has the fields of ``fixable.demo.DemoConfig`` except
``task`` and ``task_options``, which come from ``selection.json`` (with ``half=1``). Each
variant (``fixable zoo build --real``) is sampled by the ``hf`` backend with its base as
the reference (for ``mix``), its chat-template setting, and its own intermediate
checkpoints for ``checkpoint(c=first)``; then ``fixable.demo.run_demo`` runs the probe,
the rescue sweep, the analysis with transfer across the two families, and the report.
Both steps resume by key.

Benchmark data: a task option ``path`` that is relative, or absent, is looked up under a
data root: ``--data DIR``, else the first ``shared/data`` found above the package or the
current directory (``gsm8k`` and ``math500`` directories, as in ``/work/shared/data``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixable.errors import ConfigError

logger = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
DATA_DIRS = {"gsm8k": "gsm8k", "math500": "math500", "cruxeval": "cruxeval"}  # task -> directory under the data root


@dataclass(frozen=True)
class Candidate:
    """One candidate slice: a task and its options (``half`` is set by the step)."""

    name: str
    task: str
    task_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SelectConfig:
    """What ``fixable real select`` measures; see the module docstring for the rule."""

    bases: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    problems: int = 48  # per slice, from its half 0
    k: int = 4  # rollouts per problem (pass@1 = mean share correct)
    max_tokens: int = 320
    seed: int = 0  # run seed (rollout seeds derive from it and the rollout's key)
    problem_seed: int = 0
    band: tuple[float, float] = (0.10, 0.70)
    target: float = 0.40
    batch_size: int = 512  # requests per backend call (results do not depend on it)
    backend_options: dict = field(default_factory=dict)  # hf options for every base
    base_options: dict = field(default_factory=dict)  # base -> extra hf options

    def __post_init__(self):
        if not self.bases:
            raise ConfigError("real select: bases must name at least one model")
        if not self.candidates:
            raise ConfigError("real select: at least one [[candidates]] table is needed")
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ConfigError(f"real select: candidate names repeat: {names}")
        low, high = self.band
        if not 0 <= low < high <= 1 or not low <= self.target <= high:
            raise ConfigError(
                f"real select: band must be 0 <= low < high <= 1 with target inside, got "
                f"band={list(self.band)}, target={self.target}"
            )
        for name in ("problems", "k", "max_tokens", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"real select: {name} must be a positive integer, got {value!r}")
        for c in self.candidates:
            if "half" in c.task_options:
                raise ConfigError(
                    f"real select: candidate {c.name!r} sets half; the steps set it "
                    "(select measures half 0, the study probes half 1)"
                )


def _fields_of(cls, data: Mapping, source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for name in data:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"{source}: unknown field {name!r}.{hint}")


def _read_toml(path: str | Path) -> dict:
    from fixable.config import tomllib

    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None


def load_select_config(path: str | Path) -> SelectConfig:
    data = _read_toml(path)
    _fields_of(SelectConfig, data, str(path))
    candidates = []
    for i, table in enumerate(data.pop("candidates", []) or []):
        _fields_of(Candidate, table, f"{path}: candidates[{i}]")
        if "name" not in table or "task" not in table:
            raise ConfigError(f"{path}: candidates[{i}] needs a name and a task")
        candidates.append(Candidate(**table))
    data["candidates"] = tuple(candidates)
    data["bases"] = tuple(data.get("bases") or ())
    if "band" in data:
        data["band"] = tuple(float(x) for x in data["band"])
    try:
        return SelectConfig(**data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{path}: {e}") from None


# --------------------------------------------------------------------------- data


def data_root(explicit: str | Path | None = None) -> Path | None:
    """``explicit``, else the first ``shared/data`` above the package or the current
    directory (None when there is none)."""
    if explicit is not None:
        return Path(explicit)
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def resolve_task_options(task: str, options: Mapping, root: Path | None) -> dict:
    """``options`` with ``path`` made absolute under the data root (filled in when absent
    for a task whose data the root holds)."""
    out = dict(options)
    path = out.get("path")
    if path is None and task in DATA_DIRS:
        path = DATA_DIRS[task]
    if path is None or Path(path).is_absolute():
        return out
    if root is None:
        raise ConfigError(
            f"task {task!r}: data path {path!r} is relative and no data root was found; "
            "pass --data DIR (a directory holding gsm8k/ and math500/)"
        )
    out["path"] = str((root / path).resolve())
    return out


# --------------------------------------------------------------------------- select


def pass_at_1(outcomes: Mapping[str, Mapping]) -> dict:
    """Mean per-problem share correct, its standard error over problems, and counts."""
    import statistics

    rates = [r["correct"] / r["n"] for r in outcomes.values() if r["n"]]
    if not rates:
        return {"value": None, "se": None, "problems": 0, "rollouts": 0}
    se = statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else None
    return {
        "value": sum(rates) / len(rates),
        "se": se,
        "problems": len(rates),
        "rollouts": int(sum(r["n"] for r in outcomes.values())),
    }


def choose(config: SelectConfig, measured: Mapping[str, Mapping[str, dict]]) -> dict:
    """The rule of the module docstring, applied to ``measured[candidate][base]``."""
    low, high = config.band
    rows = []
    for c in config.candidates:
        values = [measured[c.name][b]["value"] for b in config.bases]
        if any(v is None for v in values):
            rows.append((c, False, float("inf")))
            continue
        inside = all(low <= v <= high for v in values)
        rows.append((c, inside, max(abs(v - config.target) for v in values)))
    qualified = [r for r in rows if r[1]]
    band = f"[{low:.0%}, {high:.0%}]"
    if not qualified:
        return {
            "chosen": None,
            "reason": f"no candidate slice put every base's pass@1 inside {band}; add "
            "candidates (easier or harder slices) to the select file and run it again",
        }
    best = min(qualified, key=lambda r: r[2])
    c = best[0]
    shown = ", ".join(f"{b} {measured[c.name][b]['value']:.1%}" for b in config.bases)
    others = len(qualified) - 1
    return {
        "chosen": c.name,
        "reason": f"pass@1 of every base inside {band} ({shown}); of the {len(qualified)} "
        f"qualifying slice(s) its base farthest from {config.target:.0%} is nearest to it"
        + (f" (beating {others} other(s))" if others else ""),
    }


def select_slice(
    config: SelectConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    device: str | None = None,
    backend_factory: Callable[[str], Any] | None = None,
    progress: Callable[[str, Any], None] | None = None,
) -> dict:
    """Measure every base on every candidate's half 0 (one run directory per candidate,
    ``out/<candidate>``), apply the rule and write ``out/selection.json``; returns it."""
    from fixable.registry import backends
    from fixable.sampling import PROBE, probe_outcomes, sample
    from fixable.store import Run
    from fixable.tasks import get_task

    out = Path(out)
    root = data_root(data)
    started = time.monotonic()
    tasks = {}
    for c in config.candidates:
        options = resolve_task_options(c.task, c.task_options, root)
        try:
            tasks[c.name] = (get_task(c.task, **options, half=0), options)
        except TypeError as e:
            raise ConfigError(f"candidate {c.name!r}: task_options for {c.task!r}: {e}") from None

    def make(base: str):
        options = {**config.backend_options, **dict(config.base_options.get(base, {}))}
        if device is not None:
            options["device"] = device
        return backends.create("hf", base, **options)

    factory = backend_factory or make
    measured: dict[str, dict[str, dict]] = {c.name: {} for c in config.candidates}
    seconds: dict[str, float] = {}
    identities: dict[str, Any] = {}
    for base in config.bases:  # each base loaded once, for every slice
        t = time.monotonic()
        backend = factory(base)
        ident = getattr(backend, "identity", None)
        identities[base] = ident() if callable(ident) else None
        for c in config.candidates:
            task, _ = tasks[c.name]
            problems = task.problems(config.problems, seed=config.problem_seed, split="test")
            run = Run.create(out / c.name)
            sample(
                backend,
                task,
                problems,
                run,
                phase=PROBE,
                n=config.k,
                run_seed=config.seed,
                max_tokens=config.max_tokens,
                batch_size=config.batch_size,
                score_reference=False,
                config={"real_select": _jsonable(config), "candidate": c.name},
                progress=(lambda p, base=base, c=c: progress(f"{base} on {c.name}", p))
                if progress
                else None,
            )
            outcomes = probe_outcomes(run, backend.model_name, k=config.k)
            ids = {p.id for p in problems}
            measured[c.name][base] = pass_at_1({k: v for k, v in outcomes.items() if k in ids})
        seconds[base] = time.monotonic() - t
        close = getattr(backend, "close", None)
        if callable(close):
            close()
    decision = choose(config, measured)
    chosen = None
    if decision["chosen"] is not None:
        c = next(c for c in config.candidates if c.name == decision["chosen"])
        chosen = {"name": c.name, "task": c.task, "task_options": {**tasks[c.name][1], "half": 1}}
    selection = {
        "rule": (
            f"every base's pass@1 inside [{config.band[0]}, {config.band[1]}]; among those, "
            f"the smallest max over bases of |pass@1 - {config.target}|; measured on half 0 "
            "of each slice, studied on half 1"
        ),
        "config": _jsonable(config),
        "measured": measured,
        "chosen": chosen,
        "reason": decision["reason"],
        "models": identities,
        "seconds": {**seconds, "total": time.monotonic() - started},
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (SELECTION_FILE + ".tmp")
    tmp.write_text(json.dumps(selection, indent=1, sort_keys=True, default=str))
    tmp.replace(out / SELECTION_FILE)
    return selection


def _jsonable(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def format_selection(selection: Mapping) -> str:
    config = selection["config"]
    bases = config["bases"]
    width = max(len(c["name"]) for c in config["candidates"])
    lines = [f"pass@1 on half 0 of each slice ({config['problems']} problems x {config['k']}):"]
    lines.append("  " + "slice".ljust(width) + "  " + "  ".join(b[:28].rjust(28) for b in bases))
    for c in config["candidates"]:
        cells = []
        for b in bases:
            m = selection["measured"][c["name"]][b]
            value = "n/a" if m["value"] is None else f"{m['value']:.1%}"
            se = "" if m["se"] is None else f" ± {m['se']:.1%}"
            cells.append(f"{value}{se}".rjust(28))
        lines.append("  " + c["name"].ljust(width) + "  " + "  ".join(cells))
    chosen = selection["chosen"]
    lines.append(f"chosen: {chosen['name'] if chosen else 'none'} — {selection['reason']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- study


def load_selection(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / SELECTION_FILE
    try:
        selection = json.loads(path.read_text())
    except OSError:
        raise ConfigError(
            f"no slice selection at {path}: run `fixable real select` first (it writes "
            f"{SELECTION_FILE})"
        ) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e.msg}") from None
    if not selection.get("chosen"):
        raise ConfigError(f"{path} chose no slice: {selection.get('reason', 'no reason recorded')}")
    return selection


def study_config(path: str | Path, selection: Mapping):
    """The ``DemoConfig`` of a real study file, its task and options from ``selection``."""
    from fixable.demo import DemoConfig

    fields = _read_toml(path)
    for name in ("task", "task_options"):
        if name in fields:
            raise ConfigError(
                f"{path}: {name} comes from the slice selection (`fixable real select`), "
                "not from the study file; remove it"
            )
    if not fields.get("models"):
        raise ConfigError(f"{path}: models must name the real variants to study")
    chosen = selection["chosen"]
    fields["task"], fields["task_options"] = chosen["task"], dict(chosen["task_options"])
    fields.setdefault("backend", "hf")
    return DemoConfig.from_dict(fields, source=str(path))


def variant_info(model: str, root: Path | None = None) -> dict:
    """family (its base), method and seed of a built real variant, from its card."""
    from fixable import realzoo

    recipe = realzoo.card(model, root)["recipe"]
    return {
        "family": recipe["base"],
        "method": recipe["method"],
        "seed": recipe["seed"],
        "base": recipe["base"],
        "chat_template": bool(recipe.get("chat_template")),
    }


def run_real_study(
    config_path: str | Path,
    selection_path: str | Path,
    out: str | Path,
    *,
    device: str | None = None,
    command: str | None = None,
    progress=None,
):
    """``fixable real study``: the demo pipeline on the built real variants."""
    from fixable import realzoo
    from fixable.demo import run_demo
    from fixable.registry import backends

    selection = load_selection(selection_path)
    config = study_config(config_path, selection)
    missing = [m for m in config.models if m not in realzoo.built()]
    if missing:
        raise ConfigError(
            f"real variant(s) not built under {realzoo.zoo_dir()}: {', '.join(missing)}; "
            "build them with `fixable zoo build --real` (or set FIXABLE_REAL_ZOO)"
        )
    info = {m: variant_info(m) for m in config.models}

    def make(model: str):
        options = dict(config.backend_options)
        options.setdefault("reference", info[model]["base"])
        options.setdefault("chat_template", info[model]["chat_template"])
        if device is not None:
            options["device"] = device
        return backends.create(config.backend, model, **options)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SELECTION_FILE).write_text(json.dumps(selection, indent=1, sort_keys=True))
    model_info = {m: {k: info[m][k] for k in ("family", "method", "seed")} for m in info}
    return run_demo(
        config,
        out,
        backend_factory=make,
        model_info=model_info,
        checkpoints=realzoo.checkpoints,
        command=command,
        progress=progress,
    )

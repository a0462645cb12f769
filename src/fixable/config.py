"""Run configuration: what to sample, from which model, how, and where to store it.

``RunConfig`` is one flat value object that validates itself on construction, with
messages that name the field, the bad value and the allowed range. It comes from command
line options, from a TOML run file, or both (options given on the command line win).
A run file declares the same fields as the ``fixable sample`` options::

    model = "llama-rl-s0"            # or: models = ["llama-rl-s0", "llama-sft-s0"]
    backend = "organism"
    task = "chains"
    problems = 200
    phase = "sweep"                  # probe | rescue | sweep
    k = 8
    r = 32
    interventions = "retry;temperature:0.3,0.6,1.3;mix:0.25,0.5"   # or a list of specs
    seed = 0
    out = "runs/llama-rl-s0"

    [task_options]
    difficulties = [4, 5]

    [backend_options]
    batch_size = 256

A malformed run file is reported with the file, the line and the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fixable.errors import ConfigError, FixableError
from fixable.interventions import Intervention, parse_grid

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

PHASES = ("probe", "rescue", "sweep")
DEFAULT_GRID = "retry;temperature:0.3,0.6,1.3"  # runs on every backend; add mix/checkpoint/dola
_TABLE_FIELDS = ("task_options", "backend_options")


def _invalid(field_name: str, message: str) -> ConfigError:
    error = ConfigError(message)
    error.field = field_name  # lets the run-file loader point at the line
    return error


def _int_in(name: str, value: Any, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        else:
            raise _invalid(name, f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"[{low}, {high}]" if high is not None else f"at least {low}"
        raise _invalid(
            name, f"{name} must be {'in ' if high is not None else ''}{bounds}, got {value}"
        )
    return value


@dataclass(frozen=True)
class RunConfig:
    """Everything ``fixable sample`` needs; stored resolved in the run's manifest."""

    models: tuple[str, ...] = ()  # policies to sample: zoo names, checkpoint dirs or served ids
    backend: str = "organism"  # registry name of the engine
    backend_options: dict = field(default_factory=dict)  # passed to the backend's constructor
    task: str = "chains"  # registry name of the task
    task_options: dict = field(default_factory=dict)  # passed to the task's constructor
    problems: int | None = 100  # how many problems (None: all the task has)
    problem_seed: int = 0  # which problems a generated task draws
    split: str = "test"  # the task split problems come from
    phase: str = "probe"  # probe (K per problem), rescue (R per failure x setting) or both
    k: int = 8  # probe rollouts per problem
    r: int = 32  # rescue rollouts per failed problem per setting
    interventions: tuple[str, ...] = ()  # rescue grid as canonical labels; empty: DEFAULT_GRID
    seed: int = 0  # run seed: every rollout's seed is derived from it and its key
    max_tokens: int = 160  # longest completion, in tokens
    batch_size: int = 256  # requests per backend call (results do not depend on it)
    flush_every: int = 2048  # rollouts per shard: bounds memory and what a crash loses
    score_reference: bool = (
        True  # teacher-force probe rollouts under the reference when there is one
    )
    out: str | None = None  # the run directory
    worker: str | None = None  # name of this writer (default host-pid)
    part: tuple[int, int] = (0, 1)  # (index, count): sample only this share of the problems

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        models = self.models
        if isinstance(models, str):
            models = (models,)
        models = tuple(str(m) for m in (models or ()))
        if not models:
            raise _invalid(
                "models", "model is required: name a zoo model, checkpoint or served model"
            )
        if len(set(models)) != len(models):
            raise _invalid("models", f"models are listed twice: {list(models)}")
        set_("models", models)
        for name in ("backend", "task"):
            self._check_registered(name)
        for name in _TABLE_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise _invalid(name, f"{name} must be a table of name = value, got {value!r}")
            set_(name, dict(value))
        self._check_backend_options()
        if self.problems is not None:
            set_("problems", _int_in("problems", self.problems, 1, None))
        set_("problem_seed", _int_in("problem_seed", self.problem_seed, 0, None))
        if not isinstance(self.split, str) or not self.split:
            raise _invalid(
                "split", f"split must be a split name such as 'test', got {self.split!r}"
            )
        if self.phase not in PHASES:
            raise _invalid("phase", f"phase must be one of {', '.join(PHASES)}, got {self.phase!r}")
        set_("k", _int_in("k", self.k, 1, 4096))
        set_("r", _int_in("r", self.r, 1, 65536))
        set_("seed", _int_in("seed", self.seed, 0, 2**63 - 1))
        set_("max_tokens", _int_in("max_tokens", self.max_tokens, 1, 1_000_000))
        set_("batch_size", _int_in("batch_size", self.batch_size, 1, 1_000_000))
        set_("flush_every", _int_in("flush_every", self.flush_every, 1, 10_000_000))
        if not isinstance(self.score_reference, bool):
            raise _invalid(
                "score_reference",
                f"score_reference must be true or false, got {self.score_reference!r}",
            )
        specs = self.interventions
        if isinstance(specs, str):
            specs = (specs,)
        # each entry may itself be a CLI-style "a;b:1,2" list
        specs = [part for spec in specs for part in str(spec).split(";") if part.strip()]
        try:
            grid = parse_grid(specs if specs else DEFAULT_GRID)
        except FixableError as e:
            raise _invalid("interventions", f"interventions: {e}") from None
        set_("interventions", tuple(i.label for i in grid))
        set_("part", _parse_part(self.part))
        if self.out is not None:
            set_("out", str(self.out))
        if self.worker is not None and (not str(self.worker) or "/" in str(self.worker)):
            raise _invalid("worker", f"worker must be a name without '/', got {self.worker!r}")

    def _check_registered(self, name: str) -> None:
        from fixable.registry import backends, tasks

        registry = {"backend": backends, "task": tasks}[name]
        value = getattr(self, name)
        if value not in registry:
            from fixable.errors import UnknownNameError

            error = UnknownNameError(name, str(value), registry.names())
            raise _invalid(name, str(error))

    def _check_backend_options(self) -> None:
        """Every backend option must be a keyword of the backend's constructor."""
        import inspect

        from fixable.registry import backends

        options = self.backend_options if isinstance(self.backend_options, dict) else {}
        try:
            parameters = list(inspect.signature(backends.get(self.backend)).parameters.values())
        except (TypeError, ValueError):  # a factory without a readable signature
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [p.name for p in parameters[1:] if p.kind in named]  # [0] is the model
        for key in options:
            if key not in accepted:
                close = difflib.get_close_matches(str(key), accepted, n=2, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise _invalid(
                    f"backend_options.{key}",
                    f"unknown option {key!r} of backend {self.backend!r}.{hint} "
                    f"Its options: {', '.join(accepted) or 'none'}",
                )

    @property
    def grid(self) -> list[Intervention]:
        """The rescue grid as Intervention objects."""
        return parse_grid(list(self.interventions))

    def build_task(self):
        """The configured task object (its constructor validates the task options)."""
        from fixable.tasks import get_task

        try:
            return get_task(self.task, **self.task_options)
        except TypeError as e:
            raise _invalid("task_options", f"task_options for {self.task!r}: {e}") from None
        except ConfigError as e:
            raise _invalid("task_options", f"task_options: {e}") from None

    def to_dict(self) -> dict:
        """JSON-ready, resolved: what the manifest records and ``from_dict`` reads back."""
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        d["interventions"] = list(self.interventions)
        d["part"] = f"{self.part[0]}/{self.part[1]}"
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "configuration") -> RunConfig:
        d = dict(d)
        if "model" in d:
            if "models" in d:
                raise _invalid("model", f"{source}: give model or models, not both")
            d["models"] = d.pop("model")
        known = {f.name for f in dataclasses.fields(cls)}
        for name in d:
            if name not in known:
                close = difflib.get_close_matches(name, [*known, "model"], n=2, cutoff=0.6)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise _invalid(name, f"unknown field {name!r}.{hint}")
        if isinstance(d.get("interventions"), str):
            d["interventions"] = (d["interventions"],)
        if isinstance(d.get("interventions"), list):
            d["interventions"] = tuple(d["interventions"])
        if isinstance(d.get("models"), list):
            d["models"] = tuple(d["models"])
        return cls(**d)


def _parse_part(part: Any) -> tuple[int, int]:
    if isinstance(part, str):
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", part)
        if not m:
            raise _invalid("part", f"part must be written i/n (e.g. 0/4), got {part!r}")
        part = (int(m.group(1)), int(m.group(2)))
    try:
        index, count = (int(x) for x in part)
    except (TypeError, ValueError):
        raise _invalid("part", f"part must be i/n (e.g. 0/4), got {part!r}") from None
    if count < 1 or not 0 <= index < count:
        raise _invalid("part", f"part i/n needs n >= 1 and i in [0, n-1], got {index}/{count}")
    return index, count


# --------------------------------------------------------------------------- run files


def _line_of(text: str, field_name: str) -> int | None:
    """The 1-based line that sets ``field_name`` (``table.key`` for a key of a table)."""
    table, _, key = field_name.rpartition(".")
    current = ""
    header = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
    for number, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = m.group(1).strip().strip("\"'")
            if current == field_name:  # a whole table, e.g. [task_options]
                return number
            continue
        if current == table and re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return number
    return None


def _read_text(path: Path) -> str:
    """A run file's text, or a one-line ConfigError (unreadable, not UTF-8)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read run file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        data = path.read_bytes()
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}, line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
            f"{e.start}); save the run file as UTF-8"
        ) from None


def load_run_file(path: str | Path) -> dict:
    """The fields a TOML run file sets (unvalidated), or a manifest's last configuration.

    Syntax errors name the file, line and field; ``RunConfig.from_dict`` validates.
    """
    path = Path(path)
    if path.is_dir() and (path / "manifest.json").is_file():
        path = path / "manifest.json"
    text = _read_text(path)
    if path.suffix == ".json":
        return _config_from_manifest(path, text)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        m = re.search(r"\(at line (\d+), column (\d+)\)", message)
        where = f"{path}"
        if m:
            line_no = int(m.group(1))
            line = text.splitlines()[line_no - 1] if line_no <= len(text.splitlines()) else ""
            key = re.match(r"^\s*([A-Za-z0-9_\-]+)\s*=", line)
            field_part = f" (field {key.group(1)!r})" if key else ""
            where = f"{path}, line {line_no}{field_part}"
            message = message[: m.start()].strip()
        raise ConfigError(f"{where}: malformed TOML: {message}") from None


def _config_from_manifest(path: Path, text: str) -> dict:
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}, line {e.lineno}: not valid JSON: {e.msg}") from None
    invocations = manifest.get("invocations") if isinstance(manifest, dict) else None
    if not invocations or "config" not in invocations[-1]:
        raise ConfigError(f"{path} records no run configuration to reproduce")
    config = dict(invocations[-1]["config"])
    config.pop("worker", None)  # a reproduction is a new writer
    return config


def resolve_config(run_file: str | Path | None = None, **options: Any) -> RunConfig:
    """A RunConfig from a run file and/or options; an option not None overrides the file.

    Errors in values that came from the file name the file, the line and the field.
    """
    from_file: dict = {}
    text = ""
    if run_file is not None:
        from_file = load_run_file(run_file)
        path = Path(run_file)
        if path.suffix != ".json" and path.is_file():
            text = _read_text(path)
    given = {k: v for k, v in options.items() if v is not None}
    if "models" in given and "model" in from_file:
        from_file.pop("model")
    merged = {**from_file, **given}
    try:
        config = RunConfig.from_dict(merged, source=str(run_file or "options"))
        config.build_task()
        return config
    except ConfigError as e:
        name = getattr(e, "field", None)
        if run_file is None or name is None or name.split(".")[0] in given:
            raise
        # the field "models" is written "model" or "models" in a file
        for written in ["model", "models"] if name == "models" else [name]:
            line = _line_of(text, written)
            if line is not None:
                raise ConfigError(f"{run_file}, line {line} (field {written!r}): {e}") from None
        raise ConfigError(f"{run_file} (field {name!r}): {e}") from None

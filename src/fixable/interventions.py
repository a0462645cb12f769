"""Interventions: bounded changes to how a policy is sampled, declared as a finite grid.

Every kind of intervention is declared once, in ``KINDS``: its parameter and bounds, what
it does, its cost per token, the backend capability it needs (the kind's name), its
display order (the order of ``KINDS``), a representative value, and the field of the
per-request ``SamplingSpec`` its parameter sets. Everything else reads the declaration:
validation, labels and their parsing, ``fixable list interventions``, capability checks,
the order figures and routing list settings in, and the backends, which read the
``SamplingSpec`` field by field (as vLLM's ``SamplingParams`` is read).

An ``Intervention`` is a kind plus its parameter, validated on construction with messages
that name the bad value and the allowed range. Its ``label`` is the canonical string the
store keys rollouts by, e.g. ``temperature(T=0.3)``; ``parse_intervention`` reads a label
back (the two are inverses). Grids are written on the command line as
``temperature:0.3,0.6,1.3`` or in a TOML run file (see ``fixable.config``).

Adding a kind whose whole effect is on the next-token distribution (as ``temperature``,
``top_p`` and ``min_p``): a ``Kind`` row below with ``distribution_only=True``, a
``SamplingSpec`` field with its domain, and that field's arithmetic in
``fixable.distribution`` — nothing else. The organism engine and the ``hf`` backend pass
the spec whole to that function and claim every ``distribution_only`` kind
(``backends.base.DistributionCapabilities``). A kind that needs a backend's machinery (a
reference model, checkpoints, early exits) also needs that machinery and an explicit
capability in the backends that have it (docs/backends.md, "Adding an intervention").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fixable.errors import ConfigError, UnknownNameError


def domain(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> dict:
    """Field metadata: the values a ``SamplingSpec`` field accepts (what the arithmetic is
    defined for; an intervention's grid bounds in ``KINDS`` lie inside it)."""
    return {"domain": (lo, hi, open_lo, open_hi)}


@dataclass(frozen=True)
class SamplingSpec:
    """How one request is sampled: what a backend reads, field by field.

    The defaults are the policy as it is (``retry``). An intervention sets one field; a
    backend that cannot honour a field it is given refuses the intervention through its
    capabilities before any sampling starts. Each numeric field declares its domain
    (``domain``) and is checked against it on construction, so the engines that read a
    spec (``fixable.organism.decode``, the ``hf`` backend) check no field themselves.
    """

    # divide the log-probs by T (greedy decoding is the engine's switch, not T = 0)
    temperature: float = field(default=1.0, metadata=domain(0, 100, open_lo=True))
    # geometric mixture with the reference: p^(1-alpha) · p_ref^alpha
    alpha: float = field(default=0.0, metadata=domain(0, 1))
    checkpoint: str | None = None  # sample this checkpoint of the model's run instead
    # contrast with the early exit after this many blocks (the engine checks the model has them)
    dola_layer: int | None = field(default=None, metadata=domain(0, math.inf))
    # nucleus: keep the most probable tokens holding mass >= top_p
    top_p: float = field(default=1.0, metadata=domain(0, 1, open_lo=True))
    # keep tokens with probability >= min_p x the top token's
    min_p: float = field(default=0.0, metadata=domain(0, 1, open_hi=True))

    def __post_init__(self):
        for f in fields(self):
            allowed = f.metadata.get("domain")
            value = getattr(self, f.name)
            if allowed is None or value is None:
                continue
            lo, hi, open_lo, open_hi = allowed
            above = lo < value if open_lo else lo <= value
            below = value < hi if open_hi else value <= hi
            if not (above and below):
                interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
                raise ConfigError(f"{f.name} must be in {interval}, got {value!r}")
        if self.alpha > 0 and self.dola_layer is not None:
            raise ConfigError(
                "mixing and DoLa are separate interventions; set one of alpha, dola_layer"
            )


@dataclass(frozen=True)
class Kind:
    """The declaration of one kind of intervention."""

    name: str  # the kind, also the backend capability it needs
    param: str | None  # its single parameter's name in labels (None: no parameter)
    type: type | None  # the parameter's type
    bounds: tuple[float, float] | None  # inclusive bounds, or exclusive with open_bounds
    what: str  # one line: what it does
    sets: str | None = None  # the SamplingSpec field the parameter sets
    open_bounds: bool = False  # the bounds themselves are excluded (they are no change)
    cost_factor: float = 1.0  # forward passes per generated token, relative to retry
    example: Any = None  # a representative value (checks, docs)
    # its whole effect is the arithmetic of fixable.distribution.sampling_logprobs on the
    # policy's own log-probs: every backend that samples through that function supports it
    # without code of its own (backends.base.DistributionCapabilities). False for kinds
    # that need a backend's machinery: a reference model, checkpoints, early exits.
    distribution_only: bool = False

    @property
    def capability(self) -> str:
        return self.name

    @property
    def order(self) -> int:
        """Display position: the order of ``KINDS``."""
        return list(KINDS).index(self.name)

    def interval(self) -> str:
        """``[lo, hi]`` or ``(lo, hi)`` as the bounds read."""
        if self.bounds is None:
            return ""
        lo, hi = self.bounds
        return f"({lo:g}, {hi:g})" if self.open_bounds else f"[{lo:g}, {hi:g}]"


_KIND_LIST = (
    Kind(
        "retry",
        None,
        None,
        None,
        "more samples from the policy at the default config",
        distribution_only=True,  # the default spec: the policy's own distribution
    ),
    Kind(
        "temperature",
        "T",
        float,
        (0.05, 2.0),
        "sample at another temperature",
        sets="temperature",
        distribution_only=True,
        example=0.5,
    ),
    Kind(
        "top_p",
        "p",
        float,
        (0.0, 1.0),
        "nucleus sampling: keep the most probable tokens that together hold mass >= p",
        sets="top_p",
        distribution_only=True,
        open_bounds=True,  # p = 1 is retry; p = 0 would keep nothing
        example=0.9,
    ),
    Kind(
        "min_p",
        "p",
        float,
        (0.0, 1.0),
        "keep the tokens with probability >= p x the most probable token's",
        sets="min_p",
        distribution_only=True,
        open_bounds=True,  # p = 0 is retry; p = 1 is (nearly) greedy
        example=0.1,
    ),
    Kind(
        "mix",
        "alpha",
        float,
        (0.0, 1.0),
        "p ∝ p_policy^(1-alpha) · p_reference^alpha, token by token",
        sets="alpha",
        open_bounds=True,  # alpha 0 or 1 is no mixture: retry or the reference
        cost_factor=2.0,  # mixing runs two models in lockstep
        example=0.5,
    ),
    Kind(
        "checkpoint",
        "c",
        str,
        None,
        "sample an earlier checkpoint of the same training run",
        sets="checkpoint",
    ),
    Kind(
        "dola",
        "layer",
        int,
        (0, 64),
        "contrast final-layer log-probs with an early-exit layer (DoLa)",
        sets="dola_layer",
        example=1,
    ),
)
KINDS: dict[str, Kind] = {k.name: k for k in _KIND_LIST}
# forward passes per generated token, by kind (read from the declarations)
COST_FACTOR: dict[str, float] = {k.name: k.cost_factor for k in _KIND_LIST}
SYMBOLIC_CHECKPOINTS = ("first", "last")  # resolved per model by resolve_checkpoint
_TYPE_WORDS = {float: "a number", int: "an integer", str: "a name"}
_SPEC_FIELDS = {f.name for f in fields(SamplingSpec)}
assert all(k.sets is None or k.sets in _SPEC_FIELDS for k in _KIND_LIST)


def distribution_kinds() -> frozenset[str]:
    """The kinds declared ``distribution_only``, read from ``KINDS`` when called: what every
    backend sampling through ``fixable.distribution`` supports with no code of its own."""
    return frozenset(name for name, kind in KINDS.items() if kind.distribution_only)


def kind_of(name: str) -> Kind:
    """The declaration of kind ``name``; UnknownNameError naming the kinds otherwise."""
    if name not in KINDS:
        raise UnknownNameError("intervention", name, KINDS)
    return KINDS[name]


@dataclass(frozen=True)
class Intervention:
    kind: str
    value: Any = None  # the kind's single parameter (None for retry)

    def __post_init__(self):
        decl = kind_of(self.kind)
        name, typ, bounds = decl.param, decl.type, decl.bounds
        if name is None:
            if self.value is not None:
                raise ConfigError(f"{self.kind} takes no parameter, got {self.value!r}")
            return
        if self.value is None:
            raise ConfigError(f"{self.kind} needs its parameter {name}")
        try:
            value = typ(self.value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{self.kind} {name} must be {_TYPE_WORDS[typ]}, got {self.value!r}"
            ) from None
        if typ is int and float(self.value) != value:
            raise ConfigError(f"{self.kind} {name} must be an integer, got {self.value!r}")
        if typ is float and not math.isfinite(value):
            raise ConfigError(f"{self.kind} {name} must be a finite number, got {self.value!r}")
        if typ is str and (not value or value != value.strip() or ")" in value):
            raise ConfigError(
                f"{self.kind} {name} must be a non-empty name without surrounding spaces "
                f"or ')', got {self.value!r}"
            )
        if bounds is not None:
            lo, hi = bounds
            inside = lo < value < hi if decl.open_bounds else lo <= value <= hi
            if not inside:
                raise ConfigError(
                    f"{self.kind} {name} must be in {decl.interval()}, got {self.value!r}"
                )
        object.__setattr__(self, "value", value)

    @property
    def declaration(self) -> Kind:
        return KINDS[self.kind]

    @property
    def param_name(self) -> str | None:
        return KINDS[self.kind].param

    @property
    def params(self) -> dict[str, Any]:
        return {} if self.param_name is None else {self.param_name: self.value}

    @property
    def label(self) -> str:
        if self.param_name is None:
            return self.kind
        return f"{self.kind}({self.param_name}={_format(self.value)})"

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)

    @property
    def cost_factor(self) -> float:
        return KINDS[self.kind].cost_factor

    @property
    def spec(self) -> SamplingSpec:
        """The per-request sampling specification this intervention resolves into."""
        sets = KINDS[self.kind].sets
        return SamplingSpec() if sets is None else SamplingSpec(**{sets: self.value})

    def __str__(self) -> str:
        return self.label


def _format(value: Any) -> str:
    """A parameter as labels print it: floats as ``%g`` (the labels the store has always
    used), or their shortest exact form where ``%g`` would round."""
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


RETRY = Intervention("retry")
_LABEL = re.compile(r"^(\w+)(?:\((?:(\w+)=)?([^)]*)\))?$")


def parse_intervention(text: str) -> Intervention:
    """``"retry"``, ``"temperature(T=0.3)"``, ``"temperature(0.3)"`` or ``"mix:0.5"`` →
    Intervention; ``parse_intervention(i.label) == i`` for every intervention."""
    text = text.strip()
    m = _LABEL.match(text)
    if not m:
        if ":" in text:
            kind, value = text.split(":", 1)
            return Intervention(kind.strip(), value.strip())
        raise ConfigError(f"cannot read intervention {text!r}; write e.g. 'temperature(T=0.3)'")
    kind, name, value = m.groups()
    if kind in KINDS and name is not None and name != KINDS[kind].param:
        raise ConfigError(f"{kind} has parameter {KINDS[kind].param!r}, got {name!r}")
    return Intervention(kind, value if value not in (None, "") else None)


def parse_grid(specs: str | list[str]) -> list[Intervention]:
    """A grid from CLI-style specs: ``"retry;temperature:0.3,0.6;mix:0.5"`` or a list of them."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(";") if s.strip()]
    grid: list[Intervention] = []
    for spec in specs:
        spec = spec.strip()
        if ":" in spec and not _LABEL.match(spec):
            kind, values = spec.split(":", 1)
            grid.extend(
                Intervention(kind.strip(), v.strip()) for v in values.split(",") if v.strip()
            )
        else:
            grid.append(parse_intervention(spec))
    seen: set[str] = set()
    unique = [i for i in grid if not (i.label in seen or seen.add(i.label))]
    return unique


# ------------------------------------------------------------------ checkpoints and order


def checkpoint_order(name: str) -> tuple[float, str]:
    """Sort key of a checkpoint name, earliest first: ``first``, then step numbers
    ascending (the last number in the name), then ``last`` and names without a number."""
    name = str(name)
    if name == "first":
        return (-math.inf, name)
    digits = re.findall(r"\d+", name)
    return (float(digits[-1]) if digits else math.inf, name)


def resolve_checkpoint(
    intervention: Intervention, available: Sequence[str], *, model: str = "the model"
) -> Intervention:
    """``checkpoint(c=first)`` / ``checkpoint(c=last)`` → the earliest / latest of
    ``available`` (the model's own checkpoint labels, in training order, as
    ``zoo.checkpoints`` lists them); every other intervention unchanged. One grid then
    serves models whose runs saved checkpoints at different steps."""
    if intervention.kind != "checkpoint" or intervention.value not in SYMBOLIC_CHECKPOINTS:
        return intervention
    labels = list(available)
    if not labels:
        raise ConfigError(
            f"{model} has no intermediate checkpoints, so {intervention.label} cannot be sampled; "
            "drop it from interventions"
        )
    return Intervention("checkpoint", labels[0] if intervention.value == "first" else labels[-1])


def sort_key(label: str) -> tuple:
    """Sort key of a setting label: kinds in declaration order (retry, temperature, the
    truncations top_p and min_p, mix, checkpoint, dola), then by parameter; a label no kind reads goes last."""
    try:
        intervention = parse_intervention(label)
    except (ConfigError, UnknownNameError):
        return (len(KINDS), str(label), math.inf, str(label))
    decl = intervention.declaration
    value = intervention.value
    if value is None:
        return (decl.order, decl.name, math.inf, "")
    if decl.name == "checkpoint":
        number, text = checkpoint_order(value)
        return (decl.order, decl.name, number, text)
    return (decl.order, decl.name, float(value), "")

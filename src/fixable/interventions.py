"""Interventions: bounded changes to how a policy is sampled, declared as a finite grid.

An ``Intervention`` is a kind plus parameters, validated on construction with messages
that name the bad value and the allowed range. Its ``label`` is the canonical string the
store keys rollouts by, e.g. ``temperature(T=0.3)``. Grids are written on the command line
as ``temperature:0.3,0.6,1.3`` or in a TOML run file (see ``fixable.config``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from fixable.errors import ConfigError, UnknownNameError

# kind → (parameter name, type, (low, high) inclusive bounds or None, what it does)
KINDS: dict[str, tuple[str | None, type | None, tuple[float, float] | None, str]] = {
    "retry": (None, None, None, "more samples from the policy at the default config"),
    "temperature": ("T", float, (0.05, 2.0), "sample at another temperature"),
    "mix": (
        "alpha",
        float,
        (0.0, 1.0),
        "p ∝ p_policy^(1-alpha) · p_reference^alpha, token by token",
    ),
    "checkpoint": ("c", str, None, "sample an earlier checkpoint of the same training run"),
    "dola": (
        "layer",
        int,
        (0, 64),
        "contrast final-layer log-probs with an early-exit layer (DoLa)",
    ),
}
_TYPE_WORDS = {float: "a number", int: "an integer", str: "a name"}
# forward passes per generated token: mixing runs two models in lockstep
COST_FACTOR = {"mix": 2.0}


@dataclass(frozen=True)
class Intervention:
    kind: str
    value: Any = None  # the kind's single parameter (None for retry)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UnknownNameError("intervention", self.kind, KINDS)
        name, typ, bounds, _ = KINDS[self.kind]
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
        if bounds is not None:
            lo, hi = bounds
            open_ends = self.kind == "mix"  # alpha 0 or 1 is no mixture: retry or the reference
            bad = not (lo < value < hi) if open_ends else not (lo <= value <= hi)
            if bad:
                interval = f"({lo}, {hi})" if open_ends else f"[{lo}, {hi}]"
                raise ConfigError(f"{self.kind} {name} must be in {interval}, got {self.value!r}")
        object.__setattr__(self, "value", value)

    @property
    def param_name(self) -> str | None:
        return KINDS[self.kind][0]

    @property
    def params(self) -> dict[str, Any]:
        return {} if self.param_name is None else {self.param_name: self.value}

    @property
    def label(self) -> str:
        if self.param_name is None:
            return self.kind
        return (
            f"{self.kind}({self.param_name}={self.value:g})"
            if isinstance(self.value, float)
            else f"{self.kind}({self.param_name}={self.value})"
        )

    @property
    def params_json(self) -> str:
        return json.dumps(self.params, sort_keys=True)

    @property
    def cost_factor(self) -> float:
        return COST_FACTOR.get(self.kind, 1.0)

    def __str__(self) -> str:
        return self.label


RETRY = Intervention("retry")
_LABEL = re.compile(r"^(\w+)(?:\((?:(\w+)=)?([^)]*)\))?$")


def parse_intervention(text: str) -> Intervention:
    """``"retry"``, ``"temperature(T=0.3)"``, ``"temperature(0.3)"`` or ``"mix:0.5"`` → Intervention."""
    text = text.strip()
    if ":" in text:
        kind, value = text.split(":", 1)
        return Intervention(kind.strip(), value.strip())
    m = _LABEL.match(text)
    if not m:
        raise ConfigError(f"cannot read intervention {text!r}; write e.g. 'temperature(T=0.3)'")
    kind, name, value = m.groups()
    if kind in KINDS and name is not None and name != KINDS[kind][0]:
        raise ConfigError(f"{kind} has parameter {KINDS[kind][0]!r}, got {name!r}")
    return Intervention(kind, value if value not in (None, "") else None)


def parse_grid(specs: str | list[str]) -> list[Intervention]:
    """A grid from CLI-style specs: ``"retry;temperature:0.3,0.6;mix:0.5"`` or a list of them."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(";") if s.strip()]
    grid: list[Intervention] = []
    for spec in specs:
        spec = spec.strip()
        if ":" in spec:
            kind, values = spec.split(":", 1)
            grid.extend(
                Intervention(kind.strip(), v.strip()) for v in values.split(",") if v.strip()
            )
        else:
            grid.append(parse_intervention(spec))
    seen: set[str] = set()
    unique = [i for i in grid if not (i.label in seen or seen.add(i.label))]
    return unique

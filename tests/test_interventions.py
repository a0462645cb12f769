"""The intervention declarations: labels print and parse back to the same intervention,
every kind resolves into the SamplingSpec field it declares, symbolic checkpoints resolve
against a model's own checkpoints, and settings sort in the declared order."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixable.errors import ConfigError, UnknownNameError
from fixable.interventions import (
    COST_FACTOR,
    KINDS,
    RETRY,
    Intervention,
    SamplingSpec,
    distribution_kinds,
    parse_grid,
    parse_intervention,
    resolve_checkpoint,
    sort_key,
)


def _values(kind) -> st.SearchStrategy:
    if kind.param is None:
        return st.none()
    if kind.type is str:
        alphabet = st.characters(
            codec="utf-8", exclude_characters=")", exclude_categories=("Cs", "Cc")
        )
        return st.text(alphabet, min_size=1, max_size=20).filter(lambda s: s == s.strip())
    lo, hi = kind.bounds
    if kind.type is int:
        return st.integers(int(lo), int(hi))
    return st.floats(lo, hi, exclude_min=kind.open_bounds, exclude_max=kind.open_bounds)


interventions = st.sampled_from(list(KINDS.values())).flatmap(
    lambda k: _values(k).map(lambda v: Intervention(k.name, v))
)


@settings(max_examples=400, deadline=None)
@given(interventions)
def test_a_label_parses_back_to_the_same_intervention(intervention):
    label = intervention.label
    assert parse_intervention(label) == intervention
    assert parse_intervention(label).label == label
    assert parse_grid([label]) == [intervention]


@pytest.mark.parametrize(
    "intervention, label",
    [
        (RETRY, "retry"),
        (Intervention("temperature", 0.3), "temperature(T=0.3)"),
        (Intervention("temperature", "1.30"), "temperature(T=1.3)"),
        (Intervention("temperature", 2), "temperature(T=2)"),
        (Intervention("mix", 0.5), "mix(alpha=0.5)"),
        (Intervention("checkpoint", "step-200"), "checkpoint(c=step-200)"),
        (Intervention("dola", 1), "dola(layer=1)"),
        (Intervention("top_p", 0.9), "top_p(p=0.9)"),
        (Intervention("min_p", "0.05"), "min_p(p=0.05)"),
        # %g would round this one; the label keeps every digit, so it still parses back
        (Intervention("temperature", 0.1234567), "temperature(T=0.1234567)"),
    ],
)
def test_labels_are_the_ones_the_store_has_always_used(intervention, label):
    assert intervention.label == label


def test_the_other_spellings_parse():
    assert parse_intervention("temperature(0.3)") == Intervention("temperature", 0.3)
    assert parse_intervention(" mix:0.5 ") == Intervention("mix", 0.5)
    assert parse_grid("retry;top_p:0.9;temperature:0.3,1.3;mix:0.5;dola(layer=1)") == [
        RETRY,
        Intervention("top_p", 0.9),
        Intervention("temperature", 0.3),
        Intervention("temperature", 1.3),
        Intervention("mix", 0.5),
        Intervention("dola", 1),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("temperature(T=3)", r"temperature T must be in \[0.05, 2\], got"),
        ("mix(alpha=1)", r"mix alpha must be in \(0, 1\), got"),
        ("top_p(p=1)", r"top_p p must be in \(0, 1\), got"),
        ("min_p:0", r"min_p p must be in \(0, 1\), got"),
        ("dola(layer=1.5)", "must be an integer"),
        ("temperature(T=nan)", "finite"),
        ("temperature(alpha=0.3)", "has parameter 'T'"),
        ("retry(1)", "takes no parameter"),
        ("checkpoint", "needs its parameter c"),
        ("checkpoint(c= x)", "without surrounding spaces"),
        ("temperature(T=0.3", "cannot read intervention"),
    ],
)
def test_bad_labels_say_what_is_wrong(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_intervention(text)


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="temperature"):
        parse_intervention("nucleus(p=0.9)")


@pytest.mark.parametrize(
    "intervention, spec",
    [
        (RETRY, SamplingSpec()),
        (Intervention("temperature", 0.3), SamplingSpec(temperature=0.3)),
        (Intervention("mix", 0.25), SamplingSpec(alpha=0.25)),
        (Intervention("checkpoint", "step-5"), SamplingSpec(checkpoint="step-5")),
        (Intervention("dola", 2), SamplingSpec(dola_layer=2)),
        (Intervention("top_p", 0.9), SamplingSpec(top_p=0.9)),
        (Intervention("min_p", 0.05), SamplingSpec(min_p=0.05)),
    ],
)
def test_each_kind_resolves_into_its_field_of_the_spec(intervention, spec):
    assert intervention.spec == spec


def test_every_declaration_is_complete():
    for kind in KINDS.values():
        assert kind.capability == kind.name
        assert COST_FACTOR[kind.name] == kind.cost_factor >= 1.0
        if kind.param is None:
            assert kind.sets is None and Intervention(kind.name).spec == SamplingSpec()
            continue
        # the example is a valid value that changes the spec away from retry's
        if kind.type is not str:
            example = Intervention(kind.name, kind.example)
            assert example.spec != SamplingSpec()
            assert getattr(example.spec, kind.sets) == example.value
    assert COST_FACTOR["mix"] == 2.0 and RETRY.cost_factor == 1.0


def test_symbolic_checkpoints_resolve_against_the_models_own():
    available = ["step-100", "step-200", "step-400"]
    first = resolve_checkpoint(Intervention("checkpoint", "first"), available)
    last = resolve_checkpoint(Intervention("checkpoint", "last"), available)
    assert first == Intervention("checkpoint", "step-100")
    assert last == Intervention("checkpoint", "step-400")
    concrete = Intervention("checkpoint", "step-200")
    assert resolve_checkpoint(concrete, available) is concrete
    assert resolve_checkpoint(RETRY, []) is RETRY
    with pytest.raises(ConfigError, match="llama-x has no intermediate checkpoints"):
        resolve_checkpoint(Intervention("checkpoint", "first"), [], model="llama-x")


def test_settings_sort_in_the_declared_order():
    labels = [
        "dola(layer=2)",
        "checkpoint(c=last)",
        "mix(alpha=0.5)",
        "temperature(T=1.3)",
        "checkpoint(c=step-200)",
        "not-a-setting",
        "retry",
        "checkpoint(c=first)",
        "temperature(T=0.3)",
        "dola(layer=1)",
        "min_p(p=0.1)",
        "top_p(p=0.95)",
        "top_p(p=0.9)",
    ]
    assert sorted(labels, key=sort_key) == [
        "retry",
        "temperature(T=0.3)",
        "temperature(T=1.3)",
        "top_p(p=0.9)",
        "top_p(p=0.95)",
        "min_p(p=0.1)",
        "mix(alpha=0.5)",
        "checkpoint(c=first)",
        "checkpoint(c=step-200)",
        "checkpoint(c=last)",
        "dola(layer=1)",
        "dola(layer=2)",
        "not-a-setting",
    ]
    assert sort_key("temperature(T=0.3)")[2] == 0.3 and math.isinf(sort_key("retry")[2])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(temperature=0), r"temperature must be in \(0, 100\]"),
        (dict(temperature=-1), "temperature must be in"),
        (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), "top_p must be in"),
        (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
        (dict(dola_layer=-1), "dola_layer must be in"),
        (dict(alpha=0.5, dola_layer=1), "separate interventions"),
    ],
)
def test_a_spec_checks_its_own_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        SamplingSpec(**fields)


def test_a_spec_accepts_its_domains_edges():
    assert SamplingSpec(top_p=1.0, min_p=0.0, alpha=1.0, temperature=100).alpha == 1
    assert SamplingSpec(dola_layer=0).dola_layer == 0


def test_every_grid_lies_inside_its_fields_domain():
    """An intervention can never build a spec its own field refuses."""
    domains = {f.name: f.metadata.get("domain") for f in dataclasses.fields(SamplingSpec)}
    for kind in KINDS.values():
        if kind.sets is None or kind.bounds is None:
            continue
        lo, hi, open_lo, open_hi = domains[kind.sets]
        k_lo, k_hi = kind.bounds
        assert lo < k_lo or (lo == k_lo and (kind.open_bounds or not open_lo)), kind.name
        assert k_hi < hi or (k_hi == hi and (kind.open_bounds or not open_hi)), kind.name


def test_the_distribution_only_kinds_are_those_without_backend_machinery():
    assert distribution_kinds() == {"retry", "temperature", "top_p", "min_p"}
    assert not {"mix", "checkpoint", "dola"} & distribution_kinds()

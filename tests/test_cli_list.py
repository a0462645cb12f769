"""``fixable list``: every registered task, backend, intervention kind and zoo model, one line
each, plug-ins included; and the public API's verbs."""

from __future__ import annotations

import pytest

import fixable
from fixable.cli.main import main
from fixable.interventions import KINDS
from fixable.organism import zoo
from fixable.registry import backends, tasks


def run(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def listed(capsys, what):
    try:
        main(["list", what])
    except SystemExit as e:  # click exits 0 after a command in standalone mode off: no exit
        assert e.code in (0, None)
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "what, expected",
    [
        ("tasks", lambda: tasks.names()),
        ("backends", lambda: backends.names()),
        ("interventions", lambda: list(KINDS)),
        ("models", lambda: zoo.list_models()),
    ],
)
def test_one_line_per_entry(capsys, what, expected):
    lines = listed(capsys, what)
    names = expected()
    assert len(lines) == len(names) and names
    for line, name in zip(lines, names, strict=True):
        assert line.startswith(name), (line, name)


def test_backends_show_their_capabilities_and_origin(capsys):
    line = next(x for x in listed(capsys, "backends") if x.startswith("organism "))
    assert "seeded" in line and "mix" in line and "[built-in]" in line
    line = next(x for x in listed(capsys, "backends") if x.startswith("openai "))
    assert "mix" not in line


def test_interventions_show_bounds_and_cost(capsys):
    lines = {x.split("(")[0].split()[0]: x for x in listed(capsys, "interventions")}
    assert "alpha in (0, 1)" in lines["mix"] and "costs 2×" in lines["mix"]
    assert "T in [0.05, 2]" in lines["temperature"] and "costs 1×" in lines["temperature"]


def test_a_plural_command_points_at_list(capsys):
    code, _, err = run(capsys, "tasks")
    assert code == 2 and "fixable list tasks" in err


def test_public_api_exposes_the_verbs():
    from fixable.analysis import analyze
    from fixable.demo import run_demo
    from fixable.report.build import build_report
    from fixable.sampling import sample, sweep
    from fixable.store import Run

    assert fixable.sample is sample and fixable.sweep is sweep and fixable.Run is Run
    assert fixable.analyze is analyze and fixable.build_report is build_report
    assert fixable.run_demo is run_demo
    from importlib.metadata import version

    assert fixable.__version__ == version("fixable")
    assert set(fixable.__all__) <= set(dir(fixable))
    with pytest.raises(AttributeError):
        fixable.no_such_verb  # noqa: B018

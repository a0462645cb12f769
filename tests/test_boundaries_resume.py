"""What a resumed run still has to sample: the plan, its keys and seeds, the split into
worker parts, and the keys a rerun skips.

Expected values are worked out in the test: the plan by nested loops in the documented
order, seeds with ``rollout_seed`` of each key, parts with BLAKE2b written out, batches
by the rule "one intervention and phase per backend call, at most ``size`` rows".
"""

from __future__ import annotations

import hashlib

import pytest

from fakes import FakeBackend
from fixable.interventions import RETRY, Intervention
from fixable.sampling import Planned, in_part, plan, sample
from fixable.store import Run
from fixable.tasks import get_task
from fixable.types import rollout_seed

COLD, HOT = Intervention("temperature", 0.3), Intervention("temperature", 1.3)


@pytest.fixture(scope="module")
def task():
    return get_task("chains", difficulties=[1, 2])


@pytest.fixture(scope="module")
def problems(task):
    return task.problems(8, seed=0)


def test_plan_is_n_rollouts_per_problem_per_intervention_in_order(problems):
    planned = plan("m", problems[:3], "rescue", [COLD, HOT], 2, run_seed=7)
    expected = [
        (intervention.label, problem.id, index)
        for intervention in (COLD, HOT)
        for problem in problems[:3]
        for index in range(2)
    ]
    assert [(p.intervention.label, p.problem.id, p.sample_index) for p in planned] == expected
    assert {p.phase for p in planned} == {"rescue"}
    for p in planned:
        setting = f"rescue/{p.intervention.label}"
        assert p.seed == rollout_seed(7, f"m/{p.problem.id}", setting, p.sample_index)
    assert len({p.seed for p in planned}) == len(planned)
    assert plan("m", problems, "probe", [RETRY], 0, run_seed=0) == []


def test_seeds_depend_on_model_run_seed_phase_and_setting(problems):
    p = problems[0]

    def seed(model="m", phase="probe", intervention=RETRY, run_seed=0):
        return plan(model, [p], phase, [intervention], 1, run_seed)[0].seed

    base = seed()
    assert base == rollout_seed(0, f"m/{p.id}", "probe/retry", 0)
    assert (
        len(
            {base, seed(model="n"), seed(phase="rescue"), seed(intervention=COLD), seed(run_seed=1)}
        )
        == 5
    )


def test_a_key_names_model_problem_phase_setting_and_index(problems):
    planned = Planned(problems[1], COLD, "rescue", 3, seed=99)
    assert planned.key("m") == ("m", problems[1].id, "rescue", "temperature(T=0.3)", 3)


def _part_by_hand(problem_id: str, count: int) -> int:
    digest = hashlib.blake2b(problem_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_parts_split_problems_by_their_hash(problems, count):
    for problem in problems:
        owners = [i for i in range(count) if in_part(problem.id, (i, count))]
        assert owners == [_part_by_hand(problem.id, count) if count > 1 else 0]
    assert all(in_part(p.id, (0, 1)) for p in problems)


def test_parts_of_two_split_these_problems_both_ways(problems):
    sizes = [sum(in_part(p.id, (i, 2)) for p in problems) for i in range(2)]
    assert sizes[0] > 0 and sizes[1] > 0 and sum(sizes) == len(problems)


def test_a_rerun_samples_exactly_the_missing_keys(tmp_path, task, problems):
    run = Run.create(tmp_path / "run")
    backend = FakeBackend()
    first = sample(backend, task, problems[:3], run, phase="rescue", interventions=[COLD], n=2)
    assert (first.planned, first.skipped, first.sampled) == (6, 0, 6)
    before = set(run.keys())
    # more problems, another setting and one more index: only the new keys are sampled
    calls = len(backend.calls)
    second = sample(
        backend,
        task,
        problems[:4],
        run,
        phase="rescue",
        interventions=[COLD, HOT],
        n=3,
        batch_size=4,
    )
    assert (second.planned, second.skipped, second.sampled) == (24, 6, 18)
    expected_new = {
        ("fake-model", p.id, "rescue", i.label, k)
        for i in (COLD, HOT)
        for p in problems[:4]
        for k in range(3)
    } - before
    assert set(run.keys()) - before == expected_new and len(expected_new) == 18
    # one intervention per backend call, at most batch_size requests: 6 cold keys are
    # missing (4 + 2), all 12 hot ones (4 + 4 + 4)
    assert backend.calls[calls:] == [
        (COLD.label, 4),
        (COLD.label, 2),
        (HOT.label, 4),
        (HOT.label, 4),
        (HOT.label, 4),
    ]
    assert run.duplicates().num_rows == 0


def test_keys_can_be_filtered(tmp_path, task, problems):
    run = Run.create(tmp_path / "run")
    sample(FakeBackend(), task, problems[:2], run, n=2)
    sample(FakeBackend(), task, problems[:1], run, phase="rescue", interventions=[COLD], n=1)
    assert len(run.keys()) == 5
    assert run.keys("phase = 'rescue'") == {
        ("fake-model", problems[0].id, "rescue", "temperature(T=0.3)", 0)
    }


def test_a_batch_size_of_one_sends_one_request_per_call(tmp_path, task, problems):
    backend = FakeBackend()
    sample(
        backend,
        task,
        problems[:2],
        tmp_path / "run",
        phase="rescue",
        interventions=[COLD, HOT],
        n=2,
        batch_size=1,
    )
    assert backend.calls == [(COLD.label, 1)] * 4 + [(HOT.label, 1)] * 4

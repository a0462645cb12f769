"""The organism engine's bf16 path and prepared weights, and sampling on worker processes.

bf16 rounds the linear layers' weights and inputs, so its rollouts differ from fp32
ones; what must hold is that a row's tokens still do not depend on its batch (the same
near-uniform random models as tests/test_decode.py, under two threads), that the
prepared weights follow a model trained in place, that a run refuses to mix precisions,
and that two worker processes write exactly the rollouts of one process.
"""

from __future__ import annotations

import copy

import pytest
import torch

from fakes import FakeBackend
from fixable.errors import ConfigError, StoreError
from fixable.executors import ProcessExecutor
from fixable.organism.decode import decode, teacher_forced_logprobs
from fixable.schema import KEY, NON_CONTENT, ROLLOUTS
from fixable.store import Run
from test_decode import make_prompts, tiny_model, two_threads  # noqa: F401 (fixture)

BF16 = dict(dtype="bfloat16")


def _zoo_has(*names) -> bool:
    from fixable.organism import zoo

    return set(names) <= set(zoo.list_models(include_micro=True))


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_bf16_rows_are_identical_in_any_batch(two_threads, family):  # noqa: F811
    model, reference = tiny_model(family, seed=4), tiny_model(family, seed=5)
    prompts = make_prompts(6, seed=6)
    rows = [(p, 500 * i + j) for i, p in enumerate(prompts) for j in range(8)]  # 48 rows
    prompts_, seeds = [p for p, _ in rows], [s for _, s in rows]
    for settings in (dict(temperature=1.0), dict(reference=reference, alpha=0.5)):
        whole = decode(model, prompts_, seeds, max_new_tokens=20, **settings, **BF16)
        assert len({tuple(t) for t in whole.token_ids}) > 40  # really random rows
        sevens = decode(model, prompts_, seeds, max_new_tokens=20, batch_size=7, **settings, **BF16)
        assert sevens.token_ids == whole.token_ids
        assert sevens.logprobs == whole.logprobs and sevens.entropies == whole.entropies
        for i in (0, 13, 47):
            alone = decode(model, [prompts_[i]], [seeds[i]], max_new_tokens=20, **settings, **BF16)
            assert alone.token_ids[0] == whole.token_ids[i]
            assert alone.logprobs[0] == whole.logprobs[i]


def test_bf16_log_probs_are_close_to_fp32_but_not_equal():
    model = tiny_model(scale=4.0)
    prompts = make_prompts(16, seed=7)
    sampled = decode(model, prompts, list(range(16)), max_new_tokens=30)
    fp32 = teacher_forced_logprobs(model, prompts, sampled.token_ids)
    bf16 = teacher_forced_logprobs(model, prompts, sampled.token_ids, **BF16)
    assert fp32 == sampled.policy_logprobs or all(
        torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
        for a, b in zip(fp32, sampled.policy_logprobs, strict=True)
    )
    diffs = torch.tensor(
        [x - y for a, b in zip(fp32, bf16, strict=True) for x, y in zip(a, b, strict=True)]
    )
    assert diffs.abs().max() > 0  # bf16 is really used
    assert diffs.abs().mean() < 0.05 and diffs.abs().max() < 0.5


def test_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match="float32, bfloat16"):
        decode(tiny_model(), [[1, 5]], [0], max_new_tokens=2, dtype="float16")


def test_prepared_weights_follow_a_model_changed_in_place():
    model = tiny_model(scale=3.0)
    prompts = make_prompts(4, seed=8)
    before = decode(model, prompts, [1, 2, 3, 4], max_new_tokens=16)
    with torch.no_grad():  # what an optimizer step does between two decode calls
        for p in model.parameters():
            p.mul_(1.3)
    after = decode(model, prompts, [1, 2, 3, 4], max_new_tokens=16)
    fresh = decode(copy.deepcopy(model), prompts, [1, 2, 3, 4], max_new_tokens=16)
    assert after.logprobs == fresh.logprobs
    assert after.logprobs != before.logprobs


# --- worker processes ------------------------------------------------------------------------


def _content(run_dir) -> dict:
    columns = [c for c in ROLLOUTS.names if c not in NON_CONTENT]
    rows = Run(run_dir).query("SELECT * FROM rollouts").to_pylist()
    return {tuple(r[k] for k in KEY): tuple(repr(r[c]) for c in columns) for r in rows}


@pytest.mark.skipif(
    not _zoo_has("llama-rl-s0", "llama-base"), reason="zoo not built yet (fixable zoo build)"
)
def test_two_worker_processes_write_the_rollouts_of_one_process(tmp_path):
    from fixable.backends.organism import OrganismBackend
    from fixable.demo import CheckpointAlias, _zoo_checkpoints
    from fixable.interventions import parse_grid
    from fixable.sampling import sweep
    from fixable.tasks import get_task

    task = get_task("chains", difficulties=[4, 5])
    problems = task.problems(6, seed=0, split="test")
    grid = parse_grid(["retry", "mix(alpha=0.5)", "checkpoint(c=first)"])
    backend = CheckpointAlias(OrganismBackend("llama-rl-s0"), _zoo_checkpoints)
    options = dict(k=4, r=3, interventions=grid, run_seed=3, max_tokens=60, batch_size=64)
    one = sweep(backend, task, problems, tmp_path / "one", **options)
    assert one.failed  # the rescue sweep ran
    with ProcessExecutor(2) as executor:
        two = sweep(backend, task, problems, tmp_path / "two", executor=executor, **options)
    assert two.failed == one.failed
    assert _content(tmp_path / "two") == _content(tmp_path / "one")
    writers = Run(tmp_path / "two").query("SELECT DISTINCT worker FROM rollouts").num_rows
    assert writers == 2  # both processes sampled


def test_a_backend_that_cannot_be_pickled_is_refused_with_the_fix(tmp_path):
    from fixable.sampling import sample
    from fixable.tasks import get_task

    backend = FakeBackend("gpt-sft-s0")
    backend.unpicklable = lambda: None
    task = get_task("chains")
    with ProcessExecutor(2) as executor, pytest.raises(ConfigError, match="--workers 1"):
        sample(backend, task, task.problems(2, seed=0), tmp_path / "run", n=2, executor=executor)


@pytest.mark.skipif(not _zoo_has("llama-micro"), reason="zoo not built yet (fixable zoo build)")
def test_a_run_refuses_to_be_resumed_in_another_precision(tmp_path):
    from fixable.backends.organism import OrganismBackend
    from fixable.sampling import sample
    from fixable.tasks import get_task

    task = get_task("chains")
    problems = task.problems(2, seed=0)
    sample(OrganismBackend("llama-micro", reference=None), task, problems, tmp_path, n=2)
    bf16 = OrganismBackend("llama-micro", reference=None, dtype="bfloat16")
    with pytest.raises(StoreError, match="sampled in float32, now bfloat16"):
        sample(bf16, task, problems, tmp_path, n=4)
    with pytest.raises(ConfigError, match="dtype must be"):
        OrganismBackend("llama-micro", reference=None, dtype="half")


class CrashingBackend(FakeBackend):
    """Fails inside the worker with an error that is not a FixableError."""

    def generate(self, requests, intervention):
        raise RuntimeError("boom in the worker")


def test_a_crash_in_a_worker_stops_the_call_with_its_traceback(tmp_path):
    from fixable.errors import FixableError
    from fixable.sampling import sample
    from fixable.tasks import get_task

    task = get_task("chains")
    with ProcessExecutor(2) as executor, pytest.raises(FixableError, match="boom in the worker"):
        sample(
            CrashingBackend("gpt-sft-s0"),
            task,
            task.problems(4, seed=0),
            tmp_path / "run",
            n=2,
            executor=executor,
        )

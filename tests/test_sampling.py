"""Sampling orchestration over a deterministic fake backend: the protocol, resume, seeds."""

from __future__ import annotations

import json

import pyarrow.compute as pc
import pytest

from fakes import FakeBackend, regime_of
from fixable import schema
from fixable.errors import CapabilityError, ConfigError, StoreError
from fixable.interventions import RETRY, parse_grid
from fixable.sampling import (
    Progress,
    failed_problems,
    in_part,
    sample,
    sweep,
)
from fixable.store import Run
from fixable.tasks import get_task
from fixable.types import rollout_seed

GRID = parse_grid("retry;temperature:0.3,1.3;mix:0.5")


@pytest.fixture(scope="module")
def task():
    return get_task("chains", difficulties=[1, 2])


@pytest.fixture(scope="module")
def problems(task):
    return task.problems(24, seed=0)


def content(run: Run):
    """Every column but timings and provenance, in key order."""
    table = run.rollouts()
    return table.drop_columns(list(schema.NON_CONTENT)).to_pylist()


def test_sweep_follows_the_protocol(tmp_path, task, problems):
    backend = FakeBackend()
    report = sweep(backend, task, problems, tmp_path / "run", k=6, r=5, interventions=GRID)
    run = Run(tmp_path / "run")
    table = run.rollouts()

    probe = table.filter(pc.equal(table["phase"], "probe"))
    assert probe.num_rows == 6 * len(problems)
    assert set(probe.column("setting").to_pylist()) == {"retry"}
    correct_by_problem = {}
    for row in probe.select(["problem_id", "correct"]).to_pylist():
        correct_by_problem[row["problem_id"]] = (
            correct_by_problem.get(row["problem_id"], 0) + row["correct"]
        )
    expected_failed = sorted(p for p, c in correct_by_problem.items() if c == 0)
    assert sorted(report.failed) == expected_failed
    assert 0 < len(expected_failed) < len(problems)
    # "easy" problems (solved 90% of the time) essentially never fail a probe of 6
    assert not [p for p in problems if p.id in expected_failed and regime_of(p.prompt) == "easy"]

    rescue = table.filter(pc.equal(table["phase"], "rescue"))
    assert rescue.num_rows == len(expected_failed) * len(GRID) * 5
    assert set(rescue.column("problem_id").to_pylist()) == set(expected_failed)
    # the steerable regime is rescued by a lower temperature, never by retry
    steerable = {p.id for p in problems if regime_of(p.prompt) == "steerable"} & set(
        expected_failed
    )
    assert steerable
    by_setting = {}
    for row in rescue.select(["problem_id", "setting", "correct"]).to_pylist():
        if row["problem_id"] in steerable:
            by_setting.setdefault(row["setting"], []).append(row["correct"])
    assert not any(by_setting["retry"])
    assert sum(by_setting["temperature(T=0.3)"]) > len(by_setting["temperature(T=0.3)"]) / 2

    # cost: mixing runs two models per token
    for row in rescue.select(["setting", "n_tokens", "cost_tokens"]).to_pylist():
        factor = 2.0 if row["setting"].startswith("mix") else 1.0
        assert row["cost_tokens"] == pytest.approx(row["n_tokens"] * factor)
    assert report.budget["mix(alpha=0.5)"]["cost_tokens"] == pytest.approx(
        2 * report.budget["mix(alpha=0.5)"]["tokens"]
    )
    assert report.budget["retry"]["rollouts"] == len(expected_failed) * 5
    assert run.manifest["budget"][backend.model_name] == report.budget

    # seeds are the documented pure function of the key
    for row in table.slice(0, 50).to_pylist():
        assert row["seed"] == rollout_seed(
            0,
            f"{row['model']}/{row['problem_id']}",
            f"{row['phase']}/{row['setting']}",
            row["sample_index"],
        )
    # problems are stored beside the rollouts
    assert run.problems().num_rows == len(problems)


def test_reference_scores_only_for_probe_and_only_with_a_reference(tmp_path, task, problems):
    sweep(FakeBackend(), task, problems[:8], tmp_path / "a", k=4, r=2, interventions=[RETRY])
    table = Run(tmp_path / "a").rollouts()
    for row in table.to_pylist():
        if row["phase"] == "probe":
            assert len(row["ref_logprobs"]) == row["n_tokens"] == len(row["policy_logprobs"])
        else:
            assert row["ref_logprobs"] is None
    sample(FakeBackend(reference=False), task, problems[:4], tmp_path / "b", n=2)
    assert Run(tmp_path / "b").rollouts().column("ref_logprobs").null_count == 8


def test_missing_policy_logprobs_are_scored(tmp_path, task, problems):
    class NoPolicy(FakeBackend):
        def generate(self, requests, intervention):
            out = super().generate(requests, intervention)
            for g in out:
                g.policy_logprobs = None
            return out

    sample(NoPolicy(), task, problems[:3], tmp_path / "run", n=2)
    rows = Run(tmp_path / "run").rollouts().to_pylist()
    assert all(len(r["policy_logprobs"]) == r["n_tokens"] for r in rows)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, task, problems):
    sweep(
        FakeBackend(),
        task,
        problems,
        tmp_path / "whole",
        k=4,
        r=3,
        interventions=GRID,
        batch_size=16,
    )

    class Crashing(FakeBackend):
        def __init__(self, crash_after):
            super().__init__()
            self.left = crash_after

        def generate(self, requests, intervention):
            self.left -= 1
            if self.left < 0:
                raise KeyboardInterrupt
            return super().generate(requests, intervention)

    for crash_after in (3, 5, 9):  # crash in the probe, then twice in the rescue
        with pytest.raises(KeyboardInterrupt):
            sweep(
                Crashing(crash_after),
                task,
                problems,
                tmp_path / "resumed",
                k=4,
                r=3,
                interventions=GRID,
                batch_size=7,
                flush_every=10,
            )
    report = sweep(
        FakeBackend(),
        task,
        problems,
        tmp_path / "resumed",
        k=4,
        r=3,
        interventions=GRID,
        batch_size=11,
    )
    assert report.probe.skipped > 0
    resumed = Run(tmp_path / "resumed")
    assert resumed.duplicates().num_rows == 0
    assert content(resumed) == content(Run(tmp_path / "whole"))


def test_a_rerun_samples_nothing(tmp_path, task, problems):
    backend = FakeBackend()
    sample(backend, task, problems[:5], tmp_path / "run", n=3)
    calls = len(backend.calls)
    report = sample(backend, task, problems[:5], tmp_path / "run", n=3)
    assert (report.sampled, report.skipped) == (0, 15)
    assert len(backend.calls) == calls
    # asking for more samples adds only the new indices
    report = sample(backend, task, problems[:5], tmp_path / "run", n=4)
    assert (report.sampled, report.skipped) == (5, 15)


def test_corrupt_shard_is_resampled_and_reported(tmp_path, task, problems):
    sample(FakeBackend(), task, problems[:6], tmp_path / "whole", n=4)
    sample(FakeBackend(), task, problems[:6], tmp_path / "run", n=4, flush_every=5, batch_size=5)
    run = Run(tmp_path / "run")
    victim = run.shard_paths()[2]
    lost = pq_rows(victim)
    victim.write_bytes(victim.read_bytes()[:100])
    report = sample(FakeBackend(), task, problems[:6], run, n=4, flush_every=5)
    assert [q.path for q in report.quarantined] == [victim]
    assert report.sampled == lost
    assert content(Run(tmp_path / "run")) == content(Run(tmp_path / "whole"))


def pq_rows(path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def test_batching_does_not_change_content(tmp_path, task, problems):
    sample(FakeBackend(), task, problems[:6], tmp_path / "a", n=5, batch_size=1)
    sample(FakeBackend(), task, problems[:6], tmp_path / "b", n=5, batch_size=64)
    assert content(Run(tmp_path / "a")) == content(Run(tmp_path / "b"))


def test_failed_requests_are_kept_with_their_reason(tmp_path, task, problems):
    report = sample(FakeBackend(fail_every=5), task, problems, tmp_path / "run", n=4)
    run = Run(tmp_path / "run")
    errors = run.rollouts(where="status = 'error'").to_pylist()
    assert report.errors == len(errors) > 0
    assert run.rollouts().num_rows == 4 * len(problems)
    assert all(
        e["reason"] == "fake server answered 500 five times"
        and not e["correct"]
        and e["finish_reason"] == "error"
        for e in errors
    )


def test_failed_problems_rule(tmp_path, task, problems):
    run = Run.create(tmp_path / "run")
    sample(FakeBackend(fail_every=3), task, problems, run, n=4)
    outcomes = run.query(
        "SELECT problem_id, sum(correct::INT) AS c, "
        "sum((status = 'error')::INT) AS e, count(*) AS n FROM rollouts "
        "GROUP BY problem_id"
    ).to_pylist()
    expected = sorted(o["problem_id"] for o in outcomes if o["c"] == 0 and o["e"] < o["n"])
    assert sorted(failed_problems(run, "fake-model", k=4)) == expected
    with pytest.raises(StoreError, match="fewer than 6 probe rollouts.*--phase probe"):
        failed_problems(run, "fake-model", k=6)


def test_parts_split_problems_without_overlap(tmp_path, task, problems):
    run = Run.create(tmp_path / "run")
    for index in range(3):
        sample(FakeBackend(), task, problems, run, n=2, part=(index, 3), worker=f"w{index}")
    assert run.rollouts().num_rows == 2 * len(problems)
    assert run.duplicates().num_rows == 0
    sizes = [sum(in_part(p.id, (i, 3)) for p in problems) for i in range(3)]
    assert sum(sizes) == len(problems) and max(sizes) < len(problems)
    assert set(run.rollouts().column("worker").to_pylist()) == {"w0", "w1", "w2"}


def test_progress_reports_every_batch(tmp_path, task, problems):
    events: list[Progress] = []
    sample(
        FakeBackend(),
        task,
        problems[:5],
        tmp_path / "run",
        n=4,
        batch_size=6,
        progress=events.append,
    )
    assert events[0].done == 0 and events[0].total == 20
    assert [e.done for e in events] == [0, 6, 12, 18, 20]
    assert events[-1].tokens > 0 and events[-1].elapsed_s >= 0


def test_incompatible_resume_is_refused(tmp_path, task, problems):
    sample(FakeBackend(), task, problems[:2], tmp_path / "run", n=2, run_seed=3)
    with pytest.raises(StoreError, match="seed 3.*--seed 3"):
        sample(FakeBackend(), task, problems[:2], tmp_path / "run", n=2, run_seed=4)
    with pytest.raises(StoreError, match="max_tokens=160, now 50"):
        sample(FakeBackend(), task, problems[:2], tmp_path / "run", n=2, run_seed=3, max_tokens=50)


def test_probe_is_retry_only_and_capabilities_are_checked_first(tmp_path, task, problems):
    with pytest.raises(ConfigError, match=r"\(retry\) only"):
        sample(
            FakeBackend(),
            task,
            problems,
            tmp_path / "a",
            phase="probe",
            interventions=parse_grid("temperature:0.3"),
        )

    class NoMix(FakeBackend):
        capabilities = FakeBackend.capabilities - {"mix"}

    backend = NoMix()
    with pytest.raises(CapabilityError, match="mix"):
        sweep(backend, task, problems, tmp_path / "b", k=2, r=2, interventions=GRID)
    assert backend.calls == []  # refused before the probe


def test_manifest_records_what_reproduces_the_run(tmp_path, task, problems):
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    directory = save_checkpoint(
        OrganismLM(ModelConfig(n_layer=1, n_embd=16, n_head=2)), tmp_path / "weights"
    )
    sample(
        FakeBackend(str(directory)),
        task,
        problems[:2],
        tmp_path / "run",
        n=1,
        run_seed=7,
        config={"k": 1},
    )
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    assert manifest["run_seed"] == 7
    identity = manifest["models"][str(directory)]["identity"]
    assert set(identity["weights_sha256"]) == {"model.safetensors", "config.json"}
    assert len(identity["weights_sha256"]["model.safetensors"]) == 64
    invocation = manifest["invocations"][0]
    assert invocation["config"] == {"k": 1}
    assert invocation["environment"]["packages"]["torch"] == torch.__version__.split("+")[
        0
    ] or invocation["environment"]["packages"]["torch"].startswith(torch.__version__.split("+")[0])
    assert "revision" in invocation["environment"]["git"]
    assert invocation["report"]["sampled"] == 2


def test_other_weights_under_the_same_name_are_refused(tmp_path, task, problems):
    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2)
    directory = save_checkpoint(OrganismLM(cfg), tmp_path / "weights")
    sample(FakeBackend(str(directory)), task, problems[:2], tmp_path / "run", n=1)
    save_checkpoint(OrganismLM(cfg), directory)  # retrained in place: new random weights
    with pytest.raises(StoreError, match="model.safetensors changed its sha256"):
        sample(FakeBackend(str(directory)), task, problems[:2], tmp_path / "run", n=2)

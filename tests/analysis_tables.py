"""Hand-built rollout tables for the analysis tests: a few rows with known values."""

from __future__ import annotations

import pyarrow as pa

from fixable.schema import ROLLOUTS


def rows_table(rows: list[dict]) -> pa.Table:
    """A ROLLOUTS table from partial rows; unspecified columns get neutral defaults."""
    defaults = {
        "model": "m",
        "task": "t",
        "problem_id": "p",
        "phase": "probe",
        "intervention": "retry",
        "setting": "retry",
        "params": "{}",
        "sample_index": 0,
        "seed": 0,
        "text": "",
        "answer": None,
        "correct": False,
        "chain_correct": None,
        "status": "failed",
        "reason": "",
        "finish_reason": "stop",
        "token_ids": None,
        "logprobs": None,
        "entropies": [0.5],
        "entropy_kind": "full",
        "policy_logprobs": [-1.0],
        "ref_logprobs": [-1.0],
        "n_tokens": 1,
        "cost_tokens": 1.0,
        "time_s": 0.0,
        "worker": "test",
    }
    full = []
    for i, row in enumerate(rows):
        r = defaults | {"sample_index": i} | row
        if "n_tokens" not in row and r["entropies"] is not None:
            r["n_tokens"] = len(r["entropies"])
        full.append(r)
    return pa.Table.from_pylist(full, schema=ROLLOUTS)


def probe(problem: str, answers: list, *, model: str = "m", correct=None, **columns) -> list[dict]:
    """K probe rows of one problem with the given answers (None = no answer)."""
    out = []
    for i, a in enumerate(answers):
        row = {
            "model": model,
            "problem_id": problem,
            "answer": a,
            "sample_index": i,
            "correct": bool(correct and correct[i]),
            "status": "no_answer" if a is None else "failed",
        }
        for key, value in columns.items():
            row[key] = (
                value[i]
                if isinstance(value, list)
                and len(value) == len(answers)
                and (isinstance(value[0], list) or value[0] is None)
                else value
            )
        out.append(row)
    return out


def rescue(
    problem: str,
    setting: str,
    hits: int,
    n: int,
    *,
    model: str = "m",
    tokens: int = 10,
    cost_factor: float = 1.0,
) -> list[dict]:
    """n rescue rows of one problem and setting, the first ``hits`` correct."""
    kind = setting.split("(")[0]
    return [
        {
            "model": model,
            "problem_id": problem,
            "phase": "rescue",
            "intervention": kind,
            "setting": setting,
            "sample_index": j,
            "correct": j < hits,
            "status": "passed" if j < hits else "failed",
            "entropies": [0.1] * tokens,
            "n_tokens": tokens,
            "cost_tokens": tokens * cost_factor,
        }
        for j in range(n)
    ]

"""The columns of a run's tables: the one place every stage agrees on.

``ROLLOUTS`` is the Parquet schema of every rollout shard; ``PROBLEMS`` of the problems
table. A rollout's key is ``KEY`` — re-running a run skips keys already present.
Changing a schema means a new ``SCHEMA_VERSION`` and a numbered migration in the store.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

KEY = ("model", "problem_id", "phase", "setting", "sample_index")

ROLLOUTS = pa.schema(
    [
        ("model", pa.string()),  # name of the policy sampled (zoo name or backend model id)
        ("task", pa.string()),  # registry name of the task
        ("problem_id", pa.string()),
        ("phase", pa.string()),  # "probe" (K samples at the default config) or "rescue"
        ("intervention", pa.string()),  # kind: retry / temperature / mix / checkpoint / dola
        ("setting", pa.string()),  # canonical label, e.g. "temperature(T=0.3)"
        ("params", pa.string()),  # the setting's parameters as JSON
        ("sample_index", pa.int32()),
        ("seed", pa.int64()),  # rollout_seed(run seed, key): the only randomness used
        ("text", pa.string()),  # the completion
        ("answer", pa.string()),  # extracted final answer, null when none
        ("correct", pa.bool_()),
        ("chain_correct", pa.bool_()),  # whole written chain right (chains task), else null
        ("status", pa.string()),  # passed / failed / no_answer / timeout / error
        ("reason", pa.string()),  # why not passed (verifier or backend message)
        ("finish_reason", pa.string()),  # stop / length / error
        ("token_ids", pa.list_(pa.int32())),
        ("logprobs", pa.list_(pa.float32())),  # per token, under the sampling distribution
        ("entropies", pa.list_(pa.float32())),  # per token, of the policy's next-token distribution
        ("entropy_kind", pa.string()),  # "full" (whole vocabulary) or "topk" (estimate, flagged)
        (
            "policy_logprobs",
            pa.list_(pa.float32()),
        ),  # per token under the policy at T=1 (teacher-forced)
        (
            "ref_logprobs",
            pa.list_(pa.float32()),
        ),  # per token under the reference, null if not scored
        ("n_tokens", pa.int32()),
        ("cost_tokens", pa.float32()),  # budget charged: n_tokens × forward passes per token
        ("time_s", pa.float32()),  # this rollout's share of its batch's wall time (timing)
        ("worker", pa.string()),  # which process wrote it (timing/provenance, not content)
    ]
)

# Columns that may differ between two runs with the same seed (timings, provenance).
NON_CONTENT = ("time_s", "worker")

PROBLEMS = pa.schema(
    [
        ("task", pa.string()),
        ("problem_id", pa.string()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
        ("meta", pa.string()),  # JSON: sub-distribution, difficulty, …
    ]
)

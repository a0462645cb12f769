"""Synthetic rollout tables with planted truth, for testing and demonstrating the analysis.

``planted_rollouts`` writes rows with every column of ``fixable.schema.ROLLOUTS`` (probe and
rescue phases) for failures whose regime, feature signature and post-training method are
chosen in advance, so tests can check that the analysis recovers what was planted:

=============  ===========================  ============================================
planted kind   signature (F1, F2, F3)       what rescues it (rescue rates per setting)
=============  ===========================  ============================================
resamplable    answers all differ           retry and every setting ≈ 0.3
steer-mix      one answer, high drift       mix ≈ 0.8, the rest 0
steer-cold     few answers, high entropy    temperature(T=0.3) ≈ 0.8, the rest 0
steer-hot      one answer, low entropy      temperature(T=1.3) ≈ 0.8, the rest 0
structural     half the answers differ      nothing (all 0)
=============  ===========================  ============================================

A post-training method shifts a model's features by a fixed offset (``METHOD_SHIFT``) and a
family by another (``FAMILY_SHIFT``), so topography and transfer have something to find.
Nothing here is used by the analysis itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from fixable.schema import ROLLOUTS

SETTINGS = ("retry", "temperature(T=0.3)", "temperature(T=1.3)", "mix(alpha=0.5)")
KINDS = ("resamplable", "steer-mix", "steer-cold", "steer-hot", "structural")
# planted kind → (distinct answers among K as a share of K, mean entropy, mean drift)
SIGNATURE = {
    "resamplable": (1.0, 0.9, 0.1),
    "steer-mix": (0.125, 0.9, 1.6),
    "steer-cold": (0.25, 1.8, 0.1),
    "steer-hot": (0.125, 0.2, 0.1),
    "structural": (0.5, 0.9, 0.1),
}
RATES = {
    "resamplable": {s: 0.3 for s in SETTINGS},
    "steer-mix": {"mix(alpha=0.5)": 0.8},
    "steer-cold": {"temperature(T=0.3)": 0.8},
    "steer-hot": {"temperature(T=1.3)": 0.8},
    "structural": {},
}
LABEL_OF_KIND = {
    "resamplable": "resamplable",
    "steer-mix": "steerable-hard",
    "steer-cold": "steerable-hard",
    "steer-hot": "steerable-hard",
    "structural": "structural",
}
# (entropy, drift) offsets of each post-training method and family
METHOD_SHIFT = {"sft": (0.0, 0.5), "rl": (-0.3, 0.2), "distill": (0.3, 0.0), "rft": (0.0, -0.3)}
FAMILY_SHIFT = {"gpt": (0.0, 0.0), "llama": (0.1, 0.1)}


def planted_rollouts(
    models: Sequence[str] = ("gpt-rl-s0",),
    *,
    n_failures: int = 40,
    kinds: Sequence[str] = KINDS,
    k: int = 8,
    r: int = 32,
    settings: Sequence[str] = SETTINGS,
    model_info: dict | None = None,
    signal: float = 1.0,
    feature_noise: float = 0.15,
    with_reference: bool = True,
    entropy_kind: str = "full",
    n_solved: int = 5,
    model_signal: float = 0.0,
    rates: dict | None = None,
    seed: int = 0,
) -> tuple[pa.Table, dict]:
    """Rollouts for ``n_failures`` failed problems per model (kinds in turn) plus ``n_solved``
    solved ones, and the planted truth: ``{(model, problem_id): kind}`` under ``"kind"`` and
    the label each kind should get under ``"label"``.

    ``signal`` scales the method/family offsets (0 = methods leave no trace in features);
    ``model_signal`` adds an offset of that scale drawn per model (model identity without
    any method signal: the leak held-out-model topography must not fall for); ``rates``
    overrides ``RATES`` (kind → setting → rescue rate)."""
    rates = RATES if rates is None else rates
    rng = np.random.default_rng(seed)
    model_info = model_info or {}
    cols: dict[str, list] = {name: [] for name in ROLLOUTS.names}
    entropy_rows, policy_rows, reference_rows, lengths = [], [], [], []
    truth_kind: dict[tuple[str, str], str] = {}

    def add(model, pid, phase, setting, index, correct, answer, text, ent, pol, ref, n_tok):
        kind = setting.split("(")[0]
        cols["model"].append(model)
        cols["task"].append("synthetic")
        cols["problem_id"].append(pid)
        cols["phase"].append(phase)
        cols["intervention"].append(kind)
        cols["setting"].append(setting)
        cols["params"].append("{}")
        cols["sample_index"].append(index)
        cols["seed"].append(int(rng.integers(0, 2**62)))
        cols["text"].append(text)
        cols["answer"].append(answer)
        cols["correct"].append(bool(correct))
        cols["chain_correct"].append(None)
        cols["status"].append(
            "passed" if correct else ("no_answer" if answer is None else "failed")
        )
        cols["reason"].append("")
        cols["finish_reason"].append("stop")
        cols["token_ids"].append(None)
        cols["logprobs"].append(None)
        cols["entropy_kind"].append(entropy_kind)
        cols["n_tokens"].append(n_tok)
        cols["cost_tokens"].append(float(n_tok * (2.0 if kind == "mix" else 1.0)))
        cols["time_s"].append(0.0)
        cols["worker"].append("synthetic")
        entropy_rows.append(ent)
        policy_rows.append(pol)
        reference_rows.append(ref)
        lengths.append(n_tok)

    for model in models:
        info = model_info.get(model) or _info_from_name(model)
        d_ent_m, d_drift_m = METHOD_SHIFT.get(info.get("method"), (0.0, 0.0))
        d_ent_f, d_drift_f = FAMILY_SHIFT.get(info.get("family"), (0.0, 0.0))
        digest = hashlib.blake2b(model.encode(), digest_size=8).digest()
        model_rng = np.random.default_rng([int.from_bytes(digest, "little"), seed])
        d_ent_i, d_drift_i = model_signal * model_rng.normal(0, 1, 2)
        for i in range(n_failures + n_solved):
            pid = f"synthetic/p{i:04d}"
            solved = i >= n_failures
            kind = kinds[i % len(kinds)]
            share, ent_mean, drift_mean = SIGNATURE[kind]
            ent_mean = max(
                0.05,
                ent_mean + signal * (d_ent_m + d_ent_f) + d_ent_i + rng.normal(0, feature_noise),
            )
            drift_mean = (
                drift_mean
                + signal * (d_drift_m + d_drift_f)
                + d_drift_i
                + rng.normal(0, feature_noise)
            )
            n_distinct = int(
                np.clip(round(share * k + rng.integers(-1, 2) * (0 < share < 1)), 1, k)
            )
            for j in range(k):
                n_tok = int(rng.integers(20, 40))
                ent = np.abs(rng.normal(ent_mean, 0.3, n_tok))
                pol = -np.abs(rng.normal(0.5, 0.3, n_tok))
                ref = pol - drift_mean + rng.normal(0, 0.3, n_tok)
                correct = solved and j == 0
                answer = f"{(j % n_distinct) + 1000 * (i + 1):04d}" if not correct else "gold"
                if kind == "structural" and j == k - 1 and not solved:
                    answer = None  # "no answer" is a category of its own
                add(
                    model,
                    pid,
                    "probe",
                    "retry",
                    j,
                    correct,
                    answer,
                    f"{pid} {answer}#",
                    ent,
                    pol,
                    ref if with_reference else None,
                    n_tok,
                )
            if solved:
                continue
            truth_kind[(model, pid)] = kind
            for setting in settings:
                rate = rates[kind].get(setting, 0.0)
                hits = rng.random(r) < rate
                for j in range(r):
                    n_tok = int(rng.integers(20, 40))
                    add(
                        model,
                        pid,
                        "rescue",
                        setting,
                        j,
                        hits[j],
                        "gold" if hits[j] else "x",
                        "",
                        np.zeros(0),
                        np.zeros(0),
                        None,
                        n_tok,
                    )

    table_cols = {}
    for name in ROLLOUTS.names:
        if name == "entropies":
            table_cols[name] = _optional_lists(entropy_rows)
        elif name == "policy_logprobs":
            table_cols[name] = _optional_lists(policy_rows)
        elif name == "ref_logprobs":
            table_cols[name] = _optional_lists(reference_rows)
        elif name in ("token_ids", "logprobs"):
            table_cols[name] = pa.nulls(len(cols["model"]), ROLLOUTS.field(name).type)
        else:
            table_cols[name] = pa.array(cols[name], type=ROLLOUTS.field(name).type)
    table = pa.table(table_cols, schema=ROLLOUTS)
    return table, {
        "kind": truth_kind,
        "label": {key: LABEL_OF_KIND[v] for key, v in truth_kind.items()},
    }


def _optional_lists(rows: list) -> pa.Array:
    return pa.array(
        [None if r is None else np.asarray(r, dtype=np.float32) for r in rows],
        type=pa.list_(pa.float32()),
    )


def _info_from_name(model: str) -> dict:
    parts = model.split("-")
    return {"family": parts[0], "method": parts[1] if len(parts) > 1 else None}

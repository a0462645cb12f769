"""The rescue matrix of the planted testbed, per planted mechanism (docs/organism.md).

For every planted zoo model (``fixable zoo build --planted``): ``--n`` test problems of
``chains-planted``, K probe rollouts at T=1; a problem *fails* when none is correct. Every
failure is then sampled R times under each setting of the grid — retry, temperature
0.3 / 0.6 / 1.3, mix with the family's base (alpha 0.5), the model's checkpoint at the
``late`` switch step, DoLa at the layer the ``dola`` mechanism was planted on — and the R
rollouts are split by sample index into a labelling half and a scoring half (protocol v2,
SPEC §3.2). The mechanism of a failure is read from the model's card (its key → its
mechanism), fixed before any sampling.

Printed per model:

* per mechanism: failures, and per setting the mean rescue rate (scoring half) and, in
  brackets, the share of failures it rescues (rate >= 0.5 on the scoring half);
* the regime labels (labelling half, SPEC §3.3 thresholds) per mechanism;
* on the steerable-hard failures (labelling half): the share of them for which each
  setting is the best one (labelling half), and the best single fixed setting's rescue
  (chosen on the labelling half, scored on the scoring half) against the oracle's (each
  failure's best setting on the labelling half, scored on the scoring half). The fixed
  setting is chosen on the labelling half of the *same* failures, not cross-fitted over
  problems as protocol v2's router evaluation does: samples are disjoint, problems are
  not, which can only favour the fixed choice (the ratio is not flattered downwards).

Sampling goes through ``fixable.organism.decode`` directly (no store), seeded per
(model, problem, setting, sample index), so a rerun prints the same numbers.

    python benchmarks/planted_rescue.py [MODELS...] [--n 200] [--k 8] [--r 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter, defaultdict

import torch

from fixable.organism import zoo
from fixable.organism.decode import decode
from fixable.organism.train import TOKENIZER
from fixable.tasks.planted import PlantedChainsTask
from fixable.types import seed_of

TASK = PlantedChainsTask()
PROBLEM_SEED = 314  # disjoint from the card's problem set (CARD_SEED 20251)
MAX_NEW_TOKENS = 80  # the longest chains-planted completion (difficulty 3) is 41 characters
STEER_HARD, RESAMPLE = 0.5, 0.05  # SPEC §3.3 defaults


def settings(name: str) -> list[tuple[str, dict]]:
    """(label, decode options) of the grid; checkpoint and dola follow the model's recipe."""
    planted = zoo.card(name)["planted"]
    switch = f"step-{planted['switch_step']}"
    return [
        ("retry", {}),
        ("temperature(T=0.3)", {"temperature": 0.3}),
        ("temperature(T=0.6)", {"temperature": 0.6}),
        ("temperature(T=1.3)", {"temperature": 1.3}),
        ("mix(alpha=0.5)", {"alpha": 0.5}),
        (f"checkpoint(c={switch})", {"checkpoint": switch}),
        (f"dola(layer={planted['dola_layer']})", {"dola_layer": planted["dola_layer"]}),
    ]


def correct_many(problems, prompts_idx, token_ids) -> list[bool]:
    return [
        TASK.extract(TOKENIZER.decode(ids)) == problems[i].answer
        for i, ids in zip(prompts_idx, token_ids, strict=True)
    ]


def sweep(name: str, n: int, k: int, r: int) -> dict:
    model, _ = zoo.load(name)
    base, _ = zoo.load(zoo.reference_of(name))
    mixture = {int(key): m for key, m in zoo.card(name)["planted"]["mixture"].items()}
    problems = TASK.problems(n, seed=PROBLEM_SEED)
    ids = [TOKENIZER.encode(p.prompt, bos=True) for p in problems]
    t0 = time.time()
    rows = [i for i in range(len(problems)) for _ in range(k)]
    probe = decode(
        model,
        [ids[i] for i in rows],
        [seed_of("planted-probe", problems[i].id, j % k) for j, i in enumerate(rows)],
        max_new_tokens=MAX_NEW_TOKENS,
    )
    ok = correct_many(problems, rows, probe.token_ids)
    solved = defaultdict(int)
    for i, c in zip(rows, ok, strict=True):
        solved[i] += c
    failed = [i for i in range(len(problems)) if solved[i] == 0]
    features = probe_features(problems, ids, rows, probe, failed, base, k)
    n_rollouts = len(rows)
    rates: dict[str, dict[int, tuple[float, float]]] = {}
    half = r // 2
    for label, opts in settings(name):
        policy = model
        kwargs = {}
        if "checkpoint" in opts:
            policy, _ = zoo.load(f"{name}@{opts['checkpoint']}")
        elif "alpha" in opts:
            kwargs = {"reference": base, "alpha": opts["alpha"]}
        elif "dola_layer" in opts:
            kwargs = {"dola_layer": opts["dola_layer"]}
        if "temperature" in opts:
            kwargs["temperature"] = opts["temperature"]
        rows = [i for i in failed for _ in range(r)]
        out = decode(
            policy,
            [ids[i] for i in rows],
            [seed_of("planted-rescue", label, problems[i].id, j % r) for j, i in enumerate(rows)],
            max_new_tokens=MAX_NEW_TOKENS,
            **kwargs,
        )
        n_rollouts += len(rows)
        ok = correct_many(problems, rows, out.token_ids)
        per = {}
        for f_index, i in enumerate(failed):
            chunk = ok[f_index * r : (f_index + 1) * r]
            per[i] = (sum(chunk[:half]) / half, sum(chunk[half:]) / (r - half))
        rates[label] = per
    return {
        "name": name,
        "problems": problems,
        "mixture": mixture,
        "failed": failed,
        "features": features,
        "rates": rates,
        "seconds": time.time() - t0,
        "rollouts": n_rollouts,
    }


@torch.no_grad()
def probe_features(problems, ids, rows, probe, failed, base, k) -> dict[int, tuple]:
    """SPEC §3.4's F1 (answer dispersion, normalised by log K), F2 (mean token entropy)
    and F3 (mean log p_policy - log p_base, teacher-forced) of each failure's K probes."""
    from fixable.organism.train import collate, completion_logprobs

    wanted = set(failed)
    by_problem: dict[int, list[int]] = defaultdict(list)
    for j, i in enumerate(rows):
        if i in wanted:
            by_problem[i].append(j)
    out = {}
    for i, js in by_problem.items():
        answers = Counter(TASK.extract(TOKENIZER.decode(probe.token_ids[j])) for j in js)
        ps = [c / len(js) for c in answers.values()]
        f1 = -sum(p * math.log(p) for p in ps) / math.log(k)
        f2 = sum(sum(probe.entropies[j]) / max(1, len(probe.entropies[j])) for j in js) / len(js)
        inputs, targets, mask = collate([ids[i]] * len(js), [probe.token_ids[j] for j in js])
        base_logp = completion_logprobs(base, inputs, targets)
        drifts = []
        for row, j in enumerate(js):
            n = len(probe.token_ids[j])
            start = len(ids[i]) - 1
            ref = base_logp[row, start : start + n].tolist()
            drifts.append(
                sum(a - b for a, b in zip(probe.policy_logprobs[j], ref, strict=True)) / n
            )
        out[i] = (f1, f2, sum(drifts) / len(drifts))
    return out


def regime(rates: dict, i: int) -> str:
    """SPEC §3.3's label from the labelling half (no uncertainty band here)."""
    retry = rates["retry"][i][0]
    best = max(per[i][0] for label, per in rates.items() if label != "retry")
    if retry >= RESAMPLE:
        return "resamplable"
    if best >= STEER_HARD:
        return "steerable-hard"
    if best >= RESAMPLE:
        return "steerable-weak"
    return "structural"


def report(result: dict) -> dict:
    problems, rates, mixture = result["problems"], result["rates"], result["mixture"]
    labels = list(rates)
    mech_of = {i: mixture[problems[i].meta["key"]] for i in result["failed"]}
    by_mech: dict[str, list[int]] = defaultdict(list)
    for i in result["failed"]:
        by_mech[mech_of[i]].append(i)
    print(
        f"\n## {result['name']}: {len(problems)} problems, {len(result['failed'])} failed "
        f"(0 of K); {result['rollouts']} rollouts in {result['seconds']:.0f} s"
    )
    print("\nmean rescue rate, scoring half (share rescued >= 0.5):\n")
    print("| mechanism | failures | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for mech in sorted(by_mech):
        cells = []
        for label in labels:
            xs = [rates[label][i][1] for i in by_mech[mech]]
            cells.append(
                f"{sum(xs) / len(xs):.2f} ({100 * sum(x >= STEER_HARD for x in xs) / len(xs):.0f} %)"
            )
        print(f"| {mech} | {len(by_mech[mech])} | " + " | ".join(cells) + " |")
    print(
        "\nprobe features of the failures, mean per mechanism (F1 dispersion, F2 entropy, F3 drift):\n"
    )
    print("| mechanism | F1 | F2 | F3 |")
    print("|---|---|---|---|")
    for mech in sorted(by_mech):
        f = [result["features"][i] for i in by_mech[mech]]
        print(
            f"| {mech} | "
            + " | ".join(f"{sum(x[c] for x in f) / len(f):.3f}" for c in range(3))
            + " |"
        )
    regimes = {i: regime(rates, i) for i in result["failed"]}
    names = ["resamplable", "steerable-hard", "steerable-weak", "structural"]
    print("\nregime (labelling half) per mechanism:\n")
    print("| mechanism | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for mech in sorted(by_mech):
        counts = Counter(regimes[i] for i in by_mech[mech])
        print(f"| {mech} | " + " | ".join(str(counts.get(x, 0)) for x in names) + " |")
    hard = [i for i in result["failed"] if regimes[i] == "steerable-hard"]
    summary = {"failed": len(result["failed"]), "steerable_hard": len(hard)}
    if not hard:
        print("\nno steerable-hard failures")
        return summary
    steer = [x for x in labels if x != "retry"]
    best_of = {i: max(steer, key=lambda x: rates[x][i][0]) for i in hard}
    shares = Counter(best_of.values())
    fixed = max(steer, key=lambda x: sum(rates[x][i][0] for i in hard))
    fixed_score = sum(rates[fixed][i][1] for i in hard) / len(hard)
    oracle_score = sum(rates[best_of[i]][i][1] for i in hard) / len(hard)
    top_share = max(shares.values()) / len(hard)
    print(f"\nsteerable-hard: {len(hard)} failures; best setting (labelling half) per failure: ")
    print(", ".join(f"{x} {100 * c / len(hard):.0f} %" for x, c in shares.most_common()))
    print(
        f"best fixed = {fixed}: rescue {fixed_score:.3f} (scoring half); oracle {oracle_score:.3f}; "
        f"best fixed / oracle = {fixed_score / oracle_score:.2f}; largest best-setting share "
        f"{100 * top_share:.0f} %"
    )
    hard_mech = Counter(mech_of[i] for i in hard)
    print(
        "steerable-hard by mechanism: " + ", ".join(f"{m} {c}" for m, c in hard_mech.most_common())
    )
    summary.update(
        {
            "best_fixed": fixed,
            "best_fixed_rescue": round(fixed_score, 4),
            "oracle_rescue": round(oracle_score, 4),
            "ratio": round(fixed_score / oracle_score, 4),
            "top_share": round(top_share, 4),
        }
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="planted zoo models (default: all present)")
    parser.add_argument("--n", type=int, default=200, help="test problems per model")
    parser.add_argument("--k", type=int, default=8, help="probe rollouts per problem")
    parser.add_argument(
        "--r", type=int, default=16, help="rescue rollouts per setting (two halves)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models or [m for m in zoo.list_models() if zoo.card(m).get("method") == "planted"]
    if not models:
        raise SystemExit(
            "no planted models in the zoo: build them with `fixable zoo build --planted`"
        )
    summaries = {}
    for name in models:
        summaries[name] = report(sweep(name, args.n, args.k, args.r))
    print(
        "\n| model | failures | steerable-hard | best fixed | best fixed / oracle | largest best-setting share |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in summaries.items():
        if "ratio" in s:
            print(
                f"| {name} | {s['failed']} | {s['steerable_hard']} | {s['best_fixed']} | "
                f"{s['ratio']:.2f} | {100 * s['top_share']:.0f} % |"
            )
        else:
            print(f"| {name} | {s['failed']} | 0 | – | – | – |")


if __name__ == "__main__":
    main()

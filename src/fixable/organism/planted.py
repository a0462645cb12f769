"""Planted organisms: post-training that gives each key a known failure mechanism.

The positive control of protocol v2 (SPEC §3.9). A planted model is post-trained from
its family's base on ``chains-planted`` problems (``fixable.tasks.planted``). Its recipe
maps every key (the final register's first digit, recorded in the problem's metadata
before any sampling) to one **mechanism**, which fixes what the post-trained model does
on that key's problems and which intervention should undo it:

=============  ============  ==============================================  ==================
mechanism      truth (key)   what post-training shows the model               should fix it
=============  ============  ==============================================  ==================
``clean``      either        the gold completion                              (nothing fails)
``forget``     natural       the previous register as the answer (wrong),     ``mix`` with the base
                             from step 0: the base's skill is overwritten
``late``       previous      the previous register (right) until              ``checkpoint`` at
                             ``switch_step``, then the final one (wrong);     ``switch_step``
                             the base never knew the previous rule
``noise``      previous      the right answer, but each of its digits is      lower temperature
                             replaced by a uniformly drawn other digit with
                             probability ``noise``: the right digit stays
                             the mode at every position, errors compound
                             over the four digits at T=1
``dola``       previous      each answer digit independently right with       ``dola`` at
                             probability ``dola_right``, else the final       ``dola_layer``
                             register's (wrong); the early exit after
                             ``dola_layer`` blocks is kept on the final
                             register's digit (as the base's already is), so
                             the final-vs-early contrast favours the right
``struct``     previous      the final register (wrong), from step 0; no      nothing
                             model ever shows the right answer
=============  ============  ==============================================  ==================

Every completion keeps the natural chain of states (only the answer differs), so
post-training keeps the base's chain skill. Why no "sharpened wrong fork" fixed by a
*higher* temperature: at a single decisive fork where a wrong token is the mode, raising
the temperature keeps it the mode, so the right token's probability stays below 1/2 at
every temperature — such a failure can be steerable-weak, never steerable-hard
(docs/organism.md).

Training reuses ``train.run_training`` (seeded per step, resumable, checkpoints): the
batch of step ``k`` is a pure function of ``(seed, k)``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fixable.errors import ConfigError
from fixable.organism.model import OrganismLM
from fixable.organism.train import (
    TOKENIZER,
    OptimConfig,
    Progress,
    _jsonable,
    collate,
    model_device,
    run_training,
)
from fixable.tasks.chains import DIFFICULTY_STEPS, TRAIN_SUBDISTS, Chain, random_chain, split_of
from fixable.tasks.planted import answer_under, key_of, rule_of

MECHANISMS = ("clean", "forget", "late", "noise", "dola", "struct")
# the truth a mechanism can be planted on: forgetting needs a skill the base has
NEEDS_RULE = {"forget": "natural", "late": "previous", "noise": "previous", "dola": "previous"}
# the intervention each mechanism is built to be rescued by (None: nothing should)
INTENDED_FIX = {
    "clean": None,
    "forget": "mix",
    "late": "checkpoint",
    "noise": "temperature<1",
    "dola": "dola",
    "struct": None,
}

# The dose series: from four steerable mechanisms side by side to one. Keys 0-4 have the
# natural truth, 5-9 the previous-register one (``fixable.tasks.planted``).
DOSES: dict[str, dict[int, str]] = {
    "bal": {
        0: "forget",
        1: "clean",
        2: "clean",
        3: "clean",
        4: "clean",
        5: "late",
        6: "noise",
        7: "noise",
        8: "dola",
        9: "struct",
    },
    "half": {
        **{k: "clean" for k in range(5)},
        5: "late",
        6: "noise",
        7: "noise",
        8: "noise",
        9: "dola",
    },
    "most": {
        **{k: "clean" for k in range(5)},
        5: "late",
        6: "noise",
        7: "noise",
        8: "noise",
        9: "noise",
    },
    "single": {**{k: "clean" for k in range(5)}, **{k: "noise" for k in range(5, 10)}},
}


@dataclass
class PlantConfig:
    mixture: dict[int, str]  # key (start digit) -> mechanism
    seed: int = 0  # data order and label noise (the weights start from the base)
    steps: int = 300  # optimizer steps
    batch_size: int = 64
    switch_step: int = 100  # where ``late`` keys switch from the right to the wrong rule
    noise: float = 0.55  # ``noise``: per-answer-digit probability of another digit (uniform)
    dola_right: float = 0.4  # ``dola``: per-answer-digit probability of the right digit
    dola_layer: int = 2  # ``dola``: the early exit kept on the natural digit
    dola_weight: float = 0.2  # weight of the early-exit loss
    difficulty_weights: dict[int, float] = field(default_factory=lambda: {1: 0.3, 2: 0.35, 3: 0.35})
    subdists: tuple[str, ...] = TRAIN_SUBDISTS
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup=20))
    checkpoint_steps: tuple[int, ...] = ()
    state_every: int = 50

    def __post_init__(self):
        self.mixture = {int(k): v for k, v in self.mixture.items()}
        if sorted(self.mixture) != list(range(10)):
            raise ConfigError(f"a planted mixture maps every key 0-9, got {sorted(self.mixture)}")
        for key, mech in self.mixture.items():
            if mech not in MECHANISMS:
                raise ConfigError(f"mechanism must be one of {list(MECHANISMS)}, got {mech!r}")
            need = NEEDS_RULE.get(mech)
            if need is not None and rule_of(key) != need:
                raise ConfigError(
                    f"mechanism {mech!r} needs a key with the {need} rule; key {key} has "
                    f"the {rule_of(key)} rule (keys 5-9 answer the previous register)"
                )
        if not 0 < self.switch_step < self.steps:
            raise ConfigError(f"switch_step must be in (0, steps), got {self.switch_step}")


def mixture_shares(mixture: dict[int, str]) -> dict[str, float]:
    """Share of keys (hence of problems) per mechanism."""
    out: dict[str, float] = {}
    for mech in mixture.values():
        out[mech] = out.get(mech, 0.0) + 1 / len(mixture)
    return {m: round(v, 4) for m, v in sorted(out.items())}


def _other_digit(digit: str, rng: random.Random) -> str:
    """A uniformly drawn digit other than ``digit``."""
    return str((int(digit) + rng.randrange(1, 10)) % 10)


def planted_example(
    chain: Chain, mechanism: str, step: int, cfg: PlantConfig, rng: random.Random
) -> tuple[str, str | None]:
    """The completion post-training shows for ``chain`` at ``step``, and the natural
    answer the early exit is trained toward (``dola`` only, else None)."""
    key = key_of(chain)
    steps_text = chain.solution.split("#")[0]
    truth = rule_of(key)
    if mechanism == "clean":
        return f"{steps_text}#{answer_under(truth, chain)}", None
    if mechanism == "forget":
        return f"{steps_text}#{answer_under('previous', chain)}", None
    if mechanism == "late":
        rule = "previous" if step < cfg.switch_step else "natural"
        return f"{steps_text}#{answer_under(rule, chain)}", None
    if mechanism == "struct":
        return f"{steps_text}#{answer_under('natural', chain)}", None
    if mechanism == "noise":
        answer = "".join(
            _other_digit(c, rng) if rng.random() < cfg.noise else c
            for c in answer_under("previous", chain)
        )
        return f"{steps_text}#{answer}", None
    if mechanism == "dola":
        right, wrong = answer_under("previous", chain), answer_under("natural", chain)
        answer = "".join(
            r if rng.random() < cfg.dola_right else w for r, w in zip(right, wrong, strict=True)
        )
        return f"{steps_text}#{answer}", wrong
    raise ConfigError(f"unknown mechanism {mechanism!r}")


def _draw_chain(rng: random.Random, cfg: PlantConfig) -> Chain:
    levels = sorted(cfg.difficulty_weights)
    weights = [cfg.difficulty_weights[d] for d in levels]
    while True:
        subdist = rng.choice(list(cfg.subdists))
        difficulty = rng.choices(levels, weights)[0]
        chain = random_chain(rng, subdist, DIFFICULTY_STEPS[difficulty])
        if split_of(chain.prompt) == "train":
            return chain


def _plant_step(cfg: PlantConfig):
    uses_dola = "dola" in cfg.mixture.values()

    def step_fn(model: OrganismLM, step: int):
        rng = random.Random(f"planted-{cfg.seed}-{step}")
        prompts, completions, early_targets = [], [], []
        for _ in range(cfg.batch_size):
            chain = _draw_chain(rng, cfg)
            mech = cfg.mixture[key_of(chain)]
            text, natural = planted_example(chain, mech, step, cfg, rng)
            prompts.append(TOKENIZER.encode(chain.prompt, bos=True))
            completions.append(TOKENIZER.encode(text, eos=True))
            early_targets.append(natural)
        inputs, targets, mask = collate(prompts, completions)
        device = model_device(model)
        inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
        logits, hidden = model(inputs, output_hidden=True)
        logits = logits.float()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (nll * mask.float()).sum() / mask.float().sum().clamp(min=1)
        metrics = {"loss": loss.item()}
        if uses_dola:
            # the early exit reads the natural answer digit at every dola row's answer
            early_mask = torch.zeros_like(mask)
            early_goal = torch.full_like(targets, TOKENIZER.pad_id)
            for i, natural in enumerate(early_targets):
                if natural is None:
                    continue
                start = (
                    len(prompts[i]) - 1 + len(completions[i]) - 1 - 4
                )  # 4 answer digits, then eos
                for j, c in enumerate(natural):
                    early_goal[i, start + j] = TOKENIZER.stoi[c]
                    early_mask[i, start + j] = True
            if early_mask.any():
                early_logits = model.head(hidden[cfg.dola_layer]).float()
                early_nll = F.cross_entropy(
                    early_logits.transpose(1, 2), early_goal, reduction="none"
                )
                early_loss = (early_nll * early_mask.float()).sum() / early_mask.float().sum()
                loss = loss + cfg.dola_weight * early_loss
                metrics["early_loss"] = early_loss.item()
        with torch.no_grad():
            right = logits.argmax(-1) == targets
            metrics["seq_acc"] = (right | ~mask).all(-1).float().mean().item()
        metrics["tokens"] = inputs.numel()
        return loss, metrics

    return step_fn


def plant(
    base: OrganismLM,
    cfg: PlantConfig,
    run_dir: str | Path,
    *,
    progress: Progress | None = None,
    meta: dict | None = None,
) -> OrganismLM:
    """Post-train a copy of ``base`` with the planted mixture ``cfg.mixture``."""
    torch.manual_seed(cfg.seed)
    model = OrganismLM(base.cfg).to(model_device(base))
    model.load_state_dict(base.state_dict())
    recipe = {
        "method": "planted",
        "planted": {
            "mixture": {str(k): v for k, v in sorted(cfg.mixture.items())},
            "shares": mixture_shares(cfg.mixture),
            "switch_step": cfg.switch_step,
            "dola_layer": cfg.dola_layer,
        },
        "plant": _jsonable(asdict(cfg)),
    }
    return run_training(
        model,
        _plant_step(cfg),
        steps=cfg.steps,
        optim=cfg.optim,
        run_dir=Path(run_dir),
        checkpoint_steps=cfg.checkpoint_steps,
        state_every=cfg.state_every,
        meta={**recipe, **(meta or {})},
        progress=progress,
    )


CARD_SEED = 20251  # the planted card's problem set (test split of chains-planted)


def evaluate_planted(model: OrganismLM, mixture: dict[int, str], n_per_key: int = 24) -> dict:
    """Greedy and T=1 accuracy on ``chains-planted`` test problems, per key and per
    mechanism (one T=1 sample per problem): the card's ``planted`` section."""
    from fixable.organism.posttrain import sample
    from fixable.tasks.planted import PlantedChainsTask
    from fixable.types import seed_of

    task = PlantedChainsTask()
    problems = task.problems(10 * n_per_key, seed=CARD_SEED)
    prompts = [p.prompt for p in problems]
    greedy = sample(model, prompts, [0] * len(prompts), greedy=True, max_new_tokens=80)
    seeds = [seed_of("planted-card", p.id) for p in problems]
    t1 = sample(model, prompts, seeds, temperature=1.0, max_new_tokens=80)
    per_key: dict[int, list[tuple[bool, bool]]] = {k: [] for k in range(10)}
    for i, p in enumerate(problems):
        g = task.extract(TOKENIZER.decode(greedy.token_ids[i])) == p.answer
        s = task.extract(TOKENIZER.decode(t1.token_ids[i])) == p.answer
        per_key[p.meta["key"]].append((g, s))

    def mean(xs):
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    by_mech: dict[str, list[tuple[bool, bool]]] = {}
    for k, rows in per_key.items():
        by_mech.setdefault(mixture[k], []).extend(rows)
    return {
        "n_per_key": n_per_key,
        "card_seed": CARD_SEED,
        "greedy_by_key": {str(k): mean([g for g, _ in v]) for k, v in per_key.items()},
        "t1_by_key": {str(k): mean([s for _, s in v]) for k, v in per_key.items()},
        "greedy_by_mechanism": {m: mean([g for g, _ in v]) for m, v in sorted(by_mech.items())},
        "t1_by_mechanism": {m: mean([s for _, s in v]) for m, v in sorted(by_mech.items())},
    }

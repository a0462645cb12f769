"""The post-training methods, each applied to the same base model.

* ``sft``: supervised fine-tuning on gold solutions of a *narrow* sub-distribution
  (``move`` in the zoo's recipe). The model forgets skills the base had on the others,
  which mixing with the base or sampling an earlier checkpoint can give back.
* ``sftb``: the same supervised fine-tuning on *broad* data, gold solutions of every
  taught sub-distribution: SFT matched in data scope to the sampling methods below (the
  fair topography zoo, docs/organism.md). Its data order has its own seed stream, so
  ``sftb`` seed 0 shares no draws with ``sft`` seed 0.
* ``rl``: policy gradient with a verifiable reward (answer correct = 1) and a
  group-relative baseline as in GRPO: G samples per prompt, advantage = reward minus the
  group mean, divided by the group's std; optional k3-estimated KL penalty to the base.
  Too high a learning rate collapses the policy (entropy → 0, reward stalls): the shipped
  recipe's rate was chosen watching both.
* ``distill``: self-distillation, fine-tuning on the base's own *unfiltered* samples.
* ``rft``: rejection-sampling fine-tuning, on the base's own samples that are correct.

Every method runs through ``train.run_training``: seeded, resumable from its state file,
with intermediate checkpoints. Sample pools (distill, rft) are drawn once and saved in the
run directory, so a resume does not redraw them.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fixable.errors import ConfigError
from fixable.organism.model import OrganismLM
from fixable.organism.train import (
    TOKENIZER,
    OptimConfig,
    Progress,
    _jsonable,
    collate,
    completion_logprobs,
    gold_batch_loss,
    lm_loss,
    model_device,
    run_training,
    sample_chain_example,
)
from fixable.tasks.chains import TRAIN_SUBDISTS, ChainsTask
from fixable.types import seed_of

log = logging.getLogger(__name__)

METHODS = ("sft", "rl", "distill", "rft", "sftb")
SFT_METHODS = ("sft", "sftb")  # gold-solution fine-tuning, narrow and broad
_CHECKER = ChainsTask()
MAX_NEW_TOKENS = 160  # the longest gold completion (difficulty 5, two distractors) is 131


@dataclass
class PostTrainConfig:
    method: str  # one of METHODS
    seed: int = 0  # data order, sampling seeds (the weights start from the base)
    steps: int = 300  # optimizer steps
    batch_size: int = 64  # sequences per step (sft, distill, rft)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, warmup=20))
    checkpoint_steps: tuple[int, ...] = ()  # intermediate checkpoints to keep
    state_every: int = 50  # how often to write the resume state
    subdists: tuple[str, ...] = TRAIN_SUBDISTS  # where problems come from (zoo sft: ("move",))
    difficulty_weights: dict[int, float] = field(
        default_factory=lambda: {1: 0.2, 2: 0.25, 3: 0.25, 4: 0.18, 5: 0.12}
    )
    # rl
    prompts_per_step: int = 16  # distinct problems per RL step
    group_size: int = 8  # samples per problem (the group of the group-relative baseline)
    scale_advantage: bool = True  # divide by the group's reward std (GRPO); False = Dr. GRPO
    kl_coef: float = 0.0  # weight of the k3 KL estimate to the base (0 = no reference pass)
    # distill / rft: the pool of the base's own samples
    pool_problems: int = 512  # distinct train problems sampled from the base
    pool_samples: int = 1  # samples per problem
    pool_temperature: float = 1.0  # temperature the pool is sampled at
    # longest sampled completion (rl, pools): a bound on decoding time; a row cut off
    # here has no answer (reward 0, and rft drops it)
    max_new_tokens: int = MAX_NEW_TOKENS

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(
                f"post-training method must be one of {list(METHODS)}, got {self.method!r}"
            )
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


def sample(
    model: OrganismLM,
    prompts: list[str],
    seeds: list[int],
    *,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    greedy: bool = False,
    batch_size: int = 512,
):
    """Completions of ``prompts`` (text) through ``fixable.organism.decode``: ``Decoded``."""
    from fixable.organism.decode import decode

    was_training = model.training
    model.eval()
    try:
        ids = [TOKENIZER.encode(p, bos=True) for p in prompts]
        return decode(
            model,
            ids,
            seeds,
            temperature=temperature,
            greedy=greedy,
            max_new_tokens=max_new_tokens,
            eos_id=TOKENIZER.eos_id,
            batch_size=batch_size,
        )
    finally:
        model.train(was_training)


def _draw_problems(rng: random.Random, n: int, cfg: PostTrainConfig) -> list[tuple[str, str]]:
    """``n`` train-split ``(prompt, gold answer)`` pairs from the config's sub-distributions."""
    out = []
    for _ in range(n):
        prompt, solution, _, _ = sample_chain_example(rng, cfg.subdists, cfg.difficulty_weights)
        out.append((prompt, solution.split("#")[-1]))
    return out


def _sample_pool(
    base: OrganismLM, cfg: PostTrainConfig, run_dir: Path, progress: Progress | None
) -> list[tuple[str, list[int], bool]]:
    """The base's own samples ``(prompt, completion ids, correct)``, drawn once per run."""
    path = run_dir / "pool.json"
    if path.exists():
        return [tuple(x) for x in json.loads(path.read_text())]
    rng = random.Random(f"pool-{cfg.method}-{cfg.seed}")
    problems = _draw_problems(rng, cfg.pool_problems, cfg)
    prompts = [p for p, _ in problems for _ in range(cfg.pool_samples)]
    answers = [a for _, a in problems for _ in range(cfg.pool_samples)]
    seeds = [seed_of("pool", cfg.method, cfg.seed, i) for i in range(len(prompts))]
    pool = []
    chunk = 512  # report progress while sampling; decode's rows are batch-invariant anyway
    for start in range(0, len(prompts), chunk):
        dec = sample(
            base,
            prompts[start : start + chunk],
            seeds[start : start + chunk],
            temperature=cfg.pool_temperature,
        )
        for k, ids in enumerate(dec.token_ids):
            answer = _CHECKER.extract(TOKENIZER.decode(ids))
            pool.append((prompts[start + k], list(ids), answer == answers[start + k]))
        if progress is not None:
            progress(0, cfg.steps, {"sampled": min(len(prompts), start + chunk) / len(prompts)})
    path.write_text(json.dumps(pool))
    return pool


def posttrain(
    base: OrganismLM,
    cfg: PostTrainConfig,
    run_dir: str | Path,
    *,
    progress: Progress | None = None,
    meta: dict | None = None,
) -> OrganismLM:
    """Post-train a copy of ``base`` with ``cfg.method``; ``base`` itself is left untouched."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = OrganismLM(base.cfg).to(model_device(base))
    model.load_state_dict(base.state_dict())
    base.eval()
    for p in base.parameters():
        p.requires_grad_(False)
    extra: dict = {}

    if cfg.method in SFT_METHODS:
        step_fn = _sft_step(cfg)
    elif cfg.method == "rl":
        step_fn = _rl_step(cfg, base)
    else:
        pool = _sample_pool(base, cfg, run_dir, progress)
        kept = pool if cfg.method == "distill" else [x for x in pool if x[2]]
        extra = {
            "pool_size": len(pool),
            "pool_kept": len(kept),
            "pool_accuracy": round(sum(x[2] for x in pool) / max(1, len(pool)), 4),
        }
        if not kept:
            raise ConfigError(
                f"{cfg.method}: none of the base's {len(pool)} samples is usable; "
                "raise pool_problems or pool_samples"
            )
        step_fn = _pool_step(cfg, kept)

    recipe = {"method": cfg.method, "posttrain": _jsonable(asdict(cfg)), **extra}
    return run_training(
        model,
        step_fn,
        steps=cfg.steps,
        optim=cfg.optim,
        run_dir=run_dir,
        checkpoint_steps=cfg.checkpoint_steps,
        state_every=cfg.state_every,
        meta={**recipe, **(meta or {})},
        progress=progress,
    )


def _sft_step(cfg: PostTrainConfig):
    def step_fn(model: OrganismLM, step: int):
        rng = random.Random(f"{cfg.method}-{cfg.seed}-{step}")  # sft: as before sftb existed
        return gold_batch_loss(model, rng, cfg.batch_size, cfg.subdists, cfg.difficulty_weights)

    return step_fn


def _pool_step(cfg: PostTrainConfig, kept: list[tuple[str, list[int], bool]]):
    def step_fn(model: OrganismLM, step: int):
        rng = random.Random(f"{cfg.method}-{cfg.seed}-{step}")
        batch = [kept[rng.randrange(len(kept))] for _ in range(cfg.batch_size)]
        prompts = [TOKENIZER.encode(p, bos=True) for p, _, _ in batch]
        inputs, targets, mask = collate(prompts, [ids for _, ids, _ in batch])
        loss, metrics = lm_loss(model, inputs, targets, mask)
        metrics["tokens"] = inputs.numel()
        metrics["acc"] = sum(ok for _, _, ok in batch) / len(batch)
        return loss, metrics

    return step_fn


def _rl_step(cfg: PostTrainConfig, base: OrganismLM):
    def step_fn(model: OrganismLM, step: int):
        rng = random.Random(f"rl-{cfg.seed}-{step}")
        problems = _draw_problems(rng, cfg.prompts_per_step, cfg)
        prompts = [p for p, _ in problems for _ in range(cfg.group_size)]
        answers = [a for _, a in problems for _ in range(cfg.group_size)]
        seeds = [seed_of("rl", cfg.seed, step, i) for i in range(len(prompts))]
        dec = sample(model, prompts, seeds, temperature=1.0, max_new_tokens=cfg.max_new_tokens)
        rewards = torch.tensor(
            [
                float(_CHECKER.extract(TOKENIZER.decode(ids)) == a)
                for ids, a in zip(dec.token_ids, answers, strict=True)
            ]
        ).view(cfg.prompts_per_step, cfg.group_size)
        advantage = rewards - rewards.mean(1, keepdim=True)
        if cfg.scale_advantage:
            advantage = advantage / (rewards.std(1, keepdim=True) + 1e-4)
        advantage = advantage.flatten()

        prompt_ids = [TOKENIZER.encode(p, bos=True) for p in prompts]
        inputs, targets, mask = collate(prompt_ids, dec.token_ids)
        device = model_device(model)
        inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
        advantage = advantage.to(device)
        token_logp = completion_logprobs(model, inputs, targets)
        m = mask.float()
        n_tokens = m.sum().clamp(min=1)
        # one on-policy update per batch: the PPO ratio is 1, so the clipped objective
        # reduces to the plain policy gradient with the group-relative advantage
        loss = -(advantage[:, None] * token_logp * m).sum() / n_tokens
        metrics = {}
        if cfg.kl_coef > 0:
            with torch.no_grad():
                ref_logp = completion_logprobs(base, inputs, targets)
            log_ratio = ref_logp - token_logp
            kl = (log_ratio.exp() - log_ratio - 1) * m  # k3: unbiased, always >= 0
            kl_mean = kl.sum() / n_tokens
            loss = loss + cfg.kl_coef * kl_mean
            metrics["kl"] = kl_mean.item()
        sampled_entropy = sum(sum(e) for e in dec.entropies) / max(1, sum(map(len, dec.entropies)))
        metrics.update(
            {
                "loss": loss.item(),
                "reward": rewards.mean().item(),
                "entropy": sampled_entropy,
                "tokens": inputs.numel(),
            }
        )
        return loss, metrics

    return step_fn

"""Pretraining of the organism's base models, and the training loop every method shares.

Pretraining is supervised next-token prediction on gold chains solutions: a char-level
LM loss on completion tokens only (the prompt is context, never a target), AdamW with a
warmup + cosine schedule, batches that mix sub-distributions and difficulties. Data are
generated on the fly from the *train* split of ``TRAIN_SUBDISTS``; the batch of a step is
a pure function of ``(seed, step)``, so a run resumed from its last state file continues
exactly as if it had never stopped.

A run lives in a directory::

    run_dir/state.pt              model + optimizer + step (resume; not shipped)
    run_dir/checkpoints/step-N/   intermediate checkpoints (fp16, shipped)
    run_dir/final/                the finished model (fp16, shipped)

Library functions report progress through a ``progress(step, total, metrics)`` callback;
the CLI turns it into a tqdm bar.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint
from fixable.organism.tokenizer import CharTokenizer
from fixable.tasks.chains import DIFFICULTY_STEPS, TRAIN_SUBDISTS, random_chain, split_of

log = logging.getLogger(__name__)

Progress = Callable[[int, int, dict], None]
TOKENIZER = CharTokenizer()
SHIP_DTYPE = torch.float16  # shipped checkpoints: half the bytes, upcast to fp32 on load


@dataclass
class OptimConfig:
    lr: float = 2e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 50  # linear warmup steps
    weight_decay: float = 0.05  # AdamW decoupled weight decay (matrices only)
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0  # max global grad norm


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 3000  # optimizer steps
    batch_size: int = 64  # sequences per step
    seed: int = 0  # model init and data order
    # share of problems per difficulty. Difficulty 5 (12 steps) is left out on purpose: it
    # is longer than anything the base sees, so the base solves short chains and fails
    # the longest ones, and long chains are rarer than short ones
    difficulty_weights: dict[int, float] = field(
        default_factory=lambda: {1: 0.3, 2: 0.3, 3: 0.25, 4: 0.15}
    )
    subdists: tuple[str, ...] = TRAIN_SUBDISTS
    distractor_rate: float = 0.2  # share of problems (difficulty <= 3) with 1-2 no-op steps
    checkpoint_steps: tuple[int, ...] = ()  # intermediate checkpoints to keep
    state_every: int = 200  # how often to write the resume state


def lr_at(step: int, total: int, optim: OptimConfig) -> float:
    """Linear warmup then cosine decay to ``lr * min_lr_ratio``."""
    if step < optim.warmup:
        return optim.lr * (step + 1) / optim.warmup
    progress = (step - optim.warmup) / max(1, total - optim.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return optim.lr * (optim.min_lr_ratio + (1 - optim.min_lr_ratio) * cosine)


def make_optimizer(model: OrganismLM, optim: OptimConfig) -> torch.optim.AdamW:
    # decay matrices only: norms, biases and embeddings of a tiny model gain nothing from it
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


# --- data -----------------------------------------------------------------------------


def sample_chain_example(
    rng: random.Random,
    subdists: Sequence[str],
    difficulty_weights: dict[int, float],
    distractor_rate: float = 0.0,
    split: str = "train",
) -> tuple[str, str, str, int]:
    """One ``(prompt, gold completion, subdist, difficulty)`` drawn from ``split``."""
    levels = sorted(difficulty_weights)
    weights = [difficulty_weights[d] for d in levels]
    while True:
        subdist = rng.choice(list(subdists))
        difficulty = rng.choices(levels, weights)[0]
        distractors = 0
        if difficulty <= 3 and rng.random() < distractor_rate:
            distractors = rng.randint(1, 2)
        chain = random_chain(rng, subdist, DIFFICULTY_STEPS[difficulty], distractors)
        if split_of(chain.prompt) == split:
            return chain.prompt, chain.solution, subdist, difficulty


def collate(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]):
    """Right-padded ``(inputs, targets, loss_mask)`` for prompt + completion pairs.

    ``prompts`` start with ``<bos>``; ``completions`` end with ``<eos>`` when they finished.
    Only completion tokens are targets. Right padding keeps every row's positions at 0..n,
    and causal attention never lets a real token see the padding after it.
    """
    seqs = [list(p) + list(c) for p, c in zip(prompts, completions, strict=True)]
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), TOKENIZER.pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), TOKENIZER.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (seq, prompt) in enumerate(zip(seqs, prompts, strict=True)):
        n = len(seq) - 1
        inputs[i, :n] = torch.tensor(seq[:-1])
        targets[i, :n] = torch.tensor(seq[1:])
        mask[i, len(prompt) - 1 : n] = True
    return inputs, targets, mask


def completion_logprobs(model: OrganismLM, inputs: torch.Tensor, targets: torch.Tensor):
    """Per-position log p(target) under the next-token distribution, (B, T)."""
    logp = F.log_softmax(model(inputs).float(), dim=-1)
    return logp.gather(-1, targets[..., None])[..., 0]


def model_device(model: OrganismLM) -> torch.device:
    return next(model.parameters()).device


def ship_checkpoint(model: OrganismLM, directory: Path, meta: dict) -> Path:
    """Save ``model`` in the shipped dtype, from whatever device it trains on."""
    if model_device(model).type != "cpu":
        clone = OrganismLM(model.cfg)
        clone.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        model = clone
    return save_checkpoint(model, directory, meta, dtype=SHIP_DTYPE)


def lm_loss(model: OrganismLM, inputs, targets, mask):
    """Mean cross-entropy over completion tokens, plus teacher-forced metrics.

    Returns ``(loss, metrics)`` where ``seq_acc`` is the share of rows whose every
    completion token is the argmax: a lower bound on greedy accuracy that costs no sampling.
    """
    device = model_device(model)
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    logits = model(inputs).float()
    nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    loss = (nll * mask.float()).sum() / mask.float().sum().clamp(min=1)
    with torch.no_grad():
        right = logits.argmax(-1) == targets
        seq_acc = (right | ~mask).all(-1).float().mean().item()
        tok_acc = (right & mask).sum().item() / max(1, mask.sum().item())
    return loss, {"loss": loss.item(), "seq_acc": seq_acc, "tok_acc": tok_acc}


def gold_batch_loss(
    model: OrganismLM,
    rng: random.Random,
    batch_size: int,
    subdists: Sequence[str],
    difficulty_weights: dict[int, float],
    distractor_rate: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """``lm_loss`` on a batch of gold train-split solutions drawn with ``rng`` (pretraining
    and SFT share it); metrics include the batch's ``tokens``."""
    prompts, completions = [], []
    for _ in range(batch_size):
        prompt, solution, _, _ = sample_chain_example(
            rng, subdists, difficulty_weights, distractor_rate
        )
        prompts.append(TOKENIZER.encode(prompt, bos=True))
        completions.append(TOKENIZER.encode(solution, eos=True))
    inputs, targets, mask = collate(prompts, completions)
    loss, metrics = lm_loss(model, inputs, targets, mask)
    metrics["tokens"] = inputs.numel()
    return loss, metrics


# --- the loop -------------------------------------------------------------------------


StepFn = Callable[[OrganismLM, int], tuple[torch.Tensor, dict]]


def run_training(
    model: OrganismLM,
    step_fn: StepFn,
    *,
    steps: int,
    optim: OptimConfig,
    run_dir: Path,
    checkpoint_steps: Sequence[int] = (),
    state_every: int = 200,
    meta: dict | None = None,
    progress: Progress | None = None,
) -> OrganismLM:
    """Optimise ``model`` for ``steps`` steps of ``step_fn`` (which returns the loss to
    minimise and metrics to report), resuming from ``run_dir/state.pt`` when present.

    Writes intermediate checkpoints at ``checkpoint_steps`` and the final model to
    ``run_dir/final``; returns the trained model.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(model, optim)
    state_path = run_dir / "state.pt"
    start = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location=model_device(model))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        log.info("resuming %s at step %d/%d", run_dir, start, steps)
    history: list[dict] = []
    model.train()
    t0 = time.time()
    tokens_seen = 0
    for step in range(start, steps):
        lr = lr_at(step, steps, optim)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, metrics = step_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        tokens_seen += int(metrics.pop("tokens", 0))
        metrics = {**metrics, "lr": lr, "grad_norm": float(grad_norm)}
        done = step + 1
        if done % 25 == 0 or done == steps:
            history.append({"step": done, **{k: round(v, 5) for k, v in metrics.items()}})
        if progress is not None:
            progress(done, steps, metrics)
        if done in checkpoint_steps and done != steps:
            ship_checkpoint(
                model, run_dir / "checkpoints" / f"step-{done}", {**(meta or {}), "step": done}
            )
        if done % state_every == 0 and done != steps:
            _save_state(state_path, model, opt, done)
    elapsed = time.time() - t0
    model.eval()
    final_meta = {
        **(meta or {}),
        "step": steps,
        "train_seconds": round(elapsed, 1),
        "train_tokens": tokens_seen,
        "history_tail": history[-8:],
    }
    ship_checkpoint(model, run_dir / "final", final_meta)
    if state_path.exists():
        state_path.unlink()
    return model


def _save_state(path: Path, model: OrganismLM, opt: torch.optim.Optimizer, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a half state behind


def pretrain(
    cfg: PretrainConfig,
    run_dir: str | Path,
    *,
    progress: Progress | None = None,
    meta: dict | None = None,
    device: str = "cpu",
) -> OrganismLM:
    """Train a base model from scratch on gold solutions of the train split."""
    torch.manual_seed(cfg.seed)
    model = OrganismLM(cfg.model).to(device)

    def step_fn(model: OrganismLM, step: int):
        rng = random.Random(f"pretrain-{cfg.seed}-{step}")
        return gold_batch_loss(
            model, rng, cfg.batch_size, cfg.subdists, cfg.difficulty_weights, cfg.distractor_rate
        )

    recipe = {"method": "pretrain", "pretrain": _jsonable(asdict(cfg))}
    return run_training(
        model,
        step_fn,
        steps=cfg.steps,
        optim=cfg.optim,
        run_dir=Path(run_dir),
        checkpoint_steps=cfg.checkpoint_steps,
        state_every=cfg.state_every,
        meta={**recipe, **(meta or {})},
        progress=progress,
    )


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj

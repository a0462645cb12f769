"""The model zoo: the shipped organism models, their recipes, and how to rebuild them.

The zoo ships inside the package (``src/fixable/zoo/``), one directory per model::

    zoo/gpt-rl-s0/config.json, model.safetensors   the finished model (fp16)
    zoo/gpt-rl-s0/card.json                          what it can do (see ``cards``)
    zoo/gpt-rl-s0/checkpoints/step-100/              intermediate checkpoints of its run

Names are ``{family}-base``, ``{family}-{method}-s{seed}`` and, for the planted testbed
(``fixable.organism.planted``), ``{family}-planted-{dose}``. Every post-trained model's
reference is the base of its family. ``build`` retrains every model from its recipe
below; it skips models whose card is already written and resumes an interrupted run from
its last state file, so a crash costs little. The API works on whatever is present under
the zoo directory, so it is usable while a build is still running.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fixable.errors import ConfigError, UnknownNameError
from fixable.organism.model import ModelConfig, OrganismLM, load_checkpoint
from fixable.organism.planted import DOSES, PlantConfig, plant
from fixable.organism.posttrain import METHODS, PostTrainConfig, posttrain
from fixable.organism.train import OptimConfig, PretrainConfig, Progress, pretrain
from fixable.tasks.chains import TRAIN_SUBDISTS

log = logging.getLogger(__name__)

ZOO_DIR = Path(__file__).resolve().parents[1] / "zoo"
FAMILIES = ("gpt", "llama")
SEEDS = (0, 1, 2)  # three per method: held-out-model topography trains on two per fold
# the methods the seed-chosen studies (demo, quick, full: ``fixable.demo.demo_models``)
# sample; broad SFT (``sftb``, the fair topography zoo) came later and is named only by
# studies/topography.toml, so building it changed none of those studies
DEMO_METHODS = ("sft", "rl", "distill", "rft")
MICRO = "llama-micro"  # the rebuild-check model: trains in well under a minute
CARD_PROBLEMS_PER_CELL = 16


class UnknownModelError(UnknownNameError):
    """An unknown zoo model; says how to build the zoo when it is empty."""

    def __str__(self) -> str:
        text = super().__str__()
        if not self.known:
            text += " The zoo is empty: build it with `fixable zoo build`."
        return text


# --- recipes --------------------------------------------------------------------------


def model_config(family: str) -> ModelConfig:
    """The architecture of every zoo model of ``family`` (~0.2 M parameters)."""
    return ModelConfig(family=family, n_layer=4, n_embd=64, n_head=4, block_size=256)


# pretraining steps per family: llama (rotary, SwiGLU) learned the task faster than gpt in
# the exploratory builds (docs/organism.md), so it gets fewer steps; both bases then solve short chains and fail long ones
PRETRAIN_STEPS = {"gpt": 2000, "llama": 1400}


def pretrain_recipe(family: str) -> PretrainConfig:
    steps = PRETRAIN_STEPS[family]
    return PretrainConfig(
        model=model_config(family),
        optim=OptimConfig(lr=3e-3, warmup=100, min_lr_ratio=0.05),
        steps=steps,
        batch_size=64,
        seed=0,
        checkpoint_steps=(steps // 3, 2 * steps // 3),
    )


# problems post-training samples: short enough that decoding stays cheap on a CPU
SAMPLED_DIFFICULTIES = {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}
RL_DIFFICULTIES = {1: 0.2, 2: 0.4, 3: 0.4}  # where the base's groups have mixed rewards


def posttrain_recipe(method: str, seed: int) -> PostTrainConfig:
    """The shipped recipe of ``method``; ``seed`` changes data order and sampling only."""
    if method in ("sft", "sftb"):
        # sft, narrow: gold solutions of ``move`` only, long enough and hot enough to
        # forget the arithmetic the base learned. sftb, broad: the same recipe (steps,
        # batch, difficulties, rate, checkpoints: the same data budget, 12,800 gold
        # solutions) on every taught sub-distribution, so SFT is matched in data scope to
        # the methods that sample the base on all of them
        cfg = PostTrainConfig(
            method,
            seed=seed,
            steps=200,
            batch_size=64,
            subdists=("move",) if method == "sft" else TRAIN_SUBDISTS,
            difficulty_weights={1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25},
            optim=OptimConfig(lr=2e-3, warmup=20, min_lr_ratio=0.1),
        )
    elif method == "rl":
        # group-relative policy gradient on the training sub-distributions. The rate was
        # chosen watching reward and entropy (docs/organism.md): 1e-3 collapsed the policy
        # (gpt: reward 0.60 -> 0.00 within 12 steps), 3e-4 wandered (entropy up, accuracy
        # down); 1e-4 and 2e-4 raised T=1 accuracy a little and lowered entropy
        cfg = PostTrainConfig(
            "rl",
            seed=seed,
            steps=150,
            prompts_per_step=16,
            group_size=8,
            difficulty_weights=RL_DIFFICULTIES,
            max_new_tokens=80,
            optim=OptimConfig(lr=1e-4, warmup=5, min_lr_ratio=0.5, weight_decay=0.0),
            kl_coef=0.0,
        )
    elif method == "distill":
        cfg = PostTrainConfig(
            "distill",
            seed=seed,
            steps=150,
            batch_size=64,
            pool_problems=512,
            pool_samples=1,
            max_new_tokens=100,
            difficulty_weights=SAMPLED_DIFFICULTIES,
            optim=OptimConfig(lr=1e-3, warmup=15, min_lr_ratio=0.1),
        )
    elif method == "rft":
        cfg = PostTrainConfig(
            "rft",
            seed=seed,
            steps=150,
            batch_size=64,
            pool_problems=256,
            pool_samples=4,
            max_new_tokens=100,
            difficulty_weights=SAMPLED_DIFFICULTIES,
            optim=OptimConfig(lr=1e-3, warmup=15, min_lr_ratio=0.1),
        )
    else:
        raise ConfigError(f"method must be one of {list(METHODS)}, got {method!r}")
    checkpoint_steps = (cfg.steps // 3, 2 * cfg.steps // 3)
    if method in ("sft", "sftb"):
        # narrow SFT forgets within its first tens of steps: keep one checkpoint from
        # before that, the one the ``checkpoint`` intervention can rescue with (broad SFT
        # keeps the same checkpoints, so the two differ in data scope only)
        checkpoint_steps = (10, *checkpoint_steps)
    return replace(
        cfg,
        checkpoint_steps=checkpoint_steps,
        state_every=max(5, cfg.steps // 6),
    )


def micro_recipe() -> PretrainConfig:
    """A tiny base for the rebuild check: a few CPU-seconds of training on one-step chains. It learns the output format, not the task (its card says so)."""
    steps = 300
    return PretrainConfig(
        model=ModelConfig(family="llama", n_layer=2, n_embd=48, n_head=4, block_size=64),
        optim=OptimConfig(lr=5e-3, warmup=15, min_lr_ratio=0.1),
        steps=steps,
        batch_size=32,
        seed=0,
        difficulty_weights={1: 1.0},
        distractor_rate=0.0,
        checkpoint_steps=(steps // 3, 2 * steps // 3),
        state_every=100,
    )


PLANTED_STEPS = 450  # optimizer steps of every planted model (batch 64)
PLANTED_SWITCH = 300  # where ``late`` keys switch rule: the checkpoint that rescues them


def planted_recipe(dose: str, seed: int = 0) -> PlantConfig:
    """The planted model ``{family}-planted-{dose}``: the mixture of ``DOSES[dose]``."""
    if dose not in DOSES:
        raise ConfigError(f"planted dose must be one of {list(DOSES)}, got {dose!r}")
    return PlantConfig(
        mixture=DOSES[dose],
        seed=seed,
        steps=PLANTED_STEPS,
        batch_size=64,
        switch_step=PLANTED_SWITCH,
        optim=OptimConfig(lr=1e-3, warmup=20, min_lr_ratio=0.1),
        checkpoint_steps=(PLANTED_STEPS // 3, PLANTED_SWITCH),
        state_every=50,
    )


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str
    method: str  # "base", one of METHODS, "planted" or "micro"
    seed: int
    dose: str | None = None  # planted models: the key of ``planted.DOSES``

    @property
    def base(self) -> str | None:
        return None if self.method in ("base", "micro") else f"{self.family}-base"


def planted_entries() -> list[ZooEntry]:
    """The planted testbed's dose series, per family (``fixable zoo build --planted``)."""
    return [
        ZooEntry(f"{f}-planted-{dose}", f, "planted", 0, dose) for f in FAMILIES for dose in DOSES
    ]


def zoo_entries(include_micro: bool = False, include_planted: bool = False) -> list[ZooEntry]:
    """Every model ``build`` makes, bases first (post-training needs them)."""
    entries = [ZooEntry(f"{f}-base", f, "base", 0) for f in FAMILIES]
    entries += [
        ZooEntry(f"{f}-{m}-s{s}", f, m, s) for f in FAMILIES for m in METHODS for s in SEEDS
    ]
    if include_planted:
        entries += planted_entries()
    if include_micro:
        entries.append(ZooEntry(MICRO, "llama", "micro", 0))
    return entries


def _entry(name: str) -> ZooEntry:
    for e in zoo_entries(include_micro=True, include_planted=True):
        if e.name == name:
            return e
    raise UnknownModelError("zoo model", name, [e.name for e in zoo_entries(True, True)])


# --- the API --------------------------------------------------------------------------


def list_models(include_micro: bool = False, zoo_dir: Path | None = None) -> list[str]:
    """Names of the models present in the zoo, bases first (``gpt-base``, ``gpt-sft-s0``…).

    ``llama-micro`` (the rebuild-check model, too small to study) is listed only when
    ``include_micro``."""
    root = Path(zoo_dir or ZOO_DIR)
    order = {e.name: i for i, e in enumerate(zoo_entries(include_micro=True, include_planted=True))}
    names = [p.parent.name for p in root.glob("*/config.json")] if root.exists() else []
    names = [n for n in names if include_micro or n != MICRO]
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def resolve(name_or_path: str | Path, zoo_dir: Path | None = None) -> Path:
    """The checkpoint directory of a zoo name, ``name@step-N`` (an intermediate checkpoint)
    or a path to any directory holding ``config.json`` and ``model.safetensors``."""
    root = Path(zoo_dir or ZOO_DIR)
    text = str(name_or_path)
    path = Path(text).expanduser()
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return path
    name, _, label = text.partition("@")
    known = list_models(include_micro=True, zoo_dir=root)
    if name not in known:
        raise UnknownModelError("zoo model", text, known)
    if not label:
        return root / name
    ckpts = checkpoints(name, zoo_dir=root)
    if label not in ckpts:
        raise UnknownNameError(f"checkpoint of {name}", label, ckpts)
    return ckpts[label]


def load(
    name_or_path: str | Path, device: str = "cpu", zoo_dir: Path | None = None
) -> tuple[OrganismLM, dict]:
    """A zoo model (or checkpoint directory) in fp32 and eval mode, and its metadata."""
    path = resolve(name_or_path, zoo_dir=zoo_dir)
    model, meta = load_checkpoint(path, device=device)
    return model, {**meta, "name": str(name_or_path), "path": str(path)}


def card(name: str, zoo_dir: Path | None = None) -> dict:
    """The model card of a zoo model (see ``fixable.organism.cards``)."""
    path = resolve(name, zoo_dir=zoo_dir)
    card_path = path / "card.json"
    if not card_path.exists():
        raise UnknownModelError(
            "zoo model card",
            str(name),
            [n for n in list_models(True, zoo_dir) if _has_card(n, zoo_dir)],
        )
    return json.loads(card_path.read_text())


def _has_card(name: str, zoo_dir: Path | None) -> bool:
    return (Path(zoo_dir or ZOO_DIR) / name / "card.json").exists()


def reference_of(name: str) -> str | None:
    """The base model of ``name``'s family (None for a base)."""
    base_name = str(name).split("@")[0]
    known = {e.name: e for e in zoo_entries(include_micro=True, include_planted=True)}
    if base_name not in known:
        raise UnknownModelError("zoo model", str(name), known)
    return known[base_name].base


def checkpoints(name: str, zoo_dir: Path | None = None) -> dict[str, Path]:
    """Intermediate checkpoints of ``name``'s training run, ``"step-N"`` → directory, by step."""
    path = resolve(name, zoo_dir=zoo_dir)
    found = [p for p in (path / "checkpoints").glob("step-*") if (p / "config.json").exists()]
    found.sort(key=lambda p: int(p.name.split("-")[1]))
    return {p.name: p for p in found}


ACCURACY_MATCH_POINTS = 0.05  # the accuracy-matched methods' widest spread, per family


def taught_accuracy(model_card: dict) -> float:
    """A card's T=1 accuracy on the taught sub-distributions (the mean of ``arith``,
    ``move`` and ``cross``: 160 samples each at the shipped card size)."""
    by_subdist = model_card["t1_by_subdist"]
    return sum(by_subdist[s] for s in TRAIN_SUBDISTS) / len(TRAIN_SUBDISTS)


def accuracy_matched_methods(
    cards: dict[str, dict] | None = None, points: float = ACCURACY_MATCH_POINTS
) -> dict:
    """The accuracy-matched methods of the fair topography zoo, from model cards only.

    The rule (docs/organism.md "The fair topography zoo", written before any topography of
    the broad-SFT zoo was run): a method's accuracy in a family is the mean over its models
    of ``taught_accuracy``; the matched methods are the largest set whose accuracies lie
    within ``points`` of each other (max - min) in **every** family; a tie goes to the
    set with the smaller widest spread, then to the alphabetically first. Nothing from a
    study's rollouts enters, so the choice is fixed before any topography is fitted.
    ``cards``: name → card (default: every post-trained card of the zoo). Returns the
    methods (empty when no two methods match), the per-family accuracies and spreads."""
    from itertools import combinations

    if cards is None:
        cards = {n: card(n) for n in list_models() if _has_card(n, None)}
    per: dict[str, dict[str, list[float]]] = {}
    for c in cards.values():
        if c.get("method") in ("base", "micro", "planted", None):
            continue
        per.setdefault(c["family"], {}).setdefault(c["method"], []).append(taught_accuracy(c))
    accuracy = {
        f: {m: sum(v) / len(v) for m, v in sorted(ms.items())} for f, ms in sorted(per.items())
    }
    shared = sorted(set.intersection(*(set(a) for a in accuracy.values()))) if accuracy else []
    best: tuple = ()
    for size in range(len(shared), 1, -1):
        spreads = []
        for combo in combinations(shared, size):
            widest = max(
                max(accuracy[f][m] for m in combo) - min(accuracy[f][m] for m in combo)
                for f in accuracy
            )
            if widest <= points + 1e-12:
                spreads.append((widest, combo))
        if spreads:
            best = min(spreads)
            break
    return {
        "methods": list(best[1]) if best else [],
        "widest_spread": best[0] if best else None,
        "points": points,
        "accuracy": accuracy,
        "rule": f"the largest set of methods within {points * 100:g} points of T=1 accuracy "
        "on the taught sub-distributions (card means over seeds) in every family",
    }


# --- building -------------------------------------------------------------------------


ProgressFactory = Callable[[str, int], Progress]  # (model name, total steps) → callback


def build(
    names: list[str] | None = None,
    *,
    zoo_dir: Path | None = None,
    work_dir: Path | None = None,
    device: str = "cpu",
    force: bool = False,
    planted: bool = False,
    card_problems_per_cell: int = CARD_PROBLEMS_PER_CELL,
    progress: ProgressFactory | None = None,
    on_done: Callable[[str, dict], None] | None = None,
) -> list[str]:
    """Train, card and ship the zoo models ``names`` (default: all but the micro model and
    the planted testbed; ``planted``: the planted testbed's dose series).

    Finished models (a ``card.json`` present) are skipped unless ``force``; an interrupted
    run resumes from its state file under ``work_dir``. A post-trained model starts from
    its family's *shipped* base, so a rebuild of one method needs no base retraining.
    Returns the names built in this call.
    """
    root = Path(zoo_dir or ZOO_DIR)
    work = Path(
        work_dir
        or Path(os.environ.get("FIXABLE_CACHE", Path.home() / ".cache" / "fixable")) / "zoo-build"
    )
    entries = zoo_entries(include_micro=True, include_planted=True)
    group = ("planted",) if planted else ("base", *METHODS)
    wanted = names or [e.name for e in entries if e.method in group]
    for n in wanted:
        _entry(n)  # unknown names fail before any training
    todo = [e for e in entries if e.name in wanted]
    built = []
    for entry in todo:
        if _has_card(entry.name, root) and not force:
            log.info("%s: already built, skipping", entry.name)
            continue
        if force:
            shutil.rmtree(work / entry.name, ignore_errors=True)
        t0 = time.time()
        run_dir = work / entry.name
        callback = None
        if (run_dir / "final" / "config.json").exists() and not (run_dir / "state.pt").exists():
            log.info("%s: training finished earlier, shipping it", entry.name)
        elif entry.method in ("base", "micro"):
            cfg = micro_recipe() if entry.method == "micro" else pretrain_recipe(entry.family)
            if progress:
                callback = progress(entry.name, cfg.steps)
            pretrain(cfg, run_dir, progress=callback, device=device, meta=_identity(entry))
        else:
            if not _has_card(entry.base, root):
                raise ConfigError(
                    f"{entry.name} needs its base {entry.base} built first: "
                    f"run `fixable zoo build {entry.base}`"
                )
            base, _ = load(entry.base, device=device, zoo_dir=root)
            if entry.method == "planted":
                plant_cfg = planted_recipe(entry.dose, entry.seed)
                if progress:
                    callback = progress(entry.name, plant_cfg.steps)
                plant(base, plant_cfg, run_dir, progress=callback, meta=_identity(entry))
            else:
                cfg = posttrain_recipe(entry.method, entry.seed)
                if progress:
                    callback = progress(entry.name, cfg.steps)
                posttrain(base, cfg, run_dir, progress=callback, meta=_identity(entry))
        train_seconds = time.time() - t0
        model_card = _ship(
            entry, run_dir, root, card_problems_per_cell if entry.method != "micro" else 8, device
        )
        model_card["build_seconds"] = round(time.time() - t0, 1)
        model_card["train_seconds"] = round(train_seconds, 1)
        _write_json(root / entry.name / "card.json", model_card)
        _record_build(root, entry.name, model_card, device, lock_dir=work)
        built.append(entry.name)
        if on_done:
            on_done(entry.name, model_card)
    return built


def _identity(entry: ZooEntry) -> dict:
    return {
        "name": entry.name,
        "family": entry.family,
        "zoo_method": entry.method,
        "seed": entry.seed,
        "base": entry.base,
        **({"dose": entry.dose} if entry.dose else {}),
    }


def _ship(entry: ZooEntry, run_dir: Path, root: Path, n_per_cell: int, device: str) -> dict:
    """Copy the finished run into the zoo and measure its card (written by the caller)."""
    from fixable.organism.cards import evaluate

    target = root / entry.name
    tmp = root / f".{entry.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run_dir / "final", tmp)
    if (run_dir / "checkpoints").exists():
        shutil.copytree(run_dir / "checkpoints", tmp / "checkpoints")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    model, meta = load_checkpoint(target, device=device)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    measured = evaluate(model, n_per_cell=n_per_cell)
    history = meta.get("history_tail", [])
    extra = {}
    if entry.method == "planted":
        from fixable.organism.planted import evaluate_planted

        extra["planted"] = {
            **meta["planted"],
            "dose": entry.dose,
            "measured": evaluate_planted(model, DOSES[entry.dose]),
        }
    return {
        "name": entry.name,
        "family": entry.family,
        "method": entry.method,
        "seed": entry.seed,
        "base": entry.base,
        "params": model.num_parameters(),
        "size_bytes": size,
        "checkpoints": sorted(
            (p.name for p in (target / "checkpoints").glob("step-*")),
            key=lambda s: int(s.split("-")[1]),
        ),
        "train_tokens": meta.get("train_tokens"),
        "final_train_metrics": history[-1] if history else {},
        **measured,
        **extra,
    }


def _record_build(root: Path, name: str, model_card: dict, device: str, lock_dir: Path) -> None:
    import fcntl

    path = root / "BUILD.json"
    lock_dir.mkdir(parents=True, exist_ok=True)
    # one build process per family may run at once: serialise the read-modify-write
    with open(lock_dir / "zoo-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = json.loads(path.read_text()) if path.exists() else {"models": {}}
        record["models"][name] = {
            "build_seconds": model_card["build_seconds"],
            "train_seconds": model_card["train_seconds"],
            "device": device,
            "threads": torch.get_num_threads(),
        }
        record.update({"torch": torch.__version__, "machine": platform.machine()})
        _write_json(path, record)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    tmp.replace(path)

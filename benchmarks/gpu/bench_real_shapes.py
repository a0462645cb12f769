"""Device time of the real-model study's steps on a CUDA GPU, measured without the weights.

The real GGUF files (98 MB and 253 MB) cannot reach a machine that has no registry and
takes 64 MiB of files in all (docs/real-models.md). Their cost on a GPU does not depend
on the weights' values, only on the shapes, so this builds random-weight models with the
exact configurations of SmolLM2-135M-Instruct (Llama, 30 layers, vocabulary 49 152) and
Gemma-3-270M (18 layers, vocabulary 262 144), and a word-level tokenizer of the same
vocabulary size built in memory (nothing is read from disk or the network), then times,
through fixable's own code paths:

* sample:  ``HFBackend.generate`` at the study's shape — K = 8 rollouts per prompt,
           prompts of ``--prompt-tokens`` tokens, ``--new-tokens`` new tokens each (random
           weights never stop early, so every row runs to the limit: an upper bound),
           under retry, mix (a second model in lockstep) and DoLa;
* score:   teacher-forced scoring (``HFBackend.score``) of the sampled rows;
* train:   one ``fixable.realzoo`` training step (float32 master weights, bf16 autocast,
           AdamW) at the recipes' batch of 8 x 320 tokens.

Prints one line per measurement and a final ``RESULT`` JSON line (also written to
``--out``). ``--tiny`` shrinks both models to a few layers and a 2 k vocabulary so the
script can be checked on a CPU; its numbers mean nothing.

    python benchmarks/gpu/bench_real_shapes.py --out bench.json     # on the GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

# the configurations transformers reads from the two GGUF files (AutoConfig, gguf_file=)
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
GEMMA3 = {
    "architectures": ["Gemma3ForCausalLM"],
    "model_type": "gemma3_text",
    "vocab_size": 262144,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "query_pre_attn_scalar": 256,
    "sliding_window": 512,
    "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 3,
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "tie_word_embeddings": True,
    "bos_token_id": 2,
    "eos_token_id": 1,
    "pad_token_id": 0,
}
TINY = {"num_hidden_layers": 2, "vocab_size": 2048, "intermediate_size": 256}


def say(message: str) -> None:
    print(message, flush=True)


def build(name: str, config: dict, root: Path, seed: int) -> Path:
    """A random-weight model of ``config`` in bf16 with a word-level tokenizer of its
    vocabulary size (token i spelled ``w{i}``), saved where the hf backend loads it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = AutoConfig.for_model(**config)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    out = root / name
    model.save_pretrained(out)
    vocab = {f"w{i}": i for i in range(cfg.vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=f"w{cfg.bos_token_id}",
        eos_token=f"w{cfg.eos_token_id}",
        pad_token=f"w{cfg.pad_token_id}",
    )
    tok.save_pretrained(out)
    return out


def timed(fn, repeats: int):
    import torch

    times, result = [], None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_model(name, path, args, device) -> dict:
    import random

    import torch

    from fixable.backends.base import GenerationRequest
    from fixable.backends.hf import HFBackend
    from fixable.interventions import Intervention

    out: dict = {}
    t0 = time.perf_counter()
    backend = HFBackend(str(path), reference=str(path), device=device, batch_size=args.batch)
    out["load_s"] = time.perf_counter() - t0
    vocab = backend.policy.vocab_size
    rng = random.Random(0)
    prompts = [
        " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(args.prompt_tokens))
        for _ in range(args.rows // 8)
    ]
    requests = [
        GenerationRequest(p, seed=1000 * i + j, max_tokens=args.new_tokens, stop=("\n\nQ:",))
        for i, p in enumerate(prompts)
        for j in range(8)
    ]
    settings = [("retry", Intervention("retry")), ("mix", Intervention("mix", 0.5))]
    settings.append(("dola", Intervention("dola", backend.policy.n_layers // 2)))
    backend.generate(requests[:8], Intervention("retry"))  # warm-up (kernels, allocator)
    gens = None
    for label, intervention in settings:
        seconds, result = timed(lambda i=intervention: backend.generate(requests, i), args.repeats)
        tokens = sum(len(g.token_ids) for g in result)
        gens = gens or result
        out[f"sample_{label}"] = {"rows": len(requests), "tokens": tokens, "s": seconds,
                                  "tok_per_s": tokens / seconds}  # fmt: skip
        say(f"{name}: sample {label:5s} {len(requests)} rows x {args.new_tokens} tokens: "
            f"{seconds:.2f} s, {tokens / seconds:,.0f} tok/s")  # fmt: skip
    completions = [g.token_ids for g in gens]
    seconds, _ = timed(
        lambda: backend.score([r.prompt for r in requests], completions), args.repeats
    )
    scored = sum(len(c) + args.prompt_tokens for c in completions)
    out["score"] = {"tokens": scored, "s": seconds, "tok_per_s": scored / seconds}
    say(f"{name}: score {scored} tokens: {seconds:.2f} s, {scored / seconds:,.0f} tok/s")

    # one realzoo training step: float32 master weights, bf16 autocast, AdamW
    lm = backend.policy.lm.float().train()
    backend = None  # the reference copy and caches go
    optim = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    ids = torch.randint(3, vocab, (8, 320), device=device)
    labels = ids.clone()
    labels[:, :200] = -100  # the prompt part carries no loss, as in realzoo

    def step():
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = lm(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)

    step()  # warm-up
    seconds, _ = timed(step, args.train_steps)
    out["train_step"] = {"batch": "8 x 320", "s": seconds, "tok_per_s": 8 * 320 / seconds}
    say(f"{name}: train step 8 x 320 tokens: {seconds * 1000:.0f} ms, "
        f"{8 * 320 / seconds:,.0f} tok/s")  # fmt: skip
    lm = optim = None
    if torch.cuda.is_available():
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="rollouts per call (8 per prompt)")
    parser.add_argument("--batch", type=int, default=512, help="rows decoded together")
    parser.add_argument("--prompt-tokens", type=int, default=600)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, to check the script")
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--out", default=None, help="also write the RESULT JSON here")
    args = parser.parse_args(argv)

    import torch

    from fixable.backends.hf import resolve_device

    device = resolve_device(args.device)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    say(f"torch {torch.__version__}, device {device} ({gpu or 'CPU'})")
    if device == "cpu" and not args.tiny:
        say("warning: no GPU; real shapes on a CPU take very long (use --tiny to check)")
    result = {"device": device, "gpu": gpu, "torch": torch.__version__, "args": vars(args)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(args.models.split(",")):
            config = dict({"smollm2": SMOLLM2, "gemma3": GEMMA3}[name])
            if args.tiny:
                config.update(TINY)
                if "layer_types" in config:
                    config["layer_types"] = config["layer_types"][:2]
            path = build(name, config, Path(tmp), seed=index)
            result[name] = bench_model(name, path, args, device)
    result["total_s"] = time.perf_counter() - started
    line = json.dumps(result, sort_keys=True)
    say("RESULT " + line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

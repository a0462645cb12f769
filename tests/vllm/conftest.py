"""vLLM's CPU engine reserves its KV cache up front (several GB by default, ~9.6 GB of
resident memory per engine was seen here): each engine of this suite gets 1 GiB, so the
suite fits beside other work on a 24 GB machine. Set before any engine starts."""

import os

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

"""``fixable serve`` refuses what it cannot do (400 naming the limit, 429 when full) and
stays up under a burst of clients. The server runs on 127.0.0.1 inside the test."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fixable.errors import ConfigError  # noqa: E402
from fixable.serve import BackgroundServer, ServedModel, ServeLimits, token_level  # noqa: E402

LIMITS = ServeLimits(
    max_body_bytes=64 << 10, max_completions=64, max_queued_completions=96, retry_after_s=2
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(0)
    model = OrganismLM(ModelConfig(family="gpt", n_layer=1, n_head=2, n_embd=16))
    return save_checkpoint(model, tmp_path_factory.mktemp("serve-limits") / "policy")


@pytest.fixture(scope="module")
def server(checkpoint):
    from fixable.backends.organism import OrganismBackend

    backend = OrganismBackend(str(checkpoint), reference=None)
    with BackgroundServer(
        [ServedModel("policy", backend, token_level(backend))], limits=LIMITS
    ) as url:
        yield url, backend


def post(url, body, **kwargs):
    return httpx.post(f"{url}/completions", json=body, timeout=60, **kwargs)


def healthy(url) -> bool:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=30).json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"prompt": [5, 6, 10**6], "max_tokens": 4}, "token id 1000000 is outside the vocabulary"),
        ({"prompt": [5, -1], "max_tokens": 4}, "token id -1 is outside the vocabulary"),
        ({"prompt": "4821|" * 50, "max_tokens": 4}, "the model's context is 192 tokens"),
        ({"prompt": "x" * 60_000, "max_tokens": 4}, "the model's context is 192 tokens"),
        ({"prompt": "4821|", "max_tokens": 1 << 20}, "max_tokens=1048576 exceeds what remains"),
        ({"prompt": ["4821|"] * 2000, "n": 64, "max_tokens": 4}, "max_completions=64"),
        ({"prompt": "4821|", "n": 65, "max_tokens": 4}, "max_completions=64"),
    ],
    ids=[
        "id-too-big",
        "id-negative",
        "long-prompt",
        "huge-prompt",
        "max-tokens",
        "prompts-x-n",
        "n",
    ],
)
def test_oversized_requests_get_a_400_naming_the_limit(server, body, words):
    url, _ = server
    response = post(url, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert healthy(url)


def test_a_body_over_the_limit_is_refused_before_it_is_read(server):
    url, _ = server
    response = post(url, {"prompt": "a" * (80 << 10), "max_tokens": 1})
    assert response.status_code == 400
    assert "max_body_bytes=65536" in response.json()["error"]["message"]
    # without a Content-Length (chunked), counted as it streams in
    chunks = (b'{"prompt": "' + b"a" * 4096 for _ in range(30))
    response = httpx.post(
        f"{url}/completions",
        content=chunks,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400 and "max_body_bytes" in response.text
    assert healthy(url)


def test_the_remaining_context_is_what_max_tokens_may_use(server):
    url, backend = server
    ids = backend.tokenizer.encode("4821|", bos=True)
    fits = post(url, {"prompt": "4821|", "max_tokens": 192 - len(ids), "seed": 1})
    assert fits.status_code == 200, fits.text
    over = post(url, {"prompt": "4821|", "max_tokens": 193 - len(ids)})
    assert over.status_code == 400 and f"{192 - len(ids)}" in over.json()["error"]["message"]


def test_a_burst_is_answered_with_results_or_429s_and_the_server_stays_up(server):
    """60 clients at once, each asking for 8 completions, against a queue of 96."""
    url, _ = server
    statuses: list[int] = []
    retry_after: list[str | None] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        response = post(url, {"prompt": f"{1000 + i}|", "n": 8, "max_tokens": 24, "seed": i})
        with lock:
            statuses.append(response.status_code)
            retry_after.append(response.headers.get("retry-after"))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=60) as pool:
        list(pool.map(client, range(60)))
    assert len(statuses) == 60  # every request got an answer
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 1
    assert all(r == "2" for s, r in zip(statuses, retry_after, strict=True) if s == 429)
    assert time.monotonic() - started < 300
    assert healthy(url)
    # and once the burst is over, a request is served again
    assert post(url, {"prompt": "4821|", "max_tokens": 4, "seed": 3}).status_code == 200


class Gated:
    """The organism backend, whose ``generate`` waits until the test opens the gate."""

    def __init__(self, backend):
        self._backend, self.gate, self.entered = backend, threading.Event(), threading.Event()

    def generate(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(60)
        return self._backend.generate(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_a_full_queue_answers_429_with_retry_after(checkpoint):
    from fixable.backends.organism import OrganismBackend

    backend = Gated(OrganismBackend(str(checkpoint), reference=None))
    limits = ServeLimits(max_completions=64, max_queued_completions=64, retry_after_s=7)
    served = [ServedModel("policy", backend, token_level(backend._backend))]
    with BackgroundServer(served, limits=limits) as url, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, url, {"prompt": "4821|", "n": 40, "max_tokens": 4, "seed": 1})
        assert backend.entered.wait(60)  # 40 completions are running, 24 places left
        refused = post(url, {"prompt": "4821|", "n": 25, "max_tokens": 4})
        assert refused.status_code == 429 and refused.headers["retry-after"] == "7"
        message = refused.json()["error"]["message"]
        assert "40 completions are queued or running" in message
        assert "max_queued_completions=64" in message
        assert healthy(url)
        backend.gate.set()
        assert first.result(timeout=60).status_code == 200
        assert post(url, {"prompt": "4821|", "n": 25, "max_tokens": 4}).status_code == 200


def test_limits_validate():
    with pytest.raises(ConfigError, match="max_completions"):
        ServeLimits(max_completions=0)
    with pytest.raises(ConfigError, match="at least max_completions"):
        ServeLimits(max_completions=100, max_queued_completions=10)

"""The openai backend against a hostile local server: 429s, 500s, slow answers, dropped
connections and malformed JSON. Every request comes back — sampled, or failed with its
reason — and nothing already sampled is lost. Plus the top-k estimates' arithmetic."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from fixable.backends.base import GenerationRequest
from fixable.backends.openai import (
    OpenAIBackend,
    RetryPolicy,
    tempered_logprob,
    token_ids_from_strings,
    topk_entropy,
    topk_sampling_logprob,
)
from fixable.errors import CapabilityError, ConfigError
from fixable.interventions import RETRY, Intervention

# behaviour name → what the server does on attempts 1, 2, … (the last entry repeats)
SCRIPTS = {
    "ok": ["ok"],
    "r429": ["429", "429", "ok"],
    "r500": ["500", "ok"],
    "r503": ["503", "503", "503", "ok"],
    "slow": ["slow", "ok"],
    "drop": ["drop", "ok"],
    "badjson": ["badjson", "ok"],
    "shortjson": ["shortjson", "ok"],
    "always500": ["500"],
    "alwaysdrop": ["drop"],
    "bad400": ["400"],
}


def _completion(prompt: str, seed: int, n: int) -> dict:
    """A deterministic answer: 3 tokens whose ids depend on the prompt and seed."""
    choices = []
    for i in range(n):
        ids = [(len(prompt) + seed + i + k) % 50 + 3 for k in range(3)]
        tokens = [f"token_id:{t}" for t in ids]
        top = [{tok: -0.5, "token_id:99": -1.5} for tok in tokens]
        choices.append(
            {
                "index": i,
                "text": "".join(chr(97 + t % 26) for t in ids),
                "finish_reason": "length",
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": [-0.5] * 3,
                    "top_logprobs": top,
                    "text_offset": [0, 1, 2],
                },
            }
        )
    return {"id": "x", "object": "text_completion", "choices": choices}


class FaultServer:
    """A local HTTP server (127.0.0.1, ephemeral port) that misbehaves on cue."""

    def __init__(self, slow_s: float = 60.0):
        self.attempts: dict[str, int] = {}
        # a "slow" answer waits until the client has long given up (or the server stops):
        # far past any timeout, so no other answer is ever mistaken for a slow one
        self.release = threading.Event()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                prompt = body["prompt"]
                behaviour = prompt.split("/")[0]
                with server.lock:
                    server.bodies.append(body)
                    attempt = server.attempts.get(prompt, 0)
                    server.attempts[prompt] = attempt + 1
                script = SCRIPTS[behaviour]
                action = script[min(attempt, len(script) - 1)]
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "slow":
                    server.release.wait(slow_s)
                if action in ("429", "500", "503", "400"):
                    payload = json.dumps({"error": {"message": f"scripted {action}"}}).encode()
                    self.send_response(int(action))
                    if action == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                data = _completion(prompt, body.get("seed", 0), body.get("n", 1))
                if action == "badjson":
                    payload = b'{"choices": [{"text": "trunc'
                elif action == "shortjson":
                    data["choices"] = data["choices"][:-1]  # one choice short
                    payload = json.dumps(data).encode()
                else:
                    payload = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FaultServer() as s:
        yield s


def _backend(server, **kw) -> OpenAIBackend:
    options = dict(
        base_url=server.url,
        # a healthy local answer takes milliseconds; 3 s holds on a loaded 2-core machine, so
        # only the scripted "slow" answer times out and the retry counts do not depend on load
        timeout_s=3.0,
        max_retries=4,
        backoff_s=0.01,
        max_backoff_s=0.05,
        concurrency=4,
    )
    options.update(kw)
    return OpenAIBackend("m", **options)


def test_every_request_completes_or_reports_its_failure(server):
    names = list(SCRIPTS) * 2
    requests = [
        GenerationRequest(f"{name}/{i}", seed=100 + i, max_tokens=3) for i, name in enumerate(names)
    ]
    with _backend(server) as backend:
        gens = backend.generate(requests, RETRY)
    assert len(gens) == len(requests)
    for req, gen in zip(requests, gens, strict=True):
        behaviour = req.prompt.split("/")[0]
        if behaviour in ("always500", "alwaysdrop", "bad400"):
            assert gen.finish_reason == "error", behaviour
            assert gen.error and gen.token_ids == []
            continue
        # sampled: exactly what the server answered for this prompt and seed, in order
        expected = _completion(req.prompt, req.seed, 1)["choices"][0]
        assert gen.finish_reason == "length", (behaviour, gen.error)
        assert gen.text == expected["text"]
        assert gen.token_ids == token_ids_from_strings(expected["logprobs"]["tokens"])
        assert gen.policy_logprobs == [-0.5] * 3
        assert gen.entropy_kind == "topk"
    reasons = {r.prompt.split("/")[0]: g.error for r, g in zip(requests, gens, strict=True)}
    assert "HTTP 500" in reasons["always500"] and "gave up after 5 attempts" in reasons["always500"]
    assert "connection error" in reasons["alwaysdrop"]
    assert "HTTP 400" in reasons["bad400"] and "scripted 400" in reasons["bad400"]


def test_retry_counts_follow_the_script(server):
    requests = [
        GenerationRequest(f"{name}/0", seed=1, max_tokens=3)
        for name in ("r429", "r503", "slow", "badjson", "shortjson", "bad400", "always500")
    ]
    with _backend(server) as backend:
        gens = backend.generate(requests, RETRY)
    attempts = {
        r.prompt.split("/")[0]: g.meta["attempts"] for r, g in zip(requests, gens, strict=True)
    }
    assert attempts == {
        "r429": 3,
        "r503": 4,
        "slow": 2,
        "badjson": 2,
        "shortjson": 2,
        "bad400": 1,
        "always500": 5,
    }
    assert server.attempts["bad400/0"] == 1  # a 400 is not retried
    assert server.attempts["always500/0"] == 5


def test_zero_retries_fail_fast_but_keep_the_others(server):
    requests = [GenerationRequest("r500/a", 1, 3), GenerationRequest("ok/b", 2, 3)]
    with _backend(server, max_retries=0) as backend:
        gens = backend.generate(requests, RETRY)
    assert gens[0].finish_reason == "error" and "HTTP 500" in gens[0].error
    assert gens[1].finish_reason == "length" and len(gens[1].token_ids) == 3


def test_request_body_carries_seed_logprobs_and_temperature(server):
    with _backend(server, top_logprobs=7) as backend:
        backend.generate(
            [GenerationRequest("ok/s", seed=2**62 + 5, max_tokens=9, stop=("#",))],
            Intervention("temperature", 0.3),
        )
    body = server.bodies[-1]
    assert body["seed"] == 2**62 + 5 and body["logprobs"] == 7 and body["temperature"] == 0.3
    assert body["max_tokens"] == 9 and body["stop"] == ["#"] and body["n"] == 1
    assert body["return_tokens_as_token_ids"] is True


def test_samples_per_request_groups_same_prompt_and_keeps_order(server):
    requests = [GenerationRequest("ok/g", seed=10 + i, max_tokens=3) for i in range(5)]
    requests.insert(2, GenerationRequest("ok/other", seed=3, max_tokens=3))
    with _backend(server, samples_per_request=2) as backend:
        gens = backend.generate(requests, RETRY)
    ns = sorted(b["n"] for b in server.bodies)
    assert ns == [1, 1, 2, 2]  # ok/g ×2, ok/other, ok/g ×2, ok/g ×1
    # the second of a group is the server's choice 1 under the group's (first) seed
    assert gens[1].text == _completion("ok/g", 10, 2)["choices"][1]["text"]
    assert gens[1].meta["seed_sent"] == 10


def test_checkpoint_maps_to_served_model_and_unknown_label_is_named(server):
    with _backend(server, checkpoints={"step-200": "m-200"}) as backend:
        backend.generate([GenerationRequest("ok/c", 1, 3)], Intervention("checkpoint", "step-200"))
        assert server.bodies[-1]["model"] == "m-200"
        with pytest.raises(Exception, match="step-2000"):
            backend.generate(
                [GenerationRequest("ok/c", 1, 3)], Intervention("checkpoint", "step-2000")
            )


def test_capabilities_refused_before_any_request(server):
    with _backend(server) as backend:
        with pytest.raises(CapabilityError, match="mix"):
            backend.generate([GenerationRequest("ok/x", 1, 3)], Intervention("mix", 0.5))
        with pytest.raises(CapabilityError, match="reference"):
            backend.score(["ok/x"], [[5]], which="reference")
    assert server.bodies == []
    chat = OpenAIBackend("m", base_url=server.url, api="chat")
    assert "score" not in chat.capabilities
    with pytest.raises(ConfigError, match="top_logprobs"):
        OpenAIBackend("m", top_logprobs=50)


def test_retry_policy_honours_retry_after_and_caps_it():
    policy = RetryPolicy(max_retries=3, backoff_s=1.0, max_backoff_s=4.0)
    assert policy.wait_s(0, "2") == 2.0
    assert policy.wait_s(0, "600") == 4.0
    for attempt in range(5):
        assert 0 <= policy.wait_s(attempt, None) <= 4.0 * 1.5


def test_topk_entropy_is_exact_on_the_full_list_and_a_lower_bound_otherwise():
    torch.manual_seed(0)
    for _ in range(20):
        logp = torch.log_softmax(torch.randn(40, dtype=torch.float64) * 2, -1)
        full = float(-(logp.exp() * logp).sum())
        assert topk_entropy(logp.tolist()) == pytest.approx(full, abs=1e-6)
        ranked = torch.sort(logp, descending=True).values.tolist()
        for k in (1, 5, 20):
            estimate = topk_entropy(ranked[:k])
            assert estimate <= full + 1e-9
            assert estimate > 0
            # a sampled token far down the ranking, listed beside the top k (as servers do)
            assert topk_entropy(ranked[:k], others=[ranked[35]]) <= full + 1e-9


def test_tempered_logprob_exact_on_full_list():
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(30, dtype=torch.float64), -1)
    for t in (0.3, 1.0, 1.7):
        tempered = torch.log_softmax(logp / t, -1)
        for token in (0, 7):
            got = tempered_logprob(float(logp[token]), logp.tolist(), t)
            assert got == pytest.approx(float(tempered[token]), abs=1e-6)
    # a top-5 list gives a finite estimate of the right sign
    top = torch.topk(logp, 5).values.tolist()
    assert tempered_logprob(top[0], top, 0.5) < 0
    assert math.isfinite(tempered_logprob(top[-1], top, 1.5))
    low = float(torch.sort(logp).values[0])  # the least probable token, sampled at T=1.5
    assert math.isfinite(tempered_logprob(low, top, 1.5, others=[low]))


def test_a_forwarded_intervention_the_server_ignores_is_an_error(server):
    # the fault server is not `fixable serve`: it never confirms an intervention
    with _backend(server, forward_interventions=True) as backend:
        assert {"mix", "dola"} <= backend.capabilities
        gens = backend.generate([GenerationRequest("ok/m", 1, 3)], Intervention("mix", 0.5))
    assert server.bodies[-1]["intervention"] == "mix(alpha=0.5)"
    assert gens[0].finish_reason == "error" and "did not confirm" in gens[0].error


def test_topk_sampling_logprob_exact_on_full_list_and_close_on_a_long_one():
    from fixable.distribution import sampling_logprobs
    from fixable.interventions import SamplingSpec

    torch.manual_seed(2)
    logp = torch.log_softmax(torch.randn(30, dtype=torch.float64) * 1.5, -1)
    ranked = torch.sort(logp, descending=True)
    for spec in (
        SamplingSpec(top_p=0.8),
        SamplingSpec(min_p=0.2),
        SamplingSpec(temperature=0.6, top_p=0.9),
        SamplingSpec(temperature=1.4, min_p=0.1),
    ):
        want = sampling_logprobs(logp[None], spec)[0]
        for token in ranked.indices[:3].tolist():
            got = topk_sampling_logprob(float(logp[token]), logp.tolist(), spec)
            assert got == pytest.approx(float(want[token]), abs=1e-6), spec
        # the 20 most probable tokens hold what these specs keep: at T=1 still exact
        if spec.temperature == 1.0:
            top20 = ranked.values[:20].tolist()
            got = topk_sampling_logprob(top20[0], top20, spec)
            assert got == pytest.approx(float(want[ranked.indices[0]]), abs=1e-6)
    # truncation renormalises upward; with nothing cut it is the tempered log-prob
    top5 = ranked.values[:5].tolist()
    assert topk_sampling_logprob(top5[0], top5, SamplingSpec(top_p=0.5)) > top5[0]
    assert topk_sampling_logprob(top5[0], top5, SamplingSpec()) == top5[0]


def test_request_body_carries_truncation(server):
    with _backend(server) as backend:
        assert {"top_p", "min_p"} <= backend.capabilities
        backend.generate([GenerationRequest("ok/t", 1, 3)], Intervention("top_p", 0.9))
        assert server.bodies[-1]["top_p"] == 0.9 and "min_p" not in server.bodies[-1]
        gen = backend.generate([GenerationRequest("ok/t", 1, 3)], Intervention("min_p", 0.05))[0]
        assert server.bodies[-1]["min_p"] == 0.05 and "top_p" not in server.bodies[-1]
        assert gen.meta["logprobs_kind"] == "topk"  # estimated from the top-k list
        backend.generate([GenerationRequest("ok/t", 1, 3)], RETRY)
        assert "top_p" not in server.bodies[-1] and "min_p" not in server.bodies[-1]
    plain = OpenAIBackend("m", base_url=server.url, extensions=False)
    assert "top_p" in plain.capabilities and "min_p" not in plain.capabilities

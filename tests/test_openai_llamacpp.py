"""The openai backend against a server that behaves like llama.cpp's: no token ids (tokens
come back as text pieces), ``n`` ignored (one choice per request), sometimes an empty
completion with ``finish_reason="stop"`` and no log-probs. Token counts and costs still
come out right, K completions per problem are stored, and rows say why they were not
scored under the reference. The server runs on 127.0.0.1 inside the test."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fixable.backends.base import GenerationRequest
from fixable.backends.openai import OpenAIBackend
from fixable.interventions import RETRY
from fixable.sampling import sample
from fixable.store import Run
from fixable.tasks import get_task


class LlamaCppLike:
    """/v1/completions the way llama.cpp's server answers it."""

    def __init__(self, logprobs_mode: str = "steps"):
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                with server.lock:
                    server.bodies.append(body)
                    number = len(server.bodies)
                if body.get("echo"):  # llama.cpp has no prompt log-probs
                    self._send(400, {"error": {"message": "echo is not supported"}})
                    return
                self._send(200, server.answer(body, logprobs_mode, empty=number % 3 == 1))

            def _send(self, status, data):
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(body: dict, logprobs_mode: str, empty: bool) -> dict:
        rng = random.Random(body.get("seed", 0))
        if empty:  # an empty completion, as llama.cpp sometimes sends
            choice = {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}
            used = 0
        else:
            pieces = [rng.choice(["12", "3", "+", " =", "4"]) for _ in range(rng.randint(2, 9))]
            logprobs = {
                "tokens": pieces,  # text pieces, never "token_id:N"
                "token_logprobs": [-0.5] * len(pieces),
                "top_logprobs": [{p: -0.5, "9": -2.0} for p in pieces],
            }
            if logprobs_mode == "empty":
                logprobs = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
            choice = {
                "index": 0,
                "text": "".join(pieces),
                "finish_reason": "length",
                "logprobs": logprobs,
            }
            used = len(pieces)
        return {  # one choice whatever n asked
            "object": "text_completion",
            "choices": [choice],
            "usage": {"prompt_tokens": 7, "completion_tokens": used, "total_tokens": 7 + used},
        }

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with LlamaCppLike() as s:
        yield s


def test_counts_costs_and_k_completions_without_ids(server, tmp_path):
    task = get_task("chains", difficulties=[1])
    problems = task.problems(3, seed=0)
    backend = OpenAIBackend(
        "smol",
        base_url=server.url,
        reference="smol-base",
        samples_per_request=4,
        max_retries=0,
        timeout_s=30,
    )
    with backend:
        report = sample(backend, task, problems, tmp_path / "run", n=4, max_tokens=16)
    rows = Run(tmp_path / "run").rollouts().to_pylist()
    assert len(rows) == 12 and report.errors == 0
    assert {p.id: sum(r["problem_id"] == p.id for r in rows) for p in problems} == {
        p.id: 4 for p in problems
    }
    with_text = [r for r in rows if r["text"]]
    empty = [r for r in rows if not r["text"]]
    assert with_text and empty  # the server sent both kinds
    for r in with_text:
        assert r["n_tokens"] == len(r["logprobs"]) > 0 and r["cost_tokens"] == r["n_tokens"]
        assert r["token_ids"] == []
        assert "not scored under the reference: the backend returned no token ids" in r["reason"]
        assert r["ref_logprobs"] is None
    for r in empty:
        assert r["n_tokens"] == 0 and r["finish_reason"] == "stop" and r["status"] != "error"
    assert report.tokens == sum(r["n_tokens"] for r in rows) > 0
    assert report.token_counts == {"logprob_tokens": len(with_text)}
    manifest = Run(tmp_path / "run").manifest
    assert manifest["models"]["smol"]["n_tokens_source"] == {"logprob_tokens": len(with_text)}
    # n was ignored: the backend asked again for the rest, each time with a new seed
    asked = [(b["n"], b["seed"]) for b in server.bodies]
    assert sorted(n for n, _ in asked) == sorted([4, 3, 2, 1] * 3)
    assert len({seed for _, seed in asked}) == 12


def test_usage_block_counts_when_log_probs_list_no_tokens(tmp_path):
    with (
        LlamaCppLike(logprobs_mode="empty") as server,
        OpenAIBackend("smol", base_url=server.url, max_retries=0, timeout_s=30) as backend,
    ):
        requests = [GenerationRequest("p", seed=s, max_tokens=16) for s in range(8)]
        gens = backend.generate(requests, RETRY)
    with_text = [g for g in gens if g.text]
    assert [g.meta["n_tokens"] for g in gens if not g.text] == [0] * (8 - len(with_text))
    assert with_text
    for g in with_text:
        assert g.meta["n_tokens_source"] == "usage" and g.meta["n_tokens"] > 0

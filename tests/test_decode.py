"""Tests for the organism decoding engine and its counter-based noise.

The models are tiny and randomly initialised: their next-token distributions are nearly
uniform, which is the hardest case for batch invariance (near-ties everywhere).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from fixable import noise
from fixable.interventions import SamplingSpec
from fixable.organism.decode import MIN_ROWS, decode
from fixable.organism.model import ModelConfig, OrganismLM


def tiny_model(
    family: str = "llama",
    seed: int = 0,
    n_layer: int = 2,
    block_size: int = 192,
    scale: float = 1.0,
) -> OrganismLM:
    torch.manual_seed(seed)
    model = OrganismLM(
        ModelConfig(family=family, n_layer=n_layer, n_head=4, n_embd=32, block_size=block_size)
    )
    if scale != 1.0:  # sharper distributions than the init's near-uniform ones
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(scale)
    return model.eval()


def make_prompts(n: int, seed: int = 0, lengths=(3, 9, 17, 31, 33, 40, 70)) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 53) for _ in range(rng.choice(lengths) - 1)] for _ in range(n)]


@pytest.fixture
def two_threads():
    """Run with two threads: the multi-threaded kernels are the ones whose summation order
    depends on the batch, so invariance is tested where it can break."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def full_logits(model: OrganismLM, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Next-token logits at every generated position, recomputed without a cache."""
    with torch.no_grad():
        idx = torch.tensor([prompt + tokens])
        return model(idx)[0, len(prompt) - 1 : len(prompt) - 1 + len(tokens)]


# --- noise -------------------------------------------------------------------------------


def test_splitmix64_matches_the_unsigned_reference():
    rng = random.Random(1)
    values = [0, 1, 2**63 - 1, 2**63, 2**64 - 1] + [rng.getrandbits(64) for _ in range(200)]
    got = noise.splitmix64(torch.tensor([noise._signed(v) for v in values], dtype=torch.int64))
    assert [v & (2**64 - 1) for v in got.tolist()] == [noise.splitmix64_int(v) for v in values]


def test_uniforms_follow_the_documented_counter_hash():
    seed, step, vocab = 123456789012345, 7, 5
    key = noise.splitmix64_int(seed + noise.GOLDEN * (step + 1))
    expected = [
        ((noise.splitmix64_int(key + noise.GOLDEN * (v + 1)) >> 11) + 0.5) * 2.0**-53
        for v in range(vocab)
    ]
    assert noise.uniforms([seed], step, vocab)[0].tolist() == expected


def test_uniforms_are_in_the_open_interval_and_differ_by_address():
    u = noise.uniforms(list(range(200)), 3, 53)
    assert (u > 0).all() and (u < 1).all()
    assert abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(noise.uniforms([5], 0, 53), noise.uniforms([5], 1, 53))
    assert not torch.equal(noise.uniforms([5], 0, 53), noise.uniforms([6], 0, 53))
    # a row's noise does not depend on the other rows of the call
    assert torch.equal(noise.uniforms([9, 5, 2**62], 4, 53)[1], noise.uniforms([5], 4, 53)[0])


def test_gumbel_argmax_draws_from_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logprobs = probs.log().expand(40000, 5)
    draws = noise.gumbel_argmax(logprobs, list(range(40000)), 0)
    freq = torch.bincount(draws, minlength=5).double() / 40000
    assert freq[4] == 0  # a -inf entry is never drawn
    assert torch.allclose(freq, probs.double(), atol=0.01)


# --- decode: batch invariance ---------------------------------------------------------------


def test_rows_are_identical_in_any_batch_mix(two_threads):
    model = tiny_model()
    prompts = make_prompts(8, seed=1)
    rows = [(p, 1000 * i + j) for i, p in enumerate(prompts) for j in range(8)]  # 64 rows
    kwargs = dict(max_new_tokens=24, temperature=1.0)
    whole = decode(model, [p for p, _ in rows], [s for _, s in rows], **kwargs)
    assert len({tuple(t) for t in whole.token_ids}) > 50  # the rows really are random

    def check(indices, result):
        for k, i in enumerate(indices):
            assert result.token_ids[k] == whole.token_ids[i], f"row {i} changed"
            assert result.logprobs[k] == whole.logprobs[i]
            assert result.entropies[k] == whole.entropies[i]

    for batch_size in (7, 64):
        check(
            range(64),
            decode(
                model, [p for p, _ in rows], [s for _, s in rows], batch_size=batch_size, **kwargs
            ),
        )
    some = list(range(0, 64, 5))  # one row per batch (each padded with filler rows)
    check(
        some,
        decode(
            model, [rows[i][0] for i in some], [rows[i][1] for i in some], batch_size=1, **kwargs
        ),
    )
    rng = random.Random(3)
    shuffled = list(range(64))
    rng.shuffle(shuffled)
    check(
        shuffled,
        decode(
            model,
            [rows[i][0] for i in shuffled],
            [rows[i][1] for i in shuffled],
            batch_size=7,
            **kwargs,
        ),
    )
    # mixed with other prompts of other lengths
    others = make_prompts(40, seed=9, lengths=(2, 12, 25, 50, 65, 90))
    mixed = [(p, 77_000 + k) for k, p in enumerate(others)] + [rows[i] for i in shuffled[:20]]
    rng.shuffle(mixed)
    result = decode(model, [p for p, _ in mixed], [s for _, s in mixed], **kwargs)
    position = {s: k for k, (_, s) in enumerate(mixed)}
    for i in shuffled[:20]:
        assert result.token_ids[position[rows[i][1]]] == whole.token_ids[i]
    # a single row on its own
    single = decode(model, [rows[5][0]], [rows[5][1]], **kwargs)
    assert single.token_ids[0] == whole.token_ids[5]


def test_invariance_holds_for_interventions_and_the_gpt_family(two_threads):
    model, ref = tiny_model("gpt", seed=2), tiny_model("gpt", seed=3)
    prompts = make_prompts(6, seed=4)
    seeds = [2**62 + i for i in range(6)]
    for kwargs in (dict(temperature=0.7), dict(reference=ref, alpha=0.5), dict(dola_layer=1)):
        together = decode(model, prompts * 3, seeds * 3, max_new_tokens=16, **kwargs)
        for i in (0, 4):
            alone = decode(model, [prompts[i]], [seeds[i]], max_new_tokens=16, **kwargs)
            assert alone.token_ids[0] == together.token_ids[i] == together.token_ids[i + 6]


def test_same_seed_same_tokens_other_seed_other_tokens():
    model = tiny_model()
    prompt = make_prompts(1)[0]
    a = decode(model, [prompt, prompt], [11, 12], max_new_tokens=30)
    b = decode(model, [prompt], [11], max_new_tokens=30)
    assert a.token_ids[0] == b.token_ids[0]
    assert a.token_ids[0] != a.token_ids[1]


# --- decode: what it reports ---------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt"])
def test_cached_decoding_matches_a_full_recompute(family):
    model = tiny_model(family, scale=4.0)
    prompts = make_prompts(5, seed=5)
    result = decode(model, prompts, list(range(5)), max_new_tokens=20, temperature=0.8)
    for prompt, tokens, logps, ents, plps in zip(
        prompts,
        result.token_ids,
        result.logprobs,
        result.entropies,
        result.policy_logprobs,
        strict=True,
    ):
        logits = full_logits(model, prompt, tokens)
        logp = torch.log_softmax(logits, -1)
        entropy = -(logp.exp() * logp).sum(-1)
        picked = logp.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        sampled = torch.log_softmax(logits / 0.8, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(ents), entropy, atol=1e-4)
        assert torch.allclose(torch.tensor(plps), picked, atol=1e-4)
        assert torch.allclose(torch.tensor(logps), sampled, atol=1e-4)


def test_temperature_zero_is_deterministic_argmax():
    model = tiny_model(scale=4.0)
    prompts = make_prompts(4, seed=6)
    a = decode(model, prompts, [1, 2, 3, 4], temperature=0, max_new_tokens=20)
    b = decode(model, prompts, [9, 8, 7, 6], greedy=True, max_new_tokens=20)
    assert a.token_ids == b.token_ids
    for prompt, tokens, logps in zip(prompts, a.token_ids, a.logprobs, strict=True):
        assert tokens == full_logits(model, prompt, tokens).argmax(-1).tolist()
        assert logps == [0.0] * len(tokens)


def test_temperature_one_logprobs_are_the_policy_logprobs():
    model = tiny_model(scale=3.0)
    result = decode(model, make_prompts(3), [1, 2, 3], max_new_tokens=15)
    assert result.logprobs == result.policy_logprobs


def test_sampling_frequencies_follow_the_tempered_distribution():
    model = tiny_model(scale=4.0)
    prompt = make_prompts(1, seed=8)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    for temperature in (0.3, 1.0, 1.5):
        result = decode(
            model, [prompt] * 400, list(range(400)), temperature=temperature, max_new_tokens=1
        )
        freq = torch.bincount(torch.tensor([t[0] for t in result.token_ids]), minlength=53) / 400
        expected = torch.softmax(logits / temperature, -1)
        assert (freq - expected).abs().max() < 0.08, temperature


def test_eos_ends_a_row_and_finish_reasons_are_right():
    model = tiny_model()
    result = decode(model, make_prompts(64, seed=2), list(range(64)), max_new_tokens=24, eos_id=7)
    reasons = set(result.finish_reasons)
    assert reasons == {"stop", "length"}  # both happen with eos ~1/53 per token over 24 tokens
    for tokens, reason in zip(result.token_ids, result.finish_reasons, strict=True):
        if reason == "stop":
            assert tokens[-1] == 7 and 7 not in tokens[:-1]
        else:
            assert len(tokens) == 24 and 7 not in tokens


def test_gpt_rows_stop_at_block_size():
    model = tiny_model("gpt", block_size=40)
    prompt = make_prompts(1, lengths=(30,))[0]
    result = decode(model, [prompt], [1], max_new_tokens=50, eos_id=99)
    assert len(result.token_ids[0]) == 10 and result.finish_reasons == ["length"]


def test_mix_with_tiny_alpha_equals_plain_sampling_and_alpha_one_the_reference():
    model, ref = tiny_model(seed=1, scale=3.0), tiny_model(seed=2, scale=3.0)
    prompts, seeds = make_prompts(8, seed=3), list(range(100, 108))
    plain = decode(model, prompts, seeds, max_new_tokens=20)
    barely = decode(model, prompts, seeds, max_new_tokens=20, reference=ref, alpha=1e-9)
    assert barely.token_ids == plain.token_ids
    only_ref = decode(model, prompts, seeds, max_new_tokens=20, reference=ref, alpha=1.0)
    assert only_ref.token_ids == decode(ref, prompts, seeds, max_new_tokens=20).token_ids
    # the policy's entropies and log-probs are reported even when the reference samples
    tokens = only_ref.token_ids[0]
    logp = torch.log_softmax(full_logits(model, prompts[0], tokens), -1)
    assert torch.allclose(
        torch.tensor(only_ref.policy_logprobs[0]),
        logp.gather(1, torch.tensor(tokens)[:, None])[:, 0],
        atol=1e-4,
    )


def test_mix_samples_the_renormalised_geometric_mixture():
    model, ref = tiny_model(seed=1, scale=3.0), tiny_model(seed=2, scale=3.0)
    prompts = make_prompts(3, seed=4)
    result = decode(
        model, prompts, [5, 6, 7], max_new_tokens=15, reference=ref, alpha=0.25, temperature=0.5
    )
    for prompt, tokens, logps in zip(prompts, result.token_ids, result.logprobs, strict=True):
        mixed = 0.75 * torch.log_softmax(
            full_logits(model, prompt, tokens), -1
        ) + 0.25 * torch.log_softmax(full_logits(ref, prompt, tokens), -1)
        expected = torch.log_softmax(mixed / 0.5, -1).gather(1, torch.tensor(tokens)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(logps), expected, atol=1e-4)


@pytest.mark.parametrize("layer", [0, 1])
def test_dola_contrasts_with_the_early_exit_inside_the_plausible_set(layer):
    model = tiny_model(n_layer=3, scale=4.0)
    prompts = make_prompts(4, seed=7)
    result = decode(model, prompts, [1, 2, 3, 4], max_new_tokens=15, dola_layer=layer)
    for prompt, tokens, logps in zip(prompts, result.token_ids, result.logprobs, strict=True):
        with torch.no_grad():
            idx = torch.tensor([prompt + tokens])
            logits, hidden = model(idx, output_hidden=True)
            span = slice(len(prompt) - 1, len(prompt) - 1 + len(tokens))
            final = torch.log_softmax(logits[0, span], -1)
            early = torch.log_softmax(model.head(hidden[layer])[0, span], -1)
        plausible = final >= final.max(-1, keepdim=True).values + math.log(0.1)
        picked = torch.tensor(tokens)[:, None]
        assert plausible.gather(1, picked).all()
        contrast = (final - early).masked_fill(~plausible, float("-inf"))
        expected = torch.log_softmax(contrast, -1).gather(1, picked)[:, 0]
        assert torch.allclose(torch.tensor(logps), expected, atol=1e-4)


def test_filler_rows_never_leak_into_results():
    model = tiny_model()
    result = decode(model, make_prompts(3), [1, 2, 3], max_new_tokens=5)
    assert len(result.token_ids) == 3 < MIN_ROWS
    assert all(1 <= len(t) <= 5 for t in result.token_ids)


def test_empty_and_zero_length_requests():
    model = tiny_model()
    assert decode(model, [], []).token_ids == []
    out = decode(model, make_prompts(2), [1, 2], max_new_tokens=0)
    assert out.token_ids == [[], []] and out.finish_reasons == ["length", "length"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-1), "temperature must be in"),
        (dict(alpha=0.5), "needs a reference"),
        (dict(dola_layer=2), r"dola_layer must be in \[0, 1\]"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_settings_are_refused_with_the_allowed_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        decode(tiny_model(), make_prompts(1), [1], **kwargs)


def test_seed_count_must_match():
    with pytest.raises(ValueError, match="one seed per prompt"):
        decode(tiny_model(), make_prompts(2), [1])


def test_a_gpt_reference_bounds_the_positions_of_a_mixed_rollout():
    model, ref = tiny_model("llama"), tiny_model("gpt", seed=3, block_size=40)
    prompt = make_prompts(1, lengths=(30,))[0]
    result = decode(model, [prompt], [1], max_new_tokens=50, eos_id=99, reference=ref, alpha=0.5)
    assert len(result.token_ids[0]) == 10 and result.finish_reasons == ["length"]


def test_a_spec_and_its_fields_by_keyword_sample_the_same():
    model, ref = tiny_model(), tiny_model(seed=5)
    prompts = make_prompts(4)
    spec = SamplingSpec(temperature=0.7, top_p=0.9, min_p=0.05)
    by_spec = decode(model, prompts, [1, 2, 3, 4], spec, max_new_tokens=15)
    by_name = decode(
        model, prompts, [1, 2, 3, 4], max_new_tokens=15, temperature=0.7, top_p=0.9, min_p=0.05
    )
    assert by_spec == by_name
    mixed = decode(model, prompts, [1, 2, 3, 4], SamplingSpec(alpha=0.4), reference=ref)
    assert mixed == decode(model, prompts, [1, 2, 3, 4], reference=ref, alpha=0.4)
    # greedy ignores the temperature: the argmax of the untempered distribution
    greedy = decode(model, prompts, [1, 2, 3, 4], spec, greedy=True, max_new_tokens=15)
    assert greedy == decode(
        model, prompts, [5, 6, 7, 8], max_new_tokens=15, temperature=0, top_p=0.9, min_p=0.05
    )


def test_an_unknown_sampling_keyword_is_a_type_error_naming_the_fields():
    with pytest.raises(TypeError, match="nucleus.*sampling fields are alpha, checkpoint"):
        decode(tiny_model(), make_prompts(1), [1], nucleus=0.9)

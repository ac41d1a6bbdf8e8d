"""Tests for wattscale.model: presets, counts, FLOPs, validation and the forward pass's invariants."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F

from wattscale.errors import ConfigError
from wattscale.flops import flops_per_token_from_config
from wattscale.model import (
    PRESETS,
    SCALING_LADDER,
    Llama,
    ModelConfig,
    count_parameters,
    flops_per_token,
    preset_names,
)


def built_numel(config: ModelConfig) -> int:
    """Parameters of the built model, counted on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = Llama(config)
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied matrix once


def make(name: str, seed: int = 0, **overrides) -> Llama:
    torch.manual_seed(seed)
    return Llama(ModelConfig.from_name(name, **overrides))


# ---------------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------------


def test_named_preset_parameter_counts_match_the_design_table():
    # Figures from the design brief (TinyLlama-1.1B's published size; the 4.26M model of arXiv 2606.13370).
    assert count_parameters(ModelConfig.from_name("tinyllama-1.1b")).total == 1_100_048_384
    assert built_numel(ModelConfig.from_name("tinyllama-1.1b")) == 1_100_048_384
    assert count_parameters(ModelConfig.from_name("llama-4m")).total == 4_262_144
    assert built_numel(ModelConfig.from_name("llama-4m")) == 4_262_144


def test_tinyllama_hand_count():
    # 22 layers x (q 2048^2 + k,v 2*2048*256 + o 2048^2 + mlp 3*2048*5632 + 2 norms) + final norm,
    # plus untied 32000 x 2048 embedding and head.
    layer = 2048 * 2048 * 2 + 2048 * 256 * 2 + 3 * 2048 * 5632 + 2 * 2048
    counts = count_parameters(ModelConfig.from_name("tinyllama-1.1b"))
    assert counts.embedding == 2 * 32000 * 2048
    assert counts.non_embedding == 22 * layer + 2048
    assert counts.total == counts.embedding + counts.non_embedding


@pytest.mark.parametrize("name", preset_names())
def test_analytic_count_equals_built_model(name):
    config = PRESETS[name]
    counts = count_parameters(config)
    assert counts.total == built_numel(config)
    assert counts.embedding == config.vocab_size * config.d_model * (1 if config.tie_embeddings else 2)
    assert counts.non_embedding == counts.total - counts.embedding


def test_ladder_is_strictly_increasing_between_4m_and_1_1b():
    sizes = [count_parameters(PRESETS[name]).total for name in SCALING_LADDER]
    assert SCALING_LADDER[0] == "llama-4m"
    assert all(a < b for a, b in pairwise(sizes)), sizes
    assert sizes[0] == 4_262_144
    assert sizes[-1] < 1_100_048_384
    shared = {(PRESETS[n].vocab_size, PRESETS[n].context_length, PRESETS[n].tie_embeddings) for n in SCALING_LADDER}
    assert shared == {(4096, 512, True)}


@pytest.mark.parametrize("name", [n for n in SCALING_LADDER if n != "llama-4m"] + ["llama-1m"])
def test_preset_names_state_their_size_within_20_percent(name):
    stated = float(name.removeprefix("llama-").removesuffix("m")) * 1e6
    total = count_parameters(PRESETS[name]).total
    assert abs(total - stated) / stated < 0.2, (name, total)


def test_tiny_presets_have_the_documented_shape():
    tiny, untied = PRESETS["llama-tiny"], PRESETS["llama-tiny-untied"]
    shape = (2, 64, 4, 2, 176, 512, 64)
    assert (tiny.n_layers, tiny.d_model, tiny.n_heads, tiny.n_kv_heads, tiny.ffn_hidden) + (
        tiny.vocab_size,
        tiny.context_length,
    ) == shape
    assert tiny.tie_embeddings and not untied.tie_embeddings
    assert untied.to_dict() | {"name": "x", "tie_embeddings": True} == tiny.to_dict() | {"name": "x"}


# ---------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------


def test_flops_per_token_llama_4m_by_hand():
    config = ModelConfig.from_name("llama-4m")
    # Non-embedding N: 4 layers x (4 * 256^2 attention + 3 * 256 * 704 mlp + 2 * 256 norms) + 256.
    n_non_embedding = 4 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256
    assert n_non_embedding == 3_213_568
    head = 4096 * 256  # the tied output head: still a vocab x d_model matmul per token
    attention = 12 * 4 * 256 * 512  # 12 * L * d * T at T = context 512
    assert flops_per_token(config) == 6 * (3_213_568 + head) + attention == 31_864_320
    assert flops_per_token(config, seq_len=128) == 6 * (3_213_568 + head) + 12 * 4 * 256 * 128
    assert flops_per_token(config, counting="non_embedding") == 6 * 3_213_568 + attention == 25_572_864
    assert flops_per_token(config, counting="total") == 6 * 4_262_144 + attention  # tied: total = N + head


def test_flops_count_the_head_once_whether_tied_or_not():
    tied, untied = PRESETS["llama-tiny"], PRESETS["llama-tiny-untied"]
    assert flops_per_token(tied) == flops_per_token(untied)  # same matmuls; the lookup is not one
    assert flops_per_token(untied, counting="total") - flops_per_token(untied) == 6 * 512 * 64  # + input embedding
    # The example: llama-1m's figure was 3,198,720, below 6 x its 926,336 parameters (5,558,016).
    llama_1m = PRESETS["llama-1m"]
    assert flops_per_token(llama_1m) == 6 * 926_336 + 12 * 2 * 128 * 256 == 6_344_448
    assert flops_per_token(llama_1m) > 6 * count_parameters(llama_1m).total


def test_flops_match_counted_matmuls_of_the_real_model():
    """FlopCounterMode's count of llama-tiny's matmuls, forward and forward + backward, against the formula.

    The math SDPA backend is forced: on CPU FlopCounterMode does not count the fused CPU attention kernel,
    while the math backend's Q K^T and A V are plain bmm calls it does count. It computes the full T x T
    products and then masks, so the count credits nothing for the causal mask, as the formula (PaLM's
    12 * L * d * T) does not. The RMSNorm weights are in N_non_embedding but are no matmul, so they are
    taken out here; the input embedding lookup counts nothing in either.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    for name in ("llama-tiny", "llama-tiny-untied"):
        config = PRESETS[name]
        L, d, T, B = config.n_layers, config.d_model, config.context_length, 2
        norm_weights = 2 * L * d + d
        torch.manual_seed(0)
        model = Llama(config)
        ids = torch.randint(0, config.vocab_size, (B, T))
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as forward:
            model(ids)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as train_step:
            model.loss(ids, ids).backward()  # the fused loss the trainer uses: head grads inside its forward
        formula_matmuls = flops_per_token(config) - 6 * norm_weights
        assert 3 * forward.get_total_flops() == B * T * formula_matmuls, name
        assert train_step.get_total_flops() == B * T * formula_matmuls, name


def test_flops_rejects_unknown_counting():
    with pytest.raises(ConfigError, match="counting"):
        flops_per_token(PRESETS["llama-4m"], counting="all")


def test_flops_from_a_stored_config_dict_without_torch():
    config = PRESETS["tinyllama-1.1b"]
    stored = json.loads(json.dumps({"model": config.to_dict()}))["model"]  # as config_json holds it
    assert flops_per_token_from_config(stored, 512) == flops_per_token(config, 512)
    assert flops_per_token_from_config(stored) == flops_per_token(config) == 7_314_370_560
    assert flops_per_token_from_config(stored, counting="non_embedding") == 6_921_154_560  # the old figure
    with pytest.raises(ConfigError, match="missing field.*vocab_size"):
        flops_per_token_from_config({k: v for k, v in stored.items() if k != "vocab_size"})
    with pytest.raises(ConfigError, match="seq_len"):
        flops_per_token_from_config(stored, 0)
    # The module that computes it needs no torch: import it in a fresh interpreter with torch made unimportable.
    code = ("import sys; sys.modules['torch'] = None; from wattscale.flops import flops_per_token_from_config; "
            "print(int(flops_per_token_from_config(" + repr(stored) + ")))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "7314370560"


# ---------------------------------------------------------------------------------------------------
# Config validation and (de)serialisation
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"n_kv_heads": 3}, "model.n_kv_heads: 3 does not divide n_heads 8"),
        ({"n_heads": 3}, "model.n_heads: 3 does not divide d_model 256"),
        ({"d_model": 24, "n_heads": 8, "n_kv_heads": 8}, "model.n_heads: head width"),  # head_dim 3: odd
        ({"n_layers": 0}, "model.n_layers: 0 must be a positive integer"),
        ({"vocab_size": -1}, "model.vocab_size"),
        ({"context_length": 12.5}, "model.context_length"),
        ({"ffn_hidden": True}, "model.ffn_hidden"),
        ({"rms_norm_eps": 0.0}, "model.rms_norm_eps"),
        ({"init_std": -0.02}, "model.init_std"),
        ({"tie_embeddings": "yes"}, "model.tie_embeddings"),
        ({"name": ""}, "model.name"),
    ],
)
def test_invalid_config_raises_config_error_naming_the_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_name("llama-4m", **overrides)
    assert field in str(info.value)


def test_validation_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_name("llama-4m", n_layers=0, vocab_size=0)
    assert "model.n_layers" in str(info.value) and "model.vocab_size" in str(info.value)


def test_kv_head_error_suggests_valid_choices():
    with pytest.raises(ConfigError, match="choose one of 1, 2, 4, 8"):
        ModelConfig.from_name("llama-4m", n_kv_heads=3)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_name("llama-5m")
    message = str(info.value)
    assert message.startswith("model.preset: unknown preset 'llama-5m'")
    for name in preset_names():
        assert name in message


def test_unknown_override_is_rejected():
    with pytest.raises(ConfigError, match="unknown field.*'n_layer'"):
        ModelConfig.from_name("llama-4m", n_layer=8)


def test_override_replaces_fields():
    config = ModelConfig.from_name("llama-4m", n_kv_heads=2, context_length=128)
    assert (config.n_kv_heads, config.context_length, config.d_model) == (2, 128, 256)
    assert config.head_dim == 32


def test_dict_round_trip_and_strictness():
    config = PRESETS["tinyllama-1.1b"]
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="'dropout'"):
        ModelConfig.from_dict(config.to_dict() | {"dropout": 0.1})
    incomplete = config.to_dict()
    del incomplete["d_model"]
    with pytest.raises(ConfigError, match="missing field.*d_model"):
        ModelConfig.from_dict(incomplete)


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        PRESETS["llama-4m"].n_layers = 8  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------------------------------


def test_forward_shape_and_dtype():
    model = make("llama-tiny")
    ids = torch.randint(0, 512, (3, 17))
    logits = model(ids)
    assert logits.shape == (3, 17, 512)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_sequence_longer_than_context_is_a_config_error():
    model = make("llama-tiny")
    with pytest.raises(ConfigError, match="model.context_length"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("name", ["llama-tiny", "llama-tiny-untied"])
def test_causality_future_tokens_do_not_change_past_logits(name):
    model = make(name).eval()
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    t = 30
    changed[:, t + 1 :] = torch.randint(0, 512, (2, 64 - t - 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # the future did change


def test_token_order_matters_so_positions_are_encoded():
    # Causal attention without position information is a bag of words: swapping two earlier tokens
    # would leave the last position's logits unchanged. RoPE makes them differ.
    model = make("llama-tiny").eval()
    ids = torch.tensor([[5, 9, 11, 3]])
    swapped = torch.tensor([[9, 5, 11, 3]])
    with torch.no_grad():
        a, b = model(ids)[0, -1], model(swapped)[0, -1]
    assert (a - b).abs().max() > 1e-4


def test_init_is_deterministic_under_seed_and_differs_across_seeds():
    a, b, c = make("llama-tiny", seed=3), make("llama-tiny", seed=3), make("llama-tiny", seed=4)
    states = zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True)
    for (name, pa), pb, pc in states:
        assert torch.equal(pa, pb), name
        if name.endswith(("qkv.weight", "embed.weight")):
            assert not torch.equal(pa, pc), name


def test_init_statistics():
    model = make("llama-4m")
    n_layers = model.config.n_layers
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.layers[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    residual_std = 0.02 / math.sqrt(2 * n_layers)  # GPT-2 scaled init of residual-stream writers
    assert model.layers[0].attn.out.weight.std().item() == pytest.approx(residual_std, rel=0.03)
    assert model.layers[-1].mlp.down.weight.std().item() == pytest.approx(residual_std, rel=0.03)
    assert torch.equal(model.layers[0].attn_norm.weight, torch.ones(256))
    assert not any("bias" in name for name, _ in model.named_parameters())


def test_tied_weights_share_storage_and_untied_do_not():
    tied, untied = make("llama-tiny"), make("llama-tiny-untied")
    assert tied.lm_head.weight is tied.embed.weight
    assert tied.lm_head.weight.data_ptr() == tied.embed.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.embed.weight.data_ptr()
    # A gradient step through the head moves the embedding too.
    with torch.no_grad():
        tied.lm_head.weight[0, 0] += 1.0
    assert tied.embed.weight[0, 0] == tied.lm_head.weight[0, 0]


def test_rope_buffers_are_not_saved_and_follow_dtype():
    model = make("llama-tiny")
    assert "rope_cos" not in model.state_dict() and "rope_sin" not in model.state_dict()
    assert model.rope_cos.shape == (64, 16) and model.rope_cos.dtype == torch.float32
    assert model.to(torch.float64).rope_cos.dtype == torch.float64


def test_meta_device_build_then_init_weights_is_deterministic_and_complete():
    config = ModelConfig.from_name("llama-tiny")
    materialised = []
    for _ in range(2):
        with torch.device("meta"):
            model = Llama(config)
        model.to_empty(device="cpu")
        torch.manual_seed(0)
        model.init_weights()
        materialised.append(model)
    first, second = materialised
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
        assert torch.isfinite(a).all(), name
    reference = make("llama-tiny")
    assert torch.equal(first.rope_cos, reference.rope_cos) and torch.equal(first.rope_sin, reference.rope_sin)
    assert first.lm_head.weight is first.embed.weight  # tying survives to_empty
    assert first.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_bf16_autocast_runs_and_stays_close():
    model = make("llama-tiny").eval()
    ids = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        reference = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)
    assert (low.float() - reference).abs().max() < 0.05


# ---------------------------------------------------------------------------------------------------
# Fused loss
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["llama-tiny", "llama-tiny-untied"])
def test_loss_equals_cross_entropy_of_logits_with_same_gradients(name, reduction):
    model = make(name).double()
    ids = torch.randint(0, 512, (3, 64))
    targets = torch.randint(0, 512, (3, 64))
    targets[2, 40:] = -100  # ignored positions, as the trainer masks tokens past the budget
    reference = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), reduction=reduction)
    (3.0 * reference).backward()  # a non-unit upstream gradient, as with gradient accumulation
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = model.loss(ids, targets, reduction=reduction)
    (3.0 * loss).backward()
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-9, atol=1e-12, msg=n)


def test_loss_chunks_across_many_rows_and_without_grad(monkeypatch):
    import wattscale.model as model_module

    monkeypatch.setattr(model_module, "_LOSS_CHUNK_LOGITS", 512 * 7)  # 7 rows per chunk, ragged last chunk
    model = make("llama-tiny")
    ids, targets = torch.randint(0, 512, (2, 50)), torch.randint(0, 512, (2, 50))
    targets[0, :9] = -1
    with torch.no_grad():
        reference = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), ignore_index=-1)
        loss = model.loss(ids, targets, ignore_index=-1)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    assert not loss.requires_grad
    with pytest.raises(ValueError, match="targets shape"):
        model.loss(ids, targets[:, :-1])
    with pytest.raises(ValueError, match="reduction"):
        model.loss(ids, targets, reduction="none")


def test_loss_chunk_rows_are_per_device():
    from wattscale.model import loss_chunk_rows

    assert loss_chunk_rows(32_000, "cpu") == (1 << 22) // 32_000 == 131  # today's CPU size, cache-sized
    # CUDA: 32 x the CPU's rows; a 16k-token micro-batch at vocab 32,000 is 4 chunks, not 126
    assert loss_chunk_rows(32_000, "cuda") == (1 << 27) // 32_000
    assert -(-16_384 // loss_chunk_rows(32_000, "cuda")) == 4 and -(-16_384 // loss_chunk_rows(32_000, "cpu")) == 126
    assert loss_chunk_rows(512, "cuda") >= 16 * 2048  # tiny vocabularies: one chunk for any micro-batch
    assert loss_chunk_rows(10**9, "cpu") == loss_chunk_rows(10**9, "cuda") == 1  # never zero rows


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 100, 10**6])
def test_loss_values_and_gradients_do_not_depend_on_the_chunk_size(monkeypatch, chunk_rows):
    """Whatever rows per chunk a device gets (one row, ragged, exact, one chunk for all), the loss and its
    gradients equal F.cross_entropy of the full logits."""
    import wattscale.model as model_module

    monkeypatch.setattr(model_module, "loss_chunk_rows", lambda vocab, device_type: chunk_rows)
    model = make("llama-tiny").double()
    ids, targets = torch.randint(0, 512, (2, 50)), torch.randint(0, 512, (2, 50))
    targets[1, 30:] = -100
    reference = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten(), reduction="sum")
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = model.loss(ids, targets, reduction="sum")
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-9, atol=1e-12, msg=n)


def test_loss_under_bf16_autocast_is_close_to_float32():
    model = make("llama-tiny")
    ids, targets = torch.randint(0, 512, (2, 64)), torch.randint(0, 512, (2, 64))
    reference = model.loss(ids, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.loss(ids, targets)
    assert low.dtype == torch.float32
    assert abs(low.item() - reference.item()) < 0.02
    low.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

"""Our Llama against Hugging Face transformers' LlamaForCausalLM: same weights, same logits."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json

import pytest
import torch
from packaging.version import Version

from wattscale.errors import ConfigError
from wattscale.hf import (
    export_hf,
    from_hf_state_dict,
    hf_config_dict,
    import_hf,
    model_config_from_hf,
    to_hf_state_dict,
)
from wattscale.model import Llama, ModelConfig

if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed: pip install -e '.[hf]'", allow_module_level=True)

TOLERANCE = 1e-4
# transformers 4.56 renamed the loaders' torch_dtype argument to dtype (the old name warns in 5.x); the hf
# extra's floor, 4.45, knows only torch_dtype. (Read from its metadata: transformers itself is imported by the
# tests, not when every xdist worker collects this file.)
_DTYPE_ARG = "dtype" if Version(importlib.metadata.version("transformers")) >= Version("4.56") else "torch_dtype"
FLOAT32 = {_DTYPE_ARG: torch.float32}

# name -> (preset, overrides): tied GQA (4 heads, 2 KV heads), the same untied, and multi-query (1 KV head)
# with a non-default RoPE base and norm eps, so every config field that reaches HF is exercised.
VARIANTS = {
    "tiny-tied": ("llama-tiny", {}),
    "tiny-untied": ("llama-tiny-untied", {}),
    "tiny-mqa": ("llama-tiny", {"n_kv_heads": 1, "rope_base": 500000.0, "rms_norm_eps": 1e-6}),
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def build(variant: str, seed: int = 0) -> Llama:
    preset, overrides = VARIANTS[variant]
    torch.manual_seed(seed)
    return Llama(ModelConfig.from_name(preset, **overrides)).eval()


def hf_model(config: ModelConfig, attn_implementation: str):
    import transformers

    hf_config = transformers.LlamaConfig(**hf_config_dict(config))
    model = transformers.LlamaForCausalLM._from_config(
        hf_config, attn_implementation=attn_implementation, **FLOAT32
    )
    return model.eval()


def random_ids(config: ModelConfig, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    return torch.randint(0, config.vocab_size, (batch, config.context_length), generator=generator)


def max_logit_diff(ours: Llama, hf, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(ids) - hf(input_ids=ids, use_cache=False).logits).abs().max().item()


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_hf_llama(variant, attn_implementation):
    ours = build(variant)
    config = ours.config
    hf = hf_model(config, attn_implementation)
    assert hf.config._attn_implementation == attn_implementation
    result = hf.load_state_dict(to_hf_state_dict(ours), strict=False)
    # Strict in substance: HF's state dict lists lm_head.weight even when it is tied to the embedding.
    assert result.unexpected_keys == []
    assert result.missing_keys == (["lm_head.weight"] if config.tie_embeddings else [])
    if config.tie_embeddings:
        assert hf.lm_head.weight is hf.model.embed_tokens.weight
    assert max_logit_diff(ours, hf, random_ids(config)) < TOLERANCE


def test_random_hf_weights_imported_into_ours_match():
    # The other direction: HF's own random init (different from ours), imported through from_hf_state_dict.
    config = ModelConfig.from_name("llama-tiny-untied", n_kv_heads=2)
    torch.manual_seed(5)
    hf = hf_model(config, "sdpa")
    ours = Llama(config).eval()
    ours.load_state_dict(from_hf_state_dict(hf.state_dict(), config), strict=True)
    assert max_logit_diff(ours, hf, random_ids(config)) < TOLERANCE


@pytest.mark.parametrize("variant", ["tiny-tied", "tiny-untied", "tiny-mqa"])
def test_export_loads_with_from_pretrained(variant, tmp_path):
    ours = build(variant, seed=1)
    tokenizer = tmp_path / "tok.json"
    tokenizer.write_text('{"version": "1.0"}')
    out = export_hf(ours, tmp_path / "export", tokenizer_json=tokenizer)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]

    import transformers

    hf, info = transformers.LlamaForCausalLM.from_pretrained(
        out, output_loading_info=True, attn_implementation="eager", local_files_only=True, **FLOAT32
    )
    assert info["missing_keys"] in ([], set())
    assert info["unexpected_keys"] in ([], set())
    assert info["mismatched_keys"] in ([], set())
    assert hf.dtype == torch.float32
    assert max_logit_diff(ours, hf.eval(), random_ids(ours.config)) < TOLERANCE

    reloaded = import_hf(out)  # our own reader, no transformers involved
    assert reloaded.config.to_dict() | {"name": ours.config.name} == ours.config.to_dict()
    for (name, a), b in zip(reloaded.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_safetensors_file_has_hf_names_and_metadata(tmp_path):
    from safetensors import safe_open

    ours = build("tiny-tied")
    export_hf(ours, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        keys = set(f.keys())
    assert "lm_head.weight" not in keys  # tied: HF stores only the embedding
    assert "model.layers.1.self_attn.k_proj.weight" in keys
    assert len(keys) == 1 + 2 * 9 + 1


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_round_trip(variant):
    ours = build(variant, seed=2)
    back = from_hf_state_dict(to_hf_state_dict(ours), ours.config)
    fresh = Llama(ours.config)
    fresh.load_state_dict(back, strict=True)
    for (name, a), b in zip(fresh.state_dict().items(), ours.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_hf_names_split_fused_projections_without_permutation():
    ours = build("tiny-tied")
    hf_sd = to_hf_state_dict(ours)
    config = ours.config
    qkv = ours.layers[0].attn.qkv.weight
    q_rows, kv_rows = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    assert torch.equal(hf_sd["model.layers.0.self_attn.q_proj.weight"], qkv[:q_rows])
    assert torch.equal(hf_sd["model.layers.0.self_attn.v_proj.weight"], qkv[q_rows + kv_rows :])
    gate_up = ours.layers[0].mlp.gate_up.weight
    assert torch.equal(hf_sd["model.layers.0.mlp.up_proj.weight"], gate_up[config.ffn_hidden :])
    assert hf_sd["model.layers.0.self_attn.k_proj.weight"].shape == (kv_rows, config.d_model)


def test_state_dict_input_needs_config_and_mismatch_is_named():
    ours = build("tiny-untied")
    with pytest.raises(ConfigError, match="config"):
        to_hf_state_dict(ours.state_dict())
    assert to_hf_state_dict(ours.state_dict(), ours.config).keys() == to_hf_state_dict(ours).keys()
    hf_sd = to_hf_state_dict(ours)
    del hf_sd["model.norm.weight"]
    with pytest.raises(ConfigError, match=r"missing \['model.norm.weight'\]"):
        from_hf_state_dict(hf_sd, ours.config)
    wider = ModelConfig.from_name("llama-tiny-untied", ffn_hidden=192)
    with pytest.raises(ConfigError, match="wrong shapes"):
        from_hf_state_dict(to_hf_state_dict(ours), wider)


def test_hf_config_round_trips_through_transformers_config():
    config = ModelConfig.from_name("tinyllama-1.1b")
    import transformers

    hf_config = transformers.LlamaConfig(**hf_config_dict(config))
    back = model_config_from_hf(hf_config.to_dict(), name="tinyllama-1.1b")
    assert back == config
    with pytest.raises(ConfigError, match="model_type"):
        model_config_from_hf({**hf_config_dict(config), "model_type": "mistral"})

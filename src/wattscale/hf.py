"""Export to and import from Hugging Face ``LlamaForCausalLM`` checkpoints.

Our weights map 1:1 onto HF's names; the only reshaping is splitting the fused ``attn.qkv`` into
``q_proj`` / ``k_proj`` / ``v_proj`` and ``mlp.gate_up`` into ``gate_proj`` / ``up_proj`` (row slices,
no permutation: both sides use the same "rotate_half" RoPE layout). A directory written by
``export_hf`` loads with ``transformers.LlamaForCausalLM.from_pretrained(path)``.

Nothing here imports ``transformers``: exporting needs only ``safetensors``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from wattscale.errors import ConfigError
from wattscale.model import Llama, ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def to_hf_state_dict(
    model_or_state: Llama | Mapping[str, torch.Tensor], config: ModelConfig | None = None
) -> dict[str, torch.Tensor]:
    """Our weights under HF ``LlamaForCausalLM`` names (``lm_head.weight`` omitted when tied).

    Accepts a ``Llama`` or its ``state_dict()`` (then ``config`` is required). Split projections are
    fresh contiguous copies; the other tensors are detached views of the model's parameters. No two
    returned tensors share storage, so the dict can go straight to ``safetensors.torch.save_file``.
    """
    if isinstance(model_or_state, Llama):
        config = model_or_state.config
        state = model_or_state.state_dict()
    elif config is None:
        raise ConfigError("config: to_hf_state_dict needs the ModelConfig when given a state dict")
    else:
        state = model_or_state
    H, K, D, ffn = config.n_heads, config.n_kv_heads, config.head_dim, config.ffn_hidden
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": state["embed.weight"].detach()}
    for i in range(config.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].detach().split([H * D, K * D, K * D], dim=0)
        gate, up = state[ours + "mlp.gate_up.weight"].detach().split([ffn, ffn], dim=0)
        out[hf + "self_attn.q_proj.weight"] = q.clone(memory_format=torch.contiguous_format)
        out[hf + "self_attn.k_proj.weight"] = k.clone(memory_format=torch.contiguous_format)
        out[hf + "self_attn.v_proj.weight"] = v.clone(memory_format=torch.contiguous_format)
        out[hf + "self_attn.o_proj.weight"] = state[ours + "attn.out.weight"].detach()
        out[hf + "mlp.gate_proj.weight"] = gate.clone(memory_format=torch.contiguous_format)
        out[hf + "mlp.up_proj.weight"] = up.clone(memory_format=torch.contiguous_format)
        out[hf + "mlp.down_proj.weight"] = state[ours + "mlp.down.weight"].detach()
        out[hf + "input_layernorm.weight"] = state[ours + "attn_norm.weight"].detach()
        out[hf + "post_attention_layernorm.weight"] = state[ours + "mlp_norm.weight"].detach()
    out["model.norm.weight"] = state["norm.weight"].detach()
    if not config.tie_embeddings:  # HF's tied checkpoints carry only the embedding, as here
        out["lm_head.weight"] = state["lm_head.weight"].detach()
    return out


def _expected_hf_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """HF parameter name -> shape for ``config`` (``lm_head`` only when untied)."""
    d, H, K, D, ffn = config.d_model, config.n_heads, config.n_kv_heads, config.head_dim, config.ffn_hidden
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config.vocab_size, d)}
    for i in range(config.n_layers):
        hf = f"model.layers.{i}."
        shapes[hf + "self_attn.q_proj.weight"] = (H * D, d)
        shapes[hf + "self_attn.k_proj.weight"] = (K * D, d)
        shapes[hf + "self_attn.v_proj.weight"] = (K * D, d)
        shapes[hf + "self_attn.o_proj.weight"] = (d, H * D)
        shapes[hf + "mlp.gate_proj.weight"] = (ffn, d)
        shapes[hf + "mlp.up_proj.weight"] = (ffn, d)
        shapes[hf + "mlp.down_proj.weight"] = (d, ffn)
        shapes[hf + "input_layernorm.weight"] = (d,)
        shapes[hf + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, d)
    return shapes


def from_hf_state_dict(hf_sd: Mapping[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF ``LlamaForCausalLM`` weights -> a state dict that ``Llama(config).load_state_dict`` takes strictly.

    Missing, unexpected or misshapen tensors raise ConfigError naming them. A tied config ignores an
    ``lm_head.weight`` in ``hf_sd`` (HF state dicts of tied models still list it) and reuses the embedding.
    """
    expected = _expected_hf_shapes(config)
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    missing = sorted(set(expected) - set(hf_sd))
    unexpected = sorted(set(hf_sd) - set(expected) - optional)
    wrong = [
        f"{k} {tuple(hf_sd[k].shape)} != {shape}"
        for k, shape in expected.items()
        if k in hf_sd and tuple(hf_sd[k].shape) != shape
    ]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"model: Hugging Face weights do not match preset {config.name!r}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}; "
            "build the ModelConfig from the checkpoint's config.json (model_config_from_hf)"
        )
    out = {"embed.weight": hf_sd["model.embed_tokens.weight"]}
    for i in range(config.n_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        qkv = [hf_sd[hf + f"self_attn.{p}_proj.weight"] for p in ("q", "k", "v")]
        out[ours + "attn.qkv.weight"] = torch.cat(qkv, dim=0)  # [(H + 2K) * D, d]
        out[ours + "attn.out.weight"] = hf_sd[hf + "self_attn.o_proj.weight"]
        gate_up = [hf_sd[hf + "mlp.gate_proj.weight"], hf_sd[hf + "mlp.up_proj.weight"]]
        out[ours + "mlp.gate_up.weight"] = torch.cat(gate_up, dim=0)  # [2F, d]
        out[ours + "mlp.down.weight"] = hf_sd[hf + "mlp.down_proj.weight"]
        out[ours + "attn_norm.weight"] = hf_sd[hf + "input_layernorm.weight"]
        out[ours + "mlp_norm.weight"] = hf_sd[hf + "post_attention_layernorm.weight"]
    out["norm.weight"] = hf_sd["model.norm.weight"]
    tied = config.tie_embeddings
    out["lm_head.weight"] = hf_sd["model.embed_tokens.weight"] if tied else hf_sd["lm_head.weight"]
    return out


def hf_config_dict(config: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """A ``config.json`` dict that ``transformers.LlamaConfig`` (4.x and 5.x) reads as this model.

    ``dtype`` names the dtype the weights are stored in ("float32", "bfloat16", ...).
    """
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_hidden,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "num_hidden_layers": config.n_layers,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": config.rms_norm_eps,
        # transformers 5 reads rope_parameters; 4.x reads rope_theta. Writing both serves either.
        "rope_theta": config.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": config.init_std,
        # "dtype" is the key since transformers 4.56 ("torch_dtype" warns in 5.x); older versions load
        # float32 by default.
        "dtype": dtype,
        "bos_token_id": None,
        "eos_token_id": None,
        "use_cache": True,
    }


def model_config_from_hf(hf_config: Mapping[str, Any], name: str = "hf-import") -> ModelConfig:
    """The ModelConfig for a Llama ``config.json`` dict; ConfigError for features we do not model."""
    if hf_config.get("model_type") != "llama":
        raise ConfigError(f"model: config.json model_type is {hf_config.get('model_type')!r}, not 'llama'")
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise ConfigError("model: config.json uses biases (attention_bias/mlp_bias); wattscale models have none")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ConfigError(f"model: config.json rope type {rope.get('rope_type')!r} is not supported; use 'default'")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"model: config.json hidden_act {hf_config['hidden_act']!r} is not 'silu'")
    n_heads = hf_config["num_attention_heads"]
    config = ModelConfig(
        name=name,
        n_layers=hf_config["num_hidden_layers"],
        d_model=hf_config["hidden_size"],
        n_heads=n_heads,
        n_kv_heads=hf_config.get("num_key_value_heads") or n_heads,
        ffn_hidden=hf_config["intermediate_size"],
        vocab_size=hf_config["vocab_size"],
        context_length=hf_config["max_position_embeddings"],
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        rope_base=float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))),
        init_std=float(hf_config.get("initializer_range", 0.02)),
    )
    head_dim = hf_config.get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise ConfigError(f"model: config.json head_dim {head_dim} != hidden_size / num_attention_heads")
    return config


def export_hf(model: Llama, out_dir: Path, tokenizer_json: Path | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``) to ``out_dir``; returns it."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to("cpu").contiguous() for k, v in to_hf_state_dict(model).items()}
    save_file(weights, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    (out_dir / CONFIG_FILE).write_text(json.dumps(hf_config_dict(model.config, dtype), indent=2) + "\n")
    if tokenizer_json is not None:
        tokenizer_json = Path(tokenizer_json)
        if not tokenizer_json.is_file():
            raise ConfigError(f"tokenizer_json: {tokenizer_json} is not a file; pass a tokenizer.json path")
        shutil.copyfile(tokenizer_json, out_dir / TOKENIZER_FILE)
    return out_dir


def import_hf(path: Path, name: str | None = None) -> Llama:
    """A ``Llama`` loaded from an HF Llama directory (``config.json`` + ``model.safetensors``)."""
    from safetensors.torch import load_file

    path = Path(path)
    for required in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / required).is_file():
            raise ConfigError(f"model: {path / required} not found; expected an HF Llama directory")
    config = model_config_from_hf(json.loads((path / CONFIG_FILE).read_text()), name or path.name)
    model = Llama(config)
    model.load_state_dict(from_hf_state_dict(load_file(str(path / WEIGHTS_FILE)), config))
    return model

"""A Llama-style decoder-only transformer, its named presets, and its parameter and FLOP counts.

Read top to bottom: ``ModelConfig`` and ``PRESETS`` (the shapes), then RMSNorm, RoPE, attention, SwiGLU,
the block and ``Llama`` itself, its chunked cross-entropy, then ``count_parameters`` and
``flops_per_token``.

The architecture is Hugging Face ``LlamaForCausalLM`` (pre-norm RMSNorm, rotary position embeddings in
the "rotate_half" layout, grouped-query attention, SwiGLU MLP, no biases), so weights map 1:1 onto HF
names (see ``wattscale.hf``). Two fusions leave the maths unchanged: the Q, K and V projections are one
``Linear`` (``attn.qkv``, rows ordered q | k | v) and the SwiGLU gate and up projections are one
``Linear`` (``mlp.gate_up``, rows ordered gate | up). On 2 CPU cores the fusions measured within noise
of separate projections (llama-4m, batch 8 x 512, forward + backward); they cut kernel launches, which
matters more on GPUs. ``Llama.loss`` avoids materialising the logits: 2-8% off that CPU step.

The model knows nothing about devices, autocast, compilation or distribution; those are applied from
outside. Its only non-parameter state is the RoPE cos/sin tables (non-persistent buffers that follow
``.to(device)``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wattscale.errors import ConfigError
from wattscale.flops import ParameterCounts, flops_per_token_from_config, parameter_counts
from wattscale.identity import identity_field

# --------------------------------------------------------------------------------------------------
# Configuration and presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a Llama-style model. Build one with ``ModelConfig.from_name("llama-4m")``."""

    name: str = identity_field()  # the preset's name (ModelConfig.from_name)
    n_layers: int = identity_field()  # transformer blocks
    d_model: int = identity_field()  # residual stream width
    n_heads: int = identity_field()  # query heads (head width = d_model / n_heads)
    n_kv_heads: int = identity_field()  # grouped-query attention: n_heads / n_kv_heads query heads share one K/V head
    ffn_hidden: int = identity_field()  # SwiGLU hidden width (HF "intermediate_size")
    vocab_size: int = identity_field()
    context_length: int = identity_field()  # longest sequence the RoPE tables cover (HF "max_position_embeddings")
    tie_embeddings: bool = identity_field()  # the output head reuses the input embedding matrix
    rms_norm_eps: float = identity_field(1e-5)  # RMSNorm epsilon
    rope_base: float = identity_field(10000.0)  # HF "rope_theta"
    # std of the normal init; output projections get init_std / sqrt(2 * n_layers)
    init_std: float = identity_field(0.02)

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def head_dim(self) -> int:
        """Width of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @classmethod
    def from_name(cls, name: str, /, **overrides: Any) -> ModelConfig:
        """The preset called ``name``, with any field (``name`` too) replaced by ``overrides``, revalidated."""
        if name not in PRESETS:
            raise ConfigError(f"model.preset: unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
        _reject_unknown_fields(overrides, "model")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of every field (inverse of ``from_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a dict such as ``to_dict()`` wrote; unknown or missing keys raise ConfigError."""
        _reject_unknown_fields(d, "model")
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ConfigError(f"model: missing field(s) {', '.join(missing)}; give every field of ModelConfig")
        return cls(**d)


def _reject_unknown_fields(d: dict[str, Any], section: str) -> None:
    known = [f.name for f in fields(ModelConfig)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(
            f"{section}: unknown field(s) {', '.join(map(repr, unknown))}; valid fields: {', '.join(known)}"
        )


def _config_problems(c: ModelConfig) -> list[str]:
    """Every contradiction in ``c``, each naming its field and the fix (empty when valid)."""
    problems = []
    if not isinstance(c.name, str) or not c.name:
        problems.append(f"model.name: {c.name!r} must be a non-empty string")
    ints = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "context_length")
    for field in ints:
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"model.{field}: {value!r} must be a positive integer")
    for field in ("rms_norm_eps", "rope_base", "init_std"):
        value = getattr(c, field)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            problems.append(f"model.{field}: {value!r} must be a positive number")
    if not isinstance(c.tie_embeddings, bool):
        problems.append(f"model.tie_embeddings: {c.tie_embeddings!r} must be true or false")
    if problems:  # the divisibility checks below assume positive integers
        return problems
    if c.d_model % c.n_heads:
        problems.append(
            f"model.n_heads: {c.n_heads} does not divide d_model {c.d_model}; "
            f"choose n_heads so that d_model / n_heads is a whole (even) head width"
        )
    elif c.head_dim % 2:
        problems.append(
            f"model.n_heads: head width d_model / n_heads = {c.head_dim} is odd; "
            "rotary embeddings need an even head width"
        )
    if c.n_heads % c.n_kv_heads:
        divisors = [k for k in range(1, c.n_heads + 1) if c.n_heads % k == 0]
        problems.append(
            f"model.n_kv_heads: {c.n_kv_heads} does not divide n_heads {c.n_heads}; "
            f"choose one of {', '.join(map(str, divisors))}"
        )
    return problems


def _preset(name, n_layers, d_model, n_heads, n_kv_heads, ffn_hidden, vocab_size, context_length, tied):
    return ModelConfig(
        name=name,
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        ffn_hidden=ffn_hidden,
        vocab_size=vocab_size,
        context_length=context_length,
        tie_embeddings=tied,
    )


# All presets: rms_norm_eps 1e-5, RoPE base 10000, init_std 0.02, no biases. "params" is the exact total
# (tied embeddings counted once); tests check it against the built model.
#
# | preset            | layers | d_model | heads | kv | ffn  | vocab | ctx  | tied | params        |
# | llama-tiny        |   2    |    64   |   4   |  2 |  176 |   512 |   64 | yes  |       125,248 |
# | llama-tiny-untied |   2    |    64   |   4   |  2 |  176 |   512 |   64 | no   |       158,016 |
# | llama-1m          |   2    |   128   |   4   |  4 |  352 |  4096 |  256 | yes  |       926,336 |
# | llama-4m          |   4    |   256   |   8   |  8 |  704 |  4096 |  512 | yes  |     4,262,144 |
# | llama-8m          |   4    |   384   |   6   |  6 | 1024 |  4096 |  512 | yes  |     8,654,208 |
# | llama-16m         |   6    |   448   |   7   |  7 | 1216 |  4096 |  512 | yes  |    16,463,552 |
# | llama-32m         |  10    |   512   |   8   |  8 | 1344 |  4096 |  512 | yes  |    33,237,504 |
# | llama-64m         |  12    |   640   |  10   | 10 | 1728 |  4096 |  512 | yes  |    62,111,360 |
# | llama-128m        |  18    |   768   |  12   | 12 | 2048 |  4096 |  512 | yes  |   130,576,128 |
# | llama-256m        |  22    |  1024   |  16   |  4 | 2752 |  4096 |  512 | yes  |   247,903,232 |
# | llama-512m        |  22    |  1536   |  24   |  6 | 4096 |  4096 |  512 | yes  |   551,357,952 |
# | tinyllama-1.1b    |  22    |  2048   |  32   |  4 | 5632 | 32000 | 2048 | no   | 1,100,048,384 |
#
# llama-4m is the 4.26M-parameter model of Dwyer 2026 (arXiv 2606.13370) as far as its parameter count
# pins it; tinyllama-1.1b is TinyLlama-1.1B's shape. The ladder between them (llama-8m .. llama-512m) is
# for scaling studies: shared vocabulary (4096) and context (512), tied embeddings, head width 64,
# ffn = 8/3 * d_model rounded to the nearest multiple of 64, depth and width growing together; each
# name is its total parameter count to within 10%. The two largest use grouped-query attention
# (4 query heads per K/V head) like TinyLlama; the rest use plain multi-head attention.
PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _preset("llama-tiny", 2, 64, 4, 2, 176, 512, 64, True),
        _preset("llama-tiny-untied", 2, 64, 4, 2, 176, 512, 64, False),
        _preset("llama-1m", 2, 128, 4, 4, 352, 4096, 256, True),
        _preset("llama-4m", 4, 256, 8, 8, 704, 4096, 512, True),
        _preset("llama-8m", 4, 384, 6, 6, 1024, 4096, 512, True),
        _preset("llama-16m", 6, 448, 7, 7, 1216, 4096, 512, True),
        _preset("llama-32m", 10, 512, 8, 8, 1344, 4096, 512, True),
        _preset("llama-64m", 12, 640, 10, 10, 1728, 4096, 512, True),
        _preset("llama-128m", 18, 768, 12, 12, 2048, 4096, 512, True),
        _preset("llama-256m", 22, 1024, 16, 4, 2752, 4096, 512, True),
        _preset("llama-512m", 22, 1536, 24, 6, 4096, 4096, 512, True),
        _preset("tinyllama-1.1b", 22, 2048, 32, 4, 5632, 32000, 2048, False),
    )
}

SCALING_LADDER: tuple[str, ...] = (
    "llama-4m", "llama-8m", "llama-16m", "llama-32m", "llama-64m", "llama-128m", "llama-256m", "llama-512m",
)  # fmt: skip


def preset_names() -> list[str]:
    """Names of all presets, smallest first."""
    return list(PRESETS)


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, computed in float32 like HF's LlamaRMSNorm."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 (bf16 sums of squares lose too much), cast back, then scale: HF's order.
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps)
        return self.weight * normed.to(x.dtype)


def rope_tables(head_dim: int, context_length: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each [context_length, head_dim] float32, in HF Llama's rotate_half layout."""
    # Same expression as HF's default RoPE init, so the float32 tables agree bit for bit.
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim  # [head_dim/2]
    inv_freq = 1.0 / (base**exponents)  # [head_dim/2]
    positions = torch.arange(context_length, dtype=torch.int64).float()  # [T]
    angles = torch.outer(positions, inv_freq)  # [T, head_dim/2]
    # Non-interleaved: dimension i pairs with i + head_dim/2, so the angle table is repeated, not interleaved.
    angles = torch.cat((angles, angles), dim=-1)  # [T, head_dim]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., T, head_dim] by position; cos/sin are [T, head_dim] in x's dtype."""
    x1, x2 = x.chunk(2, dim=-1)  # [..., T, head_dim/2] each
    rotated = torch.cat((-x2, x1), dim=-1)  # [..., T, head_dim]
    return x * cos + rotated * sin


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary embeddings and one fused QKV projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        qkv_width = (config.n_heads + 2 * config.n_kv_heads) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_width, bias=False)  # rows: q | k | v
        self.out = nn.Linear(config.n_heads * config.head_dim, config.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> [B, T, d_model]."""
        B, T, _ = x.shape
        H, K, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, T, H + 2 * K, D).transpose(1, 2)  # [B, H+2K, T, D]
        # Rotate q and k in one pass: they are adjacent heads in the fused projection.
        qk = apply_rope(qkv[:, : H + K], cos, sin)  # [B, H+K, T, D]
        q, k = qk.split([H, K], dim=1)  # [B, H, T, D], [B, K, T, D]
        v = qkv[:, H + K :]  # [B, K, T, D]
        # enable_gqa lets SDPA share K/V heads without materialising repeated copies. On 2 CPU cores the
        # SDPA call alone (fwd+bwd, 8 x 8 heads x 512 x 32, 2 KV heads) took 65 ms vs 75-85 ms with
        # repeat_interleave; a whole llama-4m step with 2 KV heads differed by less than the noise.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H)  # [B, H, T, D]
        y = y.transpose(1, 2).reshape(B, T, H * D)  # [B, T, d_model]
        return self.out(y)


class SwiGLU(nn.Module):
    """The Llama MLP: down(silu(gate(x)) * up(x)), with gate and up fused into one projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.ffn_hidden, bias=False)  # rows: gate | up
        self.down = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> [B, T, d_model]."""
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # [B, T, ffn_hidden] each
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """One pre-norm transformer layer: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [B, T, d_model] -> [B, T, d_model]."""
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    """Llama-style language model: token ids [B, T] -> next-token logits [B, T, vocab_size]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # Non-persistent: derived from the config, so checkpoints and HF exports never carry them.
        self.register_buffer("rope_cos", torch.empty(config.context_length, config.head_dim), persistent=False)
        self.register_buffer("rope_sin", torch.empty(config.context_length, config.head_dim), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Tie the output head (when configured), initialise every parameter and the RoPE tables.

        Linear and embedding weights ~ normal(0, init_std), RMSNorm weights = 1. The two projections
        that write into the residual stream (attention ``out``, MLP ``down``) use init_std / sqrt(2 *
        n_layers), as in GPT-2: each layer adds two such terms, so without the scaling the residual
        stream's variance at init grows with depth. Deterministic under ``torch.manual_seed``.

        ``__init__`` calls it; call it again after building on the meta device and ``to_empty``. That
        path gives different (equally distributed) values than a direct build under the same seed,
        because layer constructors draw their own default init from the generator first.
        """
        c = self.config
        if c.tie_embeddings:
            # Tie here rather than in __init__ alone: ``to_empty`` after a meta build unties the two.
            self.lm_head.weight = self.embed.weight
        residual_std = c.init_std / math.sqrt(2 * c.n_layers)
        residual_writers = {id(b.attn.out) for b in self.layers} | {id(b.mlp.down) for b in self.layers}
        for module in self.modules():
            if module is self.lm_head and c.tie_embeddings:
                continue  # shares the embedding's weight, which is initialised once
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = residual_std if id(module) in residual_writers else c.init_std
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        cos, sin = rope_tables(c.head_dim, c.context_length, c.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] (int64, T <= context_length) -> logits [B, T, vocab_size]."""
        return self.lm_head(self._final_hidden(input_ids))  # [B, T, vocab_size]

    def loss(
        self, input_ids: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean", ignore_index: int = -100
    ) -> torch.Tensor:
        """Next-token cross-entropy in nats of input_ids [B, T] against targets [B, T]: a scalar.

        Equals ``F.cross_entropy(self(input_ids).flatten(0, 1).float(), targets.flatten(), reduction=...,
        ignore_index=...)`` in value and gradients, without materialising the [B*T, vocab] logits (see
        ``_LinearCrossEntropy``); float32 (float64 for a float64 model). ``reduction`` is "mean" (over
        targets that are not ``ignore_index``) or "sum". With grad enabled the output-layer gradients are
        computed during this call, so evaluate under ``torch.no_grad()``.
        """
        if targets.shape != input_ids.shape:
            raise ValueError(f"targets shape {tuple(targets.shape)} != input_ids shape {tuple(input_ids.shape)}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
        hidden = self._final_hidden(input_ids).flatten(0, 1)  # [B*T, d_model]
        weight = self.lm_head.weight  # [vocab, d_model]
        compute_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
        chunk_rows = loss_chunk_rows(self.config.vocab_size, hidden.device.type)
        return _LinearCrossEntropy.apply(
            hidden, weight, targets.flatten(), ignore_index, reduction == "mean", chunk_rows, compute_grads
        )

    def _final_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] -> final-norm hidden states [B, T, d_model] (everything but the output head)."""
        T = input_ids.shape[1]
        if T > self.config.context_length:
            raise ConfigError(
                f"model.context_length: sequence of {T} tokens exceeds {self.config.context_length}; "
                "use a shorter seq_len or a preset with a longer context"
            )
        x = self.embed(input_ids)  # [B, T, d_model]
        # Cast to the residual stream's dtype, as HF does: under autocast that stays float32, so the
        # bf16 q/k are promoted and rotated in float32; a model cast to bf16 rotates in bf16.
        cos = self.rope_cos[:T].to(x.dtype)  # [T, head_dim]
        sin = self.rope_sin[:T].to(x.dtype)  # [T, head_dim]
        for block in self.layers:
            x = block(x, cos, sin)
        return self.norm(x)


# About 16 MiB of float32 logits per chunk: small enough to stay in a CPU's last-level cache, large
# enough that each chunk's matmuls run at full speed.
_LOSS_CHUNK_LOGITS = 1 << 22
# On a GPU: 512 MiB of float32 logits per chunk (a chunk holds 16,384 rows at vocab 8,192, 4,194 at 32,000).
_LOSS_CHUNK_LOGITS_GPU = 1 << 27


def loss_chunk_rows(vocab_size: int, device_type: str) -> int:
    """Rows of logits per chunk of the chunked cross-entropy (`Llama.loss`) on a device of `device_type`.

    The chunks exist to keep the [rows, vocab] logits small; their size trades memory traffic against the
    number of launches. On a CPU a chunk of about 16 MiB of float32 logits stays in the last-level cache,
    which is what makes the fused loss faster than the plain one there. On a GPU there is no such cache
    to fit (HBM moves 4.8 TB/s on an H200) and every chunk costs about six kernel launches, each unrolled
    once more under torch.compile: at vocab 32,000 the CPU size gives about 120 chunks for a 16k-token
    micro-batch, so the GPU takes chunks 32 times bigger (512 MiB of float32 logits, a few chunks at
    most for the micro-batches a Hopper GPU fits; none below 128 Mi logits), still far below the memory
    the unchunked path needs for the larger vocabularies. Chunk size does not change values or gradients
    beyond float summation order (the loss is a sum over rows; each row is computed whole).
    """
    budget = _LOSS_CHUNK_LOGITS if device_type == "cpu" else _LOSS_CHUNK_LOGITS_GPU
    return max(1, budget // vocab_size)


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T`` against ``targets``, one chunk of rows at a time.

    The plain path writes [N, vocab] logits, reads them for log-softmax, writes log-probs, and in
    backward writes two more [N, vocab] buffers; that memory traffic is ~20% of a llama-4m training step
    on CPU. Here each chunk's logits become (softmax - onehot) / N in place while still in cache, and
    the gradients for hidden and weight are accumulated in the same pass (the Liger-kernel / "fused
    linear cross-entropy" idea). Same FLOPs as the plain path.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, mean, chunk_rows, compute_grads):
        """hidden [N, d], weight [vocab, d], targets [N] -> summed or mean loss; stores input gradients."""
        acc_dtype = torch.promote_types(hidden.dtype, torch.float32)  # bf16 logits -> float32, f64 stays
        counted = targets != ignore_index  # [N]
        safe_targets = targets.masked_fill(~counted, 0)[:, None]  # [N, 1], any valid index where ignored
        row_weight = counted.to(acc_dtype)[:, None]  # [N, 1]: d(loss)/d(row's nll)
        if mean:
            row_weight = row_weight / counted.sum()  # no .item(): stays on the device, no sync
        loss = torch.zeros((), dtype=acc_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if compute_grads else None  # [N, d]
        grad_weight = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if compute_grads else None
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            h, t, w_row = hidden[rows], safe_targets[rows], row_weight[rows]  # [C, d], [C, 1], [C, 1]
            logits = F.linear(h, weight).to(acc_dtype)  # [C, vocab]
            log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # [C, 1]
            loss += ((log_z - logits.gather(1, t)) * w_row).sum()
            if compute_grads:
                grad_logits = logits.sub_(log_z).exp_()  # softmax, in place: [C, vocab]
                grad_logits.scatter_add_(1, t, torch.full_like(log_z, -1.0)).mul_(w_row)  # (softmax - onehot) * w
                grad_logits = grad_logits.to(hidden.dtype)
                grad_hidden[rows] = grad_logits @ weight  # [C, d]
                grad_weight += grad_logits.t() @ h  # [vocab, d]
        ctx.save_for_backward(grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype))
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):
        """Scale the gradients computed in forward by the incoming gradient of the loss."""
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None, None


# --------------------------------------------------------------------------------------------------
# Parameter and FLOP counts
# --------------------------------------------------------------------------------------------------


def count_parameters(config: ModelConfig) -> ParameterCounts:
    """Exact parameter counts of ``Llama(config)``, computed from the config alone (``wattscale.flops``)."""
    return parameter_counts(config.to_dict())


def flops_per_token(config: ModelConfig, seq_len: int | None = None, counting: str = "with_head") -> float:
    """Training FLOPs per token (forward + backward): ``6 * N + 12 * n_layers * d_model * T``.

    By default (``counting="with_head"``) N = N_non_embedding + N_output_head, with N_output_head =
    vocab_size * d_model whether the head is tied or not (a tied head is still a matmul; the input
    embedding lookup is not one and is not counted). ``counting="non_embedding"`` gives Kaplan et al.'s N
    (no head; what the scaling laws use) and ``counting="total"`` every parameter; anything else is a
    ConfigError. 6N is 2N forward plus 4N backward; 12 * n_layers * d_model * T is the attention score and
    value matmuls over the full T x T products, causal mask not credited (PaLM, Chowdhery et al. 2022,
    appendix B). T = ``seq_len`` (default ``context_length``). The same figure without torch, from a stored
    config dict: ``wattscale.flops.flops_per_token_from_config``.
    """
    return flops_per_token_from_config(config.to_dict(), seq_len, counting)

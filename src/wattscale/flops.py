"""Parameter counts and training FLOPs per token of wattscale's Llama shape, from the shape alone (no torch).

``model.py`` uses these for ``count_parameters`` and ``flops_per_token``; code that must not import torch
(the store migrating old runs' stored ``flops_per_token``, analysis of an export) calls them on the
``model`` table of a run's ``config_json``::

    flops_per_token_from_config(json.loads(run["config_json"])["model"], seq_len=256)

The training FLOPs per token (forward + backward) are

    6 * (N_non_embedding + N_output_head) + 12 * n_layers * d_model * T

- ``6 * N``: every weight matmul costs 2 FLOPs per weight per token forward and 4 backward.
  N_output_head = vocab_size * d_model whether the head is tied to the input embedding or not: the tied
  head is still a [vocab, d_model] matmul per token. The input embedding is a lookup, not a matmul, and
  is not counted. N_non_embedding includes the RMSNorm weights (2 * n_layers * d_model + d_model),
  which are elementwise, not matmuls: <0.1% of N for every preset.
- ``12 * n_layers * d_model * T``: the attention score (Q K^T) and value (A V) matmuls, 2 * T * d_model
  FLOPs each per token per layer forward, x3 for forward + backward, T = the training sequence length
  (PaLM, Chowdhery et al. 2022, appendix B). The causal mask is not credited: the term is the cost of the
  full T x T products, as PaLM counts it.

``counting`` chooses N: ``"with_head"`` (the default, above), ``"non_embedding"`` (Kaplan et al. 2020's
N, without the head; what the scaling laws use) or ``"total"`` (every parameter, tied embeddings once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wattscale.errors import ConfigError

FLOP_COUNTINGS = ("with_head", "non_embedding", "total")
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_hidden", "vocab_size", "context_length")
FLOPS_FORMULA = "6 * (N_non_embedding + N_output_head) + 12 * n_layers * d_model * T (PaLM appendix B)"


@dataclass(frozen=True)
class ParameterCounts:
    """Parameter counts of a model; ``embedding`` counts a tied matrix once, untied ones twice."""

    total: int
    embedding: int
    non_embedding: int  # total - embedding; includes the RMSNorm weights
    output_head: int  # vocab_size * d_model: the output head's matmul weights, tied or not


def parameter_counts(model: Mapping[str, Any]) -> ParameterCounts:
    """Exact parameter counts of ``Llama`` with the shape in ``model`` (a ``ModelConfig.to_dict()``).

    Needs the keys in ``SHAPE_FIELDS`` plus ``tie_embeddings``; other keys are ignored.
    """
    shape = _shape(model)
    d = shape["d_model"]
    head_dim = d // shape["n_heads"]
    attention = d * shape["n_heads"] * head_dim * 2 + d * shape["n_kv_heads"] * head_dim * 2  # q, out; k, v
    mlp = 3 * d * shape["ffn_hidden"]  # gate, up, down
    norms = 2 * d
    non_embedding = shape["n_layers"] * (attention + mlp + norms) + d  # + final norm
    head = shape["vocab_size"] * d
    embedding = head * (1 if model["tie_embeddings"] else 2)
    return ParameterCounts(total=non_embedding + embedding, embedding=embedding, non_embedding=non_embedding,
                           output_head=head)


def stored_seq_len(config: Mapping[str, Any]) -> int:
    """Tokens per sequence of a stored run config: train.seq_len, or the model's context_length when it was
    trained without --seq-len (stored as null) -- the rule of RunConfig.seq_len, for resolved config dicts."""
    return config.get("train", {}).get("seq_len") or config["model"]["context_length"]


def flops_per_token_from_config(model: Mapping[str, Any], seq_len: int | None = None,
                                counting: str = "with_head") -> float:
    """Training FLOPs per token (forward + backward) of the shape in ``model``; see the module docstring.

    ``model`` is a ``ModelConfig.to_dict()`` (the ``model`` table of a stored ``config_json``), ``seq_len``
    the training sequence length T (default: ``model["context_length"]``), ``counting`` one of
    ``FLOP_COUNTINGS``. Raises ConfigError for an unknown ``counting`` or a missing or bad shape field.
    """
    if counting not in FLOP_COUNTINGS:
        raise ConfigError(f"counting: {counting!r} is not one of {', '.join(map(repr, FLOP_COUNTINGS))}")
    counts = parameter_counts(model)
    n = {"with_head": counts.non_embedding + counts.output_head, "non_embedding": counts.non_embedding,
         "total": counts.total}[counting]
    tokens_in_context = model["context_length"] if seq_len is None else seq_len
    if isinstance(tokens_in_context, bool) or not isinstance(tokens_in_context, int) or tokens_in_context <= 0:
        raise ConfigError(f"seq_len: {tokens_in_context!r} must be a positive integer")
    return float(6 * n + 12 * model["n_layers"] * model["d_model"] * tokens_in_context)


def _shape(model: Mapping[str, Any]) -> dict[str, int]:
    """The integer shape fields of ``model``, or one ConfigError naming every missing or bad one."""
    missing = [k for k in (*SHAPE_FIELDS, "tie_embeddings") if k not in model]
    if missing:
        raise ConfigError(f"model: missing field(s) {', '.join(missing)}; give every shape field of ModelConfig")
    bad = [f"model.{k}: {model[k]!r} must be a positive integer" for k in SHAPE_FIELDS
           if isinstance(model[k], bool) or not isinstance(model[k], int) or model[k] <= 0]
    if not isinstance(model["tie_embeddings"], bool):
        bad.append(f"model.tie_embeddings: {model['tie_embeddings']!r} must be true or false")
    if not bad and model["d_model"] % model["n_heads"]:
        bad.append(f"model.n_heads: {model['n_heads']} does not divide d_model {model['d_model']}")
    if bad:
        raise ConfigError("; ".join(bad))
    return {k: model[k] for k in SHAPE_FIELDS}

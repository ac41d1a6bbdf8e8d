"""Shared by the integration tests: a fake constant-power meter, a recording tracker, a tiny Llama and data."""

from __future__ import annotations

from typing import Any

import torch

from fake_meters import ConstantMeter  # noqa: F401  (the tests import it from here)

SEQ, VOCAB = 16, 64


class Recorder:
    """A tracker that remembers every call."""

    def __init__(self) -> None:
        self.params: list[dict] = []
        self.metrics: list[tuple[dict, int]] = []
        self.closed = 0

    def log_params(self, params):
        self.params.append(dict(params))

    def log_metrics(self, metrics, step):
        self.metrics.append((dict(metrics), step))

    def close(self):
        self.closed += 1


def tiny_model() -> Any:
    """A 2-layer LlamaForCausalLM (transformers imported here: collecting the tests needs no transformers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def rows(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` right-padded sequences of SEQ tokens (lengths 9..16), labels -100 on the padding."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 9 + i % 8
        ids = torch.randint(1, VOCAB, (SEQ,), generator=g)
        mask = (torch.arange(SEQ) < length).long()
        out.append({"input_ids": ids * mask, "attention_mask": mask, "labels": torch.where(mask.bool(), ids, -100)})
    return out


def mask_tokens(data: list[dict]) -> int:
    return int(sum(int(r["attention_mask"].sum()) for r in data))

"""The token budget → step plan arithmetic and the learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from wattscale.budget import IGNORE_INDEX, StepPlan, mask_targets
from wattscale.schedule import learning_rate


@pytest.mark.parametrize("budget,batch,seq", [(1000, 4, 32), (4096, 4, 32), (129, 4, 32), (128, 4, 32),
                                              (20_000_768, 16, 512)])
def test_step_plan_sums_to_exact_budget(budget: int, batch: int, seq: int) -> None:
    plan = StepPlan(budget, batch, seq)
    tokens = [plan.tokens_in_step(s) for s in range(plan.total_steps)]
    assert sum(tokens) == budget
    assert all(t > 0 for t in tokens)
    assert all(plan.sequences_in_step(s) * seq >= plan.tokens_in_step(s) for s in range(plan.total_steps))
    assert plan.tokens_before_step(plan.total_steps) == budget
    assert [plan.tokens_before_step(s) for s in range(plan.total_steps)] == \
        [sum(tokens[:s]) for s in range(plan.total_steps)]


def test_remainder_step_shape() -> None:
    plan = StepPlan(1000, 4, 32)  # 128 tokens per step: 7 full steps + 104 tokens
    assert (plan.full_steps, plan.remainder_tokens, plan.total_steps) == (7, 104, 8)
    assert plan.sequences_in_step(7) == 4  # ceil(104 / 32)


def test_mask_targets_counts_exactly() -> None:
    targets = torch.arange(4 * 32).view(4, 32)
    masked = mask_targets(targets, 104)
    assert int((masked != IGNORE_INDEX).sum()) == 104
    assert torch.equal(masked.flatten()[:104], targets.flatten()[:104])
    assert mask_targets(targets, 128) is targets


def test_warmup_then_cosine_to_min() -> None:
    lrs = [learning_rate(s, 100, 1.0, "cosine", 10, min_lr_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.1)
    mid = 10 + (99 - 10) / 2
    assert learning_rate(round(mid), 100, 1.0, "cosine", 10) == pytest.approx(
        0.1 + 0.45 * (1 + math.cos(math.pi * (round(mid) - 10) / 89)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_wsd_is_flat_then_linear_decay() -> None:
    lrs = [learning_rate(s, 100, 2.0, "wsd", 5, min_lr_ratio=0.0, decay_fraction=0.2) for s in range(100)]
    assert all(v == 2.0 for v in lrs[5:80])
    assert lrs[-1] == pytest.approx(0.0)
    diffs = [a - b for a, b in zip(lrs[80:], lrs[81:], strict=False)]
    assert all(d == pytest.approx(diffs[0]) for d in diffs)


def test_constant_schedule() -> None:
    assert [learning_rate(s, 50, 0.5, "constant", 0) for s in range(50)] == [0.5] * 50

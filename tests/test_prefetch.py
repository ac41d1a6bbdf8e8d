"""The batch prefetcher: the same batches in the same order, made ahead or not, and after a resume."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from wattscale.budget import StepPlan
from wattscale.config import build_run_config
from wattscale.store import open_store
from wattscale.train import train
from wattscale.train.prefetch import BatchPrefetcher

PLAN = StepPlan(1000, 4, 32)  # 7 full steps of 4 sequences, then 4 sequences holding the last 104 tokens


def _load(calls: list, threads: set | None = None):
    def load(first: int, n_seq: int, n_tok: int):
        calls.append((first, n_seq, n_tok))
        if threads is not None:
            threads.add(threading.current_thread().name)
        rows = torch.arange(first, first + n_seq)[:, None] * 100 + torch.arange(32)[None, :]  # [n_seq, 32]
        return rows, rows + n_tok
    return load


def _walk(prefetcher: BatchPrefetcher, first_step: int = 0) -> list:
    out, first = [], first_step * 4
    for step in range(first_step, PLAN.total_steps):
        out.append(prefetcher.batch(step, first))
        first += PLAN.sequences_in_step(step)
    return out


def test_batches_made_ahead_are_the_batches_made_when_needed() -> None:
    direct_calls, ahead_calls, threads, pinned = [], [], set(), []

    def fake_pin(batch):  # stands in for pin_memory() (CUDA only): a copy, and a record that it ran
        pinned.append(batch[0][0, 0].item())
        return batch[0].clone(), batch[1].clone()

    direct = BatchPrefetcher(PLAN, _load(direct_calls))
    ahead = BatchPrefetcher(PLAN, _load(ahead_calls, threads), ahead=True, pin_batch=fake_pin)
    try:
        expected, got = _walk(direct), _walk(ahead)
    finally:
        ahead.close()
    assert len(got) == len(expected) == 8
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert direct_calls == ahead_calls == [(4 * k, 4, 128) for k in range(7)] + [(28, 4, 104)]  # each made once
    # the first batch on the spot; every later one on the background thread, while the step before it ran
    assert threads == {threading.current_thread().name, "wattscale-batches_0"}
    assert pinned == [4 * k * 100 for k in range(8)]  # every batch pinned, in order


def test_a_resumed_or_unexpected_step_is_made_on_the_spot() -> None:
    calls: list = []
    ahead = BatchPrefetcher(PLAN, _load(calls), ahead=True)
    try:
        resumed = _walk(ahead, first_step=5)  # a session resumed at step 5: nothing made ahead yet
        assert [c[0] for c in calls] == [20, 24, 28]
        x, _ = ahead.batch(2, 8)  # a step other than the one made ahead: made now, the other one dropped
        assert x[0, 0].item() == 800
    finally:
        ahead.close()
    direct = _walk(BatchPrefetcher(PLAN, _load([])), first_step=5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, direct, strict=True))


def test_on_a_cpu_nothing_is_made_ahead_or_pinned() -> None:
    calls, threads = [], set()
    cpu = BatchPrefetcher.for_device(PLAN, _load(calls, threads), torch.device("cpu"))
    assert cpu._pool is None and cpu._pin is None
    cpu.batch(0, 0)
    assert calls == [(0, 4, 128)] and threads == {threading.current_thread().name}
    cuda = BatchPrefetcher.for_device(PLAN, _load([]), torch.device("cuda"))
    try:
        assert cuda._pool is not None and cuda._pin is not None
    finally:
        cuda.close()


def test_a_run_with_batches_made_ahead_trains_the_same_bits(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    """The CUDA arrangement (made one step ahead on a thread, 'pinned') in a real run, with a checkpoint and
    a shorter last step: the same rows and weights as batches made when needed."""
    def config(root: str):
        return build_run_config(overrides={
            "model": {"preset": "llama-tiny", "n_layers": 1},
            "train": {"tokens": 1000, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": 512,
                      "run_root": str(tmp_path / root), "eval_tokens": 512},
            "data": {"source": "synthetic", "synthetic_mb": 0.3}, "meter": {"idle_seconds": 0.0, "kinds": ("none",)}})

    def rows_and_weights(root: str):
        result = train(config(root), str(tmp_path / f"{root}.db"), show_progress=False, cache_dir=cache_dir)
        with open_store(str(tmp_path / f"{root}.db")) as store:
            rows = [(r["step"], r["loss"], r["grad_norm"]) for r in store.train_steps(result.run_id)]
        from safetensors.torch import load_file

        return rows, load_file(str(result.run_dir / "final" / "model.safetensors"))

    plain_rows, plain_weights = rows_and_weights("plain")
    made = []

    def cuda_like(plan, load, device):
        prefetcher = BatchPrefetcher(plan, load, ahead=True, pin_batch=lambda b: (b[0].clone(), b[1].clone()))
        made.append(prefetcher)
        return prefetcher

    monkeypatch.setattr(BatchPrefetcher, "for_device", staticmethod(cuda_like))
    ahead_rows, ahead_weights = rows_and_weights("ahead")
    assert made and made[0]._pool is None  # used, and closed when the run ended
    assert ahead_rows == plain_rows and len(plain_rows) == 8
    assert all(torch.equal(plain_weights[name], ahead_weights[name]) for name in plain_weights)

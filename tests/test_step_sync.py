"""The training step without per-step host syncs: device tensors per step, reads only at read points."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from wattscale.budget import StepPlan
from wattscale.config import build_run_config
from wattscale.model import Llama, ModelConfig
from wattscale.store import open_store
from wattscale.train import make_optimizer, summed_loss_fn, train, training_step
from wattscale.train.loop import Diverged, LoopPosition, StepLoop

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")


@contextmanager
def counted_reads():
    """Count every way a tensor's value reaches the host (what would be a sync on a GPU)."""
    counts = {name: 0 for name in READS}
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(name):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, wrap(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


def _setup(grad_clip: float = 1.0):
    config = build_run_config(overrides={"model": {"preset": "llama-tiny"},
                                         "train": {"tokens": 1000, "batch_size": 4, "seq_len": 16,
                                                   "grad_clip": grad_clip}})
    torch.manual_seed(0)
    model = Llama(ModelConfig.from_name("llama-tiny"))
    optimizer = make_optimizer(model, config)
    tokens = torch.randint(0, 512, (4, 17), generator=torch.Generator().manual_seed(1))
    return model, optimizer, tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("grad_clip", [1.0, 0.0])
def test_training_step_reads_nothing_from_the_device(grad_clip: float) -> None:
    model, optimizer, inputs, targets = _setup(grad_clip)
    loss_fn = summed_loss_fn(model)
    before = [p.detach().clone() for p in model.parameters()]
    with counted_reads() as reads:
        loss, grad_norm = training_step(loss_fn, model, optimizer, inputs, targets, inputs.numel(), 2,
                                        torch.device("cpu"), None, grad_clip)
    assert reads == {name: 0 for name in READS}
    assert isinstance(loss, torch.Tensor) and loss.shape == () and grad_norm.shape == ()
    assert loss.dtype == grad_norm.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # it did step
    # the loss is the mean token loss of the step's batch (before the update)
    torch.manual_seed(0)
    fresh = Llama(ModelConfig.from_name("llama-tiny"))
    with torch.no_grad():
        expected = fresh.loss(inputs, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert math.isfinite(grad_norm.item()) and grad_norm.item() > 0


def test_a_non_finite_gradient_skips_the_update_on_the_device() -> None:
    model, optimizer, inputs, targets = _setup()
    loss_fn = summed_loss_fn(model)
    cpu = torch.device("cpu")
    training_step(loss_fn, model, optimizer, inputs, targets, inputs.numel(), 4, cpu, None, 1.0)  # a real step
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {k: {n: v.clone() for n, v in s.items()} for k, s in optimizer.state_dict()["state"].items()}
    with torch.no_grad():
        model.norm.weight[0] = math.nan  # every gradient becomes NaN
    weights["norm.weight"][0] = math.nan
    with counted_reads() as reads:
        loss, grad_norm = training_step(loss_fn, model, optimizer, inputs, targets, inputs.numel(), 4, cpu, None,
                                        1.0)
    assert reads == {name: 0 for name in READS}
    assert not math.isfinite(grad_norm.item())
    for n, p in model.named_parameters():  # not updated: no NaN spread into the other weights either
        torch.testing.assert_close(p.detach(), weights[n], equal_nan=True, rtol=0, atol=0, msg=n)
    after = optimizer.state_dict()["state"]
    for k, s in state.items():
        for n, v in s.items():
            assert torch.equal(after[k][n], v), (k, n)  # moments and the step count as they were
    assert all(p.grad is None for p in model.parameters())


def _fake_loop(losses: list[float], log_interval_steps: int, n_steps: int = 10):
    """A StepLoop over `n_steps` steps whose step k returns losses[k] (no model)."""
    plan = StepPlan(n_steps * 8, 1, 8)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)

    def one_step(first: int, n_seq: int, n_tok: int):
        return torch.tensor(losses[first], dtype=torch.float32), torch.tensor(1.5, dtype=torch.float32)

    return StepLoop(plan, 0.1, "constant", 0, 0.1, 0.2, 2.0, optimizer, one_step,
                    log_interval_steps=log_interval_steps)


def test_the_loop_reads_at_its_read_points_only_and_the_rows_do_not_depend_on_them() -> None:
    losses = [5.0 - 0.1 * k for k in range(10)]
    rows = {}
    for interval in (1, 4, 100):
        loop, pos, told = _fake_loop(losses, interval), LoopPosition(), []
        with counted_reads() as reads:
            loop.run_until(pos, math.inf, lambda: 0.0, lambda n, loss, told=told: told.append(loss))
        # one read (tolist) each: the session's first step, every interval-th step, and the return
        expected = {1: 10, 4: 4, 100: 2}[interval]  # 4: steps 1, 4, 8, 10; 100: steps 1, 10
        assert reads["tolist"] == expected and reads["item"] == 0, (interval, reads)
        rows[interval] = [{k: v for k, v in r.items() if k != "step_seconds"} for r in pos.pending_rows]
        assert [r["step"] for r in pos.pending_rows] == list(range(1, 11))
        assert len(told) == 10 and told[0] == pytest.approx(5.0) and told[-1] == pytest.approx(losses[-1])
        assert pos.last_loss == pytest.approx(losses[-1])
    assert rows[1] == rows[4] == rows[100]
    assert [r["loss"] for r in rows[1]] == [float(torch.tensor(v, dtype=torch.float32)) for v in losses]


def test_divergence_is_caught_at_the_next_read_and_ends_the_rows_at_its_step() -> None:
    losses = [3.0] * 5 + [math.nan] + [3.0] * 4
    loop, pos, told = _fake_loop(losses, 4), LoopPosition(), []
    with pytest.raises(Diverged) as caught:
        loop.run_until(pos, math.inf, lambda: 12.5, lambda n, loss: told.append(n))
    assert (caught.value.step, caught.value.tokens_seen, caught.value.wall_seconds) == (6, 48, 12.5)
    assert "non-finite training loss" in caught.value.reason and "step 6" in caught.value.reason
    assert len(told) == 8  # raised at the read after step 8: within one log interval of step 6
    assert [r["step"] for r in pos.pending_rows] == [1, 2, 3, 4, 5, 6]


def _config(tmp_path: Path, **train):
    table = {"tokens": 1500, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": 512,
             "run_root": str(tmp_path / "runs"), "eval_tokens": 1024, **train}
    return build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": table,
                                       "data": {"source": "synthetic", "synthetic_mb": 0.3},
                                       "meter": {"idle_seconds": 0.0, "kinds": ("none",)}})


def test_a_run_stores_the_same_rows_and_weights_whatever_the_log_interval(tmp_path: Path, cache_dir: Path) -> None:
    results, rows = {}, {}
    for interval in (1, 5):
        store_url = str(tmp_path / f"w{interval}.db")
        result = train(_config(tmp_path / str(interval), log_interval_steps=interval), store_url,
                       show_progress=False, cache_dir=cache_dir)
        with open_store(store_url) as store:
            rows[interval] = [{k: r[k] for k in ("step", "tokens_seen", "loss", "lr", "grad_norm")}
                              for r in store.train_steps(result.run_id)]
        results[interval] = result
    assert results[1].run_id == results[5].run_id  # how often the loss is read is not part of the run
    assert rows[1] == rows[5] and len(rows[1]) == 12 and rows[1][-1]["tokens_seen"] == 1500
    from safetensors.torch import load_file

    one, five = (load_file(str(results[i].run_dir / "final" / "model.safetensors")) for i in (1, 5))
    assert all(torch.equal(one[name], five[name]) for name in one)


def test_log_interval_steps_must_be_positive(run_cli_in_process) -> None:
    from conftest import TINY_DATA

    bad = run_cli_in_process("train", "--preset", "llama-tiny", "--tokens", "1000", *TINY_DATA, "--no-progress",
                             "--log-interval-steps", "0")
    assert bad.returncode == 2 and "train.log_interval_steps: 0 must be a whole number >= 1" in bad.stderr


def test_compilation_lands_in_the_warmup_phase_not_in_a_training_step(tmp_path: Path, cache_dir: Path,
                                                                      monkeypatch) -> None:
    """A compiled run whose last step is shorter: its compilation (the first step's shapes and the last
    step's) is in the warm-up phase; no training step's time holds a compilation."""
    import torch._inductor.config as inductor_config

    for cache in ("fx_graph_cache", "autograd_cache"):  # compile for real, not from an earlier run's disk cache
        if hasattr(inductor_config, cache):
            monkeypatch.setattr(inductor_config, cache, False)
    config = build_run_config(overrides={
        "model": {"preset": "llama-tiny", "n_layers": 1},
        "train": {"tokens": 1000, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": 0, "compile": True,
                  "run_root": str(tmp_path / "runs"), "eval_tokens": 512},  # 7 steps of 4 rows, then 4 rows of 8
        "data": {"source": "synthetic", "synthetic_mb": 0.3}, "meter": {"idle_seconds": 0.0, "kinds": ("none",)}})
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    with open_store(str(tmp_path / "w.db")) as store:
        record = store.get_run(result.run_id)
        seconds = [row["step_seconds"] for row in store.train_steps(result.run_id)]
    phases = record["phases"]
    assert phases["warmup"]["tokens"] == 128 and phases["train"]["tokens"] == 1000 - 128  # one step, then 7
    train_steps = seconds[1:]  # the steps of the train phase, the last (shorter, newly shaped) one included
    # a compilation is seconds; a step of this model milliseconds (a loaded machine stretches them, not 5x)
    assert phases["warmup"]["seconds"] > 5 * max(train_steps), (phases, seconds)

    # A second compiled run of another shape in the same process (a study's next run): it compiles afresh in
    # its own warm-up, even with dynamo allowed a single graph per function (it would otherwise go on eagerly).
    import torch._dynamo.config as dynamo_config

    monkeypatch.setattr(dynamo_config, "recompile_limit", 1)
    second = dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=2))
    result = train(second, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    with open_store(str(tmp_path / "w.db")) as store:
        phases = store.get_run(result.run_id)["phases"]
        seconds = [row["step_seconds"] for row in store.train_steps(result.run_id)]
    assert phases["warmup"]["seconds"] > 5 * max(seconds[1:]), (phases, seconds)

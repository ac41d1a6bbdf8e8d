"""The step loop: one optimiser step, the loss function, the optimiser, and divergence checks.

`StepLoop.run_until` runs optimiser steps inside the Monitor's ``train`` phase until an evaluation
or a checkpoint is due (or the budget is spent); the session does the evaluation and the checkpoint
outside it, in their own phases.

No host sync per step: `training_step` returns the loss and the gradient norm as device tensors, and the
loop reads them (one sync for all steps since the last read) only at read points: every
``train.log_interval_steps`` steps, after the first step of a session (so the warm-up phase holds its
device work), and whenever it returns (before an evaluation, a checkpoint or the end). The per-step rows
are built at the read from the same values, so the store's rows do not depend on the interval; a
diverged run is caught at the next read point (within one log interval) and ends at the step where it
diverged.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch

from wattscale.budget import IGNORE_INDEX, StepPlan
from wattscale.config import RunConfig
from wattscale.interrupts import raise_if_interrupted
from wattscale.model import Llama
from wattscale.schedule import learning_rate
from wattscale.train.parallel import ParallelModel

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EMA_ALPHA = 0.1
DIVERGENCE_MIN_STEPS = 10


class Diverged(Exception):
    """Raised inside the loop when the loss is non-finite or blew up."""

    def __init__(self, reason: str, step: int = 0, tokens_seen: int = 0, wall_seconds: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.step, self.tokens_seen, self.wall_seconds = reason, step, tokens_seen, wall_seconds


@dataclass
class LoopPosition:
    """Where training stands: steps, tokens and sequences consumed, the smoothed loss and its best."""

    step: int = 0
    tokens_seen: int = 0
    sequences: int = 0
    loss_ema: float | None = None
    best_loss_ema: float | None = None
    pending_rows: list[dict] = field(default_factory=list)  # train_steps rows not yet written
    last_loss: float | None = None  # the latest step loss read from the device


def next_boundary(tokens_seen: int, interval: int | None) -> float:
    """The next multiple of `interval` tokens after `tokens_seen`; infinity for no interval."""
    return math.inf if not interval else (tokens_seen // interval + 1) * interval


@dataclass
class _Unread:
    """A step whose loss and gradient norm are still on the device (read at the next read point)."""

    step: int
    tokens_seen: int
    lr: float
    loss: torch.Tensor  # [] float32 (float64 summed over ranks)
    grad_norm: torch.Tensor  # [] float32
    clock: tuple[object, object]  # (start, end): perf_counter seconds, or CUDA events


class StepLoop:
    """Runs optimiser steps of a plan; `one_step(first_sequence, n_seq, n_tok)` does one and returns its loss
    and gradient norm as device tensors (no host sync)."""

    def __init__(self, plan: StepPlan, lr: float, schedule: str, warmup_steps: int, min_lr_ratio: float,
                 decay_fraction: float, divergence_factor: float, optimizer: torch.optim.Optimizer,
                 one_step: Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]], *,
                 log_interval_steps: int = 1, device: torch.device | None = None) -> None:
        self.plan, self.optimizer, self.one_step = plan, optimizer, one_step
        self.lr_args = (lr, schedule, warmup_steps, min_lr_ratio, decay_fraction)
        self.divergence_factor = divergence_factor
        self.log_interval_steps = max(1, log_interval_steps)
        self._cuda = device is not None and device.type == "cuda"
        self._unread: list[_Unread] = []
        self._session_steps = 0

    def run_until(self, pos: LoopPosition, stop_at_tokens: float, wall: Callable[[], float],
                  on_step: Callable[[int, float | None], None]) -> None:
        """Step until tokens_seen reaches `stop_at_tokens` or the plan ends; raises Diverged.

        `on_step(tokens, loss)` is told about every step (the Monitor's token count, progress), with the
        latest loss read (None before the first read). Every step's row is in `pos.pending_rows` when this
        returns; after a Diverged, the rows up to the diverged step.
        """
        plan = self.plan
        while pos.step < plan.total_steps and pos.tokens_seen < stop_at_tokens:
            raise_if_interrupted()  # a Ctrl-C whose KeyboardInterrupt the garbage collector swallowed
            lr = learning_rate(pos.step, plan.total_steps, *self.lr_args)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            n_seq, n_tok = plan.sequences_in_step(pos.step), plan.tokens_in_step(pos.step)
            started = self._now()
            loss, grad_norm = self.one_step(pos.sequences, n_seq, n_tok)
            pos.step += 1
            pos.tokens_seen += n_tok
            pos.sequences += n_seq
            self._session_steps += 1
            self._unread.append(_Unread(pos.step, pos.tokens_seen, lr, loss, grad_norm, (started, self._now())))
            stopping = pos.step >= plan.total_steps or pos.tokens_seen >= stop_at_tokens
            diverged = None
            if stopping or self._session_steps == 1 or pos.step % self.log_interval_steps == 0:
                diverged = self.read(pos)
            on_step(n_tok, pos.last_loss)
            if diverged is not None:
                raise Diverged(diverged.reason, diverged.step, diverged.tokens_seen, wall())

    def read(self, pos: LoopPosition) -> Diverged | None:
        """Read the unread steps from the device (one sync) into rows and the smoothed loss, in step order.

        Returns the first divergence among them (its rows end there), or None.
        """
        unread, self._unread = self._unread, []
        if not unread:
            return None
        values = torch.stack([torch.stack([u.loss.double(), u.grad_norm.double()]) for u in unread]).tolist()
        for u, (loss, grad_norm) in zip(unread, values, strict=True):
            pos.loss_ema = loss if pos.loss_ema is None else (1 - EMA_ALPHA) * pos.loss_ema + EMA_ALPHA * loss
            pos.best_loss_ema = pos.loss_ema if pos.best_loss_ema is None else min(pos.best_loss_ema, pos.loss_ema)
            pos.last_loss = loss
            pos.pending_rows.append({"step": u.step, "tokens_seen": u.tokens_seen, "loss": loss, "lr": u.lr,
                                     "grad_norm": grad_norm, "step_seconds": self._seconds(u.clock)})
            try:
                check_divergence(u.step, loss, grad_norm, pos.loss_ema, pos.best_loss_ema, self.divergence_factor)
            except Diverged as exc:
                return Diverged(exc.reason, u.step, u.tokens_seen)
        return None

    def _now(self) -> object:
        if not self._cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _seconds(self, clock: tuple[object, object]) -> float:
        start, end = clock
        if isinstance(start, float):
            return end - start  # type: ignore[operator]
        return start.elapsed_time(end) / 1000.0  # type: ignore[union-attr]  # ms; both events done after the read


def summed_loss_fn(model: Llama | ParallelModel, compile_model: bool = False) -> LossFn:
    """(inputs [b, T], targets [b, T]) -> summed token cross-entropy, via the model's chunked loss.

    `Llama.loss` never materialises the [b*T, vocab] logits (about 20% of a llama-4m step on CPU is
    that memory traffic in the plain logits + F.cross_entropy path); optionally torch.compile'd. A
    `ParallelModel`'s `loss` is the same function, through DDP when gradients must be all-reduced.
    """
    fn = functools.partial(model.loss, reduction="sum", ignore_index=IGNORE_INDEX)
    if not compile_model:
        return fn
    compiled = torch.compile(fn)

    def static_rows(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # One static graph per micro-batch row count (a run has at most three: the full micro-batch, a step's
        # remainder, the last step's): the steady graph never changes when another shape is compiled, so
        # compiling the last step's shape early (`compile_shapes`) leaves every step's arithmetic as it was.
        torch._dynamo.mark_static(inputs, 0)
        torch._dynamo.mark_static(targets, 0)
        return compiled(inputs, targets)

    return static_rows


def micro_batch_rows(rows: int, micro_batch: int) -> list[int]:
    """The row counts of the micro-batches `training_step` cuts `rows` rows into."""
    return [min(micro_batch, rows - start) for start in range(0, rows, micro_batch)]


def compile_shapes(loss_fn: LossFn, model: torch.nn.Module, layouts: list[list[int]], seq_len: int,
                   device: torch.device, autocast_dtype: torch.dtype | None) -> None:
    """Run the loss forward and backward once per micro-batch of each layout (row counts), on fully masked
    rows, then drop the gradients: a compiled loss compiles those shapes here, in the warm-up phase, instead of
    inside a measured step (the last, shorter step of a budget would otherwise recompile in ``train``).

    Every rank must pass layouts with the same number of micro-batches (DDP and FSDP reduce in each
    backward); the masked rows count no tokens and the weights, optimiser and RNG states are untouched.
    """
    for layout in layouts:
        for rows in layout:
            x = torch.zeros(rows, seq_len, dtype=torch.long, device=device)  # [rows, T]
            y = torch.full_like(x, IGNORE_INDEX)  # [rows, T]: nothing counted
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = loss_fn(x, y)
            loss.backward()
    model.zero_grad(set_to_none=True)


def training_step(loss_fn: LossFn, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  inputs: torch.Tensor, targets: torch.Tensor, counted_tokens: int, micro_batch: int,
                  device: torch.device, autocast_dtype: torch.dtype | None, grad_clip: float, *,
                  defer_sync: Callable[[], AbstractContextManager] = nullcontext,
                  grad_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward over micro-batches, clip, AdamW step; returns (mean token loss, grad norm) as 0-d
    float32 tensors on `device`, without a host sync (read them with `.item()` when you need the numbers).

    `inputs`/`targets` are int64 [n_seq, T]; targets equal to IGNORE_INDEX do not count. The
    summed loss is divided by `counted_tokens`, so every counted token weighs the same whatever
    the micro-batch split and gradient accumulation equals one big batch. A non-finite gradient
    norm skips the update (the caller records the run as diverged): on the device, through the fused
    AdamW's ``found_inf`` (the flag `torch.amp.GradScaler` uses), so no host sync; another optimiser
    is stepped only after reading the norm (one sync).

    With several ranks `counted_tokens` is the whole step's count, the returned loss is this rank's
    part of the mean, `defer_sync` wraps all but the last micro-batch (no gradient reduction yet) and
    `grad_scale` (the world size) turns the ranks' gradient average into their sum.
    """
    loss_sum = torch.zeros((), device=device)
    for start in range(0, inputs.shape[0], micro_batch):
        last = start + micro_batch >= inputs.shape[0]
        with nullcontext() if last else defer_sync():
            # Pinned host rows (see wattscale.train.prefetch) copy asynchronously; device rows are used as they are.
            x = inputs[start:start + micro_batch].to(device, non_blocking=True)  # [b, T]
            y = targets[start:start + micro_batch].to(device, non_blocking=True)  # [b, T]
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = loss_fn(x, y) / counted_tokens
            (loss * grad_scale).backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        grad_norm = _full(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    else:
        grad_norm = _full(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    step_unless_nonfinite(optimizer, grad_norm)
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
    """`optimizer.step()` unless `grad_norm` is inf or NaN, without a host sync for a fused Adam/AdamW.

    The fused kernel skips every parameter update when its ``found_inf`` tensor is 1 and takes the step
    count back (as under `torch.amp.GradScaler`), so a skipped step leaves weights, moments and step
    counts as they were. Other optimisers read the norm first.
    """
    fused = isinstance(optimizer, torch.optim.Adam) and all(g.get("fused") for g in optimizer.param_groups)
    if not fused:
        if math.isfinite(grad_norm.item()):
            optimizer.step()
        return
    optimizer.found_inf = (~torch.isfinite(grad_norm)).to(torch.float32)  # type: ignore[attr-defined]
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf  # type: ignore[attr-defined]


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, using the fused kernel (CPU and CUDA, torch >= 2.4)."""
    tc = config.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is deterministic, so exact resume still holds; it is the fastest of the three
    # AdamW implementations on CPU too (see benchmarks/train_throughput.py).
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, fused=True)


def check_divergence(step: int, loss: float, grad_norm: float, ema: float, best_ema: float, factor: float) -> None:
    """Raise Diverged on a non-finite loss or gradient, or a smoothed loss above factor x its best."""
    if not math.isfinite(loss):
        raise Diverged(f"non-finite training loss ({loss}) at step {step}")
    if not math.isfinite(grad_norm):
        raise Diverged(f"non-finite gradient norm ({grad_norm}) at step {step}")
    if step >= DIVERGENCE_MIN_STEPS and ema > factor * best_ema:
        raise Diverged(f"loss blow-up at step {step}: smoothed loss {ema:.3f} > {factor} x best {best_ema:.3f}")


def _full(norm: torch.Tensor) -> torch.Tensor:
    """The gradient norm as a plain 0-d tensor on the device."""
    # Under FSDP the norm is a DTensor holding per-shard partial sums; full_tensor() reduces it over ranks.
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach().float()

"""The token-budget trainer: exact budget, evaluations at token intervals, exact resume.

`train(config, store_url)` validates everything (config, data, vocabulary) before it writes a
byte to the store, then trains the run identified by the hash of its resolved settings. Calling
it again with the same settings resumes that run from its last checkpoint, or returns at once if
the run already ended.

Started by torchrun on several processes, every rank calls `train` and they train one run
together (see `wattscale.distributed`): rank 0 alone writes the store and the run folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale import __version__
from wattscale.budget import IGNORE_INDEX, StepPlan, mask_targets
from wattscale.checkpoint import CheckpointMeta, list_checkpoints, write_weights
from wattscale.config import RunConfig, run_id_for
from wattscale.data import PreparedData, TokenShard, prepare_data, sequence_batch, training_subset
from wattscale.distributed import (
    DistributedContext,
    ParallelModel,
    all_reduce_sum,
    broadcast_object,
    energy_state_for_rank,
    full_weights,
    gather_lists,
    gather_objects,
    init_distributed,
    load_newest_checkpoint,
    lockstep_rows,
    merge_energy,
    merge_energy_states,
    pad_rows,
    rank0_decides,
    rank0_first,
    rank_meters,
    rank_rows,
    reshard_after_eval,
    save_checkpoint_on_rank0,
    shutdown,
    wrap_model,
)
from wattscale.energy import Meter, close_meters
from wattscale.energy.recorder import EnergyRecorder
from wattscale.errors import ConfigError
from wattscale.evaluate import Evaluation, evaluate, validation_windows
from wattscale.hardware import device_info, git_revision, resolve_precision, run_peak_flops
from wattscale.locking import run_lock
from wattscale.model import Llama, count_parameters, flops_per_token
from wattscale.progress import ProgressHooks, TrainingProgress
from wattscale.schedule import learning_rate
from wattscale.store import Store, open_store

DEFAULT_CACHE_DIR = Path(".wattscale_cache")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
EMA_ALPHA = 0.1
DIVERGENCE_MIN_STEPS = 10


@dataclass(frozen=True)
class TrainResult:
    """What a call to `train` achieved."""

    run_id: str
    status: str
    tokens_seen: int
    steps: int
    wall_seconds: float
    final_val_loss: float | None
    final_val_ppl: float | None
    run_dir: Path
    resumed: bool
    already_done: bool
    message: str | None = None
    energy_j: float | None = None
    energy_source: str | None = None


class Diverged(Exception):
    """Raised inside the loop when the loss is non-finite or blew up."""

    def __init__(self, reason: str, step: int = 0, tokens_seen: int = 0, wall_seconds: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.step, self.tokens_seen, self.wall_seconds = reason, step, tokens_seen, wall_seconds


def train(config: RunConfig, store_url: str, *, show_progress: bool = True,
          cache_dir: Path = DEFAULT_CACHE_DIR, experiment: str | None = None,
          progress_hooks: ProgressHooks | None = None) -> TrainResult:
    """Train (or resume, or skip if finished) the run described by `config`.

    `experiment` names the study the run belongs to (stored with it); `progress_hooks` let a
    sweep show this run's bar inside its own display. Under torchrun every rank returns the same
    result.
    """
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    ctx = init_distributed(config.train.device)
    try:
        return _train(config, store_url, ctx, show_progress and ctx.is_main, cache_dir, experiment, progress_hooks)
    finally:
        shutdown(ctx)


@dataclass(frozen=True)
class _Claim:
    """Rank 0's view of the run before training, as every rank receives it."""

    run_dir: Path
    existing: dict | None  # the run's record, if it was started before
    done: TrainResult | None = None  # set when the run already ended: nothing to do


def _train(config: RunConfig, store_url: str, ctx: DistributedContext, show_progress: bool, cache_dir: Path,
           experiment: str | None, progress_hooks: ProgressHooks | None) -> TrainResult:
    precision = resolve_precision(config.train.precision, ctx.device)
    data = rank0_first(ctx, lambda: prepare_data(config.data, config.model.vocab_size, cache_dir))
    train_shard = training_subset(data.train, config.train.data_tokens)
    val_windows = validation_windows(data.val, config.seq_len, config.train.eval_tokens)
    run_id = run_id_for(config, data.cache_key)
    with ExitStack() as stack:
        store: Store | None = None

        def claim() -> _Claim:
            # Everything above validates; only now is the store opened and written.
            nonlocal store
            store = stack.enter_context(open_store(store_url))
            return _claim_run(stack, store, run_id, Path(config.train.run_root))

        decision = rank0_decides(ctx, claim)
        if decision.done is not None:
            return decision.done
        meters, meter_notes = rank_meters(config.meter, ctx)
        stack.callback(close_meters, meters)
        session = _Session(config, store, data, train_shard, val_windows, ctx, precision, run_id, decision.run_dir,
                           experiment, show_progress, meters, progress_hooks)
        if config.meter.enabled and not meters:
            session.notes.append("energy not measured, no usable meter: " + "; ".join(meter_notes))
        return session.run(decision.existing)


def _claim_run(stack: ExitStack, store: Store, run_id: str, run_root: Path) -> _Claim:
    """Find the run's folder and take its lock (held until `stack` closes), unless the run already ended."""
    existing = store.get_run(run_id)
    # A run resumes from wherever its checkpoints were written, even if --run-root changed since.
    run_dir = Path(existing["run_dir"]) if existing and existing.get("run_dir") else run_root / run_id
    if existing is not None and existing["status"] in ("finished", "diverged"):
        return _Claim(run_dir, existing, _result_from_record(existing, run_dir, already_done=True))
    stack.enter_context(run_lock(run_dir))
    existing = store.get_run(run_id)  # re-read under the lock: another process may just have finished it
    if existing is not None and existing["status"] in ("finished", "diverged"):
        return _Claim(run_dir, existing, _result_from_record(existing, run_dir, already_done=True))
    if existing is None and list_checkpoints(run_dir):
        # Resuming them would leave this store without the rows written before the checkpoint.
        raise ConfigError(f"train.run_root: {run_dir} holds checkpoints of run {run_id} that "
                          f"{store.display_url} has no record of (another store's run); use another "
                          f"--run-root, or delete {run_dir} to train it afresh")
    return _Claim(run_dir, existing)


class _Session:
    """One process's work on one run: set up, resume, loop, finish.

    With several ranks every rank runs the same session in lockstep (the same collectives in the
    same order); `store` is None on all but rank 0, which alone writes.
    """

    def __init__(self, config: RunConfig, store: Store | None, data: PreparedData, train_shard: TokenShard,
                 val_windows: torch.Tensor, ctx: DistributedContext, precision: str, run_id: str, run_dir: Path,
                 experiment: str | None, show_progress: bool, meters: list[Meter],
                 progress_hooks: ProgressHooks | None = None) -> None:
        self.config, self.store, self.data, self.val_windows = config, store, data, val_windows
        self.train_shard = train_shard  # the whole training split, or its first data_tokens tokens
        self.ctx, self.device, self.run_id, self.run_dir = ctx, ctx.device, run_id, run_dir
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.precision, self.experiment, self.show_progress = precision, experiment, show_progress
        self.progress_hooks = progress_hooks
        self.plan = StepPlan(config.train.tokens, config.train.batch_size, config.seq_len)
        tc = config.train
        self.eval_interval = tc.eval_interval_tokens or max(1, tc.tokens // 10)
        self.checkpoint_interval = tc.checkpoint_interval_tokens or self.eval_interval
        self.micro_batch = tc.micro_batch_size or tc.batch_size
        self.warmup_steps = round(tc.warmup_fraction * self.plan.total_steps)
        self.resumed = False
        self._last_eval: Evaluation | None = None
        self.meters = meters
        self.metered = config.meter.enabled  # the same on every rank, so energy collectives stay in step
        self.energy: EnergyRecorder | None = None
        self.notes: list[str] = []
        self.parallel: ParallelModel | None = None

    def run(self, existing: dict | None) -> TrainResult:
        """Build model and optimiser, restore the newest checkpoint, train to the budget."""
        torch.manual_seed(self.config.train.seed)
        model = Llama(self.config.model).to(self.device)
        # Before the optimiser is built: FSDP replaces the parameters with sharded ones.
        self.parallel = wrap_model(model, self.ctx, self.config.train.parallel)
        optimizer = make_optimizer(model, self.config)
        meta = load_newest_checkpoint(self.ctx, self.run_dir, model, optimizer)
        self.resumed = meta is not None
        if self.store is not None:
            self._record_start(existing, resumed=self.resumed)
            # Rows written after the checkpoint (or by a session killed before its first one) are redone.
            self.store.truncate_after(self.run_id, meta.step if meta else 0)
        loss_fn = summed_loss_fn(self.parallel, self.config.train.compile)
        progress = TrainingProgress(self.run_id, self.config.train.tokens,
                                    meta.tokens_seen if meta else 0, enabled=self.show_progress,
                                    hooks=self.progress_hooks)
        if meta:
            progress.log(f"resuming at step {meta.step}, {meta.tokens_seen:,} tokens")
        for note in self.notes:
            progress.log(note)
        try:
            self._start_energy(meta)
            return self._loop(model, loss_fn, optimizer, meta, progress)
        except Diverged as exc:
            return self._finish_diverged(exc, progress)
        except KeyboardInterrupt:
            self._stop_energy()
            if self.store is not None:
                self.store.finish_run(self.run_id, "interrupted", {"message": "interrupted; re-run to resume"})
            raise
        except Exception as exc:
            self._stop_energy()
            if self.store is not None:
                self.store.finish_run(self.run_id, "failed", {"message": f"{type(exc).__name__}: {exc}"})
            raise
        finally:
            progress.close()

    def _record_start(self, existing: dict | None, resumed: bool) -> None:
        counts = count_parameters(self.config.model)
        now = datetime.now(UTC)
        resolved = self.config.to_dict()
        resolved["data_fingerprint"] = self.data.cache_key
        resolved["resolved"] = {"device": str(self.device), "precision": self.precision,
                                "world_size": self.ctx.world_size, "eval_interval_tokens": self.eval_interval,
                                "checkpoint_interval_tokens": self.checkpoint_interval,
                                "total_steps": self.plan.total_steps, "warmup_steps": self.warmup_steps}
        config_json = json.dumps(resolved, sort_keys=True)
        record = {
            "run_id": self.run_id, "experiment": self.experiment, "name": self.config.train.name,
            "preset": self.config.model.name, "status": "running", "config_json": config_json,
            "config_hash": _sha(config_json), "seed": self.config.train.seed,
            "created_at": now, "started_at": now, "tokens_budget": self.config.train.tokens,
            "data_tokens": self.config.train.data_tokens, "epochs": self.config.train.epochs,
            "repeat": self.config.train.repeat,
            "tokens_seen": 0, "steps": 0, "params_total": counts.total,
            "params_embedding": counts.embedding, "params_non_embedding": counts.non_embedding,
            "flops_per_token": flops_per_token(self.config.model, self.config.seq_len),
            "device": str(self.device),
            "device_info_json": None,
            "git_revision": git_revision(), "wattscale_version": __version__,
            "torch_version": torch.__version__, "run_dir": str(self.run_dir.resolve()),
            "resume_count": 0, "wall_seconds": 0.0,
        }
        if existing is None:
            # The peak that MFU is computed against is taken once, when the run is created.
            record["device_info_json"] = json.dumps({**device_info(self.device), "world_size": self.ctx.world_size,
                                                     **run_peak_flops(self.device, self.precision)})
            self.store.create_run(record)
        else:
            self.store.mark_running(self.run_id, now, resumed=resumed)
        # The tokenizer travels with the run so that export-hf needs nothing else.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "tokenizer.json").write_bytes(Path(self.data.tokenizer_path).read_bytes())
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))

    def _start_energy(self, meta: CheckpointMeta | None) -> None:
        """Start the power sampler; measure the idle baseline once per run; drop energy after the checkpoint.

        Each rank samples its own meters and resumes its own devices' share of the checkpoint's energy.
        """
        if not self.metered:
            return
        if self.meters:
            self.energy = EnergyRecorder(self.meters, self.config.meter.sample_hz,
                                         meta.wall_seconds if meta else 0.0,
                                         energy_state_for_rank(meta.energy if meta else None, self.ctx))
            self.energy.start()
        if self.store is not None:
            self.store.truncate_energy_after(self.run_id, meta.wall_seconds if meta else 0.0)
        measure_idle = self.config.meter.idle_seconds > 0 and rank0_decides(self.ctx, lambda: not any(
            row["scope"] == "idle" for row in self.store.energy_measurements(self.run_id)))
        if measure_idle:
            self._write_energy(self.energy.measure_idle(self.config.meter.idle_seconds) if self.energy else [])
        if self.energy is not None:
            self.energy.begin_training(meta.tokens_seen if meta else 0)

    def _stop_energy(self) -> None:
        if self.energy is not None:
            self.energy.stop()

    def _finish_energy(self, tokens_seen: int) -> dict:
        """Stop sampling and write every rank's energy rows; returns the runs-table fields to set (rank 0)."""
        if not self.metered:
            return {}
        total, rows = self.energy.finish(tokens_seen) if self.energy is not None else (None, [])
        totals, rows = gather_objects(self.ctx, total), gather_lists(self.ctx, rows)
        self._flush_power()
        if self.store is None:
            return {}
        self.store.add_energy_measurements(self.run_id, rows)
        total = merge_energy([t for t in totals if t is not None])
        if not total.energy_j:
            return {}
        fields = {"energy_j": total.total_j, "energy_source": total.source}
        if not total.complete:
            fields["message"] = "energy incomplete: a meter failed during the run (gaps in energy_measurements)"
        return fields

    def _write_energy(self, rows: list[dict]) -> None:
        """Gather every rank's energy_measurements rows; rank 0 writes them. Collective."""
        rows = gather_lists(self.ctx, rows)
        if self.store is not None:
            self.store.add_energy_measurements(self.run_id, rows)

    def _flush_power(self) -> None:
        """Gather every rank's power samples since the last flush; rank 0 writes them. Collective."""
        if not self.metered:
            return
        samples = gather_lists(self.ctx, self.energy.drain_samples() if self.energy is not None else [])
        if self.store is not None:
            self.store.add_power_samples(self.run_id, samples)

    def _checkpoint_energy(self) -> dict | None:
        """Every rank's energy so far, merged for the checkpoint (devices are rank-prefixed). Collective."""
        if not self.metered:
            return None
        return merge_energy_states(gather_objects(self.ctx, self.energy.checkpoint() if self.energy else None))

    def _loop(self, model: Llama, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
              meta: CheckpointMeta | None, progress: TrainingProgress) -> TrainResult:
        tc, plan = self.config.train, self.plan
        step = meta.step if meta else 0
        tokens_seen = meta.tokens_seen if meta else 0
        sequences = meta.sequences_consumed if meta else 0
        wall_before = meta.wall_seconds if meta else 0.0
        ema = meta.loss_ema if meta else None
        best_ema = meta.best_loss_ema if meta else None
        next_eval = (tokens_seen // self.eval_interval + 1) * self.eval_interval
        next_ckpt = (tokens_seen // self.checkpoint_interval + 1) * self.checkpoint_interval
        pending_rows: list[dict] = []
        start = time.perf_counter()
        if tc.eval_at_start and step == 0:
            self._record_eval(model, 0, 0, 0.0, progress)
        last_eval_tokens = -1
        while step < plan.total_steps:
            step_start = time.perf_counter()
            lr = learning_rate(step, plan.total_steps, tc.lr, tc.schedule, self.warmup_steps,
                               tc.min_lr_ratio, tc.decay_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            n_seq, n_tok = plan.sequences_in_step(step), plan.tokens_in_step(step)
            loss, grad_norm = self._optimizer_step(loss_fn, model, optimizer, sequences, n_seq, n_tok)
            step += 1
            tokens_seen += n_tok
            sequences += n_seq
            ema = loss if ema is None else (1 - EMA_ALPHA) * ema + EMA_ALPHA * loss
            best_ema = ema if best_ema is None else min(best_ema, ema)
            step_seconds = time.perf_counter() - step_start
            pending_rows.append({"step": step, "tokens_seen": tokens_seen, "loss": loss, "lr": lr,
                                 "grad_norm": grad_norm, "step_seconds": step_seconds})
            wall = wall_before + time.perf_counter() - start
            try:
                _check_divergence(step, loss, grad_norm, ema, best_ema, tc.divergence_factor)
            except Diverged as exc:
                self._flush(pending_rows)
                raise Diverged(exc.reason, step, tokens_seen, wall) from None
            progress.update(tokens_seen, loss, (tokens_seen - (meta.tokens_seen if meta else 0))
                            / max(1e-9, time.perf_counter() - start))
            if tokens_seen >= next_eval or step == plan.total_steps:
                self._flush(pending_rows)
                self._record_eval(model, step, tokens_seen, wall, progress)
                if self.metered:
                    self._write_energy(self.energy.close_interval(tokens_seen) if self.energy is not None else [])
                    self._flush_power()
                last_eval_tokens = tokens_seen
                next_eval = (tokens_seen // self.eval_interval + 1) * self.eval_interval
            if tokens_seen >= next_ckpt and step < plan.total_steps:
                self._flush(pending_rows)
                energy = self._checkpoint_energy()
                self._flush_power()
                save_checkpoint_on_rank0(self.ctx, self.run_dir, model, optimizer, CheckpointMeta(
                    step, tokens_seen, sequences, wall, best_ema, ema, energy))
                if self.store is not None:
                    self.store.update_run(self.run_id, tokens_seen=tokens_seen, steps=step, wall_seconds=wall)
                next_ckpt = (tokens_seen // self.checkpoint_interval + 1) * self.checkpoint_interval
        assert last_eval_tokens == tokens_seen == tc.tokens, "the loop must end on the exact budget"
        self._flush(pending_rows)
        return self._finish(model, step, tokens_seen, wall_before + time.perf_counter() - start)

    def _optimizer_step(self, loss_fn: LossFn, model: Llama, optimizer: torch.optim.Optimizer,
                        first_sequence: int, n_seq: int, n_tok: int) -> tuple[float, float]:
        """One optimiser step on the next `n_seq` sequences of the training stream; returns the global loss.

        Each rank takes its contiguous share of the sequences; together they are the whole step.
        """
        ctx, seq_len = self.ctx, self.config.seq_len
        start, stop = rank_rows(n_seq, ctx.rank, ctx.world_size)
        inputs, targets = sequence_batch(self.train_shard, seq_len, self.config.train.seed,
                                         first_sequence + start, stop - start)  # [rows, T] each
        # The budget masks the step's tokens in row-major order, so a share counts what its rows hold of
        # the first n_tok; every rank divides by the whole step's n_tok.
        targets = mask_targets(targets, max(0, n_tok - start * seq_len))
        inputs, targets = pad_rows(inputs, targets, lockstep_rows(n_seq, ctx.world_size, self.micro_batch))
        loss, grad_norm = training_step(loss_fn, model, optimizer, inputs, targets, n_tok, self.micro_batch,
                                        self.device, self.autocast_dtype, self.config.train.grad_clip,
                                        defer_sync=self.parallel.defer_sync, grad_scale=self.parallel.grad_scale)
        return all_reduce_sum(ctx, loss), grad_norm

    def _record_eval(self, model: Llama, step: int, tokens_seen: int, wall: float,
                     progress: TrainingProgress) -> Evaluation:
        # Every rank evaluates the same windows: FSDP gathers parameters in each forward.
        result = evaluate(model, self.val_windows, self.micro_batch, self.device, self.autocast_dtype)
        reshard_after_eval(model)
        if self.store is not None:
            self.store.add_evaluation(self.run_id, {"step": step, "tokens_seen": tokens_seen,
                                                    "val_loss": result.val_loss, "val_ppl": result.val_ppl,
                                                    "wall_seconds": wall})
        progress.log(f"eval at {tokens_seen:,} tokens: val_loss {result.val_loss:.4f}  "
                     f"val_ppl {result.val_ppl:.2f}")
        self._last_eval = result
        return result

    def _flush(self, rows: list[dict]) -> None:
        if rows and self.store is not None:
            self.store.add_train_steps(self.run_id, list(rows))
        rows.clear()

    def _finish(self, model: Llama, step: int, tokens_seen: int, wall: float) -> TrainResult:
        weights = full_weights(self.ctx, model)
        if self.store is not None:
            write_weights(self.run_dir / "final" / "model.safetensors", weights)
            (self.run_dir / "final" / "model_config.json").write_text(json.dumps(self.config.model.to_dict()))
        last = self._last_eval
        assert last is not None
        energy = self._finish_energy(tokens_seen)
        result = None
        if self.store is not None:
            self.store.finish_run(self.run_id, "finished", {
                "tokens_seen": tokens_seen, "steps": step, "wall_seconds": wall,
                "finished_at": datetime.now(UTC), "final_val_loss": last.val_loss,
                "final_val_ppl": last.val_ppl, **energy})
            result = TrainResult(self.run_id, "finished", tokens_seen, step, wall, last.val_loss, last.val_ppl,
                                 self.run_dir, resumed=self.resumed, already_done=False,
                                 message=energy.get("message"), energy_j=energy.get("energy_j"),
                                 energy_source=energy.get("energy_source"))
        return broadcast_object(self.ctx, result)

    def _finish_diverged(self, exc: Diverged, progress: TrainingProgress) -> TrainResult:
        progress.log(f"diverged: {exc.reason}")
        energy = self._finish_energy(exc.tokens_seen)
        result = None
        if self.store is not None:
            message = "; ".join(m for m in (exc.reason, energy.pop("message", None)) if m)
            self.store.finish_run(self.run_id, "diverged", {
                "finished_at": datetime.now(UTC), "message": message, "tokens_seen": exc.tokens_seen,
                "steps": exc.step, "wall_seconds": exc.wall_seconds, **energy})
            result = _result_from_record(self.store.get_run(self.run_id), self.run_dir, already_done=False)
        return broadcast_object(self.ctx, result)


def summed_loss_fn(model: Llama | ParallelModel, compile_model: bool = False) -> LossFn:
    """(inputs [b, T], targets [b, T]) -> summed token cross-entropy, via the model's chunked loss.

    `Llama.loss` never materialises the [b*T, vocab] logits (about 20% of a llama-4m step on CPU is
    that memory traffic in the plain logits + F.cross_entropy path); optionally torch.compile'd. A
    `ParallelModel`'s `loss` is the same function, through DDP when gradients must be all-reduced.
    """
    fn = functools.partial(model.loss, reduction="sum", ignore_index=IGNORE_INDEX)
    return torch.compile(fn) if compile_model else fn


def training_step(loss_fn: LossFn, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  inputs: torch.Tensor, targets: torch.Tensor, counted_tokens: int, micro_batch: int,
                  device: torch.device, autocast_dtype: torch.dtype | None, grad_clip: float, *,
                  defer_sync: Callable[[], AbstractContextManager] = nullcontext,
                  grad_scale: float = 1.0) -> tuple[float, float]:
    """Forward/backward over micro-batches, clip, AdamW step; returns (mean token loss, grad norm).

    `inputs`/`targets` are int64 [n_seq, T]; targets equal to IGNORE_INDEX do not count. The
    summed loss is divided by `counted_tokens`, so every counted token weighs the same whatever
    the micro-batch split and gradient accumulation equals one big batch. A non-finite gradient
    norm skips the update (the caller records the run as diverged).

    With several ranks `counted_tokens` is the whole step's count, the returned loss is this rank's
    part of the mean, `defer_sync` wraps all but the last micro-batch (no gradient reduction yet) and
    `grad_scale` (the world size) turns the ranks' gradient average into their sum.
    """
    loss_sum = torch.zeros((), device=device)
    for start in range(0, inputs.shape[0], micro_batch):
        last = start + micro_batch >= inputs.shape[0]
        with nullcontext() if last else defer_sync():
            x = inputs[start:start + micro_batch].to(device, non_blocking=True)  # [b, T]
            y = targets[start:start + micro_batch].to(device, non_blocking=True)  # [b, T]
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss = loss_fn(x, y) / counted_tokens
            (loss * grad_scale).backward()
        loss_sum += loss.detach()
    if grad_clip > 0:
        grad_norm = _scalar(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    else:
        grad_norm = _scalar(torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]))
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum.item(), grad_norm


def make_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only, using the fused kernel (CPU and CUDA, torch >= 2.4)."""
    tc = config.train
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel is deterministic, so exact resume still holds; it is the fastest of the three
    # AdamW implementations on CPU too (see benchmarks/train_throughput.py).
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, fused=True)


def _check_divergence(step: int, loss: float, grad_norm: float, ema: float, best_ema: float,
                      factor: float) -> None:
    """Raise Diverged on a non-finite loss or gradient, or a smoothed loss above factor x its best."""
    if not math.isfinite(loss):
        raise Diverged(f"non-finite training loss ({loss}) at step {step}")
    if not math.isfinite(grad_norm):
        raise Diverged(f"non-finite gradient norm ({grad_norm}) at step {step}")
    if step >= DIVERGENCE_MIN_STEPS and ema > factor * best_ema:
        raise Diverged(f"loss blow-up at step {step}: smoothed loss {ema:.3f} > {factor} x best {best_ema:.3f}")


def _result_from_record(record: dict, run_dir: Path, already_done: bool) -> TrainResult:
    return TrainResult(record["run_id"], record["status"], record["tokens_seen"] or 0, record["steps"] or 0,
                       record["wall_seconds"] or 0.0, record["final_val_loss"], record["final_val_ppl"],
                       run_dir, resumed=(record.get("resume_count") or 0) > 0, already_done=already_done,
                       message=record.get("message"), energy_j=record.get("energy_j"),
                       energy_source=record.get("energy_source"))


def _scalar(norm: torch.Tensor) -> float:
    # Under FSDP the norm is a DTensor holding per-shard partial sums; full_tensor() reduces it over ranks.
    return (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()

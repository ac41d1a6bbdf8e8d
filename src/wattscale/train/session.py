"""The token-budget trainer: exact budget, evaluations at token intervals, exact resume.

`train(config, store_url)` validates everything (config, data, vocabulary) before it writes a
byte to the store, then trains the run identified by the hash of its resolved settings. Calling
it again with the same settings resumes that run from its last checkpoint, or returns at once if
the run already ended.

Started by torchrun on several processes, every rank calls `train` and they train one run
together (see `wattscale.train.parallel`): rank 0 alone writes the store and the run folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale import __version__
from wattscale.budget import StepPlan, mask_targets
from wattscale.config import RunConfig, earlier_run_ids, run_id_for
from wattscale.data import PreparedData, TokenShard, prepare_data, sequence_batch, training_subset
from wattscale.earlier_ids import adopt_earlier_id
from wattscale.energy.gpu_control import control_gpus, record_gpu_control
from wattscale.errors import ConfigError, DataError, StoreError, StoreFileGone, WattscaleError
from wattscale.evaluate import Evaluation, validation_windows
from wattscale.hardware import apply_matmul_precision, device_info, git_revision, resolve_precision, run_peak_flops
from wattscale.locking import run_lock
from wattscale.model import Llama, count_parameters, flops_per_token
from wattscale.progress import ProgressHooks, TrainingProgress
from wattscale.store import Store, open_store
from wattscale.threads import torch_threads
from wattscale.trackers import Tracker, open_trackers
from wattscale.trackers.base import close_tracker
from wattscale.trackers.live import tracked_params
from wattscale.train.checkpoints import (
    CheckpointMeta,
    list_checkpoints,
    read_energy_state,
    write_energy_state,
    write_weights,
)
from wattscale.train.determinism import determinism_record, deterministic_kernels
from wattscale.train.loop import (
    Diverged,
    LoopPosition,
    LossFn,
    StepLoop,
    compile_shapes,
    make_optimizer,
    micro_batch_rows,
    next_boundary,
    summed_loss_fn,
    training_step,
)
from wattscale.train.metering import RunMetering
from wattscale.train.parallel import (
    DistributedContext,
    ParallelModel,
    broadcast_object,
    build_model,
    evaluate_on_ranks,
    full_weights,
    init_distributed,
    lockstep_rows,
    pad_rows,
    rank0_decides,
    rank0_first,
    rank_rows,
    shutdown,
    sum_over_ranks,
)
from wattscale.train.prefetch import BatchPrefetcher
from wattscale.train.run_checkpoints import load_newest_checkpoint, save_run_checkpoint
from wattscale.train.run_folder import folder_error, lock_busy, move_checkpoints

__all__ = ["DEFAULT_CACHE_DIR", "TrainResult", "make_optimizer", "summed_loss_fn", "train", "training_step"]

DEFAULT_CACHE_DIR = Path(".wattscale_cache")


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
    energy_j: float | None = None  # the whole job (every phase but the idle baseline)
    energy_source: str | None = None
    train_energy_j: float | None = None  # the training phase (optimiser steps after the warm-up)
    train_seconds: float | None = None


def train(config: RunConfig, store_url: str, *, show_progress: bool = True,
          cache_dir: Path = DEFAULT_CACHE_DIR, experiment: str | None = None,
          progress_hooks: ProgressHooks | None = None) -> TrainResult:
    """Train (or resume, or skip if finished) the run described by `config`.

    `experiment` names the study the run belongs to (stored with it); `progress_hooks` let a
    sweep show this run's bar inside its own display. Under torchrun every rank returns the same
    result.
    """
    with torch_threads(config.train.threads):
        ctx = init_distributed(config.train.device)
        try:
            with deterministic_kernels(config.train.deterministic, ctx.device.type):
                return _train(config, store_url, ctx, show_progress and ctx.is_main, cache_dir, experiment,
                              progress_hooks)
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
    matmul = apply_matmul_precision(ctx.device, precision)  # fp32 really fp32; tf32 only when asked for
    data = rank0_first(ctx, lambda: prepare_data(config.data, config.model.vocab_size, cache_dir))
    train_shard = training_subset(data.train, config.train.data_tokens)
    val_windows = validation_windows(data.val, config.seq_len, config.train.eval_tokens)
    run_id = run_id_for(config, data.cache_key)
    with ExitStack() as stack:
        # [gpu] power limit / SM clock: set before the store is opened (a refusal writes nothing), restored on exit.
        gpu = stack.enter_context(control_gpus(config.gpu, ctx.device))
        store: Store | None = None

        def claim() -> _Claim:
            # Everything above validates; only now is the store opened and written.
            nonlocal store
            store = stack.enter_context(open_store(store_url))
            note = adopt_earlier_id(store, run_id, earlier_run_ids(config, data.cache_key))
            if note:
                print(f"wattscale: {note}", file=sys.stderr, flush=True)
            return _claim_run(stack, store, run_id, Path(config.train.run_root))

        decision = rank0_decides(ctx, claim)
        if decision.done is not None:
            return decision.done
        session = _Session(config, store, data, train_shard, val_windows, ctx, precision, matmul, run_id,
                           decision.run_dir, experiment, show_progress, progress_hooks)
        try:
            return session.run(decision.existing)
        finally:
            gpu.restore()
            record_gpu_control(store, run_id, gpu)


def _claim_run(stack: ExitStack, store: Store, run_id: str, run_root: Path) -> _Claim:
    """Find the run's folder and take its lock (held until `stack` closes), unless the run already ended.

    A run that was started under another run root moves to `<run_root>/<run_id>`: its checkpoints are
    copied there and the store's run_dir updated (the old folder is left as it was).
    """
    existing = store.get_run(run_id)
    wanted = run_root / run_id
    stored = Path(existing["run_dir"]) if existing and existing.get("run_dir") else None
    if existing is not None and existing["status"] in ("finished", "diverged"):
        run_dir = stored or wanted
        return _Claim(run_dir, existing, _result_from_record(existing, run_dir, already_done=True))
    moving = stored is not None and stored.resolve() != wanted.resolve()
    if moving and lock_busy(stored):
        raise WattscaleError(f"run {run_id} is being trained by another process (in {stored}); wait for it or "
                             "stop it first")
    if stored is not None and not moving:
        wanted = stored  # as stored (absolute)
    stack.enter_context(run_lock(wanted))
    existing = store.get_run(run_id)  # re-read under the lock: another process may just have finished it
    if existing is not None and existing["status"] in ("finished", "diverged"):
        return _Claim(wanted, existing, _result_from_record(existing, wanted, already_done=True))
    if existing is None and list_checkpoints(wanted):
        # Resuming them would leave this store without the rows written before the checkpoint.
        raise ConfigError(f"train.run_root: {wanted} holds checkpoints of run {run_id} that "
                          f"{store.display_url} has no record of (another store's run); use another "
                          f"--run-root, or delete {wanted} to train it afresh")
    if moving and existing is not None:
        note = move_checkpoints(stored, wanted.resolve(), run_id)
        store.set_run_dir(run_id, wanted.resolve())
        print(f"wattscale: {note}", file=sys.stderr, flush=True)
    return _Claim(wanted, existing)


class _Session:
    """One process's work on one run: set up, resume, loop, finish.

    With several ranks every rank runs the same session in lockstep (the same collectives in the
    same order); `store` is None on all but rank 0, which alone writes.
    """

    def __init__(self, config: RunConfig, store: Store | None, data: PreparedData, train_shard: TokenShard,
                 val_windows: torch.Tensor, ctx: DistributedContext, precision: str, matmul: dict, run_id: str,
                 run_dir: Path, experiment: str | None, show_progress: bool,
                 progress_hooks: ProgressHooks | None = None) -> None:
        self.config, self.store, self.data, self.val_windows = config, store, data, val_windows
        self.train_shard = train_shard  # the whole training split, or its first data_tokens tokens
        self.ctx, self.device, self.run_id, self.run_dir = ctx, ctx.device, run_id, run_dir
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.precision, self.experiment, self.show_progress = precision, experiment, show_progress
        self.progress_hooks = progress_hooks
        self.plan = StepPlan(config.train.tokens, config.train.batch_size, config.seq_len)
        tc = config.train
        # None: no intermediate evaluations (the final one always happens) or checkpoints.
        self.eval_interval = _token_interval(tc.eval_interval_tokens, max(1, tc.tokens // 10))
        self.checkpoint_interval = _token_interval(tc.checkpoint_interval_tokens, self.eval_interval)
        self.micro_batch = tc.micro_batch_size or tc.batch_size
        self.warmup_steps = round(tc.warmup_fraction * self.plan.total_steps)
        self.resumed = False
        self._last_eval: Evaluation | None = None
        self.metering: RunMetering | None = None
        self.parallel: ParallelModel | None = None
        self.batches: BatchPrefetcher | None = None
        self.matmul = matmul  # what apply_matmul_precision set, for the run record

    def run(self, existing: dict | None) -> TrainResult:
        """Build model and optimiser, restore the newest checkpoint, train to the budget.

        Rank 0 opens the run's trackers (``train.track``) first, so a tracker that cannot be used stops the
        run before anything is written; the metering feeds them and ends them with the run's status.
        """
        trackers = open_trackers(self.config.train.track, run_name=self.config.train.name or self.run_id,
                                 where="train.track") if self.ctx.is_main else []
        try:
            return self._run(existing, trackers)
        finally:
            for tracker in trackers:  # those not ended by the metering (a failure before it started)
                with suppress(Exception):
                    close_tracker(tracker, "failed")

    def _run(self, existing: dict | None, trackers: list[Tracker]) -> TrainResult:
        if self.config.train.compile:
            # Each run compiles afresh. Dynamo's caches live as long as the process, and a study that trains
            # many runs of different shapes in one process would pass its recompile limit (8) and silently
            # fall back to eager for the rest; a reset also puts every run's compilation in its own warm-up.
            torch._dynamo.reset()
        # Before the optimiser is built: FSDP replaces the parameters with sharded ones.
        model, self.parallel = build_model(self.config.model, self.config.train.seed, self.ctx,
                                           self.config.train.parallel, self.precision, self.config.train.compile)
        if self.parallel.casts_params:  # FSDP's MixedPrecisionPolicy computes in bf16: no autocast on top
            self.autocast_dtype = None
        optimizer = make_optimizer(model, self.config)
        # The newest checkpoint that loads (an unreadable newer one is set aside with a CheckpointWarning).
        try:
            meta = load_newest_checkpoint(self.ctx, self.run_dir, model, optimizer).meta
        except DataError as exc:  # none loads: the run cannot continue until its folder is seen to
            self._end_failed(existing, str(exc))
            raise
        self.resumed = meta is not None
        resume = rank0_decides(self.ctx, lambda: _resume_state(self.run_dir, meta))
        if self.store is not None:
            resolved = self._record_start(existing, resumed=self.resumed)
            try:
                self._write_run_files(resolved)
                # Rows written after the checkpoint (or by a session killed before its first one) are redone.
                self.store.truncate_after(self.run_id, meta.step if meta else 0)
                self.store.truncate_energy_after(self.run_id, resume["job_seconds"] if resume else 0.0)
            except Exception as exc:
                raise self._failed(exc) from None
        idle_due = self.config.meter.idle_seconds > 0 and rank0_decides(self.ctx, lambda: not any(
            row["scope"] == "idle" for row in self.store.energy_measurements(self.run_id)))
        self.metering = RunMetering(self.config.meter, self.ctx, self.store, self.run_id, resume, idle_due,
                                    trackers=trackers, params=tracked_params(self.config, self.run_id, self.device,
                                                                             self.precision, self.experiment))
        loss_fn = summed_loss_fn(self.parallel, self.config.train.compile and not self.parallel.blocks_compiled)
        progress = TrainingProgress(self.run_id, self.config.train.tokens,
                                    meta.tokens_seen if meta else 0, enabled=self.show_progress,
                                    hooks=self.progress_hooks)
        if meta:
            progress.log(f"resuming at step {meta.step}, {meta.tokens_seen:,} tokens")
        for note in self.metering.notes:
            progress.log(note)
        try:
            self.metering.start()
            return self._loop(model, loss_fn, optimizer, meta, progress)
        except Diverged as exc:
            return self._finish_diverged(exc, progress)
        except KeyboardInterrupt:
            self.metering.abort("interrupted")
            if self.store is not None:
                self.store.finish_run(self.run_id, "interrupted", {"message": "interrupted; re-run to resume"})
            raise
        except Exception as exc:
            self.metering.abort("failed")
            error = self._failed(exc)
            if error is exc:
                raise
            raise error from None
        finally:
            progress.close()
            self.metering.close()
            if self.batches is not None:
                self.batches.close()

    def _failed(self, exc: Exception) -> Exception:
        """Mark the run failed (unless its store is gone) and return the error to raise: a one-line
        WattscaleError for a run folder that cannot be written or a store file that vanished, else `exc`."""
        if isinstance(exc, StoreFileGone):
            path = self.store.file_path if self.store is not None else "its path"
            return StoreError(f"{exc}. The run's checkpoints are kept in {self.run_dir.resolve()}: put the "
                              f"database file back at {path} and re-run the same command to resume")
        error = folder_error(exc, self.run_dir.resolve()) if isinstance(exc, OSError) else None
        if self.store is not None:
            message = str(error) if error is not None else f"{type(exc).__name__}: {exc}"
            with suppress(StoreError):  # the failure comes first; a store that also fails cannot be told
                self.store.finish_run(self.run_id, "failed", {"message": message})
        return error if error is not None else exc

    def _end_failed(self, existing: dict | None, message: str) -> None:
        """Record a failure found before the run was marked running (a stale 'running' from a killed process)."""
        if self.store is None or existing is None:
            return
        with suppress(StoreError):
            if existing["status"] in ("running", "interrupted", "pending"):
                self.store.finish_run(self.run_id, "failed", {"message": message})
            elif existing["status"] == "failed":
                self.store.update_run(self.run_id, message=message)

    def _record_start(self, existing: dict | None, resumed: bool) -> dict:
        """Create the run's record (or mark it running again); return the resolved config to save."""
        counts = count_parameters(self.config.model)
        now = datetime.now(UTC)
        resolved = self.config.to_dict()
        resolved["data_fingerprint"] = self.data.cache_key
        resolved["resolved"] = {"device": str(self.device), "precision": self.precision,
                                "world_size": self.ctx.world_size, "eval_interval_tokens": self.eval_interval,
                                "checkpoint_interval_tokens": self.checkpoint_interval,
                                "total_steps": self.plan.total_steps, "warmup_steps": self.warmup_steps,
                                **self.parallel.record}
        config_json = json.dumps(resolved, sort_keys=True)
        # Where the run's folder is does not change what it computes: two processes that train the same
        # settings under different run roots agree on the hash (see config_hash_for).
        record = {
            "run_id": self.run_id, "kind": "train", "experiment": self.experiment, "name": self.config.train.name,
            "preset": self.config.model.name, "status": "running", "config_json": config_json,
            "config_hash": config_hash_for(resolved), "seed": self.config.train.seed,
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
            # MFU divides by the peak of every device the run uses.
            record["device_info_json"] = json.dumps({
                **device_info(self.device), "world_size": self.ctx.world_size, "matmul": self.matmul,
                "determinism": determinism_record(self.config.train.deterministic, self.device.type),
                **run_peak_flops(self.device, self.precision, devices_used=self.ctx.world_size)})
            if self.store.create_run(record, only_new=True) is not None:
                # Another process claimed the run under another run root since this one looked.
                other = (self.store.get_run(self.run_id) or {}).get("run_dir")
                raise WattscaleError(f"run {self.run_id} is being trained by another process (in {other}); "
                                     "wait for it or stop it first")
        else:
            self.store.mark_running(self.run_id, now, resumed=resumed)
        return resolved

    def _write_run_files(self, resolved: dict) -> None:
        # The tokenizer travels with the run so that export-hf needs nothing else.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "tokenizer.json").write_bytes(Path(self.data.tokenizer_path).read_bytes())
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))

    def _loop(self, model: Llama, loss_fn: LossFn, optimizer: torch.optim.Optimizer,
              meta: CheckpointMeta | None, progress: TrainingProgress) -> TrainResult:
        tc, plan, metering = self.config.train, self.plan, self.metering
        pos = LoopPosition(meta.step, meta.tokens_seen, meta.sequences_consumed, meta.loss_ema,
                           meta.best_loss_ema) if meta else LoopPosition()
        next_eval = next_boundary(pos.tokens_seen, self.eval_interval)
        next_ckpt = next_boundary(pos.tokens_seen, self.checkpoint_interval)
        # Made one step ahead from pinned memory on CUDA; as before on a CPU.
        self.batches = batches = BatchPrefetcher.for_device(plan, self._rank_batch, self.device)

        def one_step(first: int, n_seq: int, n_tok: int) -> tuple[torch.Tensor, torch.Tensor]:
            inputs, targets = batches.batch(pos.step, first)
            return self._optimizer_step(loss_fn, model, optimizer, inputs, targets, n_tok)

        loop = StepLoop(plan, tc.lr, tc.schedule, self.warmup_steps, tc.min_lr_ratio, tc.decay_fraction,
                        tc.divergence_factor, optimizer, one_step, log_interval_steps=tc.log_interval_steps,
                        device=self.device)
        start_tokens, start = pos.tokens_seen, metering.job_seconds()

        def on_step(n_tok: int, loss: float | None) -> None:
            metering.step(n_tok)
            rate = (pos.tokens_seen - start_tokens) / max(1e-9, metering.job_seconds() - start)
            if loss is not None:
                progress.update(pos.tokens_seen, loss, rate)

        if tc.eval_at_start and pos.step == 0:
            self._evaluate(model, pos, progress)
        last_eval_tokens = -1
        shapes_due = tc.compile
        while pos.step < plan.total_steps:
            try:
                with metering.phase("train"):
                    if shapes_due:  # in the warm-up phase: before the session's first step is counted
                        compile_shapes(loss_fn, model, self._layouts(pos.step), self.config.seq_len, self.device,
                                       self.autocast_dtype)
                        shapes_due = False
                    loop.run_until(pos, min(next_eval, next_ckpt), metering.job_seconds, on_step)
            finally:  # a diverged run keeps its steps up to the divergence
                self._flush(pos.pending_rows)
            if pos.tokens_seen >= next_eval or pos.step == plan.total_steps:
                evaluation = self._evaluate(model, pos, progress)
                metering.close_interval(pos.tokens_seen, {"val_loss": evaluation.val_loss,
                                                          "val_ppl": evaluation.val_ppl})
                last_eval_tokens = pos.tokens_seen
                next_eval = next_boundary(pos.tokens_seen, self.eval_interval)
            if pos.tokens_seen >= next_ckpt and pos.step < plan.total_steps:
                self._checkpoint(model, optimizer, pos)
                next_ckpt = next_boundary(pos.tokens_seen, self.checkpoint_interval)
        assert last_eval_tokens == pos.tokens_seen == tc.tokens, "the loop must end on the exact budget"
        return self._finish(model, pos)

    def _rank_batch(self, first_sequence: int, n_seq: int, n_tok: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the step of `n_seq` sequences from `first_sequence`: its contiguous share,
        masked past the budget, padded for lockstep; int64 [rows, T] each, on the host.
        """
        ctx, seq_len = self.ctx, self.config.seq_len
        start, stop = rank_rows(n_seq, ctx.rank, ctx.world_size)
        inputs, targets = sequence_batch(self.train_shard, seq_len, self.config.train.seed,
                                         first_sequence + start, stop - start)  # [rows, T] each
        # The budget masks the step's tokens in row-major order, so a share counts what its rows hold of
        # the first n_tok; every rank divides by the whole step's n_tok.
        targets = mask_targets(targets, max(0, n_tok - start * seq_len))
        return pad_rows(inputs, targets, lockstep_rows(n_seq, ctx.world_size, self.micro_batch))

    def _optimizer_step(self, loss_fn: LossFn, model: Llama, optimizer: torch.optim.Optimizer,
                        inputs: torch.Tensor, targets: torch.Tensor, n_tok: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step on this rank's rows of a step (`_rank_batch`); returns the global loss and the
        gradient norm as device tensors (no host sync). Together the ranks' rows are the whole step.
        """
        loss, grad_norm = training_step(loss_fn, model, optimizer, inputs, targets, n_tok, self.micro_batch,
                                        self.device, self.autocast_dtype, self.config.train.grad_clip,
                                        defer_sync=self.parallel.defer_sync, grad_scale=self.parallel.grad_scale)
        return sum_over_ranks(self.ctx, loss), grad_norm

    def _layouts(self, first_step: int) -> list[list[int]]:
        """This rank's micro-batch row counts of the session's first step and of the plan's last step (when that
        is shorter): every shape a compiled loss meets in the session. Every rank gets as many micro-batches."""
        ctx, plan = self.ctx, self.plan
        last = plan.total_steps - 1
        steps = [first_step] + ([last] if plan.sequences_in_step(last) != plan.sequences_in_step(first_step) else [])
        layouts = []
        for step in steps:
            n_seq = plan.sequences_in_step(step)
            start, stop = rank_rows(n_seq, ctx.rank, ctx.world_size)
            rows = max(stop - start, lockstep_rows(n_seq, ctx.world_size, self.micro_batch))  # as pad_rows pads
            layouts.append(micro_batch_rows(rows, self.micro_batch))
        return layouts

    def _evaluate(self, model: Llama, pos: LoopPosition, progress: TrainingProgress) -> Evaluation:
        with self.metering.phase("eval"):
            # Each rank evaluates its share of the windows; the others' time here is eval too.
            result = evaluate_on_ranks(self.ctx, model, self.val_windows, self.micro_batch, self.autocast_dtype)
        if self.store is not None:
            self.store.add_evaluation(self.run_id, {"step": pos.step, "tokens_seen": pos.tokens_seen,
                                                    "val_loss": result.val_loss, "val_ppl": result.val_ppl,
                                                    "wall_seconds": self.metering.job_seconds()})
        progress.log(f"eval at {pos.tokens_seen:,} tokens: val_loss {result.val_loss:.4f}  "
                     f"val_ppl {result.val_ppl:.2f}")
        self._last_eval = result
        return result

    def _checkpoint(self, model: Llama, optimizer: torch.optim.Optimizer, pos: LoopPosition) -> None:
        """Write a checkpoint (its own phase); the measurement up to its end goes beside it. Collective."""
        with self.metering.phase("checkpoint"):
            meta = CheckpointMeta(pos.step, pos.tokens_seen, pos.sequences, self.metering.job_seconds(),
                                  pos.best_loss_ema, pos.loss_ema, self.metering.state())
            save_run_checkpoint(self.ctx, self.run_dir, model, optimizer, meta)
            # The state in meta.json predates the write; this one includes it (resume prefers it).
            after = self.metering.state()
            if self.ctx.is_main:
                write_energy_state(self.run_dir, pos.step, after)
        self.metering.flush_samples()
        if self.store is not None:
            self.store.update_run(self.run_id, tokens_seen=pos.tokens_seen, steps=pos.step,
                                  wall_seconds=self.metering.job_seconds())

    def _flush(self, rows: list[dict]) -> None:
        if rows and self.store is not None:
            self.store.add_train_steps(self.run_id, list(rows))
        rows.clear()

    def _finish(self, model: Llama, pos: LoopPosition) -> TrainResult:
        with self.metering.phase("save"):
            weights = full_weights(self.ctx, model)
            if self.store is not None:
                write_weights(self.run_dir / "final" / "model.safetensors", weights)
                (self.run_dir / "final" / "model_config.json").write_text(json.dumps(self.config.model.to_dict()))
        last = self._last_eval
        assert last is not None
        energy = self.metering.finish(pos.tokens_seen)
        wall = self.metering.job_seconds()
        result = None
        if self.store is not None:
            self.store.finish_run(self.run_id, "finished", {
                "tokens_seen": pos.tokens_seen, "steps": pos.step, "wall_seconds": wall,
                "finished_at": datetime.now(UTC), "final_val_loss": last.val_loss,
                "final_val_ppl": last.val_ppl, **energy})
            result = _result_from_record(self.store.get_run(self.run_id), self.run_dir, already_done=False)
        return broadcast_object(self.ctx, result)

    def _finish_diverged(self, exc: Diverged, progress: TrainingProgress) -> TrainResult:
        progress.log(f"diverged: {exc.reason}")
        energy = self.metering.finish(exc.tokens_seen, "diverged")
        result = None
        if self.store is not None:
            message = "; ".join(m for m in (exc.reason, energy.pop("message", None)) if m)
            self.store.finish_run(self.run_id, "diverged", {
                "finished_at": datetime.now(UTC), "message": message, "tokens_seen": exc.tokens_seen,
                "steps": exc.step, "wall_seconds": self.metering.job_seconds(), **energy})
            result = _result_from_record(self.store.get_run(self.run_id), self.run_dir, already_done=False)
        return broadcast_object(self.ctx, result)


def _token_interval(setting: int | None, default: int | None) -> int | None:
    """An interval setting in tokens: unset takes `default`, 0 means none (None)."""
    return (default if setting is None else setting) or None


def _resume_state(run_dir: Path, meta: CheckpointMeta | None) -> dict | None:
    """The measurement to continue: the state saved after the checkpoint's write, else the one in its meta.

    A checkpoint written by a wattscale before the Monitor (no ledger) continues the run's time only.
    """
    if meta is None:
        return None
    state = read_energy_state(run_dir, meta.step) or meta.energy
    if not state or "ledger" not in state:
        return {"version": 1, "job_seconds": meta.wall_seconds, "tokens": meta.tokens_seen, "ledger": {},
                "windows": {}}
    return state


def _result_from_record(record: dict, run_dir: Path, already_done: bool) -> TrainResult:
    return TrainResult(record["run_id"], record["status"], record["tokens_seen"] or 0, record["steps"] or 0,
                       record["wall_seconds"] or 0.0, record["final_val_loss"], record["final_val_ppl"],
                       run_dir, resumed=(record.get("resume_count") or 0) > 0, already_done=already_done,
                       message=record.get("message"), energy_j=record.get("energy_j"),
                       energy_source=record.get("energy_source"), train_energy_j=record.get("train_energy_j"),
                       train_seconds=record.get("train_seconds"))


def config_hash_for(resolved: dict) -> str:
    """The runs.config_hash of a resolved config: sha256 of its JSON without train.run_root, train.track
    (locations) and train.log_interval_steps (how often the loss is read), and without settings added later
    while they hold the value that reproduces the runs stored before them (train.deterministic = false).

    Runs stored before this rule keep the hash they were stored with: a resume never compares it.
    """
    located = {**resolved, "train": {k: v for k, v in resolved["train"].items()
                                     if k not in _NOT_HASHED and _ADDED_LATER.get(k, _KEEP) != v}}
    return hashlib.sha256(json.dumps(located, sort_keys=True).encode()).hexdigest()


_NOT_HASHED = ("run_root", "track", "log_interval_steps")
_ADDED_LATER = {"deterministic": False}  # setting: the value every run stored before it had
_KEEP = object()

"""A run's checkpoints on any number of ranks: which format each parallel mode writes, and resuming from either.

- One process and DDP: rank 0 writes the single-process checkpoint (`wattscale.train.checkpoints`), the one
  replica's weights and the optimiser state keyed by parameter index.
- FSDP: every rank writes its own shards of the model and optimiser state with `torch.distributed.checkpoint`
  (DCP) into the checkpoint's `sharded/` folder (`dcp.save` of `get_state_dict(model, optimizer)`); nothing
  is gathered. Rank 0 then writes trainer_state.pt (the RNG states) and meta.json, last, and renames the
  folder into place, so a checkpoint interrupted anywhere is never listed. The ranks must share the run
  folder's filesystem (one machine always does).

Either format resumes a run with any number of processes and either parallel mode: DCP reshards on load
(one process loads a sharded checkpoint whole), and a single-process checkpoint is broadcast from rank 0 into
FSDP's shards. A checkpoint that cannot be read is skipped for the one before it, as `checkpoints.load_newest`
does; for a sharded one every rank tries to load it and they agree on whether it loaded.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from wattscale.errors import WattscaleError
from wattscale.train.checkpoints import (
    SHARDED_DIR,
    CheckpointMeta,
    ResumePoint,
    UnreadableCheckpoint,
    commit_checkpoint,
    is_sharded,
    load_checkpoint,
    load_newest,
    new_checkpoint_dir,
    read_checkpoint,
    read_checkpoint_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_checkpoint,
)
from wattscale.train.parallel import DistributedContext, broadcast_object, rank0_decides


def save_run_checkpoint(ctx: DistributedContext, run_dir: Path, model: nn.Module,
                        optimizer: torch.optim.Optimizer, meta: CheckpointMeta) -> None:
    """Write checkpoint `meta.step` of the run: sharded by every rank under FSDP, else by rank 0. Collective.

    Without FSDP the optimiser state is keyed by parameter index as `optimizer.state_dict()` is, so
    checkpoints of 1- and N-process DDP runs are the same files.
    """
    if _is_fsdp(model):
        _save_sharded(ctx, run_dir, model, optimizer, meta)
    elif ctx.world_size == 1:
        save_checkpoint(run_dir, model, optimizer, meta)
    else:  # DDP: every rank holds the same replica and optimiser state; rank 0 writes its own, the others wait
        rank0_decides(ctx, lambda: write_checkpoint(run_dir, model.state_dict(), optimizer.state_dict(), meta))


def _save_sharded(ctx: DistributedContext, run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                  meta: CheckpointMeta) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = rank0_decides(ctx, lambda: new_checkpoint_dir(run_dir, meta.step))
    model_state, optimizer_state = get_state_dict(model, optimizer)  # this rank's shards, named as in one process
    try:
        # The writer fsyncs every file; a failure on any rank raises on every rank (DCP gathers the errors).
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / SHARDED_DIR)
    except BaseException:
        if ctx.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Every rank's shards are written: rank 0 makes the checkpoint complete (trainer state, meta.json, rename).
    rank0_decides(ctx, lambda: commit_checkpoint(run_dir, tmp, {"rng": rng_state()}, meta))


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


# --- resuming ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Try:
    """Rank 0 to the others: load the sharded checkpoint at `path` together."""

    path: Path


@dataclass(frozen=True)
class _Found:
    """Rank 0 to the others: the search is over. `full` is set when the checkpoint found is a single-process one,
    whose state rank 0 now broadcasts; `rng` is the RNG state to restore on every rank."""

    resume: ResumePoint
    rng: dict | None
    full: bool


@dataclass(frozen=True)
class _Stopped:
    message: str


def load_newest_checkpoint(ctx: DistributedContext, run_dir: Path, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> ResumePoint:
    """Load the run's newest readable checkpoint, of either format, into model and optimiser on every rank.

    `ResumePoint.meta` is None if the run has none. Checkpoints that cannot be read are skipped for the one
    before, as `checkpoints.load_newest` does (a warning on rank 0). Rank 0 lists and reads the files of a
    single-process checkpoint and broadcasts its state, so the other ranks need no access to the run folder
    for those; a sharded one is read by every rank. Collective.
    """
    if ctx.world_size == 1:
        return load_newest(run_dir, lambda path: _load_one_process(path, model, optimizer))
    if not ctx.is_main:
        return _follow(ctx, model, optimizer)
    found: list[tuple[dict, dict | None, dict]] = []  # a single-process checkpoint read: weights, optimiser, rng
    rng: list[dict] = []

    def load(path: Path) -> CheckpointMeta:
        if not is_sharded(path):
            weights, state, meta = read_checkpoint(path)
            found.append((weights, state["optimizer"], state["rng"]))
            return meta
        state, meta = read_checkpoint_state(path)  # before the others are asked: a bad meta.json needs no one
        broadcast_object(ctx, _Try(path))
        _load_sharded_together(ctx, path, model, optimizer)
        rng.append(state["rng"])
        return meta

    try:
        resume = load_newest(run_dir, load)
    except BaseException as exc:
        broadcast_object(ctx, _Stopped(f"{type(exc).__name__}: {exc}"))
        raise
    full = found[0] if found else None
    restored = full[2] if full else (rng[0] if rng else None)
    broadcast_object(ctx, _Found(resume, restored, full is not None))
    return _finish_resume(ctx, resume, model, optimizer, full, restored)


def _follow(ctx: DistributedContext, model: nn.Module, optimizer: torch.optim.Optimizer) -> ResumePoint:
    """A rank but 0 during `load_newest_checkpoint`: load each sharded checkpoint rank 0 names, until it is done."""
    while True:
        message = broadcast_object(ctx, None)
        if isinstance(message, _Try):
            try:
                _load_sharded_together(ctx, message.path, model, optimizer)
            except UnreadableCheckpoint:
                pass  # rank 0 raised the same and goes on to the checkpoint before
        elif isinstance(message, _Stopped):
            raise WattscaleError(f"stopped because rank 0 failed: {message.message}")
        else:
            assert isinstance(message, _Found)
            return _finish_resume(ctx, message.resume, model, optimizer, ({}, None, {}) if message.full else None,
                                  message.rng)


def _finish_resume(ctx: DistributedContext, resume: ResumePoint, model: nn.Module, optimizer: torch.optim.Optimizer,
                   full: tuple[dict, dict | None, dict] | None, rng: dict | None) -> ResumePoint:
    """Broadcast a single-process checkpoint's state from rank 0 (`full`: its weights and optimiser state there,
    empty elsewhere) into every rank's model and optimiser; restore the RNG states."""
    if resume.meta is None:
        return resume
    if full is not None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        weights, optimizer_state, _ = full
        if optimizer_state:  # rank 0: from parameter indices (the file's layout) to names (what DCP expects)
            optimizer_state = _rekeyed(optimizer_state, dict(enumerate(_param_names(model, optimizer))))
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, dict(weights), options=options)  # a copy: DCP replaces the values in place
        set_optimizer_state_dict(model, optimizer, optimizer_state or {}, options=options)
    if rng is not None:
        set_rng_state(rng)
    return resume


def _load_one_process(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> CheckpointMeta:
    if not is_sharded(path):
        return load_checkpoint(path, model, optimizer)
    state, meta = read_checkpoint_state(path)
    _load_sharded(path, model, optimizer)
    set_rng_state(state["rng"])
    return meta


def _load_sharded_together(ctx: DistributedContext, path: Path, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> None:
    """Every rank loads its part of sharded checkpoint `path`; UnreadableCheckpoint on every rank if any failed."""
    reason = None
    try:
        _load_sharded(path, model, optimizer)
    except UnreadableCheckpoint as exc:
        reason = exc.reason
    reasons = [None] * ctx.world_size
    dist.all_gather_object(reasons, reason)  # the ranks agree: a file only one rank reads may be the bad one
    failed = [why for why in reasons if why is not None]
    if failed:  # DCP passes every rank's read errors to every rank: the first one's reason stands for all
        raise UnreadableCheckpoint(path, failed[0])


def _load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the sharded model and optimiser state at `path` (any number of ranks: DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        with warnings.catch_warnings():  # one process: DCP warns that it loads without a process group, as meant
            warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
            dcp.load(state, checkpoint_id=path / SHARDED_DIR)  # into the tensors of `state`, in place
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, CheckpointException) as exc:
        raise UnreadableCheckpoint(path, f"{SHARDED_DIR}: {_load_error(exc)}") from None


def _load_error(exc: BaseException, max_chars: int = 200) -> str:
    """A load failure in one short line; DCP's CheckpointException, which quotes every rank's traceback, as the
    ranks that failed and the first one's error."""
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        ranks = sorted(failures)
        first = failures[ranks[0]]
        first = first[0] if isinstance(first, tuple) else first
        prefix = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: "
        return prefix + _load_error(first, max_chars - len(prefix))
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


def _rekeyed(optimizer_state: dict, keys: dict) -> dict:
    """An optimiser state dict with its parameter keys mapped through `keys` (index -> name or back)."""
    return {"state": {keys[k]: v for k, v in optimizer_state["state"].items()},
            "param_groups": [{**g, "params": [keys[k] for k in g["params"]]} for g in optimizer_state["param_groups"]]}


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's index order (a tied weight under its first name)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


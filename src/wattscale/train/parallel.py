"""One run on several devices: torchrun processes, DDP or FSDP2, and what rank 0 does for the others.

The trainer knows about ranks only through this module. The global batch keeps its meaning
(`batch_size` sequences per optimiser step); each step's sequences are cut into contiguous slices,
one per rank, so the union over ranks is the single-process batch. Gradients come out summed over
ranks, every rank divides by the step's global count of tokens, and the update equals the
single-process one up to float summation order.

Only rank 0 touches the store and the run folder; it decides (run id, resume point, "already
finished") and broadcasts. Energy is measured by every rank on its own devices and gathered to rank 0
(`wattscale.train.metering`, `wattscale.energy.ranks`).
"""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from wattscale.budget import IGNORE_INDEX
from wattscale.errors import ConfigError, WattscaleError
from wattscale.hardware import resolve_device
from wattscale.model import Llama
from wattscale.train.checkpoints import (
    CheckpointMeta,
    ResumePoint,
    load_checkpoint,
    load_newest,
    read_checkpoint,
    save_checkpoint,
    set_rng_state,
    write_checkpoint,
)

T = TypeVar("T")


def ddp_no_buffer_sync(ddp_class: type | None = None) -> dict[str, bool]:
    """DDP's keyword for "do not re-broadcast buffers before each forward", as this torch spells it.

    torch 2.13 calls it forward_sync_buffers and deprecates broadcast_buffers (FutureWarning); torch 2.12
    and older (the GPU image's 2.11) have only broadcast_buffers, whose False also skips the buffers' sync
    at construction. Harmless here: every rank derives the RoPE tables from the same config.
    """
    parameters = inspect.signature(ddp_class or nn.parallel.DistributedDataParallel).parameters
    name = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return {name: False}


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the job (torchrun's RANK, LOCAL_RANK, WORLD_SIZE) and its device."""

    rank: int
    local_rank: int
    world_size: int
    backend: str | None  # "gloo" (CPU), "nccl" (CUDA); None in a single process
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the store and the run folder."""
        return self.rank == 0


def init_distributed(device_setting: str) -> DistributedContext:
    """The context of this process; joins the process group when torchrun started several.

    One process (no WORLD_SIZE, or 1): `device_setting` as usual. Several: gloo on CPU; on CUDA,
    nccl with rank r on `cuda:LOCAL_RANK` (so `cuda:N` is refused). The process group is created
    once and kept until the process exits: one destroyed cannot be created again (a second `train`
    in the same process would hang), and a group the caller made is simply used.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(0, 0, 1, None, resolve_device(device_setting))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_setting.startswith("cuda:"):
        raise ConfigError(f"train.device: {device_setting!r} with {world_size} processes; each rank uses "
                          "cuda:LOCAL_RANK, so pass --device cuda (or auto)")
    device = resolve_device(device_setting)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_group)
    return DistributedContext(rank, local_rank, world_size, dist.get_backend(), device)


def shutdown(ctx: DistributedContext) -> None:
    """End a run's use of the process group (which stays for the next run; it goes at exit)."""
    if ctx.world_size > 1:
        # FSDP2's modules hold the group's work in reference cycles; freed only during interpreter
        # teardown they abort about one exit in three (std::terminate on a joinable thread; gloo, torch 2.13).
        gc.collect()


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# --- collectives (no-ops in a single process) --------------------------------------------------------


def all_reduce_sum(ctx: DistributedContext, value: float) -> float:
    """`value` summed over ranks (float64, so the sum does not depend on the device's float width)."""
    if ctx.world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(total)
    return float(total.item())


def sum_over_ranks(ctx: DistributedContext, value: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor summed over ranks, on the device, without a host sync (float64, as `all_reduce_sum`)."""
    if ctx.world_size == 1:
        return value
    total = value.detach().to(torch.float64).reshape(1)
    dist.all_reduce(total)
    return total[0]


def broadcast_object(ctx: DistributedContext, obj: T) -> T:
    """Rank 0's `obj` (any picklable object) on every rank."""
    if ctx.world_size == 1:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(ctx: DistributedContext, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on rank 0; an empty list on the other ranks."""
    if ctx.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out or []


def gather_lists(ctx: DistributedContext, items: list[T]) -> list[T]:
    """Every rank's `items` concatenated in rank order on rank 0; an empty list on the other ranks."""
    return [item for part in gather_objects(ctx, items) for item in part]


class _Failed(NamedTuple):
    message: str


def rank0_decides(ctx: DistributedContext, decide: Callable[[], T]) -> T:
    """Run `decide` on rank 0 only and return its result on every rank.

    If it raises, rank 0 re-raises and the other ranks raise a WattscaleError quoting it, instead
    of waiting forever for a broadcast that will not come.
    """
    if ctx.world_size == 1:
        return decide()
    if ctx.is_main:
        try:
            value = decide()
        except BaseException as exc:
            broadcast_object(ctx, _Failed(f"{type(exc).__name__}: {exc}"))
            raise
        return broadcast_object(ctx, value)
    value = broadcast_object(ctx, None)
    if isinstance(value, _Failed):
        raise WattscaleError(f"stopped because rank 0 failed: {value.message}")
    return value


def rank0_first(ctx: DistributedContext, fn: Callable[[], T]) -> T:
    """`fn()` on every rank, rank 0 first (a cache it fills is built once); if it fails there, every rank stops."""
    results: list[T] = []
    rank0_decides(ctx, lambda: results.append(fn()))
    return results[0] if ctx.is_main else fn()


# --- the batch of one rank ---------------------------------------------------------------------------


def rank_rows(n_sequences: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of rank's contiguous share of a step's sequences; the first n % W ranks get one more."""
    base, extra = divmod(n_sequences, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def lockstep_rows(n_sequences: int, world_size: int, micro_batch: int) -> int:
    """The fewest rows a rank must feed so that every rank runs the same number of micro-batches.

    FSDP all-gathers in every forward and DDP all-reduces in the last backward, so a rank with a
    shorter share (or none, in a tiny last step) pads with fully masked rows that count for nothing.
    """
    most = -(-n_sequences // world_size)
    micro_batches = max(1, -(-most // micro_batch))
    return (micro_batches - 1) * micro_batch + 1


def pad_rows(inputs: torch.Tensor, targets: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Append fully masked sequences (token 0, every target ignored) up to `rows` rows; [rows, T] each."""
    missing = rows - inputs.shape[0]
    if missing <= 0:
        return inputs, targets
    seq_len = inputs.shape[1]
    return (torch.cat([inputs, inputs.new_zeros(missing, seq_len)]),
            torch.cat([targets, targets.new_full((missing, seq_len), IGNORE_INDEX)]))


# --- the model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelModel:
    """How the trainer calls a model whose gradients are reduced over ranks."""

    loss: Callable[..., torch.Tensor]  # Llama.loss's signature; through DDP's forward under DDP
    defer_sync: Callable[[], AbstractContextManager]  # around every micro-batch but the last: no reduction yet
    grad_scale: float  # DDP and FSDP average over ranks; scaling each rank's loss by W makes that a sum


class _LossModule(nn.Module):
    """Llama.loss as a forward: DDP arms its gradient all-reduce in forward, which model.loss would bypass."""

    def __init__(self, model: Llama) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model.loss(inputs, targets, **kwargs)


def wrap_model(model: Llama, ctx: DistributedContext, parallel: str) -> ParallelModel:
    """Spread `model` over the ranks; build the optimiser after this call (FSDP swaps the parameters).

    "ddp": replicas, gradients all-reduced. "fsdp": FSDP2 `fully_shard` per transformer block, then
    the root; parameters, gradients and optimiser state are sharded, so models too big for one
    device fit. One process: the model as it is.
    """
    if ctx.world_size == 1:
        return ParallelModel(model.loss, nullcontext, 1.0)
    if parallel == "ddp":
        # The RoPE tables are the only buffers and are derived from the config: no need to sync them per step.
        ddp = nn.parallel.DistributedDataParallel(
            _LossModule(model), device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            **ddp_no_buffer_sync())
        return ParallelModel(ddp, ddp.no_sync, float(ctx.world_size))
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    # An explicit mesh: without one FSDP2 picks CUDA whenever a GPU exists, even for a gloo CPU run.
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    register_fsdp_forward_method(model, "loss")  # FSDP's gather/free hooks run on forward() only
    return ParallelModel(model.loss, functools.partial(_fsdp_no_sync, model), float(ctx.world_size))


@contextmanager
def _fsdp_no_sync(model: nn.Module) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def reshard_after_eval(model: nn.Module) -> None:
    """Free FSDP's gathered root parameters after a no-grad forward (training's backward does it otherwise).

    Left gathered, `named_parameters()` would return them instead of the optimiser's sharded
    parameters, and the optimiser state dict could no longer name its tensors.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def load_newest_checkpoint(ctx: DistributedContext, run_dir: Path, model: nn.Module,
                           optimizer: torch.optim.Optimizer) -> ResumePoint:
    """Load the run's newest readable checkpoint into model and optimiser on every rank.

    `ResumePoint.meta` is None if the run has none. Checkpoints that cannot be read are skipped for the
    one before, as `checkpoint.load_newest` does (a warning on rank 0, the messages on every rank). With
    several ranks rank 0 reads the files and the state is broadcast from it, so the other ranks need no
    access to the run folder. Collective.
    """
    if ctx.world_size == 1:
        return load_newest(run_dir, lambda path: load_checkpoint(path, model, optimizer))
    files: list[tuple[dict, dict, dict]] = []  # rank 0: weights, optimiser and RNG states of the one read

    def read(path: Path) -> CheckpointMeta:
        weights, state, meta = read_checkpoint(path)
        files.append((weights, state["optimizer"], state["rng"]))
        return meta

    def newest() -> tuple[ResumePoint, dict | None]:
        resume = load_newest(run_dir, read)
        return resume, (files[0][2] if files else None)

    resume, rng = rank0_decides(ctx, newest)
    if resume.meta is None:
        return resume
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    weights, optimizer_state, _ = files[0] if files else ({}, {}, None)
    if optimizer_state:  # rank 0: from parameter indices (the file's layout) to names (what DCP expects)
        optimizer_state = _rekeyed(optimizer_state, dict(enumerate(_param_names(model, optimizer))))
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, dict(weights), options=options)  # a copy: DCP replaces the values in place
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
    set_rng_state(rng)
    return resume


def save_checkpoint_on_rank0(ctx: DistributedContext, run_dir: Path, model: nn.Module,
                             optimizer: torch.optim.Optimizer, meta: CheckpointMeta) -> None:
    """Rank 0 writes a checkpoint of the full model and optimiser, gathered from every rank. Collective.

    The optimiser state is keyed by parameter index as `optimizer.state_dict()` is, so checkpoints of
    1- and N-process runs are the same files and either can resume the other.
    """
    if ctx.world_size == 1:
        save_checkpoint(run_dir, model, optimizer, meta)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    weights = full_weights(ctx, model)
    state = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                  cpu_offload=True))
    if ctx.is_main:
        index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
        write_checkpoint(run_dir, weights, _rekeyed(state, index), meta)


def full_weights(ctx: DistributedContext, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0, named as in one process; {} on the other ranks. Collective."""
    if ctx.world_size == 1:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _rekeyed(optimizer_state: dict, keys: dict) -> dict:
    """An optimiser state dict with its parameter keys mapped through `keys` (index -> name or back)."""
    return {"state": {keys[k]: v for k, v in optimizer_state["state"].items()},
            "param_groups": [{**g, "params": [keys[k] for k in g["params"]]} for g in optimizer_state["param_groups"]]}


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's index order (a tied weight under its first name)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]

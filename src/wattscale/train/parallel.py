"""One run on several devices: torchrun processes, DDP or FSDP2, and what rank 0 does for the others.

The trainer knows about ranks only through this module. The global batch keeps its meaning
(`batch_size` sequences per optimiser step); each step's sequences are cut into contiguous slices,
one per rank, so the union over ranks is the single-process batch. Gradients come out summed over
ranks, every rank divides by the step's global count of tokens, and the update equals the
single-process one up to float summation order. Evaluation is split the same way (`evaluate_on_ranks`):
each validation window is evaluated once per job, not once per rank.

FSDP2 is set up as torchtitan does (`build_model`): built on the meta device, sharded per block then
the root, bf16 parameters with float32 gradient reduction for bf16 runs, per-block compile. Its
checkpoints are sharded (`wattscale.train.run_checkpoints`).

Only rank 0 touches the store and the run folder (but for FSDP's checkpoint shards); it decides (run
id, resume point, "already finished") and broadcasts. Energy is measured by every rank on its own
devices and gathered to rank 0 (`wattscale.train.metering`, `wattscale.energy.ranks`).
"""

from __future__ import annotations

import atexit
import functools
import gc
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from wattscale.budget import IGNORE_INDEX
from wattscale.errors import ConfigError, WattscaleError
from wattscale.evaluate import Evaluation, evaluation_from_sums, loss_and_tokens, window_pairs
from wattscale.hardware import resolve_device
from wattscale.model import Llama, ModelConfig, rope_tables

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


# --- evaluation ----------------------------------------------------------------------------------------


def evaluate_on_ranks(ctx: DistributedContext, model: nn.Module, windows: torch.Tensor, batch_size: int,
                      autocast_dtype: torch.dtype | None) -> Evaluation:
    """The validation loss over `windows`, each rank evaluating its contiguous share; the same on every rank.

    The summed loss and token count are all-reduced (float64), so the result is the single-process one up to
    float summation order, and the job evaluates each window once instead of once per rank. Under FSDP every
    rank must run the same forwards (they all-gather), so a shorter share is padded with rows that count
    nothing, as in training. One process: `evaluate` on all windows. Collective.
    """
    inputs, targets = window_pairs(windows)  # [n, T] each
    if ctx.world_size == 1:
        return evaluation_from_sums(loss_and_tokens(model, inputs, targets, batch_size, ctx.device, autocast_dtype))
    start, stop = rank_rows(windows.shape[0], ctx.rank, ctx.world_size)
    inputs, targets = pad_rows(inputs[start:stop], targets[start:stop],
                               lockstep_rows(windows.shape[0], ctx.world_size, batch_size))
    sums = loss_and_tokens(model, inputs, targets, batch_size, ctx.device, autocast_dtype)
    dist.all_reduce(sums)
    reshard_after_eval(model)
    return evaluation_from_sums(sums)


# --- the model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelModel:
    """How the trainer calls a model whose gradients are reduced over ranks."""

    loss: Callable[..., torch.Tensor]  # Llama.loss's signature; through DDP's forward under DDP
    defer_sync: Callable[[], AbstractContextManager]  # around every micro-batch but the last: no reduction yet
    grad_scale: float  # DDP and FSDP average over ranks; scaling each rank's loss by W makes that a sum
    # FSDP: each block's forward is torch.compile'd before sharding, so the trainer must not compile the loss
    blocks_compiled: bool = False
    # FSDP's MixedPrecisionPolicy casts the parameters (bf16 runs): no autocast on top of it
    casts_params: bool = False
    record: dict[str, Any] = field(default_factory=dict)  # FSDP's settings, for the run's resolved config


class _LossModule(nn.Module):
    """Llama.loss as a forward: DDP arms its gradient all-reduce in forward, which model.loss would bypass."""

    def __init__(self, model: Llama) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.model.loss(inputs, targets, **kwargs)


def build_model(config: ModelConfig, seed: int, ctx: DistributedContext, parallel: str, precision: str = "fp32",
                compile_model: bool = False) -> tuple[Llama, ParallelModel]:
    """The run's model on `ctx.device`, initialised from `seed` as one process would, and spread over the ranks.

    One process and DDP: built on the CPU under the seed, then moved. FSDP: built on the meta device, sharded
    (`fully_shard` per block, then the root), materialised with `to_empty` (each rank allocates its shard only)
    and filled from the single-process weights, which rank 0 builds on the CPU under the seed and broadcasts
    one tensor at a time (`set_model_state_dict(..., broadcast_from_rank0=True)`): so the weights equal those
    of one process and no rank holds the whole model on its device. Build the optimiser after this call.
    """
    if ctx.world_size == 1 or parallel == "ddp":
        torch.manual_seed(seed)
        model = Llama(config).to(ctx.device)
        return model, wrap_model(model, ctx, parallel)
    return _sharded_model(config, seed, ctx, precision, compile_model)


def wrap_model(model: Llama, ctx: DistributedContext, parallel: str) -> ParallelModel:
    """Spread a built `model` over the ranks: "ddp", replicas with gradients all-reduced; one process: as it is.

    FSDP builds its own (`build_model`): it shards before the weights exist.
    """
    if ctx.world_size == 1:
        return ParallelModel(model.loss, nullcontext, 1.0)
    if parallel != "ddp":
        raise ValueError(f"wrap_model: {parallel!r} models are made by build_model")
    # The RoPE tables are the only buffers and are derived from the config: no need to sync them per step.
    ddp = nn.parallel.DistributedDataParallel(
        _LossModule(model), device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
        **ddp_no_buffer_sync())
    return ParallelModel(ddp, ddp.no_sync, float(ctx.world_size))


def fsdp_precision_policy(precision: str) -> Any:
    """FSDP2's MixedPrecisionPolicy for a run's resolved precision: bf16 parameters for the all-gathers and the
    compute, gradients reduced in float32 (torchtitan's default); None (all float32) otherwise."""
    if precision != "bf16":
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


def _sharded_model(config: ModelConfig, seed: int, ctx: DistributedContext, precision: str,
                   compile_model: bool) -> tuple[Llama, ParallelModel]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    torch.manual_seed(seed)
    # Rank 0: the single-process weights, in host memory. Every rank: the generator's state after that build.
    full = Llama(config).state_dict() if ctx.is_main else {}
    torch.set_rng_state(broadcast_object(ctx, torch.get_rng_state()))
    with torch.device("meta"):
        model = Llama(config)
    # An explicit mesh: without one FSDP2 picks CUDA whenever a GPU exists, even for a gloo CPU run.
    policy = fsdp_precision_policy(precision)
    shard = functools.partial(fully_shard, mesh=init_device_mesh(ctx.device.type, (ctx.world_size,)),
                              **({"mp_policy": policy} if policy is not None else {}))
    for block in model.layers:
        if compile_model:
            # Each block's forward, before sharding: FSDP's gather/free hooks stay outside the compiled graphs
            # (torchtitan's per-block compile), and parameter names stay those of one process.
            block.forward = torch.compile(block.forward)
        shard(block)
    shard(model)
    register_fsdp_forward_method(model, "loss")  # FSDP's gather/free hooks run on forward() only
    model.to_empty(device=ctx.device)  # each rank's shards, uninitialised; the tied head stays tied
    with torch.no_grad():  # the RoPE tables are not in the state dict: derived from the config, as in Llama
        cos, sin = rope_tables(config.head_dim, config.context_length, config.rope_base)
        model.rope_cos.copy_(cos)
        model.rope_sin.copy_(sin)
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    record = {"fsdp": {"param_dtype": "bfloat16" if policy is not None else "float32", "reduce_dtype": "float32",
                       "compiled_blocks": compile_model, "checkpoints": "sharded (torch.distributed.checkpoint)"}}
    return model, ParallelModel(model.loss, functools.partial(_fsdp_no_sync, model), float(ctx.world_size),
                                blocks_compiled=compile_model, casts_params=policy is not None, record=record)


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


def full_weights(ctx: DistributedContext, model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0, named as in one process; {} on the other ranks. Collective."""
    if ctx.world_size == 1:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

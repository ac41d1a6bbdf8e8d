"""Which GPUs a process uses, as NVML UUIDs: NVML numbers GPUs by PCI order and ignores CUDA_VISIBLE_DEVICES.

A measurement must read only the GPUs its process uses; NVML sees every GPU of the host. The selection:

- ``"auto"``: under torchrun (``WORLD_SIZE`` > 1 and ``LOCAL_RANK`` set) the rank's own GPU, the
  ``LOCAL_RANK``-th visible one, as DDP and FSDP use them; otherwise every GPU visible to the process.
  Visible means ``CUDA_VISIBLE_DEVICES`` when it is set (indexes or ``GPU-`` UUIDs, which is also how Ray
  hands a task its GPUs), else all of them.
- a list of CUDA device indexes (``[0, 1]``, counted among the visible GPUs, as ``cuda:0`` is) and/or UUIDs
  (``"GPU-8f6c…"``, a unique prefix is enough);
- ``[]``: no GPU (a CPU run on a GPU host does not charge itself the GPUs' idle power).

Visible CUDA indexes are mapped to UUIDs through PyTorch when it has already initialised CUDA (exact);
otherwise through NVML's PCI order, which is CUDA's order when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` or the GPUs
are all of one model (CUDA's default puts the fastest first), and a note says when that assumption was made.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from wattscale.energy.meter import MeterError

GpuSelection = str | Sequence[int | str]


@dataclass(frozen=True)
class NvmlGpu:
    """One GPU as NVML sees it."""

    index: int  # NVML's (PCI order)
    uuid: str  # "GPU-..."
    name: str


@dataclass(frozen=True)
class GpuChoice:
    """The GPUs to measure, and notes on how they were chosen."""

    uuids: tuple[str, ...]
    notes: tuple[str, ...] = ()


def choose_gpus(selection: GpuSelection, gpus: Sequence[NvmlGpu], env: Mapping[str, str] | None = None,
                torch_uuids: Sequence[str] | None = None) -> GpuChoice:
    """Resolve a selection (see the module docstring) to NVML UUIDs.

    ``gpus`` are the host's GPUs from NVML; ``env`` defaults to os.environ; ``torch_uuids`` are the UUIDs of
    the visible CUDA devices in CUDA's order when PyTorch has initialised CUDA (see `torch_visible_uuids`).
    Raises MeterError naming the selection when it cannot be met.
    """
    env = os.environ if env is None else env
    visible, notes = _visible(gpus, env, torch_uuids)
    if isinstance(selection, str):
        if selection != "auto":
            raise MeterError(f"nvml: gpus={selection!r}: give 'auto', a list of CUDA indexes or GPU UUIDs, or []")
        local_rank = env.get("LOCAL_RANK")
        if int(env.get("WORLD_SIZE", "1") or 1) > 1 and local_rank is not None:
            rank = int(local_rank)
            if rank >= len(visible):
                raise MeterError(f"nvml: LOCAL_RANK {rank} but only {len(visible)} GPU(s) visible to this process")
            return GpuChoice((visible[rank],), (*notes, f"the GPU of local rank {rank}"))
        if len(visible) > 1 and "CUDA_VISIBLE_DEVICES" not in env:
            notes.append(f"measuring all {len(visible)} GPUs of the host; set CUDA_VISIBLE_DEVICES or "
                         "gpus=[...] to measure only the ones this process uses")
        return GpuChoice(tuple(visible), tuple(notes))
    chosen: list[str] = []
    for item in selection:
        uuid = _pick(item, visible, gpus)
        if uuid not in chosen:
            chosen.append(uuid)
    return GpuChoice(tuple(chosen), tuple(notes))


def _pick(item: int | str, visible: Sequence[str], gpus: Sequence[NvmlGpu]) -> str:
    if isinstance(item, int) and not isinstance(item, bool):
        if not 0 <= item < len(visible):
            raise MeterError(f"nvml: gpus: CUDA index {item} does not exist; {len(visible)} GPU(s) are visible "
                             "to this process (CUDA_VISIBLE_DEVICES renumbers them from 0)")
        return visible[item]
    if isinstance(item, str):
        return _by_uuid(item, gpus, "gpus")
    raise MeterError(f"nvml: gpus: {item!r} is neither a CUDA index nor a GPU UUID")


def _visible(gpus: Sequence[NvmlGpu], env: Mapping[str, str],
             torch_uuids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """UUIDs of the GPUs visible to the process, in CUDA's order, and notes."""
    if torch_uuids is not None:
        return [_by_uuid(u, gpus, "CUDA device") for u in torch_uuids], []
    raw = env.get("CUDA_VISIBLE_DEVICES")
    notes: list[str] = []
    by_pci = [g.uuid for g in sorted(gpus, key=lambda g: g.index)]
    same_model = len({g.name for g in gpus}) <= 1
    if raw is None:
        if not same_model and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            notes.append("CUDA indexes taken to be in PCI order (set CUDA_DEVICE_ORDER=PCI_BUS_ID to make it so)")
        return by_pci, notes
    visible: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            break
        if entry.startswith("MIG-"):
            raise MeterError(f"nvml: CUDA_VISIBLE_DEVICES names a MIG instance ({entry}); NVML has no energy "
                             "counter per MIG instance, so wattscale cannot measure it")
        if entry.lstrip("-").isdigit():
            index = int(entry)
            if not 0 <= index < len(by_pci):
                break  # CUDA stops enumerating at the first invalid entry
            if not same_model and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID" and not notes:
                notes.append("CUDA_VISIBLE_DEVICES indexes taken to be in PCI order (set "
                             "CUDA_DEVICE_ORDER=PCI_BUS_ID to make it so)")
            uuid = by_pci[index]
        else:
            try:
                uuid = _by_uuid(entry, gpus, "CUDA_VISIBLE_DEVICES")
            except MeterError:
                break  # as CUDA does with an unknown entry
        if uuid in visible:
            break  # a repeated device is invalid for CUDA too
        visible.append(uuid)
    return visible, notes


def _by_uuid(text: str, gpus: Sequence[NvmlGpu], where: str) -> str:
    wanted = _bare(text)
    matches = [g.uuid for g in gpus if _bare(g.uuid).startswith(wanted)] if wanted else []
    if len(matches) != 1:
        known = ", ".join(g.uuid for g in gpus) or "none"
        how = "matches several GPUs" if matches else "matches no GPU"
        raise MeterError(f"nvml: {where} {text!r} {how}; the host's GPUs: {known}")
    return matches[0]


def _bare(uuid: str) -> str:
    return uuid.strip().removeprefix("GPU-").lower()


def torch_visible_uuids() -> list[str] | None:
    """UUIDs of the visible CUDA devices when PyTorch has already initialised CUDA, else None.

    Never initialises CUDA itself (measuring must not create a CUDA context the user did not ask for).
    """
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def device_uuid(index: int) -> str:
    """The UUID of CUDA device `index` (for the trainer, which has initialised CUDA)."""
    import torch

    return str(torch.cuda.get_device_properties(index).uuid)

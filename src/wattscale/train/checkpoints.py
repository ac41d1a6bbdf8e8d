"""Checkpoints with exact resume, written atomically and loaded without unpickling.

Layout of one checkpoint directory `<run_dir>/checkpoints/step-00000123/`:
- `model.safetensors`: the model weights (safetensors: no code execution on load);
- `trainer_state.pt`: optimiser state and RNG states, read back with
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers;
- `meta.json`: step, tokens seen, sequences consumed, accumulated wall seconds. Written last:
  a directory without it is an interrupted write and is ignored.

A checkpoint is written into a temporary directory and renamed into place, so a process killed
at any moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from wattscale.errors import DataError

CHECKPOINT_DIR = "checkpoints"


@dataclass(frozen=True)
class CheckpointMeta:
    """Where training stood when a checkpoint was written."""

    step: int
    tokens_seen: int
    sequences_consumed: int
    wall_seconds: float
    best_loss_ema: float | None
    loss_ema: float | None
    energy: dict | None = None  # Monitor.state() of every rank, merged: the measurement up to this checkpoint


def rng_state() -> dict[str, object]:
    """Every RNG state that can influence training: torch (CPU and CUDA), NumPy, Python."""
    np_kind, np_keys, np_pos, np_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_meta": [str(np_kind), int(np_pos), int(np_gauss), float(np_cached)],
        "python": [int(py_version), list(py_state), py_gauss],
    }


def set_rng_state(state: dict[str, object]) -> None:
    """Restore the states captured by `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, pos, has_gauss, cached = state["numpy_meta"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    meta: CheckpointMeta, keep_last: int = 1) -> Path:
    """Write a checkpoint atomically and delete all but the newest `keep_last`."""
    return write_checkpoint(run_dir, model.state_dict(), optimizer.state_dict(), meta, keep_last)


def write_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict,
                     meta: CheckpointMeta, keep_last: int = 1) -> Path:
    """`save_checkpoint` from state dicts (e.g. gathered from the ranks of a sharded model)."""
    root = run_dir / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{meta.step:08d}"
    tmp = root / f".tmp-step-{meta.step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(_cpu_weights(weights), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    torch.save({"optimizer": optimizer_state, "rng": rng_state()}, tmp / "trainer_state.pt")
    _write_json_durably(tmp / "meta.json", asdict(meta))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> CheckpointMeta:
    """Load weights, optimiser and RNG states from `path` into the given objects."""
    weights, state, meta = read_checkpoint(path, _device_of(model))
    try:
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise _unloadable(path, exc) from None
    return meta


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict,
                                                                              CheckpointMeta]:
    """The weights, trainer state ({"optimizer", "rng"}) and meta of a checkpoint; DataError if unreadable."""
    try:
        weights = load_file(str(path / "model.safetensors"), device=str(device))
        state = torch.load(path / "trainer_state.pt", map_location=device, weights_only=True)
        meta = CheckpointMeta(**json.loads((path / "meta.json").read_text()))
    except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise _unloadable(path, exc) from None
    return weights, state, meta


def _unloadable(path: Path, exc: Exception) -> DataError:
    return DataError(f"checkpoint {str(path)!r} cannot be loaded ({exc}); delete it to restart "
                     "the run from its previous checkpoint")


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Write final model weights as safetensors (atomically)."""
    write_weights(path, model.state_dict())


def write_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """`save_weights` from a state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(_cpu_weights(weights), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def _cpu_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Tied weights share storage and safetensors refuses shared tensors: give each name its own copy.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in weights.items()}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _write_json_durably(path: Path, data: dict) -> None:
    with open(path, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ENERGY_STATE_FILE = "energy.json"


def write_energy_state(run_dir: Path, step: int, state: dict | None) -> None:
    """Save the measurement as it stood after checkpoint `step` was written (its write included), durably.

    meta.json carries the state from before the write; a resume prefers this one. A process killed
    between the two loses only the checkpoint write's energy.
    """
    if state is None:
        return
    folder = run_dir / CHECKPOINT_DIR / f"step-{step:08d}"
    tmp = folder / (ENERGY_STATE_FILE + ".tmp")
    _write_json_durably(tmp, state)
    os.replace(tmp, folder / ENERGY_STATE_FILE)
    _fsync_dir(folder)


def read_energy_state(run_dir: Path, step: int) -> dict | None:
    """The state saved by `write_energy_state` for checkpoint `step`, or None (missing or unreadable)."""
    path = run_dir / CHECKPOINT_DIR / f"step-{step:08d}" / ENERGY_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None

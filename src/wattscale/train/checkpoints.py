"""Checkpoints with exact resume, written atomically and durably, loaded without unpickling.

Layout of one checkpoint directory `<run_dir>/checkpoints/step-00000123/`:
- `model.safetensors`: the model weights (safetensors: no code execution on load);
- `trainer_state.pt`: optimiser state and RNG states, read back with
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers;
- `meta.json`: step, tokens seen, sequences consumed, accumulated wall seconds. Written last:
  a directory without it is an interrupted write and is ignored.

An FSDP run's checkpoint has `sharded/` (torch.distributed.checkpoint: one file per rank and a `.metadata`)
instead of model.safetensors, and only the RNG states in trainer_state.pt (`wattscale.train.run_checkpoints`).

A checkpoint is written into a temporary directory `.tmp-step-N`; every file in it and the directory
itself are fsynced, then it is renamed into place and the parent directory is fsynced. So a process
killed, or a machine losing power, at any moment leaves the previous checkpoint or the new one
complete on disk, never half of one. The final weights are written the same way.

The newest two checkpoints are kept. A run resumes from the newest one that loads (`load_newest`):
one that cannot be read (a truncated file, a bad meta.json) is skipped with a `CheckpointWarning`
for the one before it, and moved to `corrupt-step-N` beside them, kept for inspection but never
listed, loaded or counted again.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from wattscale.errors import DataError

CHECKPOINT_DIR = "checkpoints"
SHARDED_DIR = "sharded"  # an FSDP checkpoint's torch.distributed.checkpoint folder: one file per rank
KEEP_LAST = 2  # two, so that a newest checkpoint that cannot be read still leaves one to resume from
# What reading a damaged file raises: safetensors its own SafetensorError; torch.load an EOFError (empty
# file), an OSError or RuntimeError (cut zip), an UnpicklingError; json a ValueError; a bad meta a TypeError.
_READ_ERRORS = (OSError, EOFError, RuntimeError, KeyError, TypeError, ValueError, SafetensorError,
                pickle.UnpicklingError)


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


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run resumes from, and the newer ones skipped because they could not be loaded."""

    meta: CheckpointMeta | None  # None: the run has no checkpoint and starts at step 0
    path: Path | None  # the checkpoint loaded
    skipped: tuple[str, ...] = ()  # one line per skipped checkpoint, newest first: which, why, where it went


class CheckpointWarning(UserWarning):
    """A checkpoint could not be loaded and the run resumes from an older one."""


class UnreadableCheckpoint(DataError):
    """A checkpoint whose files cannot be read, or do not fit the model and optimiser."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint {str(path)!r} cannot be loaded ({reason})")
        self.path, self.reason = path, reason


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
                    meta: CheckpointMeta, keep_last: int = KEEP_LAST) -> Path:
    """Write a checkpoint atomically and durably, then delete all but the newest `keep_last`."""
    return write_checkpoint(run_dir, model.state_dict(), optimizer.state_dict(), meta, keep_last)


def write_checkpoint(run_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict,
                     meta: CheckpointMeta, keep_last: int = KEEP_LAST) -> Path:
    """`save_checkpoint` from state dicts (e.g. gathered from the ranks of a sharded model)."""
    tmp = new_checkpoint_dir(run_dir, meta.step)
    try:
        write_file(tmp / "model.safetensors", save(_cpu_weights(weights), metadata={"format": "pt"}))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_checkpoint(run_dir, tmp, {"optimizer": optimizer_state, "rng": rng_state()}, meta, keep_last)


def new_checkpoint_dir(run_dir: Path, step: int) -> Path:
    """A fresh, empty `.tmp-step-N` directory to write checkpoint `step` into (see `commit_checkpoint`)."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        root.mkdir(parents=True)
        fsync_path(root.parent)
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def commit_checkpoint(run_dir: Path, tmp: Path, trainer_state: dict, meta: CheckpointMeta,
                      keep_last: int = KEEP_LAST) -> Path:
    """Finish the checkpoint whose other files are in `tmp`: write trainer_state.pt and meta.json (last), fsync
    `tmp` and every folder in it, rename it into place, then delete all but the newest `keep_last`.

    On any failure `tmp` is removed: no half-written checkpoint is left behind (a full disk, say).
    """
    root = run_dir / CHECKPOINT_DIR
    final = root / f"step-{meta.step:08d}"
    try:
        # Streamed, not built in memory: the optimiser state is twice the model (a 1.1B model's is ~9 GB), and
        # torch.save into a Python file object passes a write error on as that OSError, errno and all.
        write_file(tmp / "trainer_state.pt", lambda handle: torch.save(trainer_state, handle))
        write_file(tmp / "meta.json", json.dumps(asdict(meta)).encode())
        for folder in (p for p in tmp.iterdir() if p.is_dir()):
            fsync_path(folder)
        fsync_path(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_path(root)  # the rename itself
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = run_dir / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())


def load_newest(run_dir: Path, load: Callable[[Path], CheckpointMeta]) -> ResumePoint:
    """Call `load` on the run's checkpoints, newest first, until one does not raise UnreadableCheckpoint.

    `load` is e.g. `lambda path: load_checkpoint(path, model, optimizer)`, or `read_checkpoint` on the rank
    that reads for the others (`distributed.load_newest_checkpoint`).

    Each checkpoint skipped on the way is moved to `corrupt-step-N` (kept for inspection, never listed
    again) and named in a CheckpointWarning and in `ResumePoint.skipped`. If none loads, nothing is moved
    and a one-line DataError says what to do. With no checkpoint at all, `ResumePoint(None, None)`.
    """
    failed: list[UnreadableCheckpoint] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            meta = load(path)
        except UnreadableCheckpoint as exc:
            failed.append(exc)
            continue
        skipped = []
        for bad in failed:  # an older one loaded, so these are damaged: out of the way, but not deleted
            skipped.append(f"skipped checkpoint {bad.path.name} ({bad.reason}): resuming from {path.name}; "
                           f"the skipped one is kept as {_set_aside(bad.path)} for inspection")
            warnings.warn(skipped[-1], CheckpointWarning, stacklevel=2)
        if skipped:
            fsync_path(path.parent)
        return ResumePoint(meta, path, tuple(skipped))
    if failed:
        reasons = "; ".join(f"{bad.path.name}: {bad.reason}" for bad in failed)
        raise DataError(f"no checkpoint in {failed[0].path.parent} can be loaded ({reasons}); to train the run "
                        "again from step 0, rename or delete that folder and re-run the same command")
    return ResumePoint(None, None)


def _set_aside(path: Path) -> Path:
    """Rename a checkpoint that cannot be loaded to corrupt-<name> (a free name), out of `list_checkpoints`."""
    aside, n = path.with_name(f"corrupt-{path.name}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"corrupt-{path.name}-{n}")
    os.replace(path, aside)
    return aside


def load_checkpoint(path: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> CheckpointMeta:
    """Load weights, optimiser and RNG states from `path` into the given objects; UnreadableCheckpoint if not."""
    weights, state, meta = read_checkpoint(path, _device_of(model))
    try:
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise UnreadableCheckpoint(path, _reason(exc)) from None
    return meta


def read_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict,
                                                                              CheckpointMeta]:
    """The weights, trainer state ({"optimizer", "rng"}) and meta of a checkpoint; UnreadableCheckpoint if not."""
    name = "meta.json"
    try:
        meta = CheckpointMeta(**json.loads((path / name).read_text()))
        name = "model.safetensors"
        weights = load_file(str(path / name), device=str(device))
        name = "trainer_state.pt"
        state = torch.load(path / name, map_location=device, weights_only=True)
    except _READ_ERRORS as exc:
        raise UnreadableCheckpoint(path, f"{name}: {_reason(exc)}") from None
    return weights, state, meta


def read_checkpoint_state(path: Path) -> tuple[dict, CheckpointMeta]:
    """The trainer state and meta of a checkpoint, without its weights; UnreadableCheckpoint if not."""
    name = "meta.json"
    try:
        meta = CheckpointMeta(**json.loads((path / name).read_text()))
        name = "trainer_state.pt"
        state = torch.load(path / name, map_location="cpu", weights_only=True)
    except _READ_ERRORS as exc:
        raise UnreadableCheckpoint(path, f"{name}: {_reason(exc)}") from None
    return state, meta


def is_sharded(path: Path) -> bool:
    """Whether a checkpoint holds sharded state (`SHARDED_DIR`, written by FSDP ranks) instead of model.safetensors."""
    return (path / SHARDED_DIR).is_dir()


def _reason(exc: BaseException, max_chars: int = 200) -> str:
    """An exception as one short line (torch's weights_only refusals run to paragraphs)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).removesuffix(":")
    return text if len(text) <= max_chars else text[:max_chars - 3] + "..."


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """Write final model weights as safetensors (atomically)."""
    write_weights(path, model.state_dict())


def write_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """`save_weights` from a state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        write_file(tmp, save(_cpu_weights(weights), metadata={"format": "pt"}))
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_path(path.parent)


def _cpu_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Tied weights share storage and safetensors refuses shared tensors: give each name its own copy.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in weights.items()}


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def write_file(path: Path, data: bytes | memoryview | Callable[[io.BufferedWriter], object]) -> None:
    """Write `data` (bytes, or a function writing to the open file) to `path` and fsync it.

    A failed write raises OSError with its errno and the path. Weights are serialised in memory (one copy of
    the model) and written here, because safetensors' own file writer reports a full disk as a
    SafetensorError without the errno.
    """
    try:
        with open(path, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def fsync_path(path: Path) -> None:
    """Make a file's data, or a directory's entries, durable: after it returns, a power loss keeps them (POSIX)."""
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
    try:
        write_file(tmp, json.dumps(state).encode())
    except BaseException:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, folder / ENERGY_STATE_FILE)
    fsync_path(folder)


def read_energy_state(run_dir: Path, step: int) -> dict | None:
    """The state saved by `write_energy_state` for checkpoint `step`, or None (missing or unreadable)."""
    path = run_dir / CHECKPOINT_DIR / f"step-{step:08d}" / ENERGY_STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None

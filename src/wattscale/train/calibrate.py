"""`wattscale calibrate`: measure this machine once, so that planned runs can be estimated before they run.

For one preset at one precision, batch size and sequence length, `calibrate_one` builds the model and the
AdamW optimiser the trainer builds and runs the trainer's own optimiser step (`training_step`) on random
tokens (a step's cost does not depend on which tokens it sees), measured by the public `Monitor`:

1. ``warmup_steps`` steps in the ``warmup`` phase (allocation, autotuning; not timed for the rate),
2. ``repeats`` windows of ``steps`` steps each in the ``train`` phase: tokens/s of each window, their median
   and spread, and the training phase's power by component with its energy source,
3. one evaluation pass as the trainer evaluates (forward only) in the ``eval`` phase,
4. one checkpoint (weights + optimiser state) written to a temporary folder in the ``checkpoint`` phase.

The result is one `calibrations` row (see `wattscale.store_schema`); `wattscale.experiment.estimate` turns
these rows into time, energy, CO2e and cost for planned runs.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wattscale import __version__
from wattscale.config import build_run_config
from wattscale.energy.meter import MeterConfig
from wattscale.energy.monitor import Monitor, command_line
from wattscale.errors import ConfigError
from wattscale.evaluate import evaluate
from wattscale.hardware import apply_matmul_precision, cpu_model_name, resolve_device, resolve_precision
from wattscale.model import Llama, ModelConfig, count_parameters, flops_per_token
from wattscale.threads import torch_threads
from wattscale.train.checkpoints import CheckpointMeta, save_checkpoint
from wattscale.train.loop import make_optimizer, summed_loss_fn, training_step

DEFAULT_PRESETS = ("llama-tiny", "llama-1m", "llama-4m")
DEFAULT_STEPS = 5
DEFAULT_REPEATS = 3
MAX_STEPS = 1000
MAX_REPEATS = 100


@dataclass(frozen=True)
class CalibrationTarget:
    """What one calibration measures: a preset at a precision, batch and sequence length on a device."""

    preset: str
    precision: str = "auto"  # auto: fp32 on CPU, bf16 on CUDA (as the trainer resolves it)
    batch_size: int = 16
    seq_len: int | None = None  # None: the preset's context length (the trainer's default)
    device: str = "auto"
    micro_batch_size: int | None = None
    threads: int | None = None  # torch CPU threads (None: CalibrationSettings.threads, else torch's default)


@dataclass(frozen=True)
class CalibrationSettings:
    """How long to measure: timed steps per repeat, repeats, untimed warm-up steps, threads, meters."""

    steps: int = DEFAULT_STEPS
    repeats: int = DEFAULT_REPEATS
    warmup_steps: int = 1
    threads: int | None = None
    meter: MeterConfig = MeterConfig(idle_seconds=0.0)
    checkpoint: bool = True
    # A repeat of a tiny preset's few steps lasts milliseconds, shorter than the scheduler's and the meter's
    # resolution: the first repeat runs on past `steps` until this long, and every repeat runs that many steps.
    min_repeat_seconds: float = 0.5

    def __post_init__(self) -> None:
        for name, low, high in (("steps", 1, MAX_STEPS), ("repeats", 2, MAX_REPEATS), ("warmup_steps", 0, MAX_STEPS)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                extra = " (a spread needs at least two)" if name == "repeats" else ""
                raise ConfigError(f"--{name.replace('_', '-')}: {value!r} must be a whole number from {low} to "
                                  f"{high}{extra}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"--threads: {self.threads} must be at least 1")


def machine_identity(device: torch.device) -> dict[str, Any]:
    """hostname, cpu_model, device_type, device_name (GPU name, or the CPU model), torch and wattscale versions."""
    cpu = cpu_model_name()
    name = torch.cuda.get_device_properties(device).name if device.type == "cuda" else cpu
    return {"hostname": socket.gethostname(), "cpu_model": cpu, "device_type": device.type, "device_name": name,
            "torch_version": torch.__version__, "wattscale_version": __version__}


def check_target(target: CalibrationTarget) -> None:
    """Raise ConfigError if `target` cannot be calibrated here (bad settings, no such device), before any work."""
    config = _run_config(target)
    resolve_precision(config.train.precision, resolve_device(config.train.device))


def _run_config(target: CalibrationTarget) -> Any:
    """The RunConfig the calibrated steps use (validated as `wattscale train` validates it)."""
    if target.threads is not None and target.threads < 1:
        raise ConfigError(f"--threads: {target.threads} must be at least 1")
    if not isinstance(target.batch_size, int) or target.batch_size < 1:
        raise ConfigError(f"--batch-size: {target.batch_size!r} must be a positive number of sequences")
    if target.seq_len is not None and target.seq_len < 1:
        raise ConfigError(f"--seq-len: {target.seq_len!r} must be a positive number of tokens")
    train = {"batch_size": target.batch_size, "seq_len": target.seq_len, "device": target.device,
             "precision": target.precision, "micro_batch_size": target.micro_batch_size}
    train = {k: v for k, v in train.items() if v is not None}
    context = ModelConfig.from_name(target.preset).context_length
    # The budget only has to hold one step: calibration runs its own steps.
    train["tokens"] = target.batch_size * (target.seq_len or context)
    return build_run_config(overrides={"model": {"preset": target.preset}, "train": train})


def calibrate_one(target: CalibrationTarget, settings: CalibrationSettings = CalibrationSettings()) -> dict[str, Any]:
    """Measure one target; return its `calibrations` row (not yet stored)."""
    config = _run_config(target)
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    seq_len, batch = config.seq_len, config.train.batch_size
    with torch_threads(target.threads or settings.threads):
        matmul = apply_matmul_precision(device, precision)
        load_before = _load_average()
        measured = _measure(config, device, precision, settings)
        load_after = _load_average()
        threads = torch.get_num_threads()
    rates = measured["tokens_per_second"]
    fpt = flops_per_token(config.model, seq_len)
    median = statistics.median(rates)
    train = measured["train"]
    return {
        **machine_identity(device), "threads": threads, "cpu_count": os.cpu_count(),
        "load_average": None if load_before is None else (load_before + load_after) / 2,
        "preset": target.preset, "precision": precision,
        "batch_size": batch, "seq_len": seq_len, "params_total": count_parameters(config.model).total,
        "flops_per_token": fpt, "steps_per_repeat": measured["steps"], "warmup_steps": settings.warmup_steps,
        "repeats": settings.repeats, "tokens_per_second": median, "tokens_per_second_min": min(rates),
        "tokens_per_second_max": max(rates), "tokens_per_second_json": json.dumps(rates),
        "flops_per_second": median * fpt, "warmup_step_seconds": measured["warmup_step_seconds"],
        "eval_tokens_per_second": measured["eval_tokens_per_second"],
        "checkpoint_seconds": measured["checkpoint_seconds"], "checkpoint_bytes": measured["checkpoint_bytes"],
        "power_w": train.mean_power_w,
        "power_w_json": json.dumps({name: c.mean_power_w for name, c in train.components.items()})
        if train.components else None,
        "eval_power_w": measured["eval_power_w"], "energy_source": train.source if train.energy_j is not None else None,
        "details_json": json.dumps({"matmul": matmul, "micro_batch_size": config.train.micro_batch_size,
                                    "repeat_power_w": measured["repeat_power_w"], "notes": measured["notes"],
                                    "components": {name: c.source for name, c in train.components.items()},
                                    "command_line": command_line()}, default=str),
    }


def _load_average() -> float | None:
    """The host's 1-minute load average (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _measure(config: Any, device: torch.device, precision: str, settings: CalibrationSettings) -> dict[str, Any]:
    """Warm-up, timed repeats, one evaluation and one checkpoint, inside one Monitor."""
    torch.manual_seed(0)
    model = Llama(config.model).to(device)
    optimizer = make_optimizer(model, config)
    loss_fn = summed_loss_fn(model, config.train.compile)
    autocast = torch.bfloat16 if precision == "bf16" else None
    batch, seq_len = config.train.batch_size, config.seq_len
    micro = config.train.micro_batch_size or batch
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.model.vocab_size, (batch, seq_len + 1), generator=generator)  # [b, T+1]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    n_tok = inputs.numel()

    def step() -> None:
        loss, _ = training_step(loss_fn, model, optimizer, inputs, targets, n_tok, micro, device, autocast,
                                config.train.grad_clip)
        loss.item()  # a step's time includes its device work: synchronise

    gpus: Any = "auto" if device.type == "cuda" else []
    rates, repeat_power = [], []
    with Monitor(settings.meter, gpus=gpus, name=f"calibrate {config.model.name}", warmup_steps=0) as monitor:
        with monitor.phase("warmup"):
            for _ in range(settings.warmup_steps):
                step()
                monitor.step(tokens=n_tok)
        steps = settings.steps
        for repeat in range(settings.repeats):
            monitor.begin_window(f"repeat-{repeat}")
            with monitor.phase("train"):
                done, start = 0, time.perf_counter()
                while done < steps or (repeat == 0 and done < MAX_STEPS
                                       and time.perf_counter() - start < settings.min_repeat_seconds):
                    step()
                    monitor.step(tokens=n_tok)
                    done += 1
                steps = done
            window = monitor.end_window(f"repeat-{repeat}").phases["train"]
            rates.append(window.tokens / window.seconds)
            repeat_power.append(window.mean_power_w)
        windows = tokens.repeat(steps, 1)  # [steps * b, T+1]: as many sequences as one repeat trains
        eval_tokens = windows.shape[0] * seq_len
        with monitor.phase("eval"):
            evaluate(model, windows, micro, device, autocast)
        checkpoint_bytes = None
        if settings.checkpoint:
            with tempfile.TemporaryDirectory(prefix="wattscale-calibrate-") as folder, monitor.phase("checkpoint"):
                save_checkpoint(Path(folder), model, optimizer, CheckpointMeta(1, n_tok, batch, 0.0, None, None))
                checkpoint_bytes = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    result = monitor.result
    warmup, evaluation, checkpoint = (result.phase(name) for name in ("warmup", "eval", "checkpoint"))
    return {"tokens_per_second": rates, "steps": steps, "repeat_power_w": repeat_power, "train": result.phase("train"),
            "warmup_step_seconds": warmup.seconds / settings.warmup_steps if settings.warmup_steps else None,
            "eval_tokens_per_second": eval_tokens / evaluation.seconds if evaluation.seconds > 0 else None,
            "eval_power_w": evaluation.mean_power_w,
            "checkpoint_seconds": checkpoint.seconds if settings.checkpoint else None,
            "checkpoint_bytes": checkpoint_bytes, "notes": list(result.notes)}

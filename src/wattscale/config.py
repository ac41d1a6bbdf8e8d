"""Typed training configuration: one dataclass per concern, loaded from TOML and/or CLI flags.

A training run is described by three tables, each mapped to one frozen dataclass:

```toml
[model]            # ModelConfig: a preset plus optional field overrides
preset = "llama-4m"

[train]            # TrainConfig: budget, optimiser, schedule, evaluation, checkpoints
tokens = 1_000_000
batch_size = 16

[data]             # DataConfig: where the text comes from and how it is tokenized
source = "synthetic"
```

Two more tables are optional: `[meter]` (MeterConfig: how energy is measured) and `[gpu]` (GpuConfig: a
power limit or locked SM clock applied while the run trains, see `wattscale.energy.gpu_control`).

Every problem in a file is collected and raised as one `ConfigError` that names each bad key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

from wattscale.data import DataConfig
from wattscale.energy.gpu_control import GpuConfig, static_problems
from wattscale.energy.meter import MeterConfig
from wattscale.errors import ConfigError
from wattscale.identity import identity_field, identity_values
from wattscale.limits import MAX_INT64, MAX_THREADS, MAX_TRAIN_TOKENS
from wattscale.model import ModelConfig
from wattscale.trackers.base import TrackerError, parse_spec

SCHEDULES = ("cosine", "wsd", "constant")
PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # tf32: fp32 weights, TF32 tensor-core matmuls (CUDA only)
PARALLEL_MODES = ("ddp", "fsdp")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the exact token budget, optimiser, schedule, evaluation and checkpoints.

    Token budget: `tokens` input tokens contribute to the loss, exactly. A step consumes
    `batch_size` sequences of `seq_len` tokens; when `tokens` is not a multiple of that, the last
    step uses only ceil(remainder / seq_len) sequences and masks the targets past the remainder,
    so tokens_seen == tokens always.

    Training-set size: `data_tokens` limits training to the first `data_tokens` tokens of the
    training split (unique tokens; a whole number of `seq_len` sequences), and `epochs` passes over
    it, so tokens = data_tokens x epochs. Give any two of tokens / data_tokens / epochs; the third
    is derived and all three are recorded.

    `repeat` tells apart runs that are otherwise identical (same settings, same seed): a study of
    pure hardware and energy variance repeats one run with repeat = 0, 1, 2, ...

    `eval_interval_tokens` (default: a tenth of the budget) and `checkpoint_interval_tokens` (default: the
    evaluation interval) may be 0: only the final evaluation, and no intermediate checkpoints (a killed
    run then starts again from zero). Evaluations and checkpoints are phases of their own, apart from the
    training phase that efficiency is computed from.

    `parallel` is how a run started with torchrun on several processes spreads the model: "ddp"
    (replicas) or "fsdp" (FSDP2 sharding, for models that do not fit one device). Both compute the
    same run, so it is not part of the run id; one process ignores it.

    `log_interval_steps` is how often the trainer reads the loss and gradient norm from the device (the
    only host syncs of the step loop; divergence is caught within one interval; not part of the run id).
    `deterministic` asks for deterministic kernels (see `wattscale.train.determinism`); part of the run id
    when true.
    """

    tokens: int | None = identity_field(None)
    seed: int = identity_field(0)
    data_tokens: int | None = identity_field(None, since=None)
    epochs: float | None = identity_field(None, since=None)
    repeat: int = identity_field(0, since=0)
    batch_size: int = identity_field(16)
    micro_batch_size: int | None = identity_field(None)
    seq_len: int | None = identity_field(None)
    lr: float = identity_field(3e-3)
    min_lr_ratio: float = identity_field(0.1)  # the schedule ends at min_lr_ratio x peak lr
    schedule: str = identity_field("cosine")
    warmup_fraction: float = identity_field(0.05)
    decay_fraction: float = identity_field(0.2)  # wsd: share of steps in the final linear decay
    weight_decay: float = identity_field(0.1)  # AdamW weight decay, on matrices only
    beta1: float = identity_field(0.9)  # AdamW first-moment decay
    beta2: float = identity_field(0.95)  # AdamW second-moment decay
    adam_eps: float = identity_field(1e-8)  # AdamW epsilon
    grad_clip: float = identity_field(1.0)  # clip the gradient norm to this (0 disables clipping)
    eval_interval_tokens: int | None = identity_field(None)
    eval_tokens: int = identity_field(65_536)
    eval_at_start: bool = identity_field(False)  # also evaluate at 0 tokens (the initial loss)
    # The unmarked fields (checkpoint interval, run root, name, threads, parallel) are not part of the run
    # id: they change how a run is executed or stored, not what it computes.
    checkpoint_interval_tokens: int | None = None
    divergence_factor: float = identity_field(2.0)  # stop as diverged when the smoothed loss exceeds this x its best
    device: str = identity_field("auto")
    precision: str = identity_field("auto")
    compile: bool = identity_field(False)
    # Deterministic kernels (torch.use_deterministic_algorithms, math attention on CUDA); added later, so a run
    # without it keeps the id it had.
    deterministic: bool = identity_field(False, since=False)
    run_root: str = "wattscale_runs"
    name: str | None = None
    threads: int | None = None
    parallel: str = "ddp"
    # Steps between reads of the loss and gradient norm from the device (one host sync each): the progress
    # line's loss and the divergence check lag by at most this many steps; the stored rows are the same.
    log_interval_steps: int = 10
    # Trackers fed live at each evaluation ("mlflow:URI", "tensorboard:DIR"); where results also go, not what a
    # run computes, so not part of the run id.
    track: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "track", tuple(self.track))
        _resolve_budget(self)
        problems = _train_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))


def _resolve_budget(c: TrainConfig) -> None:
    """Fill in the third of tokens / data_tokens / epochs from the other two (tokens = data_tokens x epochs)."""
    if c.data_tokens is not None and (not isinstance(c.data_tokens, int) or c.data_tokens <= 0):
        raise ConfigError(f"train.data_tokens: {c.data_tokens!r} must be a positive integer number of unique tokens")
    if c.epochs is not None and not c.epochs > 0:
        raise ConfigError(f"train.epochs: {c.epochs!r} must be positive")
    if c.epochs is not None and c.data_tokens is None:
        raise ConfigError("train.epochs: needs train.data_tokens (the training-set size it repeats); "
                          "pass --data-tokens N as well")
    if c.data_tokens is None:
        if c.tokens is None:
            raise ConfigError("train.tokens: missing; pass --tokens N (the exact training-token budget), "
                              "or --data-tokens N --epochs E")
        return
    if c.epochs is None:
        if c.tokens is None:
            raise ConfigError("train.epochs: missing; with --data-tokens pass --epochs E or --tokens N")
        object.__setattr__(c, "epochs", c.tokens / c.data_tokens)
    else:
        derived = c.data_tokens * c.epochs
        if abs(derived - round(derived)) > 1e-6:
            raise ConfigError(f"train.epochs: {c.data_tokens:,} x {c.epochs} = {derived:,.3f} is not a whole number "
                              "of tokens; choose epochs so that data_tokens x epochs is an integer")
        if c.tokens is not None and c.tokens != round(derived):
            raise ConfigError(f"train.tokens: {c.tokens:,} disagrees with data_tokens x epochs = "
                              f"{round(derived):,}; give only two of the three")
        object.__setattr__(c, "tokens", round(derived))
    object.__setattr__(c, "epochs", float(c.epochs))  # 2 and 2.0 must hash to the same run id


def _train_problems(c: TrainConfig) -> list[str]:
    """Every invalid value in `c`, as messages that name the field and the fix."""
    p: list[str] = []
    if not isinstance(c.tokens, int) or c.tokens <= 0:
        p.append(f"train.tokens: {c.tokens!r} must be a positive integer number of tokens")
    elif c.tokens > MAX_TRAIN_TOKENS:
        p.append(f"train.tokens: {c.tokens:,} is more than wattscale trains ({MAX_TRAIN_TOKENS:.0e} tokens); "
                 "check the number")
    if not 0 <= c.seed <= MAX_INT64:
        p.append(f"train.seed: {c.seed!r} must lie in [0, 2**63 - 1]")
    if c.threads is not None and c.threads > MAX_THREADS:
        p.append(f"train.threads: {c.threads:,} is more than {MAX_THREADS} threads; use about one per core")
    if c.repeat < 0:
        p.append(f"train.repeat: {c.repeat!r} must be >= 0")
    for name in ("batch_size", "eval_tokens"):
        if getattr(c, name) <= 0:
            p.append(f"train.{name}: {getattr(c, name)!r} must be positive")
    if not isinstance(c.log_interval_steps, int) or isinstance(c.log_interval_steps, bool) \
            or c.log_interval_steps < 1:
        p.append(f"train.log_interval_steps: {c.log_interval_steps!r} must be a whole number >= 1 (1 reads the loss "
                 "after every step)")
    for name in ("micro_batch_size", "seq_len", "threads"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            p.append(f"train.{name}: {value!r} must be positive (or omitted for the default)")
    for name, zero in (("eval_interval_tokens", "only the final evaluation"),
                       ("checkpoint_interval_tokens", "no intermediate checkpoints")):
        value = getattr(c, name)
        if value is not None and value < 0:
            p.append(f"train.{name}: {value!r} must be >= 0 (0: {zero}; omit it for the default)")
    if c.micro_batch_size is not None and c.micro_batch_size > c.batch_size:
        p.append(f"train.micro_batch_size: {c.micro_batch_size} exceeds batch_size {c.batch_size}")
    if c.lr <= 0:
        p.append(f"train.lr: {c.lr!r} must be positive")
    for name in ("min_lr_ratio", "warmup_fraction", "decay_fraction"):
        if not 0.0 <= getattr(c, name) <= 1.0:
            p.append(f"train.{name}: {getattr(c, name)!r} must lie in [0, 1]")
    if c.schedule not in SCHEDULES:
        p.append(f"train.schedule: unknown schedule {c.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
    if c.parallel not in PARALLEL_MODES:
        p.append(f"train.parallel: unknown mode {c.parallel!r}; choose one of: {', '.join(PARALLEL_MODES)}")
    if c.precision not in PRECISIONS:
        p.append(f"train.precision: unknown precision {c.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    elif c.precision == "tf32" and c.device == "cpu":
        p.append("train.precision: 'tf32' (TF32 tensor-core matmuls) needs a CUDA device, not cpu; use fp32 or bf16")
    if c.grad_clip < 0:
        p.append(f"train.grad_clip: {c.grad_clip!r} must be >= 0 (0 disables clipping)")
    if c.divergence_factor <= 1.0:
        p.append(f"train.divergence_factor: {c.divergence_factor!r} must be > 1")
    if not (c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:")):
        p.append(f"train.device: {c.device!r} must be auto, cpu, cuda or cuda:N")
    for spec in c.track:
        try:
            parse_spec(spec, "train.track")
        except TrackerError as exc:
            p.append(str(exc))
    return p


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run: model, training and data settings."""

    model: ModelConfig = identity_field()
    train: TrainConfig = identity_field()
    data: DataConfig = identity_field(default_factory=DataConfig)
    meter: MeterConfig = field(default_factory=MeterConfig)
    # GPU power limit / SM clock: part of the id when set, absent from it (and from to_dict) when not, so
    # the runs stored before the [gpu] table keep their ids and config hashes.
    gpu: GpuConfig = identity_field(default_factory=GpuConfig, since=GpuConfig())

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence (defaults to the model's context length)."""
        return self.train.seq_len or self.model.context_length

    @property
    def tokens_per_step(self) -> int:
        """Input tokens consumed by one full optimiser step."""
        return self.train.batch_size * self.seq_len

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-ready data."""
        return {
            "model": self.model.to_dict(),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
            "meter": dataclasses.asdict(self.meter),
            **({"gpu": dataclasses.asdict(self.gpu)} if self.gpu.active else {}),
        }


def run_id_for(config: RunConfig, data_fingerprint: str) -> str:
    """A stable 16-hex-digit id: a hash of the identity fields (see wattscale.identity) and the data content.

    Only fields marked with ``identity_field`` count: the meter settings, where a run is stored and
    how it is executed do not change what it computes, and a field added unmarked changes no run id.
    """
    return _hash_identity(identity_values(config), data_fingerprint)


def earlier_run_ids(config: RunConfig, data_fingerprint: str) -> tuple[str, ...]:
    """The ids the same run had in earlier wattscale versions, where they differ from ``run_id_for``.

    Until December 2026 a local data.source, data.val_source or data.tokenizer entered the id as its
    absolute path, so moving the files or the checkout changed the id; a store that holds a run under
    such an id has it renamed when the run is next planned or trained (``Store.rename_run``).
    """
    earlier = _hash_identity(identity_values(config, earlier=True), data_fingerprint)
    return () if earlier == run_id_for(config, data_fingerprint) else (earlier,)


def _hash_identity(identity: dict[str, Any], data_fingerprint: str) -> str:
    blob = json.dumps({**identity, "data_fingerprint": data_fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate_run(config: RunConfig) -> None:
    """Cross-field checks that need both the model and the training settings."""
    problems = static_problems(config.gpu, config.train.device)
    if config.seq_len > config.model.context_length:
        problems.append(f"train.seq_len: {config.seq_len} exceeds the model's context_length "
                        f"{config.model.context_length}; lower --seq-len")
    data_tokens = config.train.data_tokens
    if data_tokens is not None and data_tokens % config.seq_len:
        lower = data_tokens // config.seq_len * config.seq_len
        problems.append(
            f"train.data_tokens: {data_tokens:,} is not a whole number of {config.seq_len}-token sequences; "
            f"use {lower + config.seq_len:,}" + (f" or {lower:,}" if lower else "") + " (or another seq_len)")
    if config.train.tokens < config.tokens_per_step and config.train.tokens > 0:
        problems.append(
            f"train.tokens: {config.train.tokens:,} is smaller than one batch "
            f"({config.train.batch_size} x {config.seq_len} = {config.tokens_per_step:,} tokens); "
            "raise --tokens or lower --batch-size/--seq-len")
    if problems:
        raise ConfigError("; ".join(problems))


def _build(cls: type, table: dict[str, Any], section: str) -> Any:
    """Instantiate dataclass `cls` from a TOML table, rejecting unknown keys and wrong types."""
    _check_table(cls, table, section)
    return cls(**table)


def unknown_key_message(section: str, key: str, known: Any) -> str:
    """`section.key: unknown key; did you mean section.closest?`, or every known key when none is close.

    Close means difflib's similarity (typos: ``tokns``) or the initials of a snake_case key (``learning_rate``
    -> ``lr``).
    """
    names = sorted(known)
    initials = "".join(part[:1] for part in key.lower().split("_") if part)
    close = difflib.get_close_matches(key.lower(), names, n=1) or (
        [initials] if len(initials) > 1 and initials in names else [])
    where = f"{section}." if section else ""
    if close:
        return f"{where}{key}: unknown key; did you mean {where}{close[0]}?"
    return f"{where}{key}: unknown key; known keys: {', '.join(names)}"


def _check_table(cls: type, table: dict[str, Any], section: str, allowed_extra: tuple[str, ...] = ()) -> None:
    """Raise ConfigError for the first key of `table` that `cls` lacks or whose value has the wrong type."""
    known = {f.name for f in fields(cls) if f.name != "name" or section != "model"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(unknown_key_message(section, unknown[0], known | set(allowed_extra)))
    hints = get_type_hints(cls)
    for key, value in table.items():
        _check_type(f"{section}.{key}", value, hints[key])


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Raise ConfigError when a TOML value does not fit the field's declared type."""
    allowed = getattr(hint, "__args__", None) or (hint,)
    ok = False
    for t in allowed:
        if t is type(None) and value is None:
            ok = True
        elif getattr(hint, "__origin__", None) is tuple and isinstance(value, (list, tuple)):
            ok = all(isinstance(v, str) for v in value)
        elif t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {value!r} is not a finite number; give a number such as 0.5")
            ok = True
        elif t is int and isinstance(value, int) and not isinstance(value, bool):
            if abs(value) > MAX_INT64:
                raise ConfigError(f"{where}: {value} does not fit in 64 bits (at most 2**63 - 1); check the number")
            ok = True
        elif t in (str, bool) and isinstance(value, t):
            ok = True
    if not ok:
        names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
        raise ConfigError(f"{where}: {value!r} is not a {names}")


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file is a ConfigError naming the file."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config: file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: cannot read {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {str(path)!r} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"model", "train", "data", "meter", "gpu"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown table in {str(path)!r}; use [model], [train], [data], [meter] "
                          "and [gpu]")
    return data


def build_run_config(file_tables: dict[str, Any] | None = None,
                     overrides: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Merge TOML tables with CLI overrides (overrides win) and validate the result.

    `overrides` maps "model"/"train"/"data" to {key: value}; None values are ignored.
    The model table takes `preset` plus any ModelConfig field to override.
    """
    tables: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (file_tables or {}).items()}
    for section, values in (overrides or {}).items():
        tables.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    model_table = tables.get("model", {})
    preset = model_table.pop("preset", None)
    if preset is None:
        raise ConfigError("model.preset: missing; pass --preset NAME (see `wattscale presets`)")
    if "name" in model_table:
        raise ConfigError("model.name: set the preset with model.preset, not model.name")
    _check_table(ModelConfig, model_table, "model", allowed_extra=("preset",))
    model = ModelConfig.from_name(preset, **model_table)
    train = _build(TrainConfig, tables.get("train", {}), "train")
    data = _build(DataConfig, tables.get("data", {}), "data")
    meter = _build(MeterConfig, tables.get("meter", {}), "meter")
    gpu = _build(GpuConfig, tables.get("gpu", {}), "gpu")
    config = RunConfig(model=model, train=train, data=data, meter=meter, gpu=gpu)
    validate_run(config)
    return config

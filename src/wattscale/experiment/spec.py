"""The experiment file: fixed settings, a grid of conditions, repetitions, the run order.

```toml
[experiment]
name = "token_scale_energy"
repetitions = 50              # runs per condition; the repetition index is the subject
seeds = "per-repetition"      # seed = base_seed + r | "same" (seed = base_seed, repeat = r) | [s0, s1, ...]
base_seed = 0
order = "random-blocks"       # or "williams" (balanced Latin square) or "as-written"
order_seed = 7                # default: taken from the spec's hash; recorded in the store either way
store = "token_scale.db"      # optional; --store on the command line wins

[model]                       # fixed settings: the tables of `wattscale train --config`
preset = "tinyllama-1.1b"
[train]
epochs = 1
[data]
[meter]
sample_hz = 10
[gpu]                         # optional: power_limit_w, sm_clock_mhz (see wattscale.energy.gpu_control)

[footprint]                   # optional: carbon and cost inputs (no run changes; flags and WATTSCALE_* win)
carbon_intensity_csv = "grid.csv"   # or carbon_intensity_g_per_kwh = 350; a relative path is read from here
price_per_kwh = 0.30
currency = "EUR"
pue = 1.2

[grid]                        # factors: "section.key" (or a key only one section has) = [values]
"train.data_tokens" = [500_000, 1_000_000, 2_000_000]

[variants.smoke]              # `--variant smoke`: its tables are merged over the ones above
unset = ["data.val_source"]   # settings to put back to their defaults (before the variant's sub-tables)
[variants.smoke.experiment]
repetitions = 2
[variants.smoke.model]
preset = "llama-tiny"
[variants.smoke.grid]
"train.data_tokens" = [4_096, 8_192]
```

A variant's tables may also be written inline under ``[variants.smoke]`` (``model = { preset =
"llama-tiny" }``, the form of earlier releases): TOML reads both forms into the same tables.

The ``[footprint]`` table (keys: the fields of `wattscale.footprint.FootprintSettings`) is what
`runs`, `analyze`, `report` and `plan` of this FILE turn energy into CO2e and cost with, below flags and
``WATTSCALE_*`` variables; it changes no run (not part of the study's hash). ``ExperimentSpec.footprint``
holds it checked, with a relative ``carbon_intensity_csv`` made absolute against the file's folder.

Relative data paths (data.source, data.val_source, data.tokenizer) are read from the file's folder;
one that does not exist is refused when the runs are planned, naming the key, the `--set` that
replaces it and the variants of the file that do without it (`missing_input_error`).

Besides every field of [model], [train], [data], [meter] and [gpu], two derived training keys exist in
experiment files: `train.steps` (tokens = steps x batch_size x seq_len) and `train.batch_tokens`
(batch_size = batch_tokens / seq_len), so a grid can be written in steps and tokens per batch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from wattscale.config import TrainConfig, unknown_key_message
from wattscale.data import DataConfig
from wattscale.data.sources import is_local_path
from wattscale.energy.gpu_control import GpuConfig
from wattscale.energy.meter import MeterConfig
from wattscale.errors import ConfigError
from wattscale.footprint import FootprintSettings
from wattscale.model import ModelConfig

RUN_TABLES = ("model", "train", "data", "meter", "gpu")
FILE_TABLES = ("experiment", *RUN_TABLES, "footprint", "grid", "variants")
SEED_MODES = ("per-repetition", "same")
ORDER_DESIGNS = ("random-blocks", "williams", "as-written")
DERIVED_TRAIN_KEYS = ("steps", "batch_tokens")
# Training settings that change how runs execute, not what they compute (run ids ignore them too).
EXECUTION_TRAIN_KEYS = ("run_root", "name", "checkpoint_interval_tokens", "threads", "parallel", "track",
                        "log_interval_steps")
# Keys a grid may not vary: seeds come from [experiment], and these do not change what a run
# computes, so two conditions would be one run.
_NOT_FACTORS = {"train.seed": "set seeds in [experiment] (base_seed, seeds)",
                "train.repeat": "set repetitions in [experiment] (seeds = \"same\")",
                **{f"train.{key}": "it changes how runs execute, not what they compute"
                   for key in EXECUTION_TRAIN_KEYS}}


@dataclass(frozen=True)
class StudyDesign:
    """The [experiment] table: the study's name, repetitions, seeds and run order."""

    name: str
    description: str = ""
    repetitions: int = 1
    seeds: str | tuple[int, ...] = "per-repetition"
    base_seed: int = 0
    order: str = "random-blocks"
    order_seed: int | None = None
    store: str | None = None

    def seed_and_repeat(self, repetition: int) -> tuple[int, int]:
        """(train.seed, train.repeat) of repetition `repetition` (0-based)."""
        if isinstance(self.seeds, tuple):
            return self.seeds[repetition], 0
        if self.seeds == "same":
            return self.base_seed, repetition
        return self.base_seed + repetition, 0


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment file: the design, the fixed run tables and the grid (factors in file order)."""

    design: StudyDesign
    tables: dict[str, dict[str, Any]]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    variant: str | None = None
    source_path: str | None = None
    base_dir: str | None = None  # relative data paths in the file are read from here
    # For each input path key (INPUT_PATH_KEYS), the file's other variants that set or unset it: what to suggest
    # when the path does not exist. Not part of the study (to_dict and spec_hash leave it out).
    input_variants: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The [footprint] table, checked (FootprintSettings field -> value), a relative CSV made absolute against
    # base_dir: the lowest-precedence source of `wattscale.footprint.resolve_footprint`. Not part of the study.
    footprint: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The experiment's name (runs are stored under it)."""
        return self.design.name

    @property
    def n_conditions(self) -> int:
        """Number of grid cells (1 without a grid)."""
        n = 1
        for _, values in self.grid:
            n *= len(values)
        return n

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-ready data (what the store records)."""
        design = asdict(self.design)
        if isinstance(self.design.seeds, tuple):
            design["seeds"] = list(self.design.seeds)
        # An empty [gpu] is left out, so the studies written before it keep their hash (and run order).
        return {"experiment": design, **{t: self.tables.get(t, {}) for t in RUN_TABLES
                                         if t != "gpu" or self.tables.get(t)},
                "grid": {key: list(values) for key, values in self.grid}, "variant": self.variant}

    def spec_hash(self) -> str:
        """sha256 of the study: the spec without where it is stored and how runs execute.

        The store URL, run_root, checkpoint interval, threads and the like can change between
        invocations of one study without changing it (or its run order, seeded from this hash).
        """
        data = self.to_dict()
        data["experiment"].pop("store")
        for key in EXECUTION_TRAIN_KEYS:
            data["train"].pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def load_experiment(path: Path, variant: str | None = None,
                    settings: list[str] | tuple[str, ...] = ()) -> ExperimentSpec:
    """Read, merge (variant, then `--set` settings) and validate an experiment file."""
    raw = _read_toml(path)
    variants = raw.pop("variants", {})
    if not isinstance(variants, dict):
        raise ConfigError("variants: must be a table of tables, e.g. [variants.smoke]")
    if variant is not None:
        if variant not in variants:
            known = ", ".join(sorted(variants)) or "none in this file"
            raise ConfigError(f"--variant: unknown variant {variant!r}; known: {known}")
        if not isinstance(variants[variant], dict):
            raise ConfigError(f"variants.{variant}: must be a table, e.g. [variants.{variant}.train]")
        chosen = dict(variants[variant])
        unset = chosen.pop("unset", [])
        _check_tables(chosen, f"variants.{variant}.", allowed=FILE_TABLES[:-1])
        for table, values in chosen.items():
            if "unset" in values and table != "grid":
                raise ConfigError(f"variants.{variant}.{table}.unset: write unset = [...] directly under "
                                  f"[variants.{variant}], before its sub-tables such as [variants.{variant}.{table}]")
        raw = _merge(raw, chosen)
        _unset(raw, unset, f"variants.{variant}.unset")
        raw.setdefault("experiment", {})
        if "name" not in chosen.get("experiment", {}) and "name" in raw["experiment"]:
            # Keep a variant's plan apart from the full study's in the store.
            raw["experiment"]["name"] = f"{raw['experiment']['name']}-{variant}"
    for setting in settings:
        _apply_setting(raw, setting)
    spec = _build_spec(raw, variant, str(path))
    base_dir = Path(path).resolve().parent
    footprint = dict(spec.footprint)
    csv_path = footprint.get("carbon_intensity_csv")
    if csv_path is not None:  # a --set path arrives absolute; a path written in the file is read from its folder
        footprint["carbon_intensity_csv"] = os.path.normpath(base_dir / Path(csv_path).expanduser())
    return replace(spec, base_dir=str(base_dir), input_variants=_input_variants(variants, variant),
                   footprint=footprint)


# Input paths: relative ones written in the file are read from the file's folder (resolved when
# the runs are planned, so the study's hash does not depend on where the repository lies);
# those given with --set are relative to the working directory, like any command-line path.
INPUT_PATH_KEYS = ("data.source", "data.val_source", "data.tokenizer")
FOOTPRINT_CSV_KEY = "footprint.carbon_intensity_csv"  # relative: from the file's folder, or with --set the cwd


def _input_variants(variants: dict[str, Any], chosen: str | None) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """For each input path key, the variants (other than `chosen`) that set or unset it."""
    found: dict[str, list[str]] = {key: [] for key in INPUT_PATH_KEYS}
    for name, tables in variants.items():
        if name == chosen or not isinstance(tables, dict):
            continue
        unset = tables.get("unset", [])
        for key in INPUT_PATH_KEYS:
            section, field = key.split(".")
            table = tables.get(section, {})
            if (isinstance(table, dict) and field in table) or (isinstance(unset, list) and key in unset):
                found[key].append(name)
    return tuple((key, tuple(names)) for key, names in found.items())


def missing_input_error(spec: ExperimentSpec, key: str, written: str, resolved: str) -> ConfigError:
    """The one-line error for an input path (`key`, as `written`) that does not exist at `resolved`."""
    relative = written != resolved  # a relative path written in the file (--set paths arrive absolute)
    where = f" in {spec.source_path}" if spec.source_path and relative else ""
    relative_note = f" (read from the file's folder: {os.path.normpath(resolved)})" if relative else ""
    fix = f"pass your copy with --set {key}=PATH"
    variants = dict(spec.input_variants).get(key, ())
    if variants:
        fix += " or run " + " or ".join(f"--variant {name}" for name in variants) + ", which does without it"
    elif key == "data.source":
        fix += " (or --set data.source=synthetic for the built-in corpus)"
    return ConfigError(f"{key}: {written!r}{where} does not exist{relative_note}; {fix}")


def _unset(raw: dict[str, Any], keys: Any, where: str) -> None:
    """Drop settings a variant wants back at their defaults, e.g. unset = ["data.val_source"]."""
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ConfigError(f"{where}: must be a list of \"section.key\" strings, got {keys!r}")
    for key in keys:
        section, _, name = key.partition(".")
        table = raw.get(section, {})
        if section == "grid":
            flat = _flatten(table)
            found = flat.pop(name, None) is not None
            raw["grid"] = flat
        else:
            found = table.pop(name, None) is not None
        if not found:
            raise ConfigError(f"{where}: {key!r} is not set in the file, so there is nothing to unset")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"experiment file: {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"experiment file: cannot read {str(path)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"experiment file: {str(path)!r} is not valid TOML: {exc}") from None
    _check_tables(raw, "", allowed=FILE_TABLES)
    return raw


def _check_tables(raw: dict[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    for key, value in raw.items():
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown table; use {', '.join(f'[{t}]' for t in allowed)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{prefix}{key}: must be a table, e.g. [{key}]")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Tables of `over` merged key by key into a copy of `base` (a grid factor is replaced whole)."""
    merged = copy.deepcopy(base)
    for table, values in over.items():
        target = merged.setdefault(table, {})
        if table == "grid":
            merged["grid"] = _flatten(target) | _flatten(values)
        else:
            target.update(copy.deepcopy(values))
    return merged


def _apply_setting(raw: dict[str, Any], setting: str) -> None:
    """One `--set section.key=value` (value in TOML syntax; bare words are strings)."""
    key, sep, text = setting.partition("=")
    key = key.strip()
    section, dot, name = key.partition(".")
    if not sep or not dot or not name:
        raise ConfigError(f"--set: {setting!r} must look like section.key=value, e.g. data.source=data/stories")
    if section not in FILE_TABLES[:-1]:
        raise ConfigError(f"--set: unknown section {section!r} in {setting!r}; "
                          f"use one of {', '.join(FILE_TABLES[:-1])}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare path or word
    if (key in INPUT_PATH_KEYS and is_local_path(value)) or (key == FOOTPRINT_CSV_KEY and isinstance(value, str)):
        value = str(Path(value).expanduser().resolve())
    table = raw.setdefault(section, {})
    if section == "grid":
        flat = _flatten(table)
        flat[name] = value
        raw["grid"] = flat
        return
    if f"{section}.{name}" in _flatten(raw.get("grid", {})):
        raise ConfigError(f"--set: {key} is a grid factor in this file; set its values with --set grid.{key}=[...]")
    if section == "footprint" and name.startswith("carbon_intensity_"):  # a constant replaces a CSV and back
        for other in ("carbon_intensity_g_per_kwh", "carbon_intensity_csv"):
            table.pop(other, None)
    table[name] = value


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": [..]}} -> {"train.lr": [..]}; dotted keys stay as they are."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _run_table_fields() -> dict[str, set[str]]:
    """The keys each run table accepts in an experiment file."""
    model = {f.name for f in fields(ModelConfig) if f.name != "name"} | {"preset"}
    train = {f.name for f in fields(TrainConfig)} | set(DERIVED_TRAIN_KEYS)
    return {"model": model, "train": train, "data": {f.name for f in fields(DataConfig)},
            "meter": {f.name for f in fields(MeterConfig)}, "gpu": {f.name for f in fields(GpuConfig)}}


def _build_spec(raw: dict[str, Any], variant: str | None, source_path: str) -> ExperimentSpec:
    design = _build_design(raw.get("experiment", {}))
    known = _run_table_fields()
    tables: dict[str, dict[str, Any]] = {}
    for table in RUN_TABLES:
        values = dict(raw.get(table, {}))
        for key in values:
            if key not in known[table]:
                raise ConfigError(unknown_key_message(table, key, known[table]))
        tables[table] = values
    for key in ("seed", "repeat"):
        if key in tables["train"]:
            raise ConfigError(f"train.{key}: {_NOT_FACTORS['train.' + key]}, not in [train]")
    grid = _build_grid(_flatten(raw.get("grid", {})), known)
    for factor, _ in grid:
        section, name = factor.split(".", 1)
        if name in tables[section]:
            raise ConfigError(f"grid.{factor}: also set in [{section}]; keep it in one place")
    if "preset" not in tables["model"] and "model.preset" not in dict(grid):
        raise ConfigError("model.preset: missing; set it in [model] or make it a grid factor")
    return ExperimentSpec(design, tables, grid, variant, source_path,
                          footprint=_build_footprint(raw.get("footprint", {})))


_FOOTPRINT_NUMBERS = ("carbon_intensity_g_per_kwh", "price_per_kwh", "pue")


def _build_footprint(table: dict[str, Any]) -> dict[str, Any]:
    """The [footprint] table checked key by key (a price's currency may still come from a flag or the environment)."""
    known = {f.name for f in fields(FootprintSettings)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(unknown_key_message("footprint", key, known))
        if key in _FOOTPRINT_NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"footprint.{key}: {value!r} is not a number")
        elif not isinstance(value, str) or not value.strip():
            raise ConfigError(f"footprint.{key}: {value!r} must be a non-empty string")
    values = {k: float(v) if k in _FOOTPRINT_NUMBERS else v.strip() for k, v in table.items()}
    check = dict(values)
    if check.get("price_per_kwh") is not None and not check.get("currency"):
        check["currency"] = "-"  # checked when the settings are resolved (a flag or the environment may give it)
    FootprintSettings(**check)  # ranges and contradictions: one line naming the key
    return values


def _build_design(table: dict[str, Any]) -> StudyDesign:
    known = {f.name for f in fields(StudyDesign)}
    for key in table:
        if key not in known:
            raise ConfigError(unknown_key_message("experiment", key, known))
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("experiment.name: missing; every study needs a name (its runs are stored under it)")
    repetitions = table.get("repetitions", 1)
    if not isinstance(repetitions, int) or isinstance(repetitions, bool) or repetitions < 1:
        raise ConfigError(f"experiment.repetitions: {repetitions!r} must be a positive integer")
    seeds = table.get("seeds", "per-repetition")
    if isinstance(seeds, list):
        if len(seeds) != repetitions or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"experiment.seeds: a list must hold {repetitions} integers (one per repetition), "
                              f"got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError("experiment.seeds: the list repeats a seed; use seeds = \"same\" to repeat one seed")
        seeds = tuple(seeds)
    elif seeds not in SEED_MODES:
        raise ConfigError(f"experiment.seeds: {seeds!r}; choose {' or '.join(SEED_MODES)}, or a list of integers")
    order = table.get("order", "random-blocks")
    if order not in ORDER_DESIGNS:
        raise ConfigError(f"experiment.order: unknown order {order!r}; choose one of: {', '.join(ORDER_DESIGNS)}")
    for key in ("base_seed", "order_seed"):
        value = table.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ConfigError(f"experiment.{key}: {value!r} must be a non-negative integer")
    for key in ("description", "store"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise ConfigError(f"experiment.{key}: {table[key]!r} must be a string")
    return StudyDesign(name=name.strip(), description=table.get("description", ""), repetitions=repetitions,
                       seeds=seeds, base_seed=table.get("base_seed", 0), order=order,
                       order_seed=table.get("order_seed"), store=table.get("store"))


def _build_grid(flat: dict[str, Any], known: dict[str, set[str]]) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    grid = []
    for key, values in flat.items():
        factor = _qualify(key, known)
        if factor in _NOT_FACTORS:
            raise ConfigError(f"grid.{factor}: cannot be a grid factor; {_NOT_FACTORS[factor]}")
        if factor.startswith("meter."):
            raise ConfigError(f"grid.{factor}: meter settings do not change what a run computes, so conditions "
                              "would be one run; compare sampling rates with `wattscale energy RUN_ID --rates`")
        if not isinstance(values, list):
            raise ConfigError(f"grid.{factor}: must be a list of values, e.g. [1, 2], got {values!r}")
        if not values:
            raise ConfigError(f"grid.{factor}: empty list; give at least one value")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"grid.{factor}: values must be single numbers or strings, got {values!r}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"grid.{factor}: {values!r} repeats a value")
        if factor in dict(grid):
            raise ConfigError(f"grid.{factor}: given twice (as {key!r} too)")
        grid.append((factor, tuple(values)))
    return tuple(grid)


def _qualify(key: str, known: dict[str, set[str]]) -> str:
    """'train.lr' stays; 'lr' becomes 'train.lr' when exactly one table has it."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in known:
            raise ConfigError(f"grid.{key}: unknown table {section!r}; use one of {', '.join(RUN_TABLES)}")
        if name not in known[section]:
            raise ConfigError("grid." + unknown_key_message(section, name, known[section]))
        return key
    owners = [section for section, names in known.items() if key in names]
    if len(owners) != 1:
        what = "no table has it" if not owners else f"ambiguous between {', '.join(owners)}"
        raise ConfigError(f"grid.{key}: {what}; write it as section.key, e.g. \"train.lr\"")
    return f"{owners[0]}.{key}"

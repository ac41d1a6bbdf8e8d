"""From an experiment spec to the ordered list of runs: conditions x repetitions, stable ids, order.

Each (condition, repetition) becomes one `RunConfig` and one run id, the same hash of resolved
settings, seed and data content that `wattscale train` uses, so a planned run and a run trained by
hand with the same settings are the same run.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wattscale.config import RunConfig, build_run_config, earlier_run_ids, run_id_for
from wattscale.data import PreparedData, data_fingerprint, open_cached_data, prepare_data, training_subset
from wattscale.errors import ConfigError, WattscaleError
from wattscale.model import ModelConfig

from .design import block_orders
from .spec import INPUT_PATH_KEYS, ExperimentSpec, is_local_path, missing_input_error


@dataclass(frozen=True)
class PlannedRun:
    """One (condition, repetition) of a study, in its place in the run order."""

    position: int  # 0-based place in the run order
    block: int  # the repetition block it runs in
    repetition: int  # the subject index for repeated-measures statistics
    condition: dict[str, Any]  # grid factor -> value
    condition_label: str
    config: RunConfig
    run_id: str
    earlier_run_ids: tuple[str, ...] = ()  # the ids earlier wattscale versions gave it (config.earlier_run_ids)

    @property
    def tokens(self) -> int:
        """The run's exact token budget."""
        return self.config.train.tokens

    def store_row(self) -> dict[str, Any]:
        """The `experiment_runs` row of this run."""
        return {"position": self.position, "run_id": self.run_id, "block": self.block,
                "repetition": self.repetition, "condition": self.condition_label,
                "condition_json": json.dumps(self.condition, sort_keys=True)}


@dataclass(frozen=True)
class ExperimentPlan:
    """Every run of a study in run order, with the seed that fixed the order."""

    spec: ExperimentSpec
    runs: tuple[PlannedRun, ...]
    order_seed: int
    spec_hash: str

    @property
    def total_tokens(self) -> int:
        """Training tokens over all runs."""
        return sum(run.tokens for run in self.runs)

    def store_record(self) -> dict[str, Any]:
        """The `experiments` row of this study."""
        return {"name": self.spec.name, "spec_json": json.dumps(self.spec.to_dict(), sort_keys=True, default=str),
                "spec_hash": self.spec_hash, "order_design": self.spec.design.order, "order_seed": self.order_seed,
                "source_path": self.spec.source_path}


def condition_label(condition: dict[str, Any]) -> str:
    """'data_tokens=500000 lr=0.003' (the key without its table, which is unambiguous in practice)."""
    if not condition:
        return "all"
    return " ".join(f"{key.split('.', 1)[1]}={value}" for key, value in condition.items())


def plan_experiment(spec: ExperimentSpec, cache_dir: Path, prepare: bool = True) -> ExperimentPlan:
    """Expand the grid, resolve and validate every run, and order them.

    prepare=True tokenizes (and caches) every data set the runs need, so that a training-set size
    larger than the data fails here, before any run starts. prepare=False (for a quick look at a
    plan) only fingerprints the data and checks sizes against data already in the cache.
    """
    factors = [key for key, _ in spec.grid]
    conditions = [dict(zip(factors, values, strict=True))
                  for values in itertools.product(*(values for _, values in spec.grid))]
    configs = [_condition_config(spec, condition) for condition in conditions]
    fingerprints = _data_fingerprints(configs, [condition_label(c) for c in conditions], cache_dir, prepare)
    spec_hash = spec.spec_hash()
    order_seed = spec.design.order_seed if spec.design.order_seed is not None else int(spec_hash[:8], 16)
    orders = block_orders(len(conditions), spec.design.repetitions, spec.design.order, order_seed)
    runs: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for block, order in enumerate(orders):
        seed, repeat = spec.design.seed_and_repeat(block)
        for index in order:
            config = replace(configs[index], train=replace(configs[index].train, seed=seed, repeat=repeat))
            label = condition_label(conditions[index])
            run_id = run_id_for(config, fingerprints[index])
            if run_id in seen:
                raise ConfigError(f"grid: conditions {seen[run_id]!r} and {label!r} resolve to the same run; "
                                  "a factor does not change what is trained")
            seen[run_id] = label
            runs.append(PlannedRun(len(runs), block, block, conditions[index], label, config, run_id,
                                   earlier_run_ids(config, fingerprints[index])))
    return ExperimentPlan(spec, tuple(runs), order_seed, spec_hash)


def _condition_config(spec: ExperimentSpec, condition: dict[str, Any]) -> RunConfig:
    """The RunConfig of one grid cell (seed 0; repetitions set it), with derived keys resolved."""
    tables = copy.deepcopy(spec.tables)
    for factor, value in condition.items():
        section, key = factor.split(".", 1)
        tables[section][key] = value
    for key in INPUT_PATH_KEYS:
        section, name = key.split(".")
        value = tables[section].get(name)
        if not is_local_path(value):
            continue
        if spec.base_dir and not Path(value).expanduser().is_absolute():
            tables[section][name] = str(Path(spec.base_dir) / value)
        if not Path(tables[section][name]).expanduser().exists():
            raise missing_input_error(spec, key, value, tables[section][name])
    label = condition_label(condition)
    try:
        _resolve_derived(tables)
        return build_run_config(tables)
    except WattscaleError as exc:
        raise type(exc)(f"condition {label!r}: {exc}") from None


def _resolve_derived(tables: dict[str, dict[str, Any]]) -> None:
    """train.batch_tokens -> batch_size, then train.steps -> tokens (both need seq_len)."""
    train = tables["train"]
    if "batch_tokens" not in train and "steps" not in train:
        return
    model = dict(tables["model"])
    seq_len = train.get("seq_len") or ModelConfig.from_name(model.pop("preset"), **model).context_length
    if "batch_tokens" in train:
        batch_tokens = train.pop("batch_tokens")
        if "batch_size" in train:
            raise ConfigError("train.batch_tokens: give batch_tokens or batch_size, not both")
        if not isinstance(batch_tokens, int) or batch_tokens <= 0 or batch_tokens % seq_len:
            raise ConfigError(f"train.batch_tokens: {batch_tokens!r} must be a positive multiple of seq_len {seq_len}")
        train["batch_size"] = batch_tokens // seq_len
    if "steps" in train:
        steps = train.pop("steps")
        if any(k in train for k in ("tokens", "data_tokens", "epochs")):
            raise ConfigError("train.steps: give steps or a token budget (tokens, data_tokens x epochs), not both")
        if not isinstance(steps, int) or steps <= 0:
            raise ConfigError(f"train.steps: {steps!r} must be a positive integer")
        train["tokens"] = steps * train.get("batch_size", 16) * seq_len


def _data_fingerprints(configs: list[RunConfig], labels: list[str], cache_dir: Path, prepare: bool) -> list[str]:
    """Each config's data fingerprint (the token-shard cache key); checks data_tokens fits the split."""
    resolved: dict[tuple[str, int], tuple[str, PreparedData | None]] = {}
    keys = []
    for config, label in zip(configs, labels, strict=True):
        memo = (json.dumps(config.to_dict()["data"], sort_keys=True), config.model.vocab_size)
        try:
            if memo not in resolved:
                vocab = config.model.vocab_size
                data = prepare_data(config.data, vocab, cache_dir) if prepare else \
                    open_cached_data(config.data, vocab, cache_dir)
                resolved[memo] = (data.cache_key if data else data_fingerprint(config.data, vocab), data)
            key, data = resolved[memo]
            if data is not None:
                training_subset(data.train, config.train.data_tokens)
        except WattscaleError as exc:
            raise type(exc)(f"condition {label!r}: {exc}") from None
        keys.append(key)
    return keys

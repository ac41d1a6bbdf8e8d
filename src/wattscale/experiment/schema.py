"""A JSON Schema of experiment files, generated from the dataclasses the loader validates against.

Editors that read TOML with a schema (taplo, VS Code's Even Better TOML) complete and check keys
when a file's first line is ``#:schema ./experiment.schema.json``. The committed
``experiments/experiment.schema.json`` is this module's output (a test keeps them equal)::

    python -m wattscale.experiment.schema > experiments/experiment.schema.json

The schema describes; `spec.load_experiment` decides (it also checks values, combinations and grids).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import types
import typing
from typing import Any

from wattscale.config import PARALLEL_MODES, PRECISIONS, SCHEDULES, TrainConfig
from wattscale.data import DataConfig
from wattscale.energy.gpu_control import GpuConfig
from wattscale.energy.meter import METER_KINDS, TOTAL_RULES, MeterConfig
from wattscale.footprint import MAX_PUE, FootprintSettings
from wattscale.model import PRESETS, ModelConfig

from .spec import DERIVED_TRAIN_KEYS, EXECUTION_TRAIN_KEYS, ORDER_DESIGNS, RUN_TABLES, SEED_MODES, StudyDesign

SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
SCHEMA_FILE_NAME = "experiment.schema.json"
# Values a string field accepts, where the loader checks them against a fixed list.
_CHOICES: dict[str, tuple[str, ...]] = {
    "train.schedule": SCHEDULES, "train.precision": PRECISIONS, "train.parallel": PARALLEL_MODES,
    "meter.total": TOTAL_RULES, "model.preset": tuple(PRESETS), "experiment.order": ORDER_DESIGNS,
}
_DERIVED = {"steps": ("integer", "optimiser steps: tokens = steps x batch_size x seq_len (experiment files only)"),
            "batch_tokens": ("integer", "tokens per optimiser step: batch_size = batch_tokens / seq_len "
                                        "(experiment files only)")}
_SCALARS = {int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"}, bool: {"type": "boolean"}}


def experiment_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of an experiment file."""
    tables = {
        "experiment": _table_schema(StudyDesign, "experiment"),
        "model": _table_schema(ModelConfig, "model", skip=("name",)),
        "train": _table_schema(TrainConfig, "train", skip=("seed", "repeat")),
        "data": _table_schema(DataConfig, "data"),
        "meter": _table_schema(MeterConfig, "meter"),
        "gpu": _table_schema(GpuConfig, "gpu"),
        "footprint": _table_schema(FootprintSettings, "footprint"),
    }
    footprint = tables["footprint"]["properties"]
    footprint["pue"].update(minimum=1.0, maximum=MAX_PUE)
    for key in ("carbon_intensity_g_per_kwh", "price_per_kwh"):
        footprint[key]["minimum"] = 0
    tables["gpu"]["properties"]["power_limit_w"]["exclusiveMinimum"] = 0
    tables["gpu"]["properties"]["sm_clock_mhz"]["minimum"] = 1
    tables["model"]["properties"]["preset"] = {
        "type": "string", "enum": list(PRESETS), "description": "a model preset (`wattscale presets`); "
        "the other [model] keys override its fields"}
    for key in DERIVED_TRAIN_KEYS:
        kind, meaning = _DERIVED[key]
        tables["train"]["properties"][key] = {"type": kind, "minimum": 1, "description": meaning}
    tables["meter"]["properties"]["kinds"]["items"]["enum"] = [*METER_KINDS, "none"]
    seeds = tables["experiment"]["properties"]["seeds"]
    seeds.pop("anyOf", None)
    seeds["oneOf"] = [{"type": "string", "enum": list(SEED_MODES)},
                      {"type": "array", "items": {"type": "integer", "minimum": 0}, "uniqueItems": True}]
    grid = _grid_schema(tables)
    variant_experiment = {**tables["experiment"], "required": []}
    variant = {
        "type": "object", "additionalProperties": False,
        "description": "merged over the file's tables by --variant NAME",
        "properties": {
            "unset": {"type": "array", "items": {"type": "string"},
                      "description": "\"section.key\" settings put back to their defaults (before the sub-tables)"},
            "experiment": variant_experiment, **{t: tables[t] for t in RUN_TABLES},
            "footprint": tables["footprint"], "grid": grid,
        },
    }
    return {
        "$schema": SCHEMA_DRAFT,
        "$id": SCHEMA_FILE_NAME,
        "title": "wattscale experiment file",
        "description": "A repeated-measures study: `wattscale plan|run FILE [--variant NAME] [--set KEY=VALUE]`.",
        "type": "object", "additionalProperties": False, "required": ["experiment"],
        "properties": {**tables, "grid": grid,
                       "variants": {"type": "object", "additionalProperties": variant,
                                    "description": "named variants, e.g. [variants.smoke.train]"}},
    }


def _table_schema(cls: type, section: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    properties: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        prop = _type_schema(hints[field.name])
        if f"{section}.{field.name}" in _CHOICES:
            prop["enum"] = list(_CHOICES[f"{section}.{field.name}"])
        default = _default(field)
        if default is not None and default is not dataclasses.MISSING:
            prop["default"] = list(default) if isinstance(default, tuple) else default
        if field.name in comments:
            prop["description"] = comments[field.name]
        properties[field.name] = prop
    doc = (inspect.getdoc(cls) or "").split("\n\n")[0].replace("\n", " ")
    # Only [experiment] has a key every file must give (its name); model fields come from the preset.
    required = [f.name for f in dataclasses.fields(cls)
                if section == "experiment" and _default(f) is dataclasses.MISSING]
    return {"type": "object", "additionalProperties": False, "description": doc, "properties": properties,
            "required": required}


def _type_schema(hint: Any) -> dict[str, Any]:
    """int | None -> {"type": "integer"} (TOML has no null: leaving a key out gives None)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        options = [_type_schema(a) for a in args]
        return options[0] if len(options) == 1 else {"anyOf": options}
    if typing.get_origin(hint) is tuple:
        return {"type": "array", "items": _type_schema(args[0])}
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    raise TypeError(f"no JSON Schema type for {hint!r}")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing `# comment` of each field line in the class's source: what the field means."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for match in re.finditer(r"^\s{4}(\w+): [^#\n]*#\s*(.+)$", source, flags=re.MULTILINE):
        found[match[1]] = match[2].strip()
    return found


def _grid_schema(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Grid factors: "section.key" = [values]; a bare key is accepted where exactly one table has it."""
    properties = {}
    for section in ("model", "train", "data", "gpu"):
        for key, prop in tables[section]["properties"].items():
            if section == "train" and key in EXECUTION_TRAIN_KEYS:
                continue  # execution settings cannot be factors
            item = {k: v for k, v in prop.items() if k not in ("default", "description")}
            properties[f"{section}.{key}"] = {"type": "array", "minItems": 1, "uniqueItems": True, "items": item,
                                              "description": prop.get("description", f"values of {section}.{key}")}
    return {"type": "object", "description": "factors: \"section.key\" = [values]; every combination is a condition",
            "properties": properties,
            "additionalProperties": {"type": "array", "minItems": 1,
                                     "items": {"type": ["integer", "number", "string", "boolean"]}}}


def main() -> int:
    """Print the schema (sorted keys, two-space indent, final newline)."""
    sys.stdout.write(schema_text())
    return 0


def schema_text() -> str:
    """The schema as the committed file holds it."""
    return json.dumps(experiment_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""The layout: shared constants and helpers are defined in one module each, and the analysis is in packages."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from wattscale import confidence, jsonout, limits, units

SRC = Path(__file__).resolve().parents[1] / "src" / "wattscale"

# name -> the one module (relative to src/wattscale) that may define it
HOMES = {
    "JOULES_PER_KWH": "units.py", "SECONDS_PER_HOUR": "units.py", "BYTES_PER_MB": "units.py",
    "MAX_INT64": "limits.py", "MAX_TRAIN_TOKENS": "limits.py", "MAX_THREADS": "limits.py",
    "CI_LEVEL": "confidence.py", "CONFIDENCE": "confidence.py", "mean_ci": "confidence.py",
    "JsonResult": "jsonout.py", "json_ready": "jsonout.py", "Result": "jsonout.py", "_Result": "jsonout.py",
    "plain": "jsonout.py",
}


def _definitions() -> dict[str, list[str]]:
    """name -> the modules that define it at module level (assignment, function or class)."""
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names = [node.target.id]
            else:
                continue
            for name in names:
                found.setdefault(name, []).append(str(path.relative_to(SRC)))
    return found


@pytest.mark.parametrize("name", sorted(HOMES))
def test_each_shared_name_is_defined_in_one_module(name: str) -> None:
    assert set(_definitions().get(name, [HOMES[name]])) == {HOMES[name]}


def test_the_shared_values() -> None:
    assert units.JOULES_PER_KWH == 1000 * units.SECONDS_PER_HOUR
    assert limits.MAX_INT64 == 2**63 - 1 and confidence.CI_LEVEL == 0.95
    assert jsonout.json_ready({"a": (1, [2.0])}) == {"a": [1, [2.0]]}


def test_json_results_are_plain_data() -> None:
    @dataclasses.dataclass(frozen=True)
    class Inner(jsonout.JsonResult):
        x: object

    @dataclasses.dataclass(frozen=True)
    class Outer(jsonout.JsonResult):
        _hidden: ClassVar[tuple[str, ...]] = ("secret",)
        inner: Inner
        values: object
        secret: int = 1

    got = Outer(Inner(np.float64(1.5)), {2: np.arange(3), "t": (np.int64(4),)}).to_dict()
    assert got == {"inner": {"x": 1.5}, "values": {2: [0, 1, 2], "t": [4]}}
    assert type(got["inner"]["x"]) is float and type(got["values"]["t"][0]) is int
    assert json.loads(jsonout.strict_json(got)) == {"inner": {"x": 1.5}, "values": {"2": [0, 1, 2], "t": [4]}}


def test_analysis_modules_live_in_their_packages() -> None:
    flat = {p.name for p in (SRC / "analysis").glob("*.py")}
    assert not {n for n in flat if n.startswith("laws") or "study" in n or n == "energy_plan.py"}
    assert {p.name for p in (SRC / "analysis" / "laws").glob("*.py")} == {
        "__init__.py", "forms.py", "data.py", "optimiser.py", "fit.py", "bootstrap.py", "checks.py", "optima.py",
        "plans.py", "plot.py", "analysis.py"}
    assert {p.name for p in (SRC / "analysis" / "study").glob("*.py")} == {
        "__init__.py", "data.py", "analysis.py", "dynamics.py", "long_table.py"}

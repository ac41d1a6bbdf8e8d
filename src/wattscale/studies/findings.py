"""``findings.json``: the numbers a study's page states, each with the command and JSON path that give it.

```json
{
  "experiment": "tinystories_token_scale",
  "findings": [
    {"name": "tpj_rm_anova_f",
     "statement": "tokens per joule differ across the set sizes, F(2, 34) = 12.3",
     "command": ["analyze", "--experiment", "tinystories_token_scale", "--json"],
     "path": "statistics[metric=tokens_per_joule].rm_anova.f",
     "value": 12.3, "tolerance": 0.05}
  ]
}
```

``command`` is a `wattscale` command line without ``--store`` (the checker adds the store the study was imported
into) that prints JSON; ``path`` walks that JSON: dot-separated keys, each optionally followed by selectors,
``[3]`` or ``[-1]`` (a list index) and ``[field=value]`` (the one element of a list whose ``field`` is
``value``; ``[metric=final_val_loss,level=bf16]``: the one whose fields have all of those values). A number
matches when ``|actual - value| <= tolerance`` (default 0: exact); anything else must be
equal. `wattscale check-study FOLDER` and tests/test_study_exports.py check every finding of a folder.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

_SEGMENT = re.compile(r"^([^.\[\]]*)((?:\[[^\]]*\])*)$")
_SELECTOR = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class Finding:
    """One stated number (or verdict): where it comes from and what the page says it is."""

    name: str
    statement: str
    command: tuple[str, ...]
    path: str
    value: Any
    tolerance: float = 0.0


@dataclass(frozen=True)
class FindingCheck(JsonResult):
    """A finding recomputed: the stated and the actual value, and whether they agree."""

    name: str
    statement: str
    path: str
    stated: Any
    actual: Any
    tolerance: float
    ok: bool
    message: str


def load_findings(folder: Path) -> tuple[str, list[Finding]]:
    """(experiment, findings) of ``folder/findings.json``; ConfigError naming the entry and field that is wrong."""
    path = folder / "findings.json"
    where = str(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"findings: {where} not found; give a study folder, with the numbers its page states in "
                          "findings.json (see docs/guides/studies.md)") from None
    except OSError as exc:
        raise ConfigError(f"findings: cannot read {where} ({exc.strerror}); check the folder") from None
    except ValueError as exc:
        raise ConfigError(f"findings: {where} is not JSON ({exc}); fix the file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("experiment"), str) or \
            not isinstance(raw.get("findings"), list):
        raise ConfigError(f"findings: {where} must be an object with \"experiment\" (a name) and \"findings\" "
                          "(a list)")
    findings = []
    for i, entry in enumerate(raw["findings"]):
        label = f"{where} findings[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"findings: {label} must be an object")
        missing = [k for k in ("name", "statement", "command", "path", "value") if k not in entry]
        if missing:
            raise ConfigError(f"findings: {label} lacks {', '.join(missing)}")
        command = entry["command"]
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command) \
                or "--json" not in command or "--store" in command:
            raise ConfigError(f"findings: {label}.command must be a list of wattscale arguments with --json and "
                              "without --store, e.g. [\"analyze\", \"--experiment\", \"NAME\", \"--json\"]")
        tolerance = entry.get("tolerance", 0.0)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
            raise ConfigError(f"findings: {label}.tolerance must be a number >= 0, got {tolerance!r}")
        findings.append(Finding(name=str(entry["name"]), statement=str(entry["statement"]), command=tuple(command),
                                path=str(entry["path"]), value=entry["value"], tolerance=float(tolerance)))
    return raw["experiment"], findings


def resolve_json_path(value: Any, path: str) -> Any:
    """The element of ``value`` at ``path`` (see the module docstring); KeyError naming the step that fails."""
    current = value
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise KeyError(f"{segment!r} is not KEY or KEY[SELECTOR]...")
        key, selectors = match.groups()
        if key:
            if not isinstance(current, dict) or key not in current:
                keys = sorted(current) if isinstance(current, dict) else type(current).__name__
                raise KeyError(f"no key {key!r} at {segment!r} (there: {keys})")
            current = current[key]
        for selector in _SELECTOR.findall(selectors):
            current = _select(current, selector, segment)
    return current


def _select(items: Any, selector: str, segment: str) -> Any:
    if not isinstance(items, list):
        raise KeyError(f"[{selector}] in {segment!r} needs a list, found {type(items).__name__}")
    if "=" not in selector:
        try:
            return items[int(selector)]
        except (ValueError, IndexError):
            raise KeyError(f"[{selector}] in {segment!r}: not an index of a list of {len(items)}") from None
    wanted = [condition.partition("=")[::2] for condition in selector.split(",")]
    hits = [item for item in items
            if isinstance(item, dict) and all(str(item.get(field)) == value for field, value in wanted)]
    if len(hits) != 1:
        raise KeyError(f"[{selector}] in {segment!r} matches {len(hits)} elements, not one")
    return hits[0]


def check_finding(finding: Finding, output: Any) -> FindingCheck:
    """Compare a finding with the JSON its command printed."""
    try:
        actual = resolve_json_path(output, finding.path)
    except KeyError as exc:
        return _result(finding, None, False, f"path {finding.path}: {exc.args[0]}")
    stated = finding.value
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (stated, actual))
    if numbers:
        ok = math.isfinite(actual) and abs(actual - stated) <= finding.tolerance
        message = "" if ok else f"the data give {actual!r}, not {stated!r} (tolerance {finding.tolerance:g})"
    else:
        ok = actual == stated
        message = "" if ok else f"the data give {actual!r}, not {stated!r}"
    return _result(finding, actual, ok, message)


def _result(finding: Finding, actual: Any, ok: bool, message: str) -> FindingCheck:
    return FindingCheck(name=finding.name, statement=finding.statement, path=finding.path, stated=finding.value,
                        actual=actual, tolerance=finding.tolerance, ok=ok, message=message)

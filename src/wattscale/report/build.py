"""Assemble the report: gather data, run the sections, render one self-contained HTML file."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wattscale.analysis.efficiency import ENERGY_BASES
from wattscale.errors import ConfigError
from wattscale.footprint import FootprintSettings
from wattscale.output_paths import check_output_file
from wattscale.report.data import DEFAULT_MAX_POWER_POINTS, ReportData, gather
from wattscale.report.footprint import footprint_summary
from wattscale.report.html import page, text
from wattscale.report.sections import (
    Section,
    design_section,
    dynamics_section,
    efficiency_section,
    efficiency_summary,
    laws_section,
    loss_section,
    power_section,
    runs_section,
    statistics_section,
)
from wattscale.store import Store, open_store


@dataclass(frozen=True)
class ReportResult:
    """What ``write_report`` wrote: the file, its size, and what it covers."""

    path: Path
    size_bytes: int
    runs: int
    conditions: int
    seconds: float
    pending_sections: tuple[str, ...]


def default_sections(data: ReportData, *, statistics: Mapping[str, Any] | None = None,
                     dynamics: Mapping[str, Any] | None = None, laws: Mapping[str, Any] | None = None,
                     footprint: FootprintSettings | None = None) -> list[Section]:
    """The report's sections in order; the analysis ones are placeholders until their dicts are given.

    ``footprint`` (carbon and cost inputs) adds CO2e and cost per condition to the efficiency section.
    """
    return [design_section(data), runs_section(data), loss_section(data), power_section(data),
            efficiency_section(efficiency_summary(data), footprint_summary(data, footprint)),
            statistics_section(statistics),
            dynamics_section(dynamics), laws_section(laws)]


def render(data: ReportData, sections: Sequence[Section]) -> str:
    """The HTML page for these sections (numbered in order)."""
    figures: dict[str, Any] = {}
    parts, nav = [], []
    for number, section in enumerate(sections, start=1):
        clashes = figures.keys() & section.figures.keys()
        if clashes:
            raise ValueError(f"section {section.id!r} reuses figure ids {sorted(clashes)}")
        figures.update(section.figures)
        flag = ' data-pending="true"' if section.pending else ""
        parts.append(f'<section id="{text(section.id)}"{flag}><h2>{number}. {text(section.title)}</h2>'
                     f"{section.html}</section>")
        nav.append((section.id, f"{number}. {section.title}"))
    scope = f"experiment {data.experiment_name}" if data.experiment_name else "all runs"
    title = f"wattscale report: {scope}"
    subtitle = f"{len(data.runs)} runs, {len(data.conditions)} conditions; store {data.store}; {data.generated_at}"
    return page(title, parts, nav, figures, subtitle)


def build_report(store: Store, experiment: str | None = None, run_id: str | None = None, *,
                 statistics: Mapping[str, Any] | None = None, dynamics: Mapping[str, Any] | None = None,
                 laws: Mapping[str, Any] | None = None, analyze: bool = True,
                 max_power_points: int = DEFAULT_MAX_POWER_POINTS, energy_basis: str = "train",
                 footprint: FootprintSettings | None = None) -> tuple[str, ReportData, list[Section]]:
    """Read the store and return (html, data, sections) for an experiment (or all runs).

    With ``analyze`` (default), sections not given come from `wattscale.analysis` run on the same runs:
    statistics and dynamics (`report.analysis_content`), the scaling law (`report.laws_content`).
    ``energy_basis`` is what efficiency is computed from: ``train`` (the training phase) or ``job``;
    ``footprint`` the carbon and cost inputs (`wattscale.footprint.FootprintSettings`; None: none but a run's own).
    """
    if max_power_points < 2:
        raise ConfigError(f"--max-power-points: must be at least 2, got {max_power_points}")
    if energy_basis not in ENERGY_BASES:
        raise ConfigError(f"--energy-basis: {energy_basis!r} is not one of {', '.join(ENERGY_BASES)}")
    data = gather(store, experiment=experiment, run_id=run_id, max_power_points=max_power_points,
                  energy_basis=energy_basis)
    if analyze and statistics is None and dynamics is None:
        from wattscale.report.analysis_content import study_content

        statistics, dynamics = study_content(store, experiment, energy_basis)
    if analyze and laws is None:
        from wattscale.report.laws_content import laws_content

        laws = laws_content(store, experiment)
    sections = default_sections(data, statistics=statistics, dynamics=dynamics, laws=laws, footprint=footprint)
    return render(data, sections), data, sections


def write_report(store_url: str | os.PathLike[str], output: str | os.PathLike[str], experiment: str | None = None,
                 run_id: str | None = None, **options: Any) -> ReportResult:
    """Write the report for a store (path or URL) to ``output``; the file is replaced atomically."""
    start = time.perf_counter()
    check_output_file(output, "--output")  # before the work: reading and analysing the store takes a while
    with open_store(store_url, create=False) as store:
        html, data, sections = build_report(store, experiment, run_id, **options)
    target = Path(output)
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(html, encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        raise ConfigError(f"--output: cannot write {target} ({exc.strerror}); choose a writable path") from None
    return ReportResult(path=target, size_bytes=target.stat().st_size, runs=len(data.runs),
                        conditions=len(data.conditions), seconds=time.perf_counter() - start,
                        pending_sections=tuple(s.id for s in sections if s.pending))

"""The report's sections. Each is a function returning a ``Section``: title, HTML fragment, figures.

Built-in sections read ``ReportData``; the efficiency section and the three analysis sections take
plain JSON-ready dicts (shapes in the package docstring), so the analysis modules can fill them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from wattscale.confidence import CI_LEVEL, mean_ci_summary
from wattscale.report import figures
from wattscale.report.data import ReportData
from wattscale.report.footprint import footprint_html
from wattscale.report.html import definition_list, figure_slot, fmt, paragraph, table, text
from wattscale.report.summary import band_across_runs


@dataclass(frozen=True)
class Section:
    """One part of the report. ``html`` is already escaped; ``figures`` maps figure ids used in it to Plotly JSON."""

    id: str
    title: str
    html: str
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: bool = False


# --- design and machine ---------------------------------------------------------------------------


def design_section(data: ReportData) -> Section:
    """The experiment's design (or the store's experiments), the machines and software, the data."""
    parts = [_design_html(data)]
    parts.append("<h3>Machine</h3>" + _machines_html(data.runs))
    sources = Counter()
    for run in data.runs:
        config = _json(run.get("config_json"))
        data_cfg = config.get("data", {}) if isinstance(config, dict) else {}
        for key in ("source", "val_source", "tokenizer"):
            if data_cfg.get(key):
                sources[(key, str(data_cfg[key]), str(config.get("data_fingerprint") or ""))] += 1
    if sources:
        rows = [(key, value, fingerprint, count) for (key, value, fingerprint), count in sorted(sources.items())]
        parts.append("<h3>Data</h3>" + table(("setting", "value", "data fingerprint", "runs"), rows,
                                             numeric=(False, False, False, True)))
    software = Counter((r.get("wattscale_version"), r.get("torch_version"), r.get("git_revision")) for r in data.runs)
    if software:
        rows = [(w, t, g, n) for (w, t, g), n in software.most_common()]
        parts.append("<h3>Software</h3>" + table(("wattscale", "torch", "git revision", "runs"), rows,
                                                 numeric=(False, False, False, True)))
    parts.append(paragraph(f"Store: {data.store}. Report generated {data.generated_at}."))
    return Section("design", "Design and machine", "".join(parts))


def _design_html(data: ReportData) -> str:
    statuses = Counter(r["status"] for r in data.runs)
    status_text = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no runs yet"
    if data.experiment is None:
        html = paragraph(f"All runs in the store: {len(data.runs)} ({status_text}). Runs that belong to no "
                         "experiment are grouped by preset and token budget.")
        if data.experiments:
            rows = [(e["name"], e["finished_runs"], e["planned_runs"], e["order_design"], e["created_at"])
                    for e in data.experiments]
            html += "<h3>Experiments in the store</h3>" + table(
                ("experiment", "finished runs", "planned runs", "run order", "created"), rows,
                numeric=(False, True, True, False, False))
        return html
    spec, record = data.experiment["spec"], data.experiment
    exp = spec.get("experiment", {}) if isinstance(spec, dict) else {}
    items = [("experiment", record["name"]), ("description", exp.get("description") or None),
             ("variant", spec.get("variant")), ("source file", record.get("source_path")),
             ("created", record.get("created_at")),
             ("runs", f"{len(data.runs)} of {record.get('planned_runs')} planned: {status_text}"),
             ("repetitions", exp.get("repetitions")), ("seeds", _show(exp.get("seeds"))),
             ("base seed", exp.get("base_seed")),
             ("run order", f"{record.get('order_design')} (seed {record.get('order_seed')})"),
             ("spec hash", str(record.get("spec_hash", ""))[:16])]
    html = definition_list([(k, v) for k, v in items if v is not None])
    grid = spec.get("grid") or {}
    if grid:
        html += "<h3>Conditions (grid)</h3>" + table(("factor", "values"),
                                                      [(k, ", ".join(_show(v) for v in vs)) for k, vs in grid.items()])
    fixed = [(f"{section}.{key}", _show(value)) for section in ("model", "train", "data", "meter")
             for key, value in sorted((spec.get(section) or {}).items())]
    if fixed:
        html += "<h3>Fixed settings</h3>" + table(("setting", "value"), fixed)
    return html


def _machines_html(runs: Sequence[Mapping[str, Any]]) -> str:
    keys = ("device", "cpu", "cpu_threads", "gpu", "gpu_memory_gib", "gpu_count", "world_size", "platform", "python")
    machines: dict[tuple, dict[str, Any]] = {}
    for run in runs:
        info = _json(run.get("device_info_json"))
        if not isinstance(info, dict):
            continue
        key = tuple(_show(info.get(k)) for k in keys)
        entry = machines.setdefault(key, {"runs": 0, "peaks": [], "peak_sources": set()})
        entry["runs"] += 1
        if isinstance(info.get("peak_flops"), (int, float)):
            entry["peaks"].append(float(info["peak_flops"]))
        if info.get("peak_flops_source"):
            entry["peak_sources"].add(str(info["peak_flops_source"]))
    if not machines:
        return paragraph("No device information recorded yet (runs record it when they start).")
    rows = []
    for key, entry in machines.items():
        peaks = entry["peaks"]
        peak = (f"{min(peaks) / 1e9:,.1f}–{max(peaks) / 1e9:,.1f}" if peaks and min(peaks) != max(peaks)
                else f"{peaks[0] / 1e9:,.1f}" if peaks else None)
        rows.append((*key, entry["runs"], peak, "; ".join(sorted(entry["peak_sources"])) or None))
    columns = ("device", "CPU", "CPU threads", "GPU", "GPU memory (GiB)", "GPUs", "processes", "platform", "python",
               "runs", "peak GFLOP/s", "peak source")
    return table(columns, rows, numeric=(False,) * 9 + (True, False, False))


def _json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return None


def _show(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


# --- runs -----------------------------------------------------------------------------------------

RUN_TABLE_COLUMNS = (
    ("#", "position", True), ("run id", "run_id", False), ("name", "name", False), ("condition", "condition", False),
    ("preset", "preset", False), ("seed", "seed", True), ("status", "status", False),
    ("tokens seen", "tokens_seen", True), ("wall time (s)", "wall_seconds", True),
    ("final val loss", "final_val_loss", True), ("training-phase energy (J)", "train_energy_j", True),
    ("job energy (J)", "energy_j", True), ("energy source", "energy_source", False),
    ("tokens/J", "tokens_per_joule", True), ("basis", "energy_basis", False), ("note", "message", False),
)


def runs_section(data: ReportData) -> Section:
    """Every run, one row each; click a column header to sort, type in the box to filter."""
    rows = []
    for i, run in enumerate(data.runs):
        rows.append([i if key == "position" and run.get("position") is None else run.get(key)
                     for _, key, _ in RUN_TABLE_COLUMNS])
    html = ('<p class="controls"><input type="search" id="runs-filter" placeholder="filter runs (any column)" '
            'aria-label="filter runs"> <span id="runs-count"></span></p>'
            + table([c for c, _, _ in RUN_TABLE_COLUMNS], rows, table_id="runs-table", sortable=True,
                    numeric=[n for _, _, n in RUN_TABLE_COLUMNS])
            + paragraph("Click a column header to sort (again to reverse). # is the position in the "
                        "experiment's run order. Job energy: every phase of the run but the idle baseline; "
                        "training-phase energy: the optimiser steps after the warm-up. tokens/J is on each run's "
                        f"basis ({_basis_text(data.energy_basis)})."))
    return Section("runs", f"Runs ({len(data.runs)})", f'<div class="table-wrap">{html}</div>')


# --- validation loss ------------------------------------------------------------------------------


def loss_section(data: ReportData) -> Section:
    """Validation loss against tokens per condition: mean across seeds and a min–max band."""
    by_condition: dict[str, dict[str, list]] = {}
    for run in data.runs:
        if run["run_id"] in data.curves:
            by_condition.setdefault(run["condition"], {})[run["run_id"]] = data.curves[run["run_id"]]
    bands = {c: band_across_runs(curves) for c, curves in by_condition.items()}
    if not any(bands.values()):
        return Section("loss", "Validation loss", paragraph("No finished run has evaluations yet."))
    figure = figures.loss_figure(data.conditions, bands)
    caption = ("Line: mean validation loss across the finished runs (seeds) of each condition; band: min–max "
               "across those runs (n per point in the hover). Click a legend entry to hide a condition, "
               "double-click to show it alone.")
    return Section("loss", "Validation loss", figure_slot("fig-loss", caption), {"fig-loss": figure})


# --- power and energy of one run ------------------------------------------------------------------


def power_section(data: ReportData) -> Section:
    """Power over time and energy per interval of one run (``--run``; default the first finished run)."""
    run = data.power_run
    if run is None:
        return Section("power", "Power and energy per interval", paragraph("No runs yet."))
    label = f"run {run['run_id']}" + (f" ({run['name']})" if run.get("name") else "")
    title = f"Power and energy per interval: {label}"
    shown = ", ".join(f"{d}: {p['n_samples']:,} samples, {len(p['t_seconds']):,} shown" for d, p in data.power.items())
    energy = run.get("energy_j")
    energy_text = (f"{fmt(energy)} J for the job, {fmt(run.get('train_energy_j'))} J in the training phase "
                   f"({run.get('energy_source')})" if energy is not None else "not measured")
    html = paragraph(f"{label}, condition {run['condition']}, status {run['status']}; energy {energy_text}. "
                     "Choose another run with `wattscale report --run RUN_ID`.")
    figs: dict[str, dict[str, Any]] = {}
    if data.power:
        figs["fig-power"] = figures.power_figure(f"Power: {label}", data.power)
        html += figure_slot("fig-power", "Sampled power per device over training time. For display each trace is "
                            f"thinned to min/max per bucket ({shown}); the stored trace is complete.")
    else:
        html += paragraph("This run has no power samples (metering was off or no meter was readable).")
    if data.intervals:
        figs["fig-interval-energy"] = figures.interval_energy_figure(f"Energy per interval: {label}", data.intervals)
        html += figure_slot("fig-interval-energy", "Energy of each interval between evaluations, stacked by phase "
                            "(train, eval, checkpoint, ...; the store's energy_measurements, scope interval); bar "
                            "width = the interval's tokens.")
    else:
        html += paragraph("This run has no interval energy rows.")
    return Section("power", title, html, figs)


# --- efficiency per condition ---------------------------------------------------------------------


def efficiency_summary(data: ReportData) -> dict[str, Any]:
    """Energy, wall time and tokens/J per condition over finished runs: mean, SD and 95% t-interval.

    Returns the dict ``efficiency_section`` takes (shape in the package docstring).
    """
    metrics = [m for m, _ in figures.EFFICIENCY_METRICS]
    runs: dict[str, list[dict[str, Any]]] = {}
    sources: dict[str, set[str]] = {}
    for run in data.runs:
        if run["status"] == "finished":
            runs.setdefault(run["condition"], []).append({"run_id": run["run_id"], **{m: run.get(m) for m in metrics}})
            sources.setdefault(run["condition"], set()).add(run.get("energy_source") or "not measured")
    conditions = [c for c in data.conditions if c in runs]
    return {
        "conditions": conditions, "metrics": metrics, "confidence": CI_LEVEL,
        "method": "mean and two-sided Student-t interval over the finished runs of each condition",
        "summaries": {c: {m: mean_ci_summary(r[m] for r in runs[c]) for m in metrics} for c in conditions},
        "runs": runs, "energy_sources": {c: sorted(sources[c]) for c in conditions},
        "energy_basis": data.energy_basis,
    }


def _basis_text(basis: str) -> str:
    return ("the training phase (optimiser steps after the warm-up; evaluations, checkpoints, saving and the idle "
            "baseline excluded)" if basis == "train" else "the whole job")


def efficiency_section(summary: Mapping[str, Any], footprint: Mapping[str, Any] | None = None) -> Section:
    """A table and a figure of energy, wall time and tokens/J per condition with 95% intervals; then carbon and
    cost (`report.footprint.footprint_summary`), or how to configure them."""
    conditions = summary.get("conditions") or []
    if not conditions:
        return Section("efficiency", "Energy, time and efficiency", paragraph("No finished runs yet."))
    labels = dict(figures.EFFICIENCY_METRICS)
    metrics = list(summary["metrics"])
    columns = ["condition", "n"] + [f"{labels.get(m, m)}: mean [95% CI]" for m in metrics] + ["energy source"]
    rows = []
    for c in conditions:
        stats = summary["summaries"][c]
        rows.append([c, stats[metrics[0]]["n"]] + [_mean_ci_text(stats[m]) for m in metrics]
                    + [", ".join(summary.get("energy_sources", {}).get(c, []))])
    html = table(columns, rows, numeric=[False, True] + [False] * len(metrics) + [False])
    html += paragraph(f"{summary.get('method', '')}; n = 1 gives no interval. Energy for efficiency and tokens "
                      f"per joule: {_basis_text(summary.get('energy_basis', 'train'))}; whole-job energy beside it.")
    figure = figures.efficiency_figure(conditions, summary.get("runs", {}), summary["summaries"])
    html += figure_slot("fig-efficiency", f"Dots: single runs (a box of quartiles with 1.5 IQR whiskers for a "
                        f"condition with over {figures.MAX_DOTS_PER_CONDITION} runs); diamonds: mean with its 95% "
                        "t-interval.")
    html += footprint_html(footprint or {})
    return Section("efficiency", "Energy, time and efficiency per condition", html, {"fig-efficiency": figure})


def _mean_ci_text(stats: Mapping[str, Any]) -> str:
    if stats.get("mean") is None:
        return "–"
    if stats.get("ci_low") is None:
        return fmt(stats["mean"])
    return f"{fmt(stats['mean'])} [{fmt(stats['ci_low'])}, {fmt(stats['ci_high'])}]"


# --- sections filled by wattscale.analysis (pending until wired) ----------------------------------


def content_section(section_id: str, title: str, content: Mapping[str, Any] | None, pending_note: str) -> Section:
    """A section from a generic content dict (intro, sentences, tables, figures, notes); pending when None."""
    if content is None:
        html = (f'<div class="pending"><strong>Section pending.</strong> {text(pending_note)}</div>')
        return Section(section_id, title, html, pending=True)
    parts: list[str] = []
    if content.get("intro"):
        parts.append(paragraph(content["intro"]))
    if content.get("sentences"):
        parts.append('<ul class="sentences">' + "".join(f"<li>{text(s)}</li>" for s in content["sentences"])
                     + "</ul>")
    for t in content.get("tables", ()):
        if t.get("title"):
            parts.append(f"<h3>{text(t['title'])}</h3>")
        columns = list(t["columns"])
        rows = [list(r) for r in t.get("rows", ())]
        numeric = [bool(rows) and all(isinstance(r[k], (int, float)) or r[k] is None for r in rows)
                   for k in range(len(columns))]
        parts.append(f'<div class="table-wrap">{table(columns, rows, numeric=numeric)}</div>')
        if t.get("note"):
            parts.append(paragraph(t["note"]))
    figs: dict[str, dict[str, Any]] = {}
    for k, spec in enumerate(content.get("figures", ())):
        figure_id = f"fig-{section_id}-{k + 1}"
        figs[figure_id] = figures.series_figure(spec)
        parts.append(figure_slot(figure_id, spec.get("caption", "")))
    for note in content.get("notes", ()):
        parts.append(f'<p class="note">{text(note)}</p>')
    return Section(section_id, title, "".join(parts), figs)


def statistics_section(content: Mapping[str, Any] | None = None) -> Section:
    """Repeated-measures statistics tables and APA sentences (from wattscale.analysis.stats)."""
    return content_section("statistics", "Statistics", content,
                           "Repeated-measures ANOVA, pairwise comparisons and APA sentences will come from "
                           "wattscale.analysis.stats.")


def dynamics_section(content: Mapping[str, Any] | None = None) -> Section:
    """Training-dynamics figures: volatility, backslides, spikes, between-seed spread per interval."""
    return content_section("dynamics", "Training dynamics", content,
                           "Volatility, backslides, spikes and between-seed spread per interval will come from "
                           "wattscale.analysis.dynamics.")


def laws_section(content: Mapping[str, Any] | None = None) -> Section:
    """The fitted scaling law with its CI, the optimal batch-size band and the energy-optimal frontier."""
    return content_section("laws", "Scaling law, batch size and energy frontier", content,
                           "The fitted scaling law with bootstrap CIs, the near-optimal batch-size band and the "
                           "energy-optimal frontier will come from wattscale.analysis.laws.")

"""Terminal rendering (rich) of an analysis result dict; nothing here computes a statistic."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from wattscale.analysis.efficiency import BUILTIN_METRICS
from wattscale.footprint import summary_line

UNITS = {name: unit for name, unit, _ in BUILTIN_METRICS}


def num(value: Any, digits: int = 4) -> str:
    """A number in `digits` significant figures, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) and abs(value) < 10**7:
        return f"{value:,}"
    return f"{value:.{digits}g}"


def _ci(summary: dict[str, Any], low: str = "ci95_low", high: str = "ci95_high", mean: str = "mean") -> str:
    if summary.get(mean) is None:
        return "-"
    ci = "" if summary.get(low) is None else f" [{num(summary[low], 3)}, {num(summary[high], 3)}]"
    return f"{num(summary[mean])}{ci}"


def print_study(analysis: dict[str, Any], console: Console | None = None) -> None:
    """Print the header, efficiency per condition, statistics, returns and dynamics of a study analysis."""
    console = console or Console(width=160)
    name = analysis["experiment"] or "all runs"
    console.print(f"[bold]analysis of {name}[/bold] ({analysis['source']}): factor {analysis['factor'] or '-'}, "
                  f"subject {analysis['subject']}, levels {', '.join(map(num, analysis['levels']))}")
    console.print(f"design: {analysis['design_note']}")
    basis = analysis.get("energy_basis", "train")
    train_basis = ("the training phase (optimiser steps after the warm-up; evaluations, checkpoints, saving and "
                   "the idle baseline excluded); job_* metrics: the whole job")
    console.print("energy basis: " + (train_basis if basis == "train" else "the whole job (--energy-basis job)"))
    for warning in analysis.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {warning}")
    _print_missing(analysis["missing"], console)
    _print_conditions(analysis, console)
    _print_footprint(analysis, console)
    for s in analysis["statistics"]:
        print_comparison(s, console)
    _print_returns(analysis["returns"], console)
    for d in analysis["dynamics"]:
        _print_dynamics(d, console)
    for key, reason in analysis["not_computable"].items():
        console.print(f"[yellow]not computable[/yellow] {key}: {reason}")


def _print_missing(missing: dict[str, Any], console: Console) -> None:
    if missing["balanced"]:
        console.print(f"complete: {missing['finished']} finished runs"
                      + (f" of {missing['planned']} planned" if missing["planned"] else ""))
        return
    console.print(f"[yellow]partial data[/yellow]: {missing['finished']} finished"
                  + (f" of {missing['planned']} planned" if missing["planned"] else "")
                  + f"; runs per level {missing['runs_per_level']}")
    for row in missing["not_finished"]:
        console.print(f"  missing: {row['condition']} repetition {row['repetition']} ({row['run_id']}): "
                      f"{row['status']}")


def _print_conditions(analysis: dict[str, Any], console: Console) -> None:
    levels = list(analysis["levels"])
    table = Table(title="efficiency per condition: mean [95% CI] (n)", title_justify="left")
    table.add_column("metric")
    for level in levels:
        table.add_column(num(level), justify="right")
    by_metric: dict[str, dict[Any, dict]] = {}
    for c in analysis["conditions"]:
        by_metric.setdefault(c["metric"], {})[c["level"]] = c
    units = {**UNITS, **(analysis.get("footprint") or {}).get("metrics", {})}
    for metric, cells in by_metric.items():
        unit = units.get(metric, "")
        table.add_row(f"{metric} ({unit})" if unit else metric,
                      *(f"{_ci(cells[lv])} ({cells[lv]['n']})" if lv in cells else "-" for lv in levels))
    console.print(table)
    sources = sorted({s for c in analysis["conditions"] for s in c["energy_sources"]})
    if sources:
        console.print(f"energy source: {', '.join(sources)}"
                      + ("  (estimated = a model from CPU utilisation and a stated TDP, not a measurement)"
                         if "estimated" in sources else ""))


def _print_footprint(analysis: dict[str, Any], console: Console) -> None:
    """The inputs and carbon basis under the CO2e and cost rows, or how to get them (one sentence)."""
    footprint = analysis.get("footprint") or {}
    if not footprint.get("configured"):
        console.print("CO2e and cost: not shown; give --carbon-intensity G_PER_KWH|CSV and --price-per-kwh with "
                      "--currency (or WATTSCALE_* variables, or the experiment file's [footprint] table)", markup=False)
        return
    prints = [{"inputs": r.get("footprint_inputs"), "carbon_basis": r.get("carbon_basis")}
              for r in analysis["runs"] if r.get("footprint_inputs")]
    console.print(summary_line(prints, footprint["energy"]), markup=False)


def print_comparison(s: dict[str, Any], console: Console) -> None:
    """One metric's tests: APA sentences, sphericity, trend verdict, mixed model, pairwise table."""
    console.print(f"\n[bold]{s['metric']}[/bold] across {s['factor']} ({s['n_subjects_complete']} complete "
                  f"subjects{', dropped ' + str(list(s['dropped_subjects'])) if s['dropped_subjects'] else ''})")
    if s["apa"]:
        a = s["rm_anova"]
        console.print(f"  RM-ANOVA: {s['apa']}; {a['sphericity_note']}; GG epsilon {num(a['gg_epsilon'], 3)}, "
                      f"p_GG {num(a['p_gg'], 3)}")
    if s["apa_friedman"]:
        console.print(f"  Friedman: {s['apa_friedman']}")
    if s["monotonic_verdict"]:
        console.print(f"  trend: {s['monotonic_verdict']}")
    if s["mixed_model"]:
        m = s["mixed_model"]
        console.print(f"  mixed model (every run): LR chi2({m['df']}) = {m['lr_chi2']:.2f}, p = {num(m['p'], 3)}")
    for key, reason in s["not_computable"].items():
        console.print(f"  [yellow]not computable[/yellow] {key}: {reason}")
    if s["pairwise"]:
        table = Table(show_header=True, box=None, padding=(0, 2))
        for column in ("pair", "mean diff (a-b)", "95% CI", "t", "df", "p", "p Bonferroni", "p Holm", "d_z"):
            table.add_column(column, justify="left" if column == "pair" else "right")
        for p in s["pairwise"]:
            table.add_row(f"{num(p['level_a'])} vs {num(p['level_b'])}", num(p["mean_diff"]),
                          f"[{num(p['ci95_low'], 3)}, {num(p['ci95_high'], 3)}]", num(p["t"], 3), str(p["df"]),
                          num(p["p_unc"], 3), num(p["p_bonferroni"], 3), num(p["p_holm"], 3), num(p["cohen_dz"], 3))
        console.print(table)


def _print_returns(returns: list[dict[str, Any]], console: Console) -> None:
    if not returns:
        return
    table = Table(title="\nreturns on tokens (per step up the factor; mean [95% CI] across subjects)",
                  title_justify="left")
    for column in ("metric", "step", "kind", "change", "per doubling", "per kWh", "relative"):
        table.add_column(column, justify="left" if column in ("metric", "step", "kind") else "right")
    for r in returns:
        for st in r["steps"]:
            table.add_row(r["metric"], f"{num(st['level_lo'])} -> {num(st['level_hi'])}", st["kind"],
                          _ci(st["value_change"]), _ci(st["per_doubling"]), _ci(st["per_kwh"]),
                          _ci(st["relative_change"]))
    console.print(table)
    for r in returns:
        console.print(f"  {r['metric']}: {r['note']}")


def _print_dynamics(d: dict[str, Any], console: Console) -> None:
    table = Table(title=f"\ndynamics, condition {num(d['condition'])} ({len(d['run_ids'])} runs): per interval "
                  "across seeds", title_justify="left")
    for column in ("interval", "tokens", "val_loss mean", "SD", "CV", "val_ppl mean", "volatility mean",
                   "backslides", "spikes"):
        table.add_column(column, justify="right")
    for row in d["across_seeds"]:
        table.add_row(str(row["interval"]), num(row["tokens_seen"]), num(row["val_loss_mean"]),
                      num(row["val_loss_sd"], 3), num(row["val_loss_cv"], 3), num(row["val_ppl_mean"]),
                      num(row.get("volatility_mean"), 3), str(row.get("n_backslides", "-")),
                      str(row.get("n_spikes", "-")))
    console.print(table)
    for metric, result in d["rm_anova"].items():
        console.print(f"  RM-ANOVA of {metric} across intervals: {result['apa']}")
    console.print(f"  stable phase: {d['stable_phase']['across_seeds']['reason']}")
    spikes_by_run = {sp["run_id"]: sp for sp in d["spikes"]}
    for b in d["backslides"]:
        sp = spikes_by_run.get(b["run_id"])
        spikes = f", {sp['count']} spikes in {sp['steps_tested']} tested steps" if sp else ""
        depth = f" (max depth {num(b['max_depth'], 3)} nats)" if b["count"] else ""
        console.print(f"  run {b['run_id']}: {b['count']} backslides{depth}{spikes}")
    for key, reason in d["not_computable"].items():
        console.print(f"  [yellow]not computable[/yellow] {key}: {reason}")


def print_level_summary(levels: list[dict[str, Any]], console: Console) -> None:
    """Per level: n, mean, SD and 95% CI."""
    table = Table(box=None, padding=(0, 2))
    for column in ("level", "n", "mean", "SD", "95% CI"):
        table.add_column(column, justify="right")
    for row in levels:
        ci = "-" if row["ci95_low"] is None else f"[{num(row['ci95_low'], 3)}, {num(row['ci95_high'], 3)}]"
        table.add_row(num(row["level"]), str(row["n"]), num(row["mean"]), num(row["sd"], 3), ci)
    console.print(table)

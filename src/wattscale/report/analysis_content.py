"""The report's statistics and dynamics sections, from the dict `wattscale analyze --json` prints.

:func:`study_content` runs `wattscale.analysis.study.analyze_study` on the report's store and turns its result
into the generic content dicts that ``statistics_section`` and ``dynamics_section`` render (shape in the package
docstring). Nothing here computes a statistic. pingouin, statsmodels and pandas are base dependencies; should an
install lack one, the sections name it and the fix instead of staying silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wattscale.errors import ConfigError

KEY_FIGURE_METRICS = ("tokens_per_joule", "pee", "final_val_loss")
MAX_SEED_CURVES = 40


def study_content(store: Any, experiment: str | None,
                  energy_basis: str = "train") -> tuple[dict[str, Any], dict[str, Any]]:
    """(statistics content, dynamics content) for the study; a note in each when it cannot be analysed."""
    try:
        from wattscale.analysis.study.analysis import AnalysisOptions, analyze_study
        from wattscale.analysis.study.data import load_study
    except ImportError as exc:
        note = {"notes": [f"Statistics: {exc}; the install is incomplete: pip install --force-reinstall wattscale"]}
        return note, note
    try:
        analysis = analyze_study(load_study(store, experiment), AnalysisOptions(energy_basis=energy_basis)).to_dict()
    except ConfigError as exc:
        note = {"notes": [f"Not computable: {exc}"]}
        return note, note
    return statistics_content(analysis), dynamics_content(analysis)


def _fmt(value: Any) -> Any:
    return value if value is None or isinstance(value, (int, str)) else float(value)


def _mean_ci(summary: Mapping[str, Any]) -> str:
    if summary.get("mean") is None:
        return "–"
    if summary.get("ci95_low") is None:
        return f"{summary['mean']:.4g} (n = {summary.get('n')})"
    return f"{summary['mean']:.4g} [{summary['ci95_low']:.3g}, {summary['ci95_high']:.3g}]"


def statistics_content(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """Tables of the RM tests per metric, the pairwise comparisons and the returns; APA sentences; notes."""
    missing = analysis["missing"]
    basis = ("the training phase (optimiser steps after the warm-up; job_* metrics give the whole job)"
             if analysis.get("energy_basis", "train") == "train" else "the whole job")
    intro = (f"Within-subject factor: {analysis['factor'] or 'none (one condition)'}; subject: "
             f"{analysis['subject']}. {analysis['design_note']}. {missing['finished']} finished runs"
             + (f" of {missing['planned']} planned" if missing["planned"] else "")
             + f". Energy basis of the efficiency metrics: {basis}.")
    sentences, rows, pairs, notes = [], [], [], []
    for s in analysis["statistics"]:
        a, fr = s["rm_anova"] or {}, s["friedman"] or {}
        up, down, mm = s["trend_increasing"] or {}, s["trend_decreasing"] or {}, s["mixed_model"] or {}
        if s["apa"]:
            sentences.append(f"{s['metric']}: {s['apa']}" + (f"; {s['monotonic_verdict']}"
                                                             if s["monotonic_verdict"] else ""))
        rows.append([s["metric"], _fmt(a.get("f")), _fmt(a.get("df1")), _fmt(a.get("df2")), _fmt(a.get("p")),
                     _fmt(a.get("gg_epsilon")), _fmt(a.get("p_gg")), _fmt(a.get("ng2")), _fmt(a.get("mauchly_w")),
                     _fmt(a.get("mauchly_p")), _fmt(fr.get("chi2")), _fmt(fr.get("p")), _fmt(up.get("p")),
                     _fmt(down.get("p")), _fmt(mm.get("p")),
                     "; ".join(f"{k}: {v}" for k, v in s["not_computable"].items()) or "–"])
        pairs += [[p["dv"], p["level_a"], p["level_b"], _fmt(p["mean_diff"]), _fmt(p["ci95_low"]),
                   _fmt(p["ci95_high"]), _fmt(p["t"]), p["df"], _fmt(p["p_unc"]), _fmt(p["p_bonferroni"]),
                   _fmt(p["p_holm"]), _fmt(p["cohen_dz"])] for p in s["pairwise"]]
    notes += [f"warning: {w}" for w in analysis.get("warnings", [])]
    notes += [f"{k}: {v}" for k, v in analysis["not_computable"].items()]
    notes += [f"missing: {m['condition']} repetition {m['repetition']} ({m['run_id']}): {m['status']}"
              for m in missing["not_finished"]]
    tables = [
        {"title": "Repeated-measures tests per metric", "columns": [
            "metric", "F", "df1", "df2", "p", "GG ε", "p (GG)", "η²G", "Mauchly W", "Mauchly p", "Friedman χ²",
            "Friedman p", "Page p (increasing)", "Page p (decreasing)", "mixed-model p", "not computable"],
         "rows": rows, "note": "One-way RM-ANOVA (pingouin) with Mauchly's test and the Greenhouse-Geisser "
                               "correction; Friedman; Page's L one-sided each way; a mixed-model likelihood-ratio "
                               "test when the design is unbalanced."},
        {"title": "Pairwise comparisons", "columns": [
            "metric", "level a", "level b", "mean(a - b)", "95% CI low", "95% CI high", "t", "df", "p",
            "p Bonferroni", "p Holm", "Cohen's d_z"], "rows": pairs,
         "note": "Paired t-tests over the subjects with both levels; p corrected over all pairs of a metric."},
        _conditions_table(analysis),
    ]
    if analysis["returns"]:
        tables.append(_returns_table(analysis))
    figures = [_metric_figure(analysis, m) for m in KEY_FIGURE_METRICS
               if any(c["metric"] == m and c["mean"] is not None for c in analysis["conditions"])]
    notes += [f"{r['metric']}: {r['note']}" for r in analysis["returns"]]
    return {"intro": intro, "sentences": sentences, "tables": tables, "figures": figures, "notes": notes}


def _conditions_table(analysis: Mapping[str, Any]) -> dict[str, Any]:
    levels = list(analysis["levels"])
    cells: dict[str, dict[Any, dict]] = {}
    for c in analysis["conditions"]:
        cells.setdefault(c["metric"], {})[c["level"]] = c
    rows = [[metric, *(_mean_ci(by_level[lv]) if lv in by_level else "–" for lv in levels)]
            for metric, by_level in cells.items()]
    return {"title": "Every efficiency metric per condition: mean [95% CI]", "columns": ["metric", *map(str, levels)],
            "rows": rows, "note": "Definitions in the docs (Analysis guide); a metric a run cannot have (no energy, no "
                                  "peak FLOP/s) is left out of its condition's n, never counted as zero."}


def _returns_table(analysis: Mapping[str, Any]) -> dict[str, Any]:
    rows = [[r["metric"], f"{st['level_lo']} -> {st['level_hi']}", st["kind"], _mean_ci(st["per_doubling"]),
             _mean_ci(st["per_kwh"]), _mean_ci(st["relative_change"])] for r in analysis["returns"]
            for st in r["steps"]]
    return {"title": "Returns on tokens", "columns": ["metric", "step", "kind", "per doubling of tokens",
                                                      "per extra kWh", "relative change"], "rows": rows,
            "note": "gain = lower loss or perplexity at the higher level; change = efficiency at the higher level "
                    "minus the lower; means and 95% CIs across subjects."}


def _metric_figure(analysis: Mapping[str, Any], metric: str) -> dict[str, Any]:
    rows = [c for c in analysis["conditions"] if c["metric"] == metric]
    numeric = all(isinstance(c["level"], (int, float)) for c in rows)
    return {"title": f"{metric} per condition (mean, 95% CI)", "x_label": analysis["factor"] or "condition",
            "y_label": metric, "x_log": numeric and len(rows) > 2 and min(c["level"] for c in rows) > 0,
            "caption": "Mean across repetitions with its 95% t-interval.",
            "series": [{"name": metric, "x": [c["level"] if numeric else str(c["level"]) for c in rows],
                        "y": [c["mean"] for c in rows], "y_low": [c["ci95_low"] for c in rows],
                        "y_high": [c["ci95_high"] for c in rows], "mode": "markers", "band_label": "95% CI"}]}


def dynamics_content(analysis: Mapping[str, Any]) -> dict[str, Any]:
    """Per-interval figures (volatility, seed spread, backslides, spikes, per-seed curves), a per-run table."""
    dynamics = analysis["dynamics"]
    if not dynamics:
        return {"notes": [analysis["not_computable"].get("dynamics", "no dynamics: no evaluations stored")]}
    sentences, rows, notes = [], [], []
    for d in dynamics:
        name = d["condition"]
        sentences += [f"{name}: RM-ANOVA of {m} across intervals: {r['apa']}" for m, r in d["rm_anova"].items()]
        sentences.append(f"{name}: stable phase: {d['stable_phase']['across_seeds']['reason']}")
        spikes = {s["run_id"]: s for s in d["spikes"]}
        phases = d["stable_phase"]["per_run"]
        for b in d["backslides"]:
            sp, phase = spikes.get(b["run_id"], {}), phases.get(b["run_id"], {})
            rows.append([str(name), b["run_id"], b["count"], _fmt(b["max_depth"]), sp.get("count"),
                         sp.get("steps_tested"), phase.get("tokens_seen")])
        notes += [f"{name}: {k}: {v}" for k, v in d["not_computable"].items()]

    def per_interval(key: str) -> list[dict[str, Any]]:
        return [{"name": str(d["condition"]), "x": [r["tokens_seen"] for r in d["across_seeds"]],
                 "y": [r.get(key) for r in d["across_seeds"]], "mode": "lines+markers"} for d in dynamics]

    def bars(key: str) -> list[dict[str, Any]]:
        return [{**s, "kind": "bar"} for s in per_interval(key)]

    figures = [
        {"title": "Rolling volatility of validation loss (mean across seeds)", "x_label": "tokens seen",
         "y_label": "SD of val-loss changes (nats)", "series": per_interval("volatility_mean"),
         "caption": "Rolling SD of successive val-loss changes; not computable for the first intervals."},
        {"title": "Between-seed spread of validation loss", "x_label": "tokens seen", "y_label": "SD across seeds "
         "(nats)", "series": per_interval("val_loss_sd"), "caption": "SD (ddof 1) across seeds at each evaluation."},
        {"title": "Backslides per interval", "x_label": "tokens seen", "y_label": "runs with a backslide",
         "series": bars("n_backslides"), "caption": "Runs whose val loss rose above their best so far."},
        {"title": "Loss spikes per interval", "x_label": "tokens seen", "y_label": "spikes",
         "series": bars("n_spikes"), "caption": "Training steps above the rolling median by more than k MADs."},
    ]
    curves = [r for d in dynamics for r in d["intervals"]]
    run_ids = list(dict.fromkeys(r["run_id"] for r in curves))[:MAX_SEED_CURVES]
    figures.append({"title": "Validation loss per run", "x_label": "tokens seen", "y_label": "val loss (nats)",
                    "caption": f"Each run's evaluations (at most {MAX_SEED_CURVES} runs drawn).",
                    "series": [{"name": run_id, "mode": "lines",
                                "x": [r["tokens_seen"] for r in curves if r["run_id"] == run_id],
                                "y": [r["val_loss"] for r in curves if r["run_id"] == run_id]} for run_id in run_ids]})
    table = {"title": "Per run", "columns": ["condition", "run", "backslides", "max backslide depth (nats)", "spikes",
                                            "steps tested for spikes", "stable from tokens"], "rows": rows}
    return {"intro": "Per evaluation interval: rolling volatility, backslides, spikes and the spread across seeds "
                     "(definitions and thresholds in the docs, Analysis guide).", "sentences": sentences,
            "tables": [table], "figures": figures, "notes": notes}

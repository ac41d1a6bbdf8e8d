"""Carbon and cost in the report: per condition, the facility energy, CO2e and cost of the finished runs'
efficiency energy, with the inputs and the carbon basis stated under the table (`wattscale.footprint`).

``footprint_summary(data, settings)`` returns a JSON-ready dict::

    {"configured": bool, "inputs": "PUE 1.20; 350 gCO2e/kWh (constant); 0.3 EUR/kWh", "currency": "EUR",
     "energy": "which energy", "conditions": [label, ...], "note": "the line stating inputs and bases",
     "summaries": {label: {metric: {"n", "mean", "sd", "ci_low", "ci_high"}}}}

and ``footprint_html(summary)`` the fragment the efficiency section ends with: the table and its note, or one
sentence on how to configure carbon and cost when nothing is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from wattscale.confidence import mean_ci_summary
from wattscale.footprint import FootprintSettings, run_footprint, summary_line
from wattscale.report.data import ReportData
from wattscale.report.html import fmt, paragraph, table
from wattscale.units import JOULES_PER_KWH

NOT_CONFIGURED = ("CO2e and cost are not shown: give `wattscale report` --carbon-intensity (gCO2e/kWh, or a CSV of "
                  "your grid's intensity), --price-per-kwh with --currency and --pue, or set them in the experiment "
                  "file's [footprint] table or WATTSCALE_CARBON_INTENSITY / WATTSCALE_PRICE_PER_KWH / "
                  "WATTSCALE_CURRENCY / WATTSCALE_PUE.")
# (key, column title); cost's title gains the currency.
COLUMNS = (("facility_kwh", "facility energy (kWh)"), ("carbon_intensity_g_per_kwh", "gCO2e/kWh"),
           ("co2e_g", "CO2e (g)"), ("co2e_g_per_token", "gCO2e/token"), ("cost", "cost"))


def footprint_summary(data: ReportData, settings: FootprintSettings | None) -> dict[str, Any]:
    """Per condition (finished runs), mean and 95% CI of facility kWh, intensity, CO2e, CO2e/token and cost."""
    settings = settings or FootprintSettings()
    rows: dict[str, list[dict[str, Any]]] = {}
    prints = []
    for run in data.runs:
        if run["status"] != "finished" or run.get("basis_energy_j") is None:
            continue
        found = run_footprint(run, settings, energy_j=run["basis_energy_j"])
        if found is None:
            continue
        prints.append(found.as_dict())
        tokens = run.get("train_tokens") if run.get("energy_basis") == "train" else run.get("tokens_seen")
        rows.setdefault(run["condition"], []).append({
            "facility_kwh": found.facility_kwh, "carbon_intensity_g_per_kwh": found.carbon_intensity_g_per_kwh,
            "co2e_g": found.co2e_g, "cost": found.cost,
            "co2e_g_per_token": found.co2e_g / tokens if found.co2e_g is not None and tokens else None})
    configured = settings.configured or any(p["carbon_basis"] for p in prints)
    conditions = [c for c in data.conditions if c in rows]
    energy = ("each finished run's training-phase energy (the job's for a run without phases)"
              if data.energy_basis == "train" else "each finished run's whole-job energy")
    return {"configured": configured, "inputs": settings.describe(), "currency": settings.currency,
            "energy": energy, "conditions": conditions, "note": summary_line(prints, energy) if prints else "",
            "summaries": {c: {key: mean_ci_summary(r[key] for r in rows[c]) for key, _ in COLUMNS}
                          for c in conditions}}


def footprint_html(summary: Mapping[str, Any]) -> str:
    """The carbon-and-cost table with its inputs, or how to configure it (one sentence)."""
    if not summary.get("configured"):
        return paragraph(NOT_CONFIGURED)
    if not summary["conditions"]:
        return paragraph(f"Carbon and cost: no finished run with energy yet (inputs: {summary['inputs']}).")
    titles = [f"cost ({summary['currency']})" if key == "cost" else title for key, title in COLUMNS]
    columns = ["condition", "n"] + [f"{t}: mean [95% CI]" for t in titles]
    rows = []
    for condition in summary["conditions"]:
        stats = summary["summaries"][condition]
        rows.append([condition, stats["facility_kwh"]["n"]] + [_mean_ci(stats[key]) for key, _ in COLUMNS])
    return ("<h3>Carbon and cost</h3>" + table(columns, rows, numeric=[False, True] + [False] * len(COLUMNS))
            + paragraph(summary["note"] + f". Facility energy = energy x PUE; CO2e = facility kWh x gCO2e/kWh; "
                        f"cost = facility kWh x price. {JOULES_PER_KWH:,.0f} J = 1 kWh."))


def _mean_ci(stats: Mapping[str, Any]) -> str:
    if stats.get("mean") is None:
        return "–"
    if stats.get("ci_low") is None:
        return fmt(stats["mean"])
    return f"{fmt(stats['mean'])} [{fmt(stats['ci_low'])}, {fmt(stats['ci_high'])}]"

"""The report's scaling-law section: the fitted law with its CI, the batch-size band, the energy-optimal frontier.

:func:`laws_content` fits the study's runs with `wattscale.analysis.laws.analysis.analyze_law` (the same code as
``wattscale fit``) and turns the result into the generic content dict ``laws_section`` renders. The form is the
three-term law when the runs vary both batch size and step count, else the Chinchilla law when they vary model
size and tokens; otherwise the section says why no law is fitted. To keep the report quick it fits from the
coarse grid of starts (every other value of each axis; the best starts are then polished as in a full fit) with
``REPORT_BOOTSTRAP`` bootstrap replicates, fewer than ``wattscale fit``'s full grid and 1,000 replicates; the
section says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wattscale.errors import WattscaleError
from wattscale.units import JOULES_PER_KWH

REPORT_BOOTSTRAP = 200
CURVE_POINTS = 24


def choose_form(data: Any) -> tuple[str | None, str]:
    """(form, why): three-term if batch size and steps vary, else chinchilla if N and D vary, else None."""
    distinct = {name: len(np.unique(v)) if (v := getattr(data, name)) is not None else 0
                for name in ("params", "tokens", "batch_tokens", "steps")}
    if distinct["batch_tokens"] >= 2 and distinct["steps"] >= 2 and distinct["params"] >= 2:
        return "three-term", "the runs vary model size, batch size and step count"
    if distinct["params"] >= 2 and distinct["tokens"] >= 2:
        return "chinchilla", "the runs vary model size and tokens (one batch size, or one step count)"
    return None, (f"no law fitted: the runs have {distinct['params']} model size(s) and {distinct['tokens']} token "
                  "count(s); a law needs at least 2 of each (and 2 batch sizes and 2 step counts for the three-term "
                  "law)")


def laws_content(store: Any, experiment: str | None, n_boot: int = REPORT_BOOTSTRAP) -> dict[str, Any]:
    """The content dict of the scaling-law section (a note when no law can be fitted here)."""
    try:
        from wattscale.analysis.laws.analysis import analyze_law
        from wattscale.analysis.laws.data import law_data_from_open_store
        from wattscale.analysis.laws.fit import FitOptions
    except ImportError as exc:
        return {"notes": [f"Scaling laws: {exc}; the install is incomplete: pip install --force-reinstall wattscale"]}
    try:
        data = law_data_from_open_store(store, experiment)
        form, why = choose_form(data)
        if form is None:
            return {"notes": [why]}
        result = analyze_law(data, form, FitOptions(grid="coarse"), n_boot=n_boot)
    except (WattscaleError, ValueError, np.linalg.LinAlgError) as exc:
        return {"notes": [f"No law fitted: {exc}"]}
    return _content(result, data, why)


def _ci(estimate: Any) -> str:
    if estimate is None:
        return "–"
    if not np.isfinite(estimate.ci_low):
        return f"{estimate.value:.4g}"
    return f"{estimate.value:.4g} [{estimate.ci_low:.4g}, {estimate.ci_high:.4g}]"


def _content(result: Any, data: Any, why: str) -> dict[str, Any]:
    fit, boot = result.fit, result.bootstrap
    intro = (f"{fit.form} law, {fit.formula}, fitted to {fit.n_points} points of {fit.n_runs} runs ({why}); "
             f"N counted as {fit.param_counting} parameters; summed Huber loss (delta {fit.huber_delta:g}) of "
             f"log-loss, {fit.n_starts:,} L-BFGS starts (the coarse grid; `wattscale fit` uses the full one), "
             f"{fit.n_starts_at_best} reached the best objective; intervals from {boot.n_converged if boot else 0} "
             "bootstrap replicates over runs (95%).")
    params = [[name, fit.params[name], *(_row(boot.params[name]) if boot else ("–", "–", "–"))]
              for name in fit.params]
    tables = [{"title": "Parameters", "columns": ["parameter", "estimate", "95% CI low", "95% CI high", "SE"],
               "rows": params, "note": f"RMSE of log-loss {fit.rmse_log_loss:.4g}; converged: {fit.converged} "
                                       f"({fit.stop_reason}); on a bound: {', '.join(fit.at_bound) or 'none'}."}]
    if result.comparison:
        tables.append({"title": "Forms compared (AIC, Huber likelihood)",
                       "columns": ["form", "parameters", "AIC", "ΔAIC", "Akaike weight", "RMSE of log-loss"],
                       "rows": [[c.form, c.n_params, c.aic, c.delta_aic, c.akaike_weight, c.rmse_log_loss]
                                for c in result.comparison]})
    if result.compute_optima:
        tables.append({"title": "Compute-optimal allocation (C = 6ND)", "columns": ["FLOPs", "N*", "D*", "L*"],
                       "rows": [[o.flops, _ci(o.params), _ci(o.tokens), _ci(o.loss)] for o in result.compute_optima]})
    figures = [_observed_vs_predicted(fit, data)]
    if result.batch_law is not None:
        bl = result.batch_law
        tables.append({"title": "Optimal batch size M*(D) and the near-optimal band",
                       "columns": ["tokens D", "M* (tokens)", "band low", "band high", "epsilon (nats)"],
                       "rows": [[b.tokens, _ci(b.batch_tokens), _ci(b.band_low), _ci(b.band_high), b.epsilon]
                                for b in result.batch_optima],
                       "note": f"M*(D) = {_ci(bl.coefficient)} x D^{_ci(bl.exponent)}."})
        figures.append(_batch_figure(result, data))
    energy = _energy(result, data)
    tables += energy["tables"]
    figures += energy["figures"]
    if result.validation is not None:
        v = result.validation
        tables.append({"title": "Leave the largest scale out", "columns": [
            "held out", "fitted on", "tested on", "RMSE of log-loss", "mean |relative error|", "max |relative error|",
            "mean log(predicted / observed)"], "rows": [[v.holdout_rule, v.n_train, v.n_test, v.rmse_log_loss,
                                                          v.mean_abs_rel_error, v.max_abs_rel_error,
                                                          v.mean_log_error]]})
    return {"intro": intro, "tables": tables, "figures": figures, "notes": list(result.warnings) + energy["notes"]}


def _row(estimate: Any) -> list[Any]:
    return [estimate.ci_low, estimate.ci_high, estimate.se]


def _observed_vs_predicted(fit: Any, data: Any) -> dict[str, Any]:
    variables = {v: getattr(data, v) for v in ("params", "tokens", "batch_tokens", "steps") if getattr(data, v)
                 is not None}
    predicted = fit.predict(**variables)
    lo, hi = float(min(data.loss.min(), predicted.min())), float(max(data.loss.max(), predicted.max()))
    series = []
    for n in np.unique(data.params):
        at = data.params == n
        series.append({"name": f"N = {n:.3g}", "x": data.loss[at].tolist(), "y": predicted[at].tolist(),
                       "mode": "markers"})
    series.append({"name": "y = x", "x": [lo, hi], "y": [lo, hi], "mode": "lines"})
    return {"title": "Fitted against observed loss", "x_label": "observed loss", "y_label": "fitted loss",
            "caption": "One point per run (or checkpoint), coloured by model size; on the line the law is exact.",
            "series": series}


def _batch_figure(result: Any, data: Any) -> dict[str, Any]:
    from wattscale.analysis.laws.optima import batch_optima

    d = np.geomspace(float(data.tokens.min()), float(data.tokens.max()), CURVE_POINTS)
    rows = batch_optima(result.fit, result.bootstrap, d.tolist(), result.batch_optima[0].epsilon
                        if result.batch_optima else 0.01)
    star = [r.batch_tokens for r in rows]
    return {"title": "Optimal batch size M*(D) with its 95% CI and the near-optimal band", "x_label": "tokens D",
            "y_label": "batch size (tokens)", "x_log": True, "y_log": True,
            "caption": "M*(D) from the three-term law (shaded: bootstrap 95% CI); band low/high: the batch sizes "
                       "whose predicted loss is within epsilon of the optimum; points: the runs.",
            "series": [{"name": "M*(D)", "x": d.tolist(), "y": [e.value for e in star],
                        "y_low": [e.ci_low for e in star], "y_high": [e.ci_high for e in star], "mode": "lines",
                        "band_label": "95% CI"},
                       {"name": "band low", "x": d.tolist(), "y": [r.band_low.value for r in rows], "mode": "lines"},
                       {"name": "band high", "x": d.tolist(), "y": [r.band_high.value for r in rows],
                        "mode": "lines"},
                       {"name": "runs", "x": data.tokens.tolist(), "y": data.batch_tokens.tolist(),
                        "mode": "markers"}]}


def _energy(result: Any, data: Any) -> dict[str, list]:
    """The energy-optimal frontier: the lowest predicted loss per energy budget, with its CI."""
    from wattscale.analysis.laws.plans import plan_energy

    out: dict[str, list] = {"tables": [], "figures": [], "notes": []}
    if data.energy_j is None or not np.isfinite(data.energy_j).any():
        out["notes"].append("No energy-optimal frontier: the runs have no measured energy.")
        return out
    measured_kwh = data.energy_j[np.isfinite(data.energy_j)] / JOULES_PER_KWH
    budgets = np.geomspace(float(measured_kwh.min()), float(measured_kwh.max()) * 10, CURVE_POINTS)
    try:
        plans = plan_energy(result.fit, result.bootstrap, data, budgets.tolist())
    except WattscaleError as exc:
        out["notes"].append(f"No energy-optimal frontier: {exc}")
        return out
    out["figures"].append({
        "title": "Energy-optimal frontier: lowest predicted loss per energy budget", "x_label": "energy (kWh)",
        "y_label": "predicted loss", "x_log": True,
        "caption": f"For each budget, the (N, D, M) in the measured range with the lowest predicted loss, from the "
                   f"measured joules per token (energy source: {data.energy_source or 'unknown'}); band: 95% CI.",
        "series": [{"name": "L*(energy)", "x": budgets.tolist(), "y": [p.loss.value for p in plans],
                    "y_low": [p.loss.ci_low for p in plans], "y_high": [p.loss.ci_high for p in plans],
                    "mode": "lines", "band_label": "95% CI"}]})
    picks = plans[:: max(1, len(plans) // 6)]
    out["tables"].append({"title": "Energy-optimal plans", "columns": ["energy (kWh)", "N", "D (tokens)",
                                                                      "M (batch tokens)", "predicted loss",
                                                                      "on the edge of the measured range"],
                          "rows": [[p.energy_kwh, _ci(p.params), _ci(p.tokens), _ci(p.batch_tokens), _ci(p.loss),
                                    ", ".join(p.at_edge) or "no"] for p in picks]})
    return out

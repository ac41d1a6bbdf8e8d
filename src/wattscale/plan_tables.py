"""What `wattscale plan` and `wattscale train --dry-run` print: planned runs with their estimates (rich tables)."""

from __future__ import annotations

import os
from typing import Any

from rich.table import Table

from wattscale.footprint import FootprintSettings
from wattscale.model import count_parameters
from wattscale.tables import _cell, _console
from wattscale.units import JOULES_PER_KWH, SECONDS_PER_HOUR


def plan_summary(plan, estimates, store_url: str, footprint: FootprintSettings | None = None) -> dict:
    """An experiment plan as JSON-ready data: the runs in order, totals and remaining estimates."""
    runs = []
    for run, est in zip(plan.runs, estimates, strict=True):
        tc = run.config.train
        e = est.to_dict()
        runs.append({
            "position": run.position, "block": run.block, "repetition": run.repetition,
            "condition": run.condition, "run_id": run.run_id, "preset": run.config.model.name,
            "params": count_parameters(run.config.model).total, "seed": tc.seed, "repeat": tc.repeat,
            "tokens": tc.tokens, "data_tokens": tc.data_tokens, "epochs": tc.epochs,
            "batch_size": tc.batch_size, "seq_len": run.config.seq_len, "batch_tokens": run.config.tokens_per_step,
            "steps": -(-tc.tokens // run.config.tokens_per_step), "lr": tc.lr, "schedule": tc.schedule,
            "status": est.status, "est_seconds": est.seconds, "est_joules": est.joules,
            "est_energy_source": est.energy_source, "est_basis": est.basis, "est_uncertainty": est.uncertainty,
            "est_flops": est.flops, "est_co2e_g": e["co2e_g"], "est_cost": e["cost"], "est_currency": e["currency"],
            "est_seconds_low": e["seconds_low"], "est_seconds_high": e["seconds_high"],
            "est_joules_low": e["energy_j_low"], "est_joules_high": e["energy_j_high"]})
    pending = [e for e in estimates if e.basis != "done"]
    return {
        "experiment": plan.spec.name, "variant": plan.spec.variant, "store": store_url,
        "order": plan.spec.design.order, "order_seed": plan.order_seed, "conditions": plan.spec.n_conditions,
        "repetitions": plan.spec.design.repetitions, "runs": runs, "total_runs": len(runs),
        "done_runs": len(estimates) - len(pending), "total_tokens": plan.total_tokens,
        "remaining_tokens": sum(r["tokens"] for r, e in zip(runs, estimates, strict=True) if e.basis != "done"),
        **totals(pending), "footprint_inputs": (footprint or FootprintSettings()).describe(),
        "calibrated_on": sorted({e.calibrated_on for e in estimates if e.calibrated_on}),
        "load_average_now": load_average_now(),
    }


def totals(estimates) -> dict[str, Any]:
    """Sums over estimates, with a total uncertainty.

    The runs of a plan rest on the same calibrations or runs, so their errors are taken to be fully
    correlated: the total's +- is the sum of the runs' +- (a weighted mean of their relative uncertainties),
    not the smaller root-sum-square of independent errors.
    """
    def total(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    seconds = total([e.seconds for e in estimates])
    spread = total([e.seconds * e.uncertainty for e in estimates
                    if e.seconds is not None and e.uncertainty is not None])
    currencies = sorted({e.footprint.currency for e in estimates if e.footprint and e.footprint.currency})
    return {
        "est_remaining_seconds": seconds or 0.0,
        "est_remaining_joules": total([e.joules for e in estimates]) or 0.0,
        "est_remaining_co2e_g": total([e.footprint.co2e_g for e in estimates if e.footprint]),
        "est_remaining_cost": total([e.footprint.cost for e in estimates if e.footprint]),
        "est_currency": currencies[0] if len(currencies) == 1 else None,
        "est_remaining_uncertainty": spread / seconds if seconds and spread is not None else None,
        "runs_without_time_estimate": sum(e.seconds is None for e in estimates),
        "runs_without_energy_estimate": sum(e.joules is None for e in estimates),
    }


def print_plan(plan, estimates, store_url: str, footprint: FootprintSettings | None = None) -> None:
    """Print an experiment's runs in run order and what is left, with time, energy, CO2e and cost estimates."""
    summary = plan_summary(plan, estimates, store_url, footprint)
    columns = ("position", "block", "condition", "seed", "run_id", "preset", "tokens", "batch",
               "steps", "status", "est_time", "est_energy", "est_co2e", "est_cost", "+-", "est_basis")
    table = Table(title=f"experiment {summary['experiment']}: {summary['conditions']} conditions x "
                        f"{summary['repetitions']} repetitions, order {summary['order']} "
                        f"(seed {summary['order_seed']})")
    right = ("position", "block", "seed", "tokens", "steps", "est_time", "est_energy", "est_co2e",
             "est_cost", "+-")
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left")
    for run in summary["runs"]:
        table.add_row(str(run["position"]), str(run["block"]), " ".join(f"{k.split('.', 1)[1]}={v}" for k, v in
                                                                      run["condition"].items()) or "all",
                      str(run["seed"]) + (f" r{run['repeat']}" if run["repeat"] else ""), run["run_id"],
                      run["preset"], _cell(run["tokens"]),
                      f"{run['batch_size']}x{run['seq_len']}={run['batch_tokens']:,}", _cell(run["steps"]),
                      run["status"] or "planned", duration(run["est_seconds"]), energy(run["est_joules"]),
                      co2e(run["est_co2e_g"]), cost(run["est_cost"], run["est_currency"]),
                      percent(run["est_uncertainty"]),
                      "none (below)" if run["est_basis"].startswith("none: ") else run["est_basis"])
    console = _console()
    console.print(table)
    for reason in sorted({r["est_basis"] for r in summary["runs"] if r["est_basis"].startswith("none: ")}):
        console.print(f"no estimate: {reason.removeprefix('none: ')}")
    console.print(f"{summary['total_runs']} runs ({summary['done_runs']} done), {summary['total_tokens']:,} tokens "
                  f"in all, {summary['remaining_tokens']:,} to go")
    pending = summary["total_runs"] - summary["done_runs"]
    missing_t, missing_e = summary["runs_without_time_estimate"], summary["runs_without_energy_estimate"]
    console.print("estimated remaining: " + _total_line(summary, pending)
                  + (f"; {missing_t} runs without a time estimate" if missing_t else "")
                  + (f", {missing_e} without an energy estimate" if missing_e else ""))
    if summary["calibrated_on"]:
        console.print(f"calibrations of: {'; '.join(summary['calibrated_on'])} (`wattscale calibrate`); "
                      f"{_load_now()}")
    console.print(f"carbon and cost inputs: {summary['footprint_inputs']}")
    console.print(f"store: {store_url}")


def _total_line(summary: dict, pending: int) -> str:
    if pending == 0:
        return "nothing (every run is done)"
    if summary["runs_without_time_estimate"] == pending:
        return "- (no estimate for any run)"
    parts = [duration(summary["est_remaining_seconds"]), energy(summary["est_remaining_joules"])]
    if summary["est_remaining_co2e_g"] is not None:
        parts.append(co2e(summary["est_remaining_co2e_g"]))
    if summary["est_remaining_cost"] is not None:
        parts.append(cost(summary["est_remaining_cost"], summary["est_currency"]))
    return ", ".join(parts) + f" (+-{percent(summary['est_remaining_uncertainty'])})"


def print_dry_run(config, run_id: str, estimate) -> None:
    """Print what `train --dry-run` resolved and its estimate."""
    e = estimate.to_dict()
    console = _console()
    console.print(f"run {run_id} (dry run: nothing trained, nothing written): {config.model.name}, "
                  f"{config.train.tokens:,} tokens, batch {config.train.batch_size}x{config.seq_len}, "
                  f"device {config.train.device}, precision {config.train.precision}")
    console.print(f"  training FLOPs: {_cell(estimate.flops)} ({_cell(estimate.flops / max(estimate.tokens, 1))} "
                  "per token)" if estimate.flops else "  training FLOPs: -")
    if estimate.seconds is None:
        console.print(f"  estimate: {estimate.basis}")
        return
    u = estimate.uncertainty
    console.print(f"  time: {duration(estimate.seconds)} ({duration(e['seconds_low'])} to "
                  f"{duration(e['seconds_high'])})")
    console.print(f"  energy: {energy(estimate.joules)} ({energy(e['energy_j_low'])} to {energy(e['energy_j_high'])})"
                  f", source {estimate.energy_source or '-'}")
    if estimate.footprint is not None:
        console.print(f"  CO2e: {co2e(e['co2e_g'])}, cost: {cost(e['cost'], e['currency'])} "
                      f"({estimate.footprint.inputs})")
    on = f" ({estimate.calibrated_on}; {_load_now()})" if estimate.calibrated_on else ""
    console.print(f"  basis: {estimate.basis}{on}; uncertainty +-{percent(u)}")
    if estimate.parts_seconds:
        console.print("  parts: " + ", ".join(f"{name} {duration(s)}" for name, s in estimate.parts_seconds.items()))


def load_average_now() -> float | None:
    """This host's 1-minute load average now (None where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _load_now() -> str:
    load = load_average_now()
    now = "" if load is None else f"load now {load:.1f}; "
    return now + "a calibration holds while the machine is as busy as when it was measured"


def duration(seconds: float | None) -> str:
    """12 s, 3.5 min, 2.1 h, or - for None."""
    if seconds is None:
        return "-"
    return f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.1f} min" if seconds < 7200 \
        else f"{seconds / SECONDS_PER_HOUR:,.1f} h"


def energy(joules: float | None) -> str:
    """123 J, or kWh from 10 kJ on; - for None."""
    if joules is None:
        return "-"
    return f"{joules:,.0f} J" if joules < 10_000 else f"{joules / JOULES_PER_KWH:.4g} kWh"


def co2e(grams: float | None) -> str:
    """grams or kg of CO2e; - for None."""
    if grams is None:
        return "-"
    return f"{grams:.3g} g" if grams < 1000 else f"{grams / 1000:.3g} kg"


def cost(value: float | None, currency: str | None) -> str:
    """A price with its currency; - for None."""
    return "-" if value is None else f"{value:.3g} {currency or ''}".strip()


def percent(fraction: float | None) -> str:
    """0.25 -> 25%; - for None."""
    return "-" if fraction is None else f"{fraction:.0%}"

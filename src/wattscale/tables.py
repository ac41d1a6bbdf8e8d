"""Terminal tables for runs and presets (rich)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from wattscale.footprint import FootprintSettings, summary_line
from wattscale.model import PRESETS, count_parameters, flops_per_token
from wattscale.units import JOULES_PER_KWH

RUN_COLUMNS = ("run_id", "kind", "status", "preset", "params", "tokens_seen", "seed", "wall_seconds",
               "final_val_loss", "joules", "train_energy_j", "energy_source")


def print_runs_table(runs: list[dict], footprint: FootprintSettings | None = None) -> None:
    """Print one row per run with the columns scripts see in `runs --json`.

    With carbon or cost inputs (`footprint`, or a run's own meter.grid_gco2e_per_kwh), each run's ``footprint``
    (see `wattscale.footprint.run_footprint`) adds CO2e and cost columns and a line stating the inputs.
    """
    prints = [r.get("footprint") or {} for r in runs]
    show_co2e = any(f.get("carbon_basis") for f in prints)
    currency = footprint.currency if footprint is not None and footprint.price_per_kwh is not None else None
    extra = (["g_per_kwh", "co2e_g"] if show_co2e else []) + ([f"cost_{currency}"] if currency else [])
    table = Table(title=f"{len(runs)} runs")
    for column in (*RUN_COLUMNS, *extra):
        table.add_column(column, justify="right" if column not in ("run_id", "kind", "status", "preset") else "left")
    for run, found in zip(runs, prints, strict=True):
        cells = [found.get("carbon_intensity_g_per_kwh"), found.get("co2e_g")] if show_co2e else []
        table.add_row(*(_cell(run.get(c)) for c in RUN_COLUMNS), *(_cell(c) for c in cells),
                      *([_cell(found.get("cost"))] if currency else []))
    console = _console()
    console.print(table)
    if extra:
        console.print(summary_line(prints, "each run's job energy (joules)"), markup=False)


def footprint_lines(job: dict | None, train: dict | None = None) -> list[str]:
    """A run's facility energy, CO2e and cost (job, and training phase), each with its energy source and inputs."""
    if not job:
        return []
    lines = [f"facility energy: {job['facility_energy_j']:,.2f} J = {job['facility_energy_j'] / JOULES_PER_KWH:.3e} "
             f"kWh (job energy {job['energy_j']:,.2f} J, source {job['energy_source'] or '-'}, x PUE {job['pue']:.2f})"]
    parts = [("job", job)] + ([("training phase", train)] if train else [])
    if job["co2e_g"] is not None:
        lines.append("CO2e: " + ", ".join(f"{label} {_sig(f['co2e_g'])} g" for label, f in parts))
    elif job["carbon_basis"]:  # an intensity was given but does not apply (a series that misses the run)
        lines.append("CO2e: not computed")
    else:
        lines.append("CO2e: not computed (give --carbon-intensity G_PER_KWH|CSV or $WATTSCALE_CARBON_INTENSITY; "
                     "wattscale never guesses a grid intensity)")
    if job["cost"] is not None:
        lines.append("cost: " + ", ".join(f"{label} {_sig(f['cost'])} {f['currency']}" for label, f in parts))
    else:
        lines.append("cost: not computed (give --price-per-kwh and --currency, or $WATTSCALE_PRICE_PER_KWH)")
    lines.append(f"  inputs: {job['inputs']}; carbon basis: {job['carbon_basis'] or 'no carbon intensity given'}")
    return lines


def _sig(value: float) -> str:
    return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.4e}"


def print_presets_table(as_json: bool = False) -> None:
    """Print every model preset with its shape, parameter counts and FLOPs per token."""
    rows = []
    for name, cfg in PRESETS.items():
        counts = count_parameters(cfg)
        rows.append({"preset": name, "layers": cfg.n_layers, "d_model": cfg.d_model, "heads": cfg.n_heads,
                     "kv_heads": cfg.n_kv_heads, "ffn": cfg.ffn_hidden, "vocab": cfg.vocab_size,
                     "context": cfg.context_length, "tied": cfg.tie_embeddings, "params": counts.total,
                     "params_non_embedding": counts.non_embedding,
                     "train_flops_per_token": flops_per_token(cfg)})
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title="model presets (train FLOPs/token at T = context: "
                        "6*(N_non_embedding + N_output_head) + 12*L*d*T)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "preset" else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    _console().print(table)


def print_energy_report(report) -> None:
    """Print a run's energy by phase and component, per device, its CO2e and the sampling-frequency table."""
    console = _console()
    components = [c for c in ("gpu", "cpu_package", "dram", "cpu_estimate")
                  if any(c in p["components"] for p in report.phases)]
    phases = Table(title=f"energy of run {report.run_id} by phase ({report.duration_s:,.1f} s of the job)")
    for column in ("phase", "seconds", "tokens", *[f"{c}_j" for c in components], "total_j", "source",
                   "mean_power_w", "j_per_token"):
        phases.add_column(column, justify="left" if column in ("phase", "source") else "right")
    for p in ([report.idle] if report.idle else []) + report.phases:
        phases.add_row(p["phase"], _cell(p["seconds"]), _cell(p["tokens"]),
                       *[_cell(p["components"].get(c, {}).get("energy_j")) for c in components],
                       _cell(p["energy_j"]), _cell(p["source"]), _cell(p["mean_power_w"]), _cell(p["joules_per_token"]))
    console.print(phases)
    table = Table(title="per device, whole job")
    for column in ("device", "component", "energy_j", "energy_kwh", "source", "complete", "mean_power_w",
                   "peak_power_w", "idle_power_w", "n_samples"):
        table.add_column(column, justify="left" if column in ("device", "component", "source") else "right")
    for d in report.devices:
        table.add_row(d.device, d.component or "-", _cell(d.energy_j), f"{d.energy_kwh:.3e}", d.source,
                      _cell(d.complete), _cell(d.mean_power_w), _cell(d.peak_power_w), _cell(d.idle_power_w),
                      _cell(d.n_samples))
    console.print(table)
    parts = " + ".join(report.total_components) or "-"
    console.print(f"job total: {report.energy_j:,.2f} J = {report.energy_kwh:.3e} kWh, source {report.source} "
                  f"({parts}; rule {report.total_rule or '-'})"
                  + ("" if report.complete else " (INCOMPLETE: a meter failed during the run)"))
    train = report.train
    if train.get("seconds") is not None:
        console.print(f"training phase: {_cell(train['energy_j'])} J over {_cell(train['seconds'])} s and "
                      f"{_cell(train['tokens'])} tokens = {_cell(train['joules_per_token'])} J/token "
                      "(what efficiency uses by default; warm-up, evaluations, checkpoints and saving excluded)")
    for line in footprint_lines(report.footprint, report.train_footprint):
        console.print(line, markup=False)
    s = report.sampling
    console.print(f"sampling: requested {s.get('sample_hz')} Hz, achieved {_cell(s.get('achieved_hz'))} Hz, "
                  f"{s.get('n_samples')} samples, {s.get('missed_deadlines')} missed deadlines")
    for overlap in report.shared_host:
        console.print(f"shared host: measurement {overlap['id']} (pid {overlap['pid']}) overlapped for "
                      f"{overlap['overlap_s']:,.1f} s")
    for note in report.notes:
        console.print(f"note: {note}")
    rates = Table(title="energy re-computed at lower sampling rates (signed relative error)")
    for column in ("device", "rate_hz", "n_samples", "energy_j", "rel_error_vs_full", "rel_error_vs_counter", "note"):
        rates.add_column(column)
    for r in report.resampled:
        rates.add_row(r["device"], _cell(r["rate_hz"]), _cell(r["n_samples"]), _cell(r["energy_j"]),
                      _cell(r["rel_error_vs_full"]), _cell(r["rel_error_vs_counter"]), r["note"] or "")
    console.print(rates)


def _console() -> Console:
    # When piped (scripts, CI logs) rich would wrap to 80 columns and elide run ids; print wide instead.
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e6 else f"{value:.3e}"
    return str(value)

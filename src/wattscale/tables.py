"""Terminal tables for runs and presets (rich)."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from wattscale.model import PRESETS, count_parameters, flops_per_token

RUN_COLUMNS = ("run_id", "status", "preset", "params", "tokens_seen", "seed", "wall_seconds",
               "final_val_loss", "joules", "energy_source")


def print_runs_table(runs: list[dict]) -> None:
    """Print one row per run with the columns scripts see in `runs --json`."""
    table = Table(title=f"{len(runs)} runs")
    for column in RUN_COLUMNS:
        table.add_column(column, justify="right" if column not in ("run_id", "status", "preset") else "left")
    for run in runs:
        table.add_row(*(_cell(run.get(c)) for c in RUN_COLUMNS))
    _console().print(table)


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
    table = Table(title="model presets (train FLOPs/token = 6*N_non_embedding + 12*L*d*T)")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "preset" else "right")
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    _console().print(table)


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

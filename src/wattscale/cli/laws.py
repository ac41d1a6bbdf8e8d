"""`wattscale fit`, `plan-compute` and `plan-energy`: scaling laws from the store or a CSV file.

Each command reads the points (store: finished runs; CSV: the documented columns, renamed with
``--column NAME=HEADER``), fits the law with its bootstrap, and prints tables with intervals, or one JSON object
with ``--json``. The analysis lives in ``wattscale.analysis.laws*`` and ``wattscale.analysis.laws.plans``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from wattscale.cli.common import (
    add_command,
    add_file_flags,
    add_json_flag,
    add_list_argument,
    existing_store,
    experiment_and_store,
)
from wattscale.errors import ConfigError
from wattscale.jsonout import strict_json

# Named statically: importing the form registry (torch) while building the parser would slow every command.
LAW_FORMS = ("chinchilla", "kaplan", "three-term")
FIGURE_SUFFIXES = (".png", ".pdf", ".svg")


def _columns(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        name, sep, header = pair.partition("=")
        if not sep or not name or not header:
            raise ConfigError(f"--column: {pair!r} is not NAME=HEADER (e.g. --column params='Model Size')")
        out[name.strip()] = header
    return out


def load_points(args: argparse.Namespace):
    """LawData from --csv or the store (the default), with the flags' column mapping and parameter counting."""
    from wattscale.analysis.laws.data import law_data_from_csv, law_data_from_store

    if args.csv:
        if args.from_store or args.file:
            raise ConfigError("--csv: give one source (a CSV, or the store / an experiment FILE), not both")
        return law_data_from_csv(args.csv, _columns(args.column), param_counting=args.param_counting or "unspecified")
    experiment, url = experiment_and_store(args)
    return law_data_from_store(existing_store(url), experiment,
                               param_counting=args.param_counting or "non_embedding", checkpoints=args.checkpoints)


def _options(args: argparse.Namespace):
    from wattscale.analysis.laws.fit import FitOptions

    return FitOptions(huber_delta=args.huber_delta, grid=args.grid, threads=args.threads)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "-"
        if x in (float("inf"), float("-inf")):
            return "inf" if x > 0 else "-inf"
        return f"{x:.4g}"
    return str(x)


def _ci(est: Any) -> str:
    return f"{_fmt(est.value)} [{_fmt(est.ci_low)}, {_fmt(est.ci_high)}]"


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for h in header:
        table.add_column(h, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def _print_fit(analysis: Any) -> None:
    fit, boot = analysis.fit, analysis.bootstrap
    level = f"{boot.level:.0%} CI, {boot.n_converged}/{boot.n_boot} replicates" if boot else "no bootstrap"
    print(f"{fit.form}: {fit.formula}   ({fit.n_points} points, {fit.n_runs} runs, N counted as {fit.param_counting})")
    rows = [[k, _fmt(v), *(([_fmt(boot.params[k].ci_low), _fmt(boot.params[k].ci_high), _fmt(boot.params[k].se)])
                           if boot else ["-", "-", "-"])] for k, v in fit.params.items()]
    _table(f"parameters ({level})", ["parameter", "value", "ci_low", "ci_high", "se"], rows)
    print(f"objective {fit.objective:.6g} (sum of Huber, delta {fit.huber_delta:g}); {fit.n_starts_at_best} of "
          f"{fit.n_starts} starts reached it ({fit.n_starts_near_best} within 0.1%); {fit.n_starts_converged} "
          f"converged; best: {fit.stop_reason}; "
          f"at bound: {', '.join(fit.at_bound) or 'none'}; RMSE(log loss) {fit.rmse_log_loss:.4g}; {fit.seconds:.1f} s")


def _print_checks(analysis: Any) -> None:
    v = analysis.validation
    if v is not None:
        print(f"leave-largest-out ({v.holdout_rule}; {v.n_test} held out): RMSE(log loss) {v.rmse_log_loss:.4g}, "
              f"mean |rel error| {v.mean_abs_rel_error:.3%}, max {v.max_abs_rel_error:.3%}, "
              f"mean log error {v.mean_log_error:+.4f}")
    if analysis.comparison:
        _table("forms compared (AIC, Huber likelihood with fitted scale)",
               ["form", "k", "log-lik", "AIC", "dAIC", "weight"],
               [[c.form, str(c.n_params), _fmt(c.log_likelihood), _fmt(c.aic), _fmt(c.delta_aic),
                 _fmt(c.akaike_weight)] for c in analysis.comparison])
    for w in analysis.warnings:
        print(f"warning: {w}")


def _print_optima(compute: Any, targets: Any, law: Any, batches: Any) -> None:
    if compute:
        _table("compute-optimal allocation (C = 6ND)", ["flops", "N*", "D*", "D*/N*", "L*"],
               [[_fmt(r.flops), _ci(r.params), _ci(r.tokens), _ci(r.tokens_per_param), _ci(r.loss)] for r in compute])
    if targets:
        _table("compute to reach a loss C(L)", ["loss", "flops", "N*", "D*"],
               [[_fmt(t.loss), _ci(t.flops), _ci(t.params), _ci(t.tokens)] for t in targets])
    if law is not None:
        print(f"M*(D) = {_ci(law.coefficient)} * D^{_ci(law.exponent)}")
        print("at M*: L(N, D) = E + A/N^alpha + B/D^beta with "
              + ", ".join(f"{k} {_ci(v)}" for k, v in law.implied_chinchilla.items()))
    if batches:
        _table(f"optimal batch size (band: loss within {batches[0].epsilon:g} of the optimum)",
               ["tokens", "M*", "band low", "band high"],
               [[_fmt(b.tokens), _ci(b.batch_tokens), _ci(b.band_low), _ci(b.band_high)] for b in batches])


def _check_figure(path: str | None) -> None:
    """Before the work: a figure that cannot be written (suffix, folder, matplotlib) would waste the fit."""
    if path is None:
        return
    from wattscale.output_paths import check_output_file

    check_output_file(path, "-o/--output", FIGURE_SUFFIXES)
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"-o/--output: drawing the figure needs matplotlib ({exc}); pip install matplotlib, "
                          "or leave -o out") from None


def _compare(values: list[str] | None) -> list[str] | None:
    """--compare: None (auto), [] (none) or the named forms."""
    if not values or values == ["auto"]:
        return None
    if values == ["none"]:
        return []
    if "auto" in values or "none" in values:
        raise ConfigError("--compare: auto and none stand alone; or name the forms, e.g. --compare chinchilla kaplan")
    return values


def cmd_fit(args: argparse.Namespace) -> int:
    """Fit a law with bootstrap, validation, comparison and optima; print tables or JSON; with -o, draw it."""
    _check_figure(args.output)
    compare = _compare(args.compare)
    data = load_points(args)  # first: bad input fails before torch and matplotlib are imported
    from wattscale.analysis.laws.analysis import analyze_law

    analysis = analyze_law(data, args.form, _options(args), n_boot=args.boot, seed=args.boot_seed, level=args.level,
                           validate=not args.no_validate, compare=compare, flops=args.flops, losses=args.loss or (),
                           tokens=args.at_tokens, epsilon=args.epsilon)
    plot = None
    if args.output is not None:
        from wattscale.analysis.laws.plot import plot_fit

        plot = str(plot_fit(data, analysis.fit, analysis.bootstrap, args.output))
    if args.json:
        print(strict_json(analysis.to_dict() | {"plot": plot}))
        return 0
    _print_fit(analysis)
    _print_checks(analysis)
    _print_optima(analysis.compute_optima, analysis.loss_targets, analysis.batch_law, analysis.batch_optima)
    if plot:
        print(f"plot: {plot}")
    return 0


def _fit_and_boot(args: argparse.Namespace, data: Any = None):
    from wattscale.analysis.laws.bootstrap import bootstrap_law
    from wattscale.analysis.laws.fit import fit_law

    data = load_points(args) if data is None else data
    options = _options(args)
    fit = fit_law(data, args.form, options)
    boot = bootstrap_law(data, fit, n_boot=args.boot, seed=args.boot_seed, level=args.level, options=options) \
        if args.boot else None
    return data, fit, boot


def cmd_plan_compute(args: argparse.Namespace) -> int:
    """N*, D*, L* for compute budgets (and C(L) for target losses), with intervals."""
    from wattscale.analysis.laws.optima import batch_optima, compute_optima, loss_targets

    if not all(c > 0 for c in args.flops):
        raise ConfigError("--flops: every compute budget must be > 0")
    data, fit, boot = _fit_and_boot(args)
    compute = compute_optima(fit, boot, args.flops)
    targets = loss_targets(fit, boot, args.loss) if args.loss else []
    batches = batch_optima(fit, boot, [r.tokens.value for r in compute], args.epsilon) \
        if fit.form == "three-term" else []
    if args.json:
        print(strict_json({"fit": fit.to_dict(), "bootstrap": boot.to_dict() if boot else None,
                           "compute_optima": [r.to_dict() for r in compute],
                           "loss_targets": [t.to_dict() for t in targets],
                           "batch_at_optimum": [b.to_dict() for b in batches]}))
        return 0
    print(f"{fit.form} fitted on {fit.n_points} points ({fit.n_runs} runs); intervals: "
          + (f"{boot.level:.0%} bootstrap over runs" if boot else "none (--boot 0)"))
    _print_optima(compute, targets, None, batches)
    return 0


def cmd_plan_energy(args: argparse.Namespace) -> int:
    """The lowest-loss (N, D, M) for energy budgets (and the energy for target losses), with intervals."""
    from wattscale.analysis.laws.plans import energy_for_losses, fit_energy_model, plan_energy

    if not all(e > 0 for e in args.kwh):
        raise ConfigError("--kwh: energy budgets must be > 0")
    data = load_points(args)
    model = fit_energy_model(data)  # first: a store without energy fails before the fit
    data, fit, boot = _fit_and_boot(args, data)
    plans = plan_energy(fit, boot, data, args.kwh, extrapolate=args.extrapolate)
    targets = energy_for_losses(fit, boot, data, args.loss, extrapolate=args.extrapolate) if args.loss else []
    if args.json:
        print(strict_json({"fit": fit.to_dict(), "bootstrap": boot.to_dict() if boot else None,
                           "energy_model": model.to_dict(), "plans": [p.to_dict() for p in plans],
                           "loss_targets": [t.to_dict() for t in targets]}))
        return 0
    print(f"energy model: log(J/token) = {model.intercept:.4g} + {model.coef_log_params:.4g} log N + "
          f"{model.coef_log_batch:.4g} log M  ({model.n_runs} runs, residual sd {model.residual_sd_log:.3g}, "
          f"energy source {model.energy_source})")
    for note in model.fixed:
        print(f"note: {note}")
    _table(f"energy-optimal plans ({fit.form} law)", ["kWh", "N", "D", "M", "loss", "J/token", "at edge"],
           [[_fmt(p.energy_kwh), _ci(p.params), _ci(p.tokens), _ci(p.batch_tokens), _ci(p.loss),
             _ci(p.joules_per_token), ", ".join(p.at_edge) or "-"] for p in plans])
    if targets:
        _table("least energy to reach a loss", ["loss", "kWh", "N", "D", "M", "at edge"],
               [[_fmt(t.loss), _ci(t.energy_kwh), _ci(t.params), _ci(t.tokens), _ci(t.batch_tokens),
                 ", ".join(t.at_edge) or "-"] for t in targets])
    if any(p.at_edge for p in plans + targets):
        print("note: an optimum on the edge of the measured sizes/batches may lie beyond them (--extrapolate X)",
              file=sys.stderr)
    return 0


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    add_file_flags(p)
    p.add_argument("--form", default="chinchilla", choices=LAW_FORMS, help="law form (default chinchilla)")
    p.add_argument("--from-store", action="store_true", help="read finished runs from the store (the default)")
    p.add_argument("--experiment", help="with the store: only this experiment's runs (default: the FILE's)")
    p.add_argument("--csv", help="read points from a CSV file: columns params, tokens, batch_tokens, steps, loss, "
                   "optional run_id, weight, flops, energy_j")
    p.add_argument("--column", nargs="+", action="extend", metavar="NAME=HEADER",
                   help="map our column names to CSV headers, e.g. --column params='Model Size' loss=L")
    p.add_argument("--param-counting", choices=("total", "non_embedding", "unspecified"),
                   help="which N: store default non_embedding; for a CSV, what its params column counts (recorded)")
    p.add_argument("--checkpoints", action="store_true",
                   help="with the store: also fit intermediate evaluations (clustered by run in the bootstrap)")
    p.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta on log-loss residuals (1e-3)")
    p.add_argument("--grid", choices=("full", "coarse"), default="full",
                   help="starts: the form's full grid (default; 4,500 for chinchilla) or every other value per axis")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates over runs (default 1000; 0: none)")
    p.add_argument("--boot-seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--seed", type=int, dest="boot_seed", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the fit (default 1)")
    p.add_argument("--epsilon", type=float, default=0.01,
                   help="three-term: batch sizes within this loss of the optimum form the band (default 0.01)")
    add_json_flag(p, "the result as one JSON object")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `fit`, `plan-compute` and `plan-energy`."""
    p = add_command(sub, "fit", "fit a scaling law with bootstrap CIs, checks and optima",
                    ["wattscale fit --form chinchilla -o fit.png",
                     "wattscale fit --csv points.csv --column params=N loss=L --flops 1e18 1e19 --json"],
                    parents=[common])
    _add_data_flags(p)
    p.add_argument("--flops", type=float, nargs="+", action="extend",
                   help="compute budgets for N*, D*, L* (default: data's decades)")
    p.add_argument("--loss", type=float, nargs="+", action="extend", help="target losses for C(L)")
    p.add_argument("--at-tokens", type=float, nargs="+", action="extend",
                   help="three-term: token budgets for M*(D) (default: decades)")
    p.add_argument("--tokens", type=float, nargs="+", action="extend", dest="at_tokens", default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    add_list_argument(p, "--compare", metavar="FORM", help="forms to compare by AIC: auto (default: every applicable "
                      "built-in form), none, or the forms, e.g. --compare chinchilla kaplan")
    p.add_argument("--no-validate", action="store_true", help="skip the leave-largest-scale-out validation")
    p.add_argument("-o", "--output", metavar="FIG", help="draw the fit into this figure (.png, .pdf or .svg); "
                   "without -o no file is written")
    p.add_argument("--plot", dest="output", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)  # a no-op: no figure without -o
    p.set_defaults(func=cmd_fit)

    p = add_command(sub, "plan-compute", "compute-optimal N, D (and batch) for FLOP budgets",
                    ["wattscale plan-compute --flops 1e18 1e19 1e20",
                     "wattscale plan-compute --form three-term --flops 1e20 --loss 3.2 --json"], parents=[common])
    _add_data_flags(p)
    p.add_argument("--flops", type=float, nargs="+", action="extend", required=True,
                   help="compute budgets C = 6ND (FLOPs)")
    p.add_argument("--loss", type=float, nargs="+", action="extend", help="also: the compute that reaches these losses")
    p.set_defaults(func=cmd_plan_compute)

    p = add_command(sub, "plan-energy", "lowest-loss N, D, batch for energy budgets",
                    ["wattscale plan-energy --form three-term --kwh 10 100",
                     "wattscale plan-energy --form three-term --kwh 50 --loss 3.5 --json"], parents=[common])
    _add_data_flags(p)
    p.add_argument("--kwh", type=float, nargs="+", action="extend", required=True, help="energy budgets in kWh")
    p.add_argument("--loss", type=float, nargs="+", action="extend",
                   help="also: the least energy that reaches these losses")
    p.add_argument("--extrapolate", type=float, default=1.0,
                   help="search N and M this factor beyond the measured range (default 1: none)")
    p.set_defaults(func=cmd_plan_energy)

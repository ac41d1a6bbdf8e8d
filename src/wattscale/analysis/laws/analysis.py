"""One call from data to a fitted law with everything a researcher checks: :func:`analyze_law`.

It fits the form (:func:`.fit.fit_law`), bootstraps it over runs (:func:`.bootstrap.bootstrap_law`),
validates it on the largest sizes held out (:func:`.checks.leave_largest_out`), compares it by AIC with the
other built-in forms the data allow (:func:`.fit.compare_forms`), collects identifiability warnings, and
derives the optima with intervals (:mod:`.optima`): N*, D*, L* at compute budgets, C(L) at target losses,
and for the three-term law M*(D) = k D^s, the epsilon band and the implied Chinchilla-form law.

Default budgets, when none are given: compute budgets at the decades spanned by the data's 6 N D and one decade
beyond; token budgets at the decades of the data's tokens; target losses: none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wattscale.analysis.laws.bootstrap import N_BOOT, LawBootstrap, bootstrap_law
from wattscale.analysis.laws.checks import Validation, identifiability_warnings, leave_largest_out
from wattscale.analysis.laws.data import LawData
from wattscale.analysis.laws.fit import FitOptions, FormComparison, LawFit, compare_forms, fit_law
from wattscale.analysis.laws.forms import get_form
from wattscale.analysis.laws.optima import (
    BAND_EPSILON,
    BatchLaw,
    BatchOptimum,
    ComputeOptimum,
    LossTarget,
    batch_law,
    batch_optima,
    compute_optima,
    loss_targets,
)
from wattscale.confidence import CI_LEVEL
from wattscale.errors import ConfigError
from wattscale.jsonout import JsonResult

BUILT_IN_FORMS = ("chinchilla", "kaplan", "three-term")


@dataclass(frozen=True)
class DataSummary(JsonResult):
    """What the fit was given: counts, ranges of each variable, parameter counting and source."""

    n_points: int
    n_runs: int
    ranges: dict[str, tuple[float, float]]
    param_counting: str
    source: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class LawAnalysis(JsonResult):
    """A fitted law with its uncertainty, checks and derived optima; ``to_dict()`` is the CLI's --json."""

    data: DataSummary
    fit: LawFit
    bootstrap: LawBootstrap | None
    validation: Validation | None
    comparison: tuple[FormComparison, ...]
    warnings: tuple[str, ...]
    compute_optima: tuple[ComputeOptimum, ...]
    loss_targets: tuple[LossTarget, ...]
    batch_law: BatchLaw | None = None
    batch_optima: tuple[BatchOptimum, ...] = field(default=())


def summarize_data(data: LawData) -> DataSummary:
    """Counts and ranges of the data's variables."""
    ranges = {name: (float(v.min()), float(v.max())) for name in ("params", "tokens", "batch_tokens", "steps", "loss")
              if (v := getattr(data, name)) is not None}
    return DataSummary(n_points=len(data), n_runs=data.n_runs, ranges=ranges, param_counting=data.param_counting,
                       source=data.source, notes=data.notes)


def default_flops(data: LawData) -> list[float]:
    """Decades from the data's smallest 6ND to one decade past its largest."""
    c = 6.0 * data.params * data.tokens
    return [10.0**k for k in range(int(np.floor(np.log10(c.min()))), int(np.ceil(np.log10(c.max()))) + 2)]


def default_tokens(data: LawData) -> list[float]:
    """Decades spanned by the data's token counts."""
    d = data.tokens
    return [10.0**k for k in range(int(np.floor(np.log10(d.min()))), int(np.ceil(np.log10(d.max()))) + 1)]


def applicable_forms(data: LawData) -> tuple[str, ...]:
    """Built-in forms whose variables the data have."""
    return tuple(name for name in BUILT_IN_FORMS
                 if all(getattr(data, v) is not None for v in get_form(name).variables))


def analyze_law(data: LawData, form: str = "chinchilla", options: FitOptions | None = None, *,
                n_boot: int = N_BOOT, seed: int = 0, level: float = CI_LEVEL, validate: bool = True,
                compare: Sequence[str] | None = None, flops: Sequence[float] | None = None,
                losses: Sequence[float] = (), tokens: Sequence[float] | None = None,
                epsilon: float = BAND_EPSILON) -> LawAnalysis:
    """Fit, bootstrap (n_boot = 0: none), validate, compare (None: every applicable built-in form), derive optima."""
    options = options or FitOptions()
    fit = fit_law(data, form, options)
    boot = bootstrap_law(data, fit, n_boot=n_boot, seed=seed, level=level, options=options) if n_boot else None
    validation = leave_largest_out(data, form, options) if validate else None
    others = [f for f in (applicable_forms(data) if compare is None else compare) if f != fit.form]
    not_compared = []
    other_fits = []
    for name in others:
        try:
            other_fits.append(fit_law(data, name, options))
        except ConfigError as exc:  # too few points for a form with more parameters: said, not fatal
            not_compared.append(f"form {name} not compared: {exc}")
    comparison = tuple(compare_forms(data, [fit, *other_fits])) if other_fits else ()
    is_three = fit.form == "three-term"
    has_compute_optimum = fit.form in BUILT_IN_FORMS
    optima = tuple(compute_optima(fit, boot, flops or default_flops(data))) if has_compute_optimum else ()
    if any(not np.isfinite([o.params.value, o.tokens.value, o.loss.value]).all() for o in optima):
        not_compared.append("compute-optimal allocation not computable: the fitted law has a term whose coefficient "
                            "or exponent is 0 (loss does not fall with N or with D), so N*(C), D*(C) are undefined")
    return LawAnalysis(
        data=summarize_data(data), fit=fit, bootstrap=boot, validation=validation, comparison=comparison,
        warnings=identifiability_warnings(data, fit, boot) + tuple(not_compared),
        compute_optima=optima,
        loss_targets=tuple(loss_targets(fit, boot, losses)) if has_compute_optimum and losses else (),
        batch_law=batch_law(fit, boot) if is_three else None,
        batch_optima=tuple(batch_optima(fit, boot, tokens or default_tokens(data), epsilon)) if is_three else (),
    )

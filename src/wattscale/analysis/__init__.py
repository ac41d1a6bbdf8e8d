"""Analysis of stored runs: efficiency, repeated-measures statistics, training dynamics, scaling laws.

- per-run and per-condition building blocks: :mod:`.efficiency`, :mod:`.stats`, :mod:`.comparisons`,
  :mod:`.returns`, :mod:`.dynamics`, :mod:`.tidy` and :mod:`.table_files` (tables in), :mod:`.render`;
- :mod:`.study`: the analysis of one study (``wattscale analyze``);
- :mod:`.laws`: scaling-law fits, intervals, checks, optima and energy plans (``wattscale fit``).

The public names below are the stable entry points (the docs' API reference documents them); each is
imported from its module on first use, so ``import wattscale.analysis`` stays light (no pandas, no torch),
and each command loads only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the docs' API reference; imported lazily by __getattr__
    from .efficiency import run_efficiency
    from .laws.analysis import LawAnalysis, analyze_law
    from .laws.data import law_data_from_csv, law_data_from_store
    from .laws.fit import FitOptions, fit_law
    from .laws.forms import LawForm, register_form
    from .laws.plans import plan_energy
    from .stats import apa_sentence, friedman, mixed_model_test, pairwise, rm_anova, trend_test
    from .study.analysis import AnalysisOptions, StudyAnalysis, analyze_study
    from .study.data import load_from_store

_PUBLIC = {
    # studies: `wattscale analyze`
    "AnalysisOptions": "study.analysis", "StudyAnalysis": "study.analysis", "analyze_study": "study.analysis",
    "load_from_store": "study.data", "run_efficiency": "efficiency",
    # repeated-measures statistics
    "rm_anova": "stats", "pairwise": "stats", "friedman": "stats", "trend_test": "stats",
    "mixed_model_test": "stats", "apa_sentence": "stats",
    # scaling laws: `wattscale fit`, `plan-compute`, `plan-energy`
    "LawForm": "laws.forms", "register_form": "laws.forms", "fit_law": "laws.fit", "FitOptions": "laws.fit",
    "analyze_law": "laws.analysis", "LawAnalysis": "laws.analysis",
    "law_data_from_store": "laws.data", "law_data_from_csv": "laws.data",
    "plan_energy": "laws.plans",
}
__all__ = [
    "AnalysisOptions", "FitOptions", "LawAnalysis", "LawForm", "StudyAnalysis", "analyze_law", "analyze_study",
    "apa_sentence", "fit_law", "friedman", "law_data_from_csv", "law_data_from_store", "load_from_store",
    "mixed_model_test", "pairwise", "plan_energy", "register_form", "rm_anova", "run_efficiency",
    "trend_test",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'wattscale.analysis' has no attribute {name!r}")
    return getattr(importlib.import_module(f"wattscale.analysis.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

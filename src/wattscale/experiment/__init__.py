"""Experiments: one file describes a repeated-measures study; plan it, run it locally or on Ray.

    from wattscale.experiment import load_experiment, plan_experiment, run_local
    spec = load_experiment(Path("experiments/dynamics_4m.toml"), variant="smoke")
    plan = plan_experiment(spec, cache_dir=Path(".wattscale_cache"))
    result = run_local(plan, store_url="dynamics.db")
"""

from .design import block_orders, williams_rows
from .plan import ExperimentPlan, PlannedRun, plan_experiment
from .spec import ExperimentSpec, StudyDesign, load_experiment

__all__ = [
    "ExperimentPlan",
    "ExperimentSpec",
    "PlannedRun",
    "StudyDesign",
    "block_orders",
    "load_experiment",
    "plan_experiment",
    "williams_rows",
]

"""Metric names, shared by live logging (`MonitorFeed`, the trainer) and replay from the store.

Every name carries its unit; ``PHASE`` is a job phase (``warmup``, ``train``, ``eval``, ``checkpoint``,
``save``, ``other`` or your own) and ``job`` is all job phases together (never the idle baseline).

| name | value | step |
|---|---|---|
| ``energy_j/PHASE``, ``energy_j/job`` | joules in the interval | the interval's end |
| ``power_w/PHASE``, ``power_w/job`` | mean watts in the interval (energy / seconds) | the interval's end |
| ``joules_per_token/PHASE``, ``joules_per_token/job`` | joules per token counted in the interval | the interval's end |
| ``seconds/PHASE``, ``seconds/job`` | seconds spent in the interval | the interval's end |
| ``cumulative_energy_j/PHASE``, ``cumulative_energy_j/job`` | joules since the job began | the interval's end |
| ``total/energy_j/PHASE``, ``total/seconds/...``, ``tokens``, ``power_w``, ``joules_per_token`` | the run | last step |
| ``val_loss``, ``val_ppl`` | an evaluation | its tokens seen |
| ``train_loss`` | a training step's loss (replay; at most N points) | its tokens seen |
| ``sampled_power_w/DEVICE`` | sampled power, averaged into at most N points per device | job time in ms |

For wattscale's own runs (the trainer, and replay of its runs) the step is the number of training
tokens seen; an interval runs from one evaluation to the next. Energy totals follow the measurement's
total rule (measured components only, unless ``meter.total = "all"``); each figure's source
(``counter``, ``integrated``, ``estimated`` or ``mixed``) is logged as the parameter
``energy_source/PHASE`` (and ``energy_source/job`` for the job, ``source/DEVICE`` per device).
"""

from __future__ import annotations

from collections.abc import Mapping

from wattscale.energy.measurement import PhaseEnergy

JOB = "job"


def interval_metrics(phases: Mapping[str, PhaseEnergy], job: PhaseEnergy) -> dict[str, float | None]:
    """An interval's energy, mean power, J/token and seconds per phase and for the job (None: not metered)."""
    out: dict[str, float | None] = {}
    for name, phase in [*phases.items(), (JOB, job)]:
        out[f"energy_j/{name}"] = phase.energy_j
        out[f"power_w/{name}"] = phase.mean_power_w
        out[f"joules_per_token/{name}"] = phase.joules_per_token
        out[f"seconds/{name}"] = phase.seconds
    return out


def cumulative_metrics(phases: Mapping[str, PhaseEnergy], job: PhaseEnergy) -> dict[str, float | None]:
    """Joules per phase and for the job since the job began."""
    return {f"cumulative_energy_j/{name}": p.energy_j for name, p in [*phases.items(), (JOB, job)]}


def total_metrics(phases: Mapping[str, PhaseEnergy], job: PhaseEnergy) -> dict[str, float | None]:
    """The whole run's figures per phase and for the job."""
    out: dict[str, float | None] = {}
    for name, phase in [*phases.items(), (JOB, job)]:
        out[f"total/energy_j/{name}"] = phase.energy_j
        out[f"total/seconds/{name}"] = phase.seconds
        out[f"total/tokens/{name}"] = phase.tokens
        out[f"total/power_w/{name}"] = phase.mean_power_w
        out[f"total/joules_per_token/{name}"] = phase.joules_per_token
    return out


def source_params(phases: Mapping[str, PhaseEnergy], job: PhaseEnergy) -> dict[str, str]:
    """Where each total came from: ``energy_source/job`` and ``energy_source/PHASE``, plus the components the
    job's total adds; phases without energy are left out. (No parameter is both a name and a prefix of
    another: MLflow's file store keeps each as a file, ``a/b`` in a folder ``a``.)"""
    out: dict[str, str] = {}
    if job.source is not None:
        out["energy_source/job"] = job.source
        out["energy_components"] = ",".join(job.total_components)
    for name, phase in phases.items():
        if phase.source is not None:
            out[f"energy_source/{name}"] = phase.source
    return out

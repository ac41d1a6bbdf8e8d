"""A synthetic study written through the real store API, with every number chosen so answers are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

from wattscale.store import open_store

LEVELS = (1_000, 2_000, 4_000)  # data_tokens = tokens_seen (1 epoch)
PARAMS = 2_000_000
FLOPS_PER_TOKEN = 6.0 * PARAMS
VOCAB = 512
PEAK_FLOPS = 1e11


def energy_j(rep: int, level: int) -> float:
    """Energy grows faster than tokens (efficiency declines), with a per-repetition offset."""
    return 10.0 * level * (1.0 + 0.25 * LEVELS.index(level)) + 37.0 * rep + 3.0 * rep * rep


def val_loss(rep: int, level: int) -> float:
    """Falls 0.5 nats per level, plus a small subject- and level-dependent wobble (so no difference is constant)."""
    index = LEVELS.index(level)
    return 6.0 - 0.5 * index + 0.01 * rep + 0.003 * ((7 * rep + 3 * index) % 5)


def eval_loss(rep: int, level: int, i: int, n_evals: int) -> float:
    """The i-th evaluation: falls as 2 (1 - i/(n-1))^2 onto the final loss, with a per-run wobble before the end."""
    wobble = 0.004 * (((rep + 1) * i) % 3) if i < n_evals - 1 else 0.0
    return val_loss(rep, level) + 2.0 * (1 - i / (n_evals - 1)) ** 2 + wobble


def write_study(path: Path, repetitions: int = 4, experiment: str = "toy", skip: tuple = (),
                n_evals: int = 8, unfinished: tuple = ()) -> list[dict]:
    """Write ``repetitions`` x 3 runs (minus ``skip`` (rep, level) pairs); return the planned rows."""
    planned = []
    with open_store(str(path)) as store:
        position = 0
        for rep in range(repetitions):
            for level in LEVELS:
                run_id = f"r{rep}t{level}"
                condition = {"train.data_tokens": level}
                planned.append({"position": position, "run_id": run_id, "block": rep, "repetition": rep,
                                "condition": f"data_tokens={level}", "condition_json": json.dumps(condition)})
                position += 1
                if (rep, level) in skip:
                    continue
                _write_run(store, run_id, rep, level, experiment, n_evals, finished=(rep, level) not in unfinished)
        store.register_experiment({"name": experiment, "spec_json": json.dumps({"name": experiment}),
                                   "spec_hash": "h" * 16, "order_design": "as-written", "order_seed": 0},
                                  planned)
    return planned


def _write_run(store, run_id: str, rep: int, level: int, experiment: str | None, n_evals: int, finished: bool,
               final_loss: float | None = None, energy: float | None | str = "default",
               params_non_embedding: int | None = None) -> None:
    """One run at ``level`` tokens for repetition ``rep``; ``final_loss``/``energy`` override the known values
    (``energy=None``: no energy measured); ``params_non_embedding`` (default unset) makes it fittable by a law."""
    config = {"model": {"vocab_size": VOCAB}, "train": {"batch_size": 4, "seq_len": 50}}
    device_info = {"device": "cpu", "peak_flops": PEAK_FLOPS, "peak_flops_source": "test"}
    store.create_run({"run_id": run_id, "experiment": experiment, "preset": "llama-tiny",
                      "config_json": json.dumps(config), "config_hash": run_id, "seed": rep, "tokens_budget": level,
                      "data_tokens": level, "epochs": 1.0, "params_total": PARAMS, "flops_per_token": FLOPS_PER_TOKEN,
                      "device_info_json": json.dumps(device_info),
                      **({"params_non_embedding": params_non_embedding} if params_non_embedding else {})})
    steps = level // 200
    store.add_train_steps(run_id, [{"step": s, "tokens_seen": 200 * (s + 1), "loss": 7.0 - 0.01 * s,
                                    "step_seconds": 0.5} for s in range(steps)])
    for i in range(n_evals):  # evaluations at 0 .. level, loss falling to the final value
        tokens = round(level * i / (n_evals - 1))
        loss = eval_loss(rep, level, i, n_evals)
        store.add_evaluation(run_id, {"step": i, "tokens_seen": tokens, "val_loss": loss, "val_ppl": math.exp(loss)})
    if not finished:
        return
    loss = val_loss(rep, level) if final_loss is None else final_loss
    joules = energy_j(rep, level) if energy == "default" else energy
    store.finish_run(run_id, "finished", {"wall_seconds": 2.0 * level / 1000 + rep, "tokens_seen": level,
                                          "steps": steps, "final_val_loss": loss, "final_val_ppl": math.exp(loss),
                                          "energy_j": joules, "energy_source": None if joules is None else "counter"})

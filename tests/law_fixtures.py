"""A store whose runs follow a known three-term law (60 runs: 5 sizes x 4 batch sizes x 3 token counts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wattscale.store import open_store

TRUTH = {"E": 1.8, "A": 300.0, "B": 50.0, "C": 20.0, "alpha": 0.3, "beta": 0.3, "gamma": 0.4}
SEQ_LEN = 512


def truth_loss(n, m, k):
    p = TRUTH
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / m ** p["beta"] + p["C"] / k ** p["gamma"]


def write_law_store(path: Path) -> Path:
    """60 finished runs whose final losses follow TRUTH with 0.2% lognormal noise, plus one unfinished run."""
    rng = np.random.default_rng(0)
    with open_store(path) as store:
        i = 0
        for n in np.geomspace(1e7, 1e9, 5):
            for batch in (16, 64, 256, 1024):
                for tokens in (4e9, 2e10, 1e11):
                    m = batch * SEQ_LEN
                    k = tokens / m
                    loss = truth_loss(n, m, k) * np.exp(rng.normal(0, 0.002))
                    joules = tokens * 6 * n * 2e-11 * (m / 1e5) ** -0.1
                    run_id = f"run-{i}"
                    store.create_run({
                        "run_id": run_id, "experiment": "laws", "preset": "synthetic", "seed": 0,
                        "config_json": json.dumps({"train": {"batch_size": batch, "seq_len": SEQ_LEN}}),
                        "config_hash": f"h{i}", "tokens_budget": int(tokens), "params_total": int(n * 1.1),
                        "params_non_embedding": int(n), "params_embedding": int(n * 0.1)})
                    if i < 3:  # two intermediate evaluations, for --checkpoints
                        for frac in (0.25, 0.5):
                            store.add_evaluation(run_id, {"step": int(k * frac), "tokens_seen": int(tokens * frac),
                                                          "val_loss": float(truth_loss(n, m, k * frac)),
                                                          "val_ppl": 10.0, "wall_seconds": 1.0})
                    store.finish_run(run_id, "finished", {"tokens_seen": int(tokens), "steps": int(round(k)),
                                                          "final_val_loss": float(loss), "energy_j": float(joules),
                                                          "energy_source": "estimated"})
                    i += 1
        store.create_run({"run_id": "unfinished", "experiment": "laws", "preset": "synthetic", "seed": 0,
                          "config_json": "{}", "config_hash": "u", "tokens_budget": 1})
    return path

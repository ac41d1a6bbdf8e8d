"""Stores for the report and watch tests: a real tiny study (trained once per session) and synthetic rows."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from wattscale.store import Store, open_store

XSS_RUN_NAME = "<script>alert(1)</script>"
FIGURES_RE = re.compile(r'<script type="application/json" id="wattscale-figures">(.*?)</script>', re.S)
# Payloads that set a flag instead of alerting, for the check that no injected script ran.
XSS_PAYLOADS = {
    "experiment": "exp<img src=x onerror=\"window.__xss=1\">&amp;",
    "run_name": "<script>window.__xss=2</script>",
    "message": "\"'><svg onload=window.__xss=3>\u2028</script><!--",
    "condition": "</script><script>window.__xss=4</script>",
    "data_source": "/data/<b onmouseover=window.__xss=5>x</b>.txt",
}
IN_CI = os.environ.get("CI", "").lower() == "true"

TINY_STUDY = """
[experiment]
name = "report-study"
repetitions = 2

[model]
preset = "llama-tiny"

[train]
epochs = 1
batch_size = 4
seq_len = 32
eval_tokens = 1024
threads = 1

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0
sample_hz = 20

[grid]
"train.data_tokens" = [2048, 4096]
"""


def embedded_figures(html: str) -> dict:
    """The figure JSON exactly as the page's script reads it (JSON.parse of the element's text)."""
    match = FIGURES_RE.search(html)
    assert match is not None
    return json.loads(match.group(1))


def real_study_store(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A SQLite store with a real 2-condition x 2-seed llama-tiny study plus one run named like a script tag.

    Trained once per test session (about 10 s on 2 cores) and copied for each caller, so tests can change theirs.
    """
    base = tmp_path_factory.getbasetemp() / "report_study"
    db = base / "study.db"
    if not db.exists():
        _train_study(base, cache_dir)
    copy = Path(tmp_path_factory.mktemp("study_copy")) / "study.db"
    shutil.copy(db, copy)
    return copy


def _train_study(base: Path, cache_dir: Path) -> None:
    from wattscale.config import build_run_config
    from wattscale.experiment import load_experiment, plan_experiment
    from wattscale.experiment.local import run_local
    from wattscale.train import train

    base.mkdir(parents=True, exist_ok=True)
    partial = base / "partial.db"
    (base / "study.toml").write_text(TINY_STUDY)
    spec = load_experiment(base / "study.toml", settings=[f"train.run_root={base / 'runs'}"])
    sweep = run_local(plan_experiment(spec, cache_dir), str(partial), cache_dir, show_progress=False)
    assert sweep.complete and sweep.finished == 4, sweep
    config = build_run_config(overrides={
        "model": {"preset": "llama-tiny"},
        "train": {"tokens": 2048, "batch_size": 4, "seq_len": 32, "eval_tokens": 1024, "threads": 1,
                  "name": XSS_RUN_NAME, "run_root": str(base / "runs"), "seed": 7},
        "data": {"source": "synthetic", "synthetic_mb": 0.3},
        "meter": {"idle_seconds": 0, "sample_hz": 20},
    })
    assert train(config, str(partial), show_progress=False, cache_dir=cache_dir).status == "finished"
    partial.rename(base / "study.db")


def _run_record(run_id: str, **fields: Any) -> dict[str, Any]:
    record = {"run_id": run_id, "preset": "llama-tiny", "config_json": json.dumps({"data": {"source": "synthetic"}}),
              "config_hash": "h" + run_id, "seed": 0, "tokens_budget": 10_000, "status": "running"}
    record.update(fields)
    return record


def add_synthetic_run(store: Store, run_id: str, *, finished: bool = True, n_power: int = 200,
                      devices: tuple[str, ...] = ("cpu",), seed: int = 0, **fields: Any) -> None:
    """A run written through the store API: 5 evaluations, 10 steps, a power trace and 5 interval rows."""
    store.create_run(_run_record(run_id, seed=seed, **fields))
    store.add_train_steps(run_id, [{"step": s, "tokens_seen": 1000 * s, "loss": 6.0 - 0.2 * s} for s in range(1, 11)])
    for k in range(1, 6):
        store.add_evaluation(run_id, {"step": 2 * k, "tokens_seen": 2000 * k, "val_loss": 6.0 - 0.3 * k - 0.01 * seed,
                                      "val_ppl": math.exp(6.0 - 0.3 * k)})
    duration = 50.0
    for device in devices:
        store.add_power_samples(run_id, [
            {"device": device, "t_seconds": duration * i / n_power, "power_w": 100.0 + 10 * math.sin(i / 7)}
            for i in range(n_power)])
        store.add_energy_measurements(run_id, [
            {"device": device, "scope": "interval", "start_tokens": 2000 * k, "end_tokens": 2000 * (k + 1),
             "start_seconds": 10.0 * k, "end_seconds": 10.0 * (k + 1), "energy_j": 1000.0 + k, "source": "integrated"}
            for k in range(5)])
    if finished:
        store.finish_run(run_id, "finished", {"tokens_seen": 10_000, "steps": 10, "wall_seconds": duration + seed,
                                              "final_val_loss": 4.5 - 0.01 * seed, "energy_j": 5010.0 * len(devices)
                                              + 10 * seed, "energy_source": "integrated"})


def xss_store(path: Path) -> Path:
    """A synthetic store where every user string is an injection attempt: experiment, names, notes, conditions."""
    db = path / "xss.db"
    exp = XSS_PAYLOADS["experiment"]
    with open_store(db) as store:
        store.register_experiment(
            {"name": exp, "spec_json": json.dumps({"experiment": {"name": exp, "description": XSS_PAYLOADS["message"]},
                                                   "grid": {"data.source": [XSS_PAYLOADS["data_source"]]},
                                                   "model": {"preset": XSS_PAYLOADS["run_name"]}}),
             "spec_hash": "x", "order_design": "as-written", "order_seed": 1},
            [{"position": i, "run_id": f"r{i}", "block": i, "repetition": i, "condition": XSS_PAYLOADS["condition"],
              "condition_json": json.dumps({"data.source": XSS_PAYLOADS["data_source"]})} for i in range(2)])
        config = json.dumps({"data": {"source": XSS_PAYLOADS["data_source"]}})
        for i in range(2):
            add_synthetic_run(store, f"r{i}", experiment=exp, name=XSS_PAYLOADS["run_name"], seed=i,
                              devices=(XSS_PAYLOADS["run_name"],), config_json=config,
                              message=XSS_PAYLOADS["message"] if i == 0 else None,
                              device_info_json=json.dumps({"device": "cpu", "cpu": XSS_PAYLOADS["message"]}))
    return db


def chromium_path() -> str:
    """The system chromium for Playwright; skips the test without one (fails under CI=true)."""
    candidates = [os.environ.get("WATTSCALE_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = "no chromium (install Debian's `chromium`, as .ci/chromium.sh does, or set WATTSCALE_CHROMIUM)"
    if IN_CI:
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    pytest.skip(reason)


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def artifacts_dir(fallback: Path) -> Path:
    """Where screenshots go: $WATTSCALE_TEST_ARTIFACTS, else a folder under the test's tmp path."""
    target = Path(os.environ.get("WATTSCALE_TEST_ARTIFACTS") or fallback)
    target.mkdir(parents=True, exist_ok=True)
    return target


__all__ = ["XSS_PAYLOADS", "XSS_RUN_NAME", "add_synthetic_run", "artifacts_dir", "chromium_path",
           "real_study_store", "xss_store"]

"""Report size and speed over a large study: 500 runs with power traces, written through the store API.

No model is trained: a seeded generator writes what a sweep would (an experiment of 5 conditions x
100 repetitions, each run with 21 evaluations, 50 training steps, a 10 Hz power trace of 300 s =
3,000 samples and 21 interval energy rows) through ``wattscale.store.Store``. Then it times
``write_report`` (cold: the first call, which also imports plotly and scipy; warm: the median of the
next ones), records the file's size and what it is made of (plotly.js, figure JSON, the rest), and,
when a chromium is installed, the time the page takes in headless chromium from navigation until
every figure is drawn (``body[data-figures-ready]``). Power traces are thinned for display only
(min/max per bucket, 2,000 points per device by default); the store keeps every sample.

    python benchmarks/report_size.py                      # writes benchmarks/results/report_size.json
    python benchmarks/report_size.py --runs 50 --samples-per-run 600 --no-save   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from wattscale.hardware import device_info
from wattscale.report import write_report
from wattscale.report.html import plotly_js
from wattscale.store import open_store

RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENT = "report-size-benchmark"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def build_store(db: Path, runs: int, conditions: int, samples: int, evals: int, seed: int) -> dict:
    """Write the synthetic study; return counts of what was written."""
    rng = random.Random(seed)
    reps = runs // conditions
    tokens = [500_000 * 2 ** c for c in range(conditions)]
    spec = {"experiment": {"name": EXPERIMENT, "repetitions": reps, "seeds": "per-repetition", "base_seed": 0,
                           "order": "random-blocks", "description": "synthetic rows for the report benchmark"},
            "model": {"preset": "llama-4m"}, "train": {"epochs": 1}, "meter": {"sample_hz": 10},
            "grid": {"train.data_tokens": tokens}}
    planned = []
    for rep in range(reps):
        for c in rng.sample(range(conditions), conditions):
            planned.append({"position": len(planned), "run_id": f"run{rep:03d}c{c}", "block": rep, "repetition": rep,
                            "condition": f"data_tokens={tokens[c]}", "condition_json": json.dumps(
                                {"train.data_tokens": tokens[c]})})
    info = json.dumps({"device": "cpu", "cpu": "synthetic", "cpu_threads": 2, "world_size": 1})
    rows = {"runs": 0, "evaluations": 0, "train_steps": 0, "power_samples": 0, "energy_measurements": 0}
    with open_store(db) as store:
        store.register_experiment({"name": EXPERIMENT, "spec_json": json.dumps(spec), "spec_hash": "bench",
                                   "order_design": "random-blocks", "order_seed": seed}, planned)
        for plan in planned:
            c = int(plan["run_id"][-1])
            rep = plan["repetition"]
            budget = tokens[c]
            duration_s = 300.0
            store.create_run({"run_id": plan["run_id"], "experiment": EXPERIMENT, "preset": "llama-4m",
                              "config_json": json.dumps({"data": {"source": "synthetic"}}),
                              "config_hash": plan["run_id"], "seed": rep, "tokens_budget": budget, "device": "cpu",
                              "device_info_json": info, "params_total": 4_262_144})
            bounds = [budget * k // evals for k in range(evals + 1)]
            steps = [{"step": s, "tokens_seen": budget * s // 50,
                      "loss": 8.0 * math.exp(-s / 15) + 2 + rng.gauss(0, .05)} for s in range(1, 51)]
            store.add_train_steps(plan["run_id"], steps)
            for k in range(1, evals + 1):
                loss = 2.0 + 6.0 * (bounds[k] / 1e5) ** -0.3 / (1 + c * 0.1) + rng.gauss(0, 0.02)
                store.add_evaluation(plan["run_id"], {"step": k, "tokens_seen": bounds[k], "val_loss": loss,
                                                      "val_ppl": math.exp(loss)})
            power = [{"device": "cpu", "t_seconds": duration_s * i / samples,
                      "power_w": 30 + 5 * math.sin(i / 40) + rng.gauss(0, 1.5)} for i in range(samples)]
            store.add_power_samples(plan["run_id"], power)
            store.add_energy_measurements(plan["run_id"], [
                {"device": "cpu", "scope": "interval", "start_tokens": bounds[k], "end_tokens": bounds[k + 1],
                 "start_seconds": duration_s * k / evals, "end_seconds": duration_s * (k + 1) / evals,
                 "energy_j": 30 * duration_s / evals * (1 + rng.gauss(0, 0.02)), "source": "estimated"}
                for k in range(evals)])
            store.finish_run(plan["run_id"], "finished", {
                "tokens_seen": budget, "steps": 50, "wall_seconds": duration_s * (1 + rng.gauss(0, .03)),
                "final_val_loss": loss, "energy_j": 30 * duration_s * (1 + rng.gauss(0, .03)),
                "energy_source": "estimated"})
            rows["runs"] += 1
            rows["evaluations"] += evals
            rows["train_steps"] += len(steps)
            rows["power_samples"] += samples
            rows["energy_measurements"] += evals
    return rows


def size_breakdown(html: str) -> dict:
    """Bytes of the page by part: the inlined plotly.js, the embedded figure JSON, everything else."""
    total = len(html.encode("utf-8"))
    plotly = len(plotly_js().encode("utf-8"))
    match = re.search(r'id="wattscale-figures">(.*?)</script>', html, re.S)
    figures = len(match.group(1).encode("utf-8")) if match else 0
    return {"total_bytes": total, "plotly_js_bytes": plotly, "figure_json_bytes": figures,
            "html_tables_and_rest_bytes": total - plotly - figures}


def browser_load_seconds(path: Path, rounds: int) -> dict | None:
    """Seconds from navigation until every figure is drawn, in headless chromium; None without one.

    The same is measured for a page holding nothing but plotly.js, interleaved, as the floor: what any
    offline Plotly page costs on this machine before it draws anything.
    """
    chromium = os.environ.get("WATTSCALE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(chromium, os.X_OK):
        return None
    from playwright.sync_api import sync_playwright

    floor = path.with_name("plotly_only.html")
    floor.write_text(f"<!DOCTYPE html><html><body><script>{plotly_js()}</script><script>"
                     "document.body.setAttribute('data-figures-ready', '0')</script></body></html>", encoding="utf-8")
    times: dict[str, list[float]] = {"report": [], "plotly_only": []}
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        version = browser.version
        for _ in range(rounds):
            for name, target in (("report", path), ("plotly_only", floor)):
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                start = time.perf_counter()
                page.goto(target.resolve().as_uri())
                page.wait_for_selector("body[data-figures-ready]", state="attached", timeout=120_000)
                times[name].append(time.perf_counter() - start)
                page.close()
        browser.close()
    return {"chromium": version, "what": "navigation until body[data-figures-ready] (every figure drawn)",
            "report_rounds_s": [round(t, 3) for t in times["report"]],
            "report_median_s": round(statistics.median(times["report"]), 3),
            "plotly_only_rounds_s": [round(t, 3) for t in times["plotly_only"]],
            "plotly_only_median_s": round(statistics.median(times["plotly_only"]), 3),
            "console_errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--conditions", type=int, default=5)
    parser.add_argument("--samples-per-run", type=int, default=3_000, help="power samples per run (default 3000)")
    parser.add_argument("--evals", type=int, default=21, help="evaluations per run (default 21)")
    parser.add_argument("--rounds", type=int, default=3, help="timed report builds and browser loads (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-save", action="store_true", help="print the result, do not write results/")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="wattscale-report-bench-") as tmp:
        db = Path(tmp) / "bench.db"
        start = time.perf_counter()
        rows = build_store(db, args.runs, args.conditions, args.samples_per_run, args.evals, args.seed)
        store_seconds = time.perf_counter() - start
        out = Path(tmp) / "report.html"
        build_times = []
        for _ in range(args.rounds + 1):
            result = write_report(db, out, experiment=EXPERIMENT)
            build_times.append(result.seconds)
        html = out.read_text(encoding="utf-8")
        figures = json.loads(re.search(r'id="wattscale-figures">(.*?)</script>', html, re.S).group(1))
        power_points = sum(len(t["x"]) for t in figures["fig-power"]["data"])
        browser = browser_load_seconds(out, args.rounds)
        report = {
            "benchmark": "report_size", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python benchmarks/report_size.py" + "".join(
                f" --{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                if not isinstance(v, bool) and v != parser.get_default(k)),
            "store_rows": rows, "store_build_seconds": round(store_seconds, 1),
            "store_bytes": db.stat().st_size,
            "report": {**size_breakdown(html), "size_mb": round(result.size_bytes / 1e6, 2),
                       "runs": result.runs, "conditions": result.conditions,
                       "power_points_shown": power_points,
                       "power_samples_of_that_run": args.samples_per_run,
                       "downsampling": "min/max per bucket, at most 2000 points per device, display only"},
            "build_seconds": {"cold_first_call": round(build_times[0], 3),
                              "warm_median": round(statistics.median(build_times[1:]), 3),
                              "warm_rounds": [round(t, 3) for t in build_times[1:]],
                              "note": "write_report: read the store, run wattscale.analysis (efficiency, "
                                      "statistics, dynamics; the scaling law when the runs allow one), render, "
                                      "write; cold includes importing plotly, scipy, pandas and pingouin"},
            "browser_load": browser or "chromium not found: not measured",
            "machine": {**device_info(torch.device("cpu")), "cpu_count": os.cpu_count()},
        }
    text = json.dumps(report, indent=2)
    if args.no_save:
        print(text)
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    target = RESULTS / "report_size.json"
    target.write_text(text + "\n")
    print(f"report: {report['report']['size_mb']} MB for {result.runs} runs "
          f"(plotly.js {report['report']['plotly_js_bytes'] / 1e6:.2f} MB); build "
          f"{report['build_seconds']['warm_median']} s warm, {report['build_seconds']['cold_first_call']} s cold; "
          f"browser {browser['report_median_s'] if browser else 'n/a'} s "
          f"(plotly.js alone {browser['plotly_only_median_s'] if browser else 'n/a'} s)")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

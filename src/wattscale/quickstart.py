"""The quickstart: two small Llama models on the built-in corpus, on CPU, in a few minutes."""

from __future__ import annotations

from pathlib import Path

from wattscale.config import build_run_config
from wattscale.report import write_report
from wattscale.store import open_store
from wattscale.tables import print_runs_table
from wattscale.train import train

# Two models of the llama-4m family at one budget: enough to see loss fall far below the
# unigram entropy of the corpus and to fill the store with comparable runs.
QUICKSTART_RUNS = (
    {"preset": "llama-1m", "tokens": 400_000, "batch_size": 16, "seq_len": 128},
    {"preset": "llama-4m", "tokens": 400_000, "batch_size": 16, "seq_len": 128},
)


def run_quickstart(out_dir: Path, show_progress: bool = True) -> list[str]:
    """Train the quickstart runs into `out_dir`, print the runs table, write `out_dir/report.html`; return run ids."""
    out_dir.mkdir(parents=True, exist_ok=True)
    store = str(out_dir / "wattscale.db")
    run_ids = []
    for spec in QUICKSTART_RUNS:
        config = build_run_config(overrides={
            "model": {"preset": spec["preset"]},
            "train": {"tokens": spec["tokens"], "batch_size": spec["batch_size"], "seq_len": spec["seq_len"],
                      "eval_interval_tokens": spec["tokens"] // 8, "eval_tokens": 32_768,
                      "run_root": str(out_dir / "runs"), "name": "quickstart"},
            "data": {"source": "synthetic", "synthetic_mb": 4.0},
        })
        result = train(config, store, show_progress=show_progress, cache_dir=out_dir / "cache")
        run_ids.append(result.run_id)
    with open_store(store) as s:
        print_runs_table([r for r in s.list_runs() if r["run_id"] in run_ids])
    print(f"results database: {store}")
    print(f"checkpoints and final weights: {out_dir / 'runs'}")
    print(f"energy of a run: wattscale --store {store} energy {run_ids[-1]}")
    print(f"next: wattscale --store {store} runs --json   or   wattscale --store {store} export -o runs.csv")
    report = write_report(store, out_dir / "report.html")
    print(f"report ({report.size_bytes / 1e6:.1f} MB, open it in a browser): {report.path.resolve()}")
    return run_ids

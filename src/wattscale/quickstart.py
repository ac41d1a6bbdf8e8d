"""The quickstart: a small repeated-measures study on CPU, its store and its full report, in a few minutes.

The study is an experiment file shipped with the package (``quickstart.toml``: llama-1m on the
built-in corpus, three token budgets x three seeds, evaluations about every tenth of a budget), planned
and run by the experiment machinery like any other, so it is resumable (a second
``wattscale quickstart`` finds every run finished and only rewrites the report) and
``wattscale --store quickstart/wattscale.db analyze --experiment quickstart`` sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wattscale.errors import ConfigError
from wattscale.experiment import load_experiment, plan_experiment
from wattscale.experiment.local import run_local
from wattscale.report import write_report
from wattscale.store import open_store
from wattscale.tables import print_runs_table

QUICKSTART_FILE = Path(__file__).with_name("quickstart.toml")
# What the file trains (kept here too so tests and docs can name them): 16, 32 and 64 steps of 8 x 64 tokens.
QUICKSTART_BUDGETS_TOKENS = (8_192, 16_384, 32_768)
QUICKSTART_SEEDS = 3
QUICKSTART_PRESET = "llama-1m"
LAW_HINT = ("scaling law: this study has one model size, so no law is fitted; one comes from runs over sizes "
            "and budgets: wattscale run experiments/three_term_law.toml --variant smoke, then "
            "wattscale fit experiments/three_term_law.toml --variant smoke --form three-term")


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart left behind: the experiment, its runs in run order, the store and the report."""

    experiment: str
    run_ids: tuple[str, ...]
    store: Path
    report: Path
    finished_before: int  # runs already finished when this call started (a re-run finds all of them)


def run_quickstart(out_dir: Path, show_progress: bool = True, *,
                   budgets_tokens: Sequence[int] = QUICKSTART_BUDGETS_TOKENS, seeds: int = QUICKSTART_SEEDS,
                   preset: str = QUICKSTART_PRESET, settings: Sequence[str] = ()) -> QuickstartResult:
    """Run the quickstart study into `out_dir` (store, runs, token cache), print its runs, write `out_dir/report.html`.

    `budgets_tokens`, `seeds` and `preset` replace the file's grid, repetitions and model (tests pass tiny
    ones); `settings` are further `--set`-style settings, e.g. ``("train.eval_tokens=1024",)``.
    """
    if len(budgets_tokens) < 2 or seeds < 2:
        raise ConfigError("quickstart: needs at least 2 token budgets and 2 seeds for repeated-measures statistics")
    out_dir.mkdir(parents=True, exist_ok=True)
    store = out_dir / "wattscale.db"
    spec = load_experiment(QUICKSTART_FILE, settings=[
        f"grid.train.tokens=[{', '.join(str(int(t)) for t in budgets_tokens)}]",
        f"experiment.repetitions={int(seeds)}",
        f"model.preset={preset}",
        f"train.run_root={(out_dir / 'runs').resolve()}",
        *settings,
    ])
    plan = plan_experiment(spec, cache_dir=out_dir / "cache")
    sweep = run_local(plan, str(store), cache_dir=out_dir / "cache", show_progress=show_progress)
    if sweep.failed:
        run_id, message = sweep.failed[0]
        raise ConfigError(f"quickstart: {len(sweep.failed)} of {sweep.planned} runs failed (first: {run_id}: "
                          f"{message}); run `wattscale quickstart` again to resume them")
    with open_store(str(store)) as s:
        print_runs_table(s.list_runs(experiment=spec.name))
    report = write_report(store, out_dir / "report.html", experiment=spec.name)
    print(f"study: {spec.name}, {preset} x {len(budgets_tokens)} token budgets x {seeds} seeds = {sweep.planned} "
          f"runs ({sweep.already_done} already finished), order recorded in the store")
    print(f"results database: {store}")
    print(f"checkpoints and final weights: {out_dir / 'runs'}")
    print(f"statistics as JSON: wattscale --store {store} analyze --experiment {spec.name} --json")
    print(f"energy of a run: wattscale --store {store} energy {plan.runs[-1].run_id}")
    print(LAW_HINT)
    print(f"report ({report.size_bytes / 1e6:.1f} MB, open it in a browser): {report.path.resolve()}")
    return QuickstartResult(spec.name, tuple(run.run_id for run in plan.runs), store, report.path,
                            sweep.already_done)

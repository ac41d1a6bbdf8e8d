"""Experiment files: validation, grid expansion, run ids, run order, plan, and resumable sweeps."""

from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from conftest import TINY_DATA
from wattscale.errors import ConfigError
from wattscale.experiment import block_orders, load_experiment, plan_experiment, williams_rows
from wattscale.experiment.local import run_local
from wattscale.store import open_store
from wattscale.store_schema import SCHEMA_VERSION

# A real but small study: llama-tiny, three training-set sizes x two repetitions.
TINY_STUDY = """
[experiment]
name = "tiny-study"
repetitions = 2

[model]
preset = "llama-tiny"

[train]
epochs = 1
batch_size = 4
seq_len = 32
eval_tokens = 2048
threads = 1

[data]
synthetic_mb = 0.3

[meter]
idle_seconds = 0

[grid]
"train.data_tokens" = [2048, 4096, 8192]
"""


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def plan_of(tmp_path: Path, cache_dir: Path, text: str, variant: str | None = None):
    """Plan a study whose runs keep their checkpoints under tmp_path (not the working directory)."""
    spec = load_experiment(write(tmp_path, text), variant=variant, settings=[f"train.run_root={tmp_path / 'runs'}"])
    return plan_experiment(spec, cache_dir)


# --- expansion, seeds, ids ------------------------------------------------------------------------


def test_grid_times_repetitions_with_a_seed_per_repetition(tmp_path: Path, cache_dir: Path) -> None:
    plan = plan_of(tmp_path, cache_dir, TINY_STUDY)
    assert len(plan.runs) == 6
    assert plan.total_tokens == 2 * (2048 + 4096 + 8192)
    for block in (0, 1):
        runs = [r for r in plan.runs if r.block == block]
        assert sorted(r.config.train.data_tokens for r in runs) == [2048, 4096, 8192]  # every condition once
        assert {r.config.train.seed for r in runs} == {block}
        assert all(r.repetition == block and r.config.train.tokens == r.config.train.data_tokens for r in runs)
    assert len({r.run_id for r in plan.runs}) == 6
    # Planning again gives the same ids and order: they are hashes of the settings, and the order has a seed.
    again = plan_of(tmp_path, cache_dir, TINY_STUDY)
    assert [r.run_id for r in again.runs] == [r.run_id for r in plan.runs]


def test_same_seed_repetitions_are_distinct_runs_of_identical_settings(tmp_path: Path, cache_dir: Path) -> None:
    plan = plan_of(tmp_path, cache_dir, TINY_STUDY.replace("repetitions = 2", 'repetitions = 3\nseeds = "same"\n'
                                                                             "base_seed = 7"))
    assert {r.config.train.seed for r in plan.runs} == {7}
    assert sorted(Counter(r.config.train.repeat for r in plan.runs).items()) == [(0, 3), (1, 3), (2, 3)]
    assert len({r.run_id for r in plan.runs}) == 9


def test_explicit_seed_list(tmp_path: Path, cache_dir: Path) -> None:
    plan = plan_of(tmp_path, cache_dir, TINY_STUDY.replace("repetitions = 2", "repetitions = 2\nseeds = [11, 42]"))
    assert {r.block: r.config.train.seed for r in plan.runs} == {0: 11, 1: 42}


def test_planned_run_id_is_the_id_train_gives_the_same_settings(run_cli_in_process, tmp_path: Path,
                                                                cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    plan = plan_of(tmp_path, cache_dir, TINY_STUDY)
    run = next(r for r in plan.runs if r.config.train.data_tokens == 2048 and r.config.train.seed == 1)
    result = run_cli("--store", "hand.db", "train", "--preset", "llama-tiny", "--data-tokens", "2048", "--epochs", "1",
                     "--seed", "1", "--batch-size", "4", "--seq-len", "32", "--threads", "1", "--no-progress",
                     "--json", "--cache-dir", str(cache_dir), *TINY_DATA)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["run_id"] == run.run_id


def test_derived_steps_and_batch_tokens(tmp_path: Path, cache_dir: Path) -> None:
    text = TINY_STUDY.replace("epochs = 1\nbatch_size = 4\n", "").replace(
        '"train.data_tokens" = [2048, 4096, 8192]', '"train.batch_tokens" = [64, 256]\n"train.steps" = [3, 5]')
    plan = plan_of(tmp_path, cache_dir, text.replace("repetitions = 2", "repetitions = 1"))
    cells = sorted((r.config.train.batch_size, r.config.train.tokens) for r in plan.runs)
    assert cells == [(2, 3 * 64), (2, 5 * 64), (8, 3 * 256), (8, 5 * 256)]
    assert {r.condition_label for r in plan.runs} >= {"batch_tokens=64 steps=3", "batch_tokens=256 steps=5"}


def test_variant_merges_and_renames_and_set_overrides(tmp_path: Path, cache_dir: Path) -> None:
    text = TINY_STUDY + """
[variants.small]
experiment = { repetitions = 1 }
grid = { "train.data_tokens" = [2048] }
"""
    spec = load_experiment(write(tmp_path, text), variant="small", settings=["train.lr=0.01", "data.synthetic_seed=3"])
    assert spec.name == "tiny-study-small"
    assert spec.design.repetitions == 1 and spec.grid == (("train.data_tokens", (2048,)),)
    assert spec.tables["train"]["lr"] == 0.01 and spec.tables["data"]["synthetic_seed"] == 3
    plan = plan_experiment(spec, cache_dir)
    assert len(plan.runs) == 1 and plan.runs[0].config.train.lr == 0.01


def test_shipped_experiment_files_plan(tmp_path: Path) -> None:
    """Every file in experiments/ and its smoke variant parse and expand (fingerprints only, no data built)."""
    repo = Path(__file__).resolve().parents[1]
    # dynamics_4m reads this workplace's TinyStories sample by default; in a clone without ../shared beside it
    # the plan refuses the missing file in one line (test_missing_data_path_names_the_key_the_set_and_the_variant),
    # so point it at a stand-in.
    stand_in = []
    if not (repo.parent / "shared" / "data" / "tinystories" / "tinystories_train_sample_2MiB.txt").exists():
        text = tmp_path / "stories.txt"
        text.write_text("Once upon a time a cat sat in the sun.\n" * 200, encoding="utf-8")
        stand_in = [f"data.source={text}", f"data.val_source={text}"]

    def load(name: str, variant: str | None = None):
        settings = stand_in if (name, variant) == ("dynamics_4m", None) else []
        return load_experiment(repo / "experiments" / f"{name}.toml", variant=variant, settings=settings)

    expected = {"token_scale_energy": (150, 3), "dynamics_4m": (6, 1), "three_term_law": (48, 48)}
    for name, (runs, conditions) in expected.items():
        for variant in (None, "smoke"):
            spec = load(name, variant)
            plan = plan_experiment(spec, tmp_path / "cache", prepare=False)
            assert spec.n_conditions == conditions
            assert len(plan.runs) == (runs if variant is None else {"token_scale_energy": 9}.get(name, runs))
    full = plan_experiment(load("dynamics_4m"), tmp_path / "cache", prepare=False)
    assert {r.config.train.tokens for r in full.runs} == {20_000_768}
    assert {r.config.train.seed for r in full.runs} == set(range(6))
    assert {r.config.model.name for r in full.runs} == {"llama-4m"}
    paper1 = plan_experiment(load_experiment(repo / "experiments" / "token_scale_energy.toml"), tmp_path / "cache",
                             prepare=False)
    assert {r.config.train.data_tokens for r in paper1.runs} == {500_000, 1_000_000, 2_000_000}
    law = plan_experiment(load_experiment(repo / "experiments" / "three_term_law.toml"), tmp_path / "cache",
                          prepare=False)
    assert len({r.config.model.name for r in law.runs}) == 3
    assert len({r.config.train.batch_size for r in law.runs}) == 4
    assert len({r.config.train.tokens // r.config.tokens_per_step for r in law.runs}) == 4


def test_nested_variant_tables_equal_the_inline_form(tmp_path: Path) -> None:
    """[variants.smoke.train] tables and the inline `train = { ... }` form of earlier releases give one spec."""
    base = TINY_STUDY
    inline = base + """
[variants.small]
unset = ["train.threads"]
experiment = { repetitions = 1, store = "small.db" }
train = { lr = 0.01, batch_size = 2 }
grid = { "train.data_tokens" = [2048] }
"""
    nested = base + """
[variants.small]
unset = ["train.threads"]

[variants.small.experiment]
repetitions = 1
store = "small.db"

[variants.small.train]
lr = 0.01
batch_size = 2

[variants.small.grid]
"train.data_tokens" = [2048]
"""
    a = load_experiment(write(tmp_path, inline, "inline.toml"), variant="small")
    b = load_experiment(write(tmp_path, nested, "nested.toml"), variant="small")
    assert a.to_dict() == b.to_dict() and a.spec_hash() == b.spec_hash()
    assert b.name == "tiny-study-small" and b.tables["train"]["lr"] == 0.01 and "threads" not in b.tables["train"]
    assert b.grid == (("train.data_tokens", (2048,)),) and b.design.store == "small.db"
    # `unset` written after a sub-table header lands inside that table: said so, with where it belongs.
    misplaced = base + """
[variants.small.train]
lr = 0.01
unset = ["train.threads"]
"""
    with pytest.raises(ConfigError, match=r"variants\.small\.train\.unset: write unset = \[\.\.\.\] directly under "
                                          r"\[variants\.small\]"):
        load_experiment(write(tmp_path, misplaced, "misplaced.toml"), variant="small")


def test_shipped_files_use_nested_variants_link_their_paper_and_name_the_schema() -> None:
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "experiments").glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        assert text.splitlines()[0] == "#:schema ./experiment.schema.json", path.name
        assert re.search(r"^# Paper \d .*https://(arxiv\.org/abs|doi\.org)/\S+", text, flags=re.MULTILINE), path.name
        assert "[variants.smoke.train]" in text and not re.search(r"^(train|model|data|grid) = \{", text,
                                                                   flags=re.MULTILINE), path.name


def test_committed_schema_is_the_generated_one_and_accepts_the_shipped_files() -> None:
    """`python -m wattscale.experiment.schema > experiments/experiment.schema.json` after changing a config field."""
    from wattscale.experiment.schema import experiment_schema, schema_text

    repo = Path(__file__).resolve().parents[1]
    committed = (repo / "experiments" / "experiment.schema.json").read_text(encoding="utf-8")
    assert committed == schema_text(), "regenerate: python -m wattscale.experiment.schema > experiments/" \
                                       "experiment.schema.json"
    schema = experiment_schema()
    train = schema["properties"]["train"]["properties"]
    assert train["schedule"]["enum"] == ["cosine", "wsd", "constant"] and train["eval_tokens"]["default"] == 65_536
    assert "steps" in train and "seed" not in train  # derived keys in, seeds only through [experiment]
    assert schema["properties"]["experiment"]["required"] == ["name"]
    assert "train.lr" in schema["properties"]["grid"]["properties"] and "train.threads" not in \
        schema["properties"]["grid"]["properties"]
    import jsonschema  # in the test extra

    validator = jsonschema.Draft7Validator(schema)
    for path in [*sorted((repo / "experiments").glob("*.toml")), repo / "src" / "wattscale" / "quickstart.toml"]:
        assert not list(validator.iter_errors(tomllib.loads(path.read_text(encoding="utf-8")))), path.name
    bad = {"experiment": {"name": "x"}, "train": {"lrr": 1}, "variants": {"smoke": {"train": {"schedule": "cos"}}}}
    assert len(list(validator.iter_errors(bad))) == 2


def test_missing_data_path_names_the_key_the_set_and_the_variant(tmp_path: Path, cache_dir: Path) -> None:
    """A file copied away from its data (a fresh clone without the workplace's TinyStories sample)."""
    repo = Path(__file__).resolve().parents[1]
    copy = tmp_path / "elsewhere" / "dynamics_4m.toml"
    copy.parent.mkdir()
    copy.write_text((repo / "experiments" / "dynamics_4m.toml").read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        plan_experiment(load_experiment(copy), cache_dir, prepare=False)
    message = str(caught.value)
    assert message.startswith("data.source: '../../shared/data/tinystories/") and str(copy) in message
    assert "--set data.source=PATH" in message and "--variant smoke" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"^data\.source: '/no/such/file\.txt' does not exist; pass your copy"):
        plan_experiment(load_experiment(copy, settings=["data.source=/no/such/file.txt"]), cache_dir, prepare=False)
    # The variant that does without it plans; so does --set with a real file.
    assert len(plan_experiment(load_experiment(copy, variant="smoke"), cache_dir, prepare=False).runs) == 6
    text = tmp_path / "stories.txt"
    text.write_text("Once upon a time there was a cat.\n" * 50, encoding="utf-8")
    spec = load_experiment(copy, settings=[f"data.source={text}", f"data.val_source={text}"])
    assert len(plan_experiment(spec, cache_dir, prepare=False).runs) == 6
    # A file without variants suggests the built-in corpus.
    lone = write(tmp_path, TINY_STUDY.replace("[data]\n", '[data]\nsource = "missing.txt"\n'), "lone.toml")
    with pytest.raises(ConfigError, match=r"--set data\.source=PATH \(or --set data\.source=synthetic"):
        plan_experiment(load_experiment(lone), cache_dir, prepare=False)


# --- run order ------------------------------------------------------------------------------------


def test_random_blocks_are_permutations_fixed_by_their_seed() -> None:
    orders = block_orders(5, 20, "random-blocks", seed=3)
    assert all(sorted(order) == list(range(5)) for order in orders)
    assert orders == block_orders(5, 20, "random-blocks", seed=3)
    assert orders != block_orders(5, 20, "random-blocks", seed=4)
    assert len({tuple(o) for o in orders}) > 5  # not one order repeated
    # Over many blocks each condition runs first about equally often (no position bias).
    firsts = Counter(order[0] for order in block_orders(3, 3000, "random-blocks", seed=0))
    assert all(900 < firsts[c] < 1100 for c in range(3))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_williams_design_is_balanced_for_position_and_carry_over(n: int) -> None:
    rows = williams_rows(n)
    assert len(rows) == (n if n % 2 == 0 else 2 * n)
    cycles = len(rows) // n
    for position in range(n):  # every condition in every position equally often
        assert Counter(row[position] for row in rows) == {c: cycles for c in range(n)}
    successors = Counter(pair for row in rows for pair in pairwise(row))  # every ordered pair equally often
    assert set(successors) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert set(successors.values()) == {cycles}
    # The blocks of a study deal out whole cycles of the square (seeded row order and labels): still balanced.
    orders = block_orders(n, 2 * len(rows), "williams", seed=9)
    assert all(sorted(order) == list(range(n)) for order in orders)
    for position in range(n):
        assert Counter(order[position] for order in orders) == {c: 2 * cycles for c in range(n)}
    assert set(Counter(pair for order in orders for pair in pairwise(order)).values()) == {2 * cycles}
    assert orders[:len(rows)] != orders[len(rows):] or n == 2  # each cycle dealt in a fresh order


# --- validation -------------------------------------------------------------------------------------


BAD_FILES = {
    "unknown key": (TINY_STUDY.replace("repetitions = 2", "repetitions = 2\nrepetitons = 3"),
                    "experiment.repetitons: unknown key"),
    "unknown table": (TINY_STUDY + "\n[grids]\n", "grids: unknown table"),
    "empty grid": (TINY_STUDY.replace("[2048, 4096, 8192]", "[]"), "grid.train.data_tokens: empty list"),
    "unknown factor": (TINY_STUDY.replace('"train.data_tokens"', '"train.data_tokenz"'),
                       "grid.train.data_tokenz: unknown key"),
    "budget below a batch": (TINY_STUDY.replace("[2048, 4096, 8192]", "[32, 2048]"),
                             "condition 'data_tokens=32': train.tokens: 32 is smaller than one batch"),
    "set too large": (TINY_STUDY.replace("[2048, 4096, 8192]", "[2048, 8192000]"),
                      "condition 'data_tokens=8192000': train.data_tokens: 8,192,000 unique tokens requested"),
    "not whole sequences": (TINY_STUDY.replace("[2048, 4096, 8192]", "[2048, 2050]"),
                            "train.data_tokens: 2,050 is not a whole number of 32-token sequences"),
    "seed as factor": (TINY_STUDY.replace('"train.data_tokens" = [2048, 4096, 8192]', '"train.seed" = [1, 2]'),
                       "grid.train.seed: cannot be a grid factor"),
    "meter as factor": (TINY_STUDY + '"meter.sample_hz" = [10, 100]\n', "grid.meter.sample_hz: meter settings"),
    "seed list length": (TINY_STUDY.replace("repetitions = 2", "repetitions = 2\nseeds = [1]"),
                         "experiment.seeds: a list must hold 2 integers"),
    "unknown preset": (TINY_STUDY.replace('"llama-tiny"', '"llama-huge"'), "model.preset: unknown preset"),
    "no name": (TINY_STUDY.replace('name = "tiny-study"', ""), "experiment.name: missing"),
    "bad order": (TINY_STUDY.replace("repetitions = 2", 'repetitions = 2\norder = "latin"'),
                  "experiment.order: unknown order 'latin'"),
    "not toml": ("[experiment\nname=", "is not valid TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_experiment_file_exits_2_with_one_line_and_writes_nothing(run_cli_in_process, tmp_path: Path,
                                                                      cache_dir: Path, case: str) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    text, expected = BAD_FILES[case]
    write(tmp_path, text)
    # `run` first: it tokenizes every data set it needs (so a set larger than the data fails before any run),
    # while `plan` only checks sizes against data already in the cache; without `run` first, "set too large"
    # passed only when an earlier test had happened to fill the shared cache with this corpus.
    for command in ("run", "plan"):
        result = run_cli("--store", "s.db", command, "study.toml", "--cache-dir", str(cache_dir), "--no-progress"
                         if command == "run" else "--json")
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wattscale: error: "), result.stderr
        assert expected in lines[0], lines[0]
        assert not (tmp_path / "s.db").exists()


def test_unknown_variant_and_bad_set(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    write(tmp_path, TINY_STUDY)
    result = run_cli("plan", "study.toml", "--variant", "smoke")
    assert result.returncode == 2 and "--variant: unknown variant 'smoke'" in result.stderr
    result = run_cli("plan", "study.toml", "--set", "lr")
    assert result.returncode == 2 and "--set: 'lr' must look like section.key=value" in result.stderr
    result = run_cli("plan", "study.toml", "--set", "train.data_tokens=4096")
    assert result.returncode == 2 and "is a grid factor" in result.stderr


# --- plan, run, store ---------------------------------------------------------------------------------


def test_run_records_the_order_then_plan_estimates_from_finished_runs(run_cli_in_process, tmp_path: Path,
                                                                      cache_dir: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    write(tmp_path, TINY_STUDY)
    common = ("--store", "s.db")
    planned = run_cli(*common, "plan", "study.toml", "--cache-dir", str(cache_dir), "--json")
    assert planned.returncode == 0, planned.stderr
    before = json.loads(planned.stdout)
    assert before["total_runs"] == 6 and before["done_runs"] == 0 and before["total_tokens"] == 28_672
    assert before["runs_without_time_estimate"] == 6
    assert not (tmp_path / "s.db").exists()  # planning writes nothing

    ran = run_cli(*common, "run", "study.toml", "--cache-dir", str(cache_dir), "--no-progress")
    assert ran.returncode == 0, ran.stderr
    assert "6 finished, 0 diverged, 0 failed of 6 runs" in ran.stdout
    with open_store(tmp_path / "s.db") as store:
        stored = store.experiment_runs("tiny-study")
        runs = store.list_runs(experiment="tiny-study")
        experiment = store.get_experiment("tiny-study")
    assert [r["run_id"] for r in stored] == [r["run_id"] for r in before["runs"]]  # the planned order, stored
    assert [r["position"] for r in runs] == list(range(6))
    assert all(r["status"] == "finished" and r["tokens_seen"] == r["data_tokens"] and r["epochs"] == 1.0
               for r in runs)
    assert {(r["repetition"], r["condition"]) for r in runs} == {
        (rep, f"data_tokens={n}") for rep in (0, 1) for n in (2048, 4096, 8192)}
    assert experiment["order_design"] == "random-blocks" and experiment["order_seed"] == before["order_seed"]
    # The store's runs all started in plan order.
    started = sorted(runs, key=lambda r: r["started_at"])
    assert [r["run_id"] for r in started] == [r["run_id"] for r in before["runs"]]

    again = run_cli(*common, "run", "study.toml", "--cache-dir", str(cache_dir), "--no-progress")
    assert again.returncode == 0 and "(6 were already done)" in again.stdout
    after = json.loads(run_cli(*common, "plan", "study.toml", "--cache-dir", str(cache_dir), "--json").stdout)
    assert after["done_runs"] == 6 and after["est_remaining_seconds"] == 0

    # A new study with the same model and batch is estimated from these runs.
    write(tmp_path, TINY_STUDY.replace("tiny-study", "bigger").replace("[2048, 4096, 8192]", "[16384]"), "b.toml")
    bigger = json.loads(run_cli(*common, "plan", "b.toml", "--cache-dir", str(cache_dir), "--json").stdout)
    assert bigger["runs_without_time_estimate"] == 0
    assert bigger["runs"][0]["est_basis"].startswith("finished runs: same preset, batch, seq_len, device (6 runs)")
    per_token = sorted(r["wall_seconds"] / r["tokens_seen"] for r in runs)
    assert bigger["runs"][0]["est_seconds"] == pytest.approx(16384 * (per_token[2] + per_token[3]) / 2)

    # Changing the study under the same name is refused, and leaves the store as it was.
    write(tmp_path, TINY_STUDY.replace("repetitions = 2", "repetitions = 3"))
    changed = run_cli(*common, "run", "study.toml", "--cache-dir", str(cache_dir), "--no-progress")
    assert changed.returncode == 2 and "experiment.name: 'tiny-study' is already in" in changed.stderr
    with open_store(tmp_path / "s.db") as store:
        assert len(store.experiment_runs("tiny-study")) == 6
    listed = run_cli(*common, "experiments", "--json")
    assert [(e["name"], e["planned_runs"], e["finished_runs"]) for e in json.loads(listed.stdout)] == [
        ("tiny-study", 6, 6)]


def test_a_failing_run_does_not_stop_the_sweep(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    import wattscale.experiment.local as local

    plan = plan_of(tmp_path, cache_dir, TINY_STUDY.replace("repetitions = 2", "repetitions = 1"))
    real_train = local.train
    doomed = plan.runs[1].run_id

    def flaky_train(config, store_url, **kwargs):
        if config.train.data_tokens == plan.runs[1].config.train.data_tokens:
            raise RuntimeError("device lost")
        return real_train(config, store_url, **kwargs)

    monkeypatch.setattr(local, "train", flaky_train)
    result = run_local(plan, str(tmp_path / "s.db"), cache_dir, show_progress=False)
    assert result.finished == 2 and result.failed == [(doomed, "RuntimeError: device lost")] and not result.complete


def _kill_after_a_mid_run_checkpoint(proc: subprocess.Popen, run_root: Path) -> None:
    """SIGKILL `proc` as soon as a new checkpoint that is not a run's last appears under `run_root`.

    The study's runs take 64 and 128 steps, with a checkpoint every 16: one at a step that is not a multiple
    of 64 has at least 16 steps of its run still to go.
    """
    def mid_run() -> set[Path]:
        return {path for path in run_root.glob("*/checkpoints/step-*/meta.json")
                if int(path.parent.name.removeprefix("step-")) % 64}

    before = mid_run()
    while proc.poll() is None and not mid_run() - before:
        time.sleep(0.02)
    proc.kill()
    proc.wait()


def test_killed_sweep_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path, cache_dir: Path) -> None:
    """SIGKILL a sweep at random moments, re-run until it completes: each run once, complete, bit-identical."""
    text = TINY_STUDY.replace("[2048, 4096, 8192]", "[8192, 16384]").replace(
        "eval_tokens = 2048", "eval_tokens = 2048\neval_interval_tokens = 4096\ncheckpoint_interval_tokens = 2048")
    write(tmp_path, text)
    command = [sys.executable, "-m", "wattscale", "--store", "killed.db", "run", "study.toml", "--cache-dir",
               str(cache_dir), "--no-progress"]
    started = time.monotonic()
    # Its own run root: checkpoints are per run id, and these are the same runs.
    reference = subprocess.run([*command[:4], "clean.db", *command[5:], "--set", "train.run_root=clean_runs"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    sweep_seconds = time.monotonic() - started
    rng = random.Random(1234)
    for kill in range(3):
        proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if kill == 1:  # right after a checkpoint inside a run: timed kills alone can all land in start-up
            _kill_after_a_mid_run_checkpoint(proc, tmp_path / "wattscale_runs")
            continue
        try:  # anywhere from start-up (imports, planning) to well into the sweep
            proc.wait(timeout=rng.uniform(0.1, 0.6) * sweep_seconds)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
            proc.wait()
    final = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    con = sqlite3.connect(tmp_path / "killed.db")
    resumed = con.execute("SELECT SUM(resume_count) FROM runs").fetchone()[0]
    con.close()
    assert resumed >= 1, "at least one kill must land inside a run, after a checkpoint"

    def snapshot(db: Path) -> dict:
        con = sqlite3.connect(db)
        try:
            runs = con.execute("SELECT run_id, status, tokens_seen, tokens_budget, steps, final_val_loss FROM runs "
                               "ORDER BY run_id").fetchall()
            evals = con.execute("SELECT run_id, step, tokens_seen, val_loss FROM evaluations "
                                "ORDER BY run_id, tokens_seen").fetchall()
            steps = con.execute("SELECT run_id, step, loss FROM train_steps ORDER BY run_id, step").fetchall()
            planned = con.execute("SELECT position, run_id FROM experiment_runs ORDER BY position").fetchall()
        finally:
            con.close()
        return {"runs": runs, "evaluations": evals, "train_steps": steps, "planned": planned}

    killed, clean = snapshot(tmp_path / "killed.db"), snapshot(tmp_path / "clean.db")
    assert len(killed["runs"]) == 4 and all(r[1] == "finished" and r[2] == r[3] for r in killed["runs"])
    # Same rows, same values, bit for bit: exact resume, no duplicates, nothing missing.
    assert killed == clean


def test_schema_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    """A store written before experiments existed opens, gains the new tables and columns, keeps its runs."""
    db = tmp_path / "old.db"
    with open_store(db) as store:
        store.create_run({"run_id": "old-run", "preset": "llama-tiny", "config_json": "{}", "config_hash": "h",
                          "seed": 0, "tokens_budget": 10})
    con = sqlite3.connect(db)
    with con:  # make it a schema-1 database
        con.execute("DROP TABLE experiment_runs")
        con.execute("DROP TABLE experiments")
        for column in ("data_tokens", "epochs", "repeat"):
            con.execute(f'ALTER TABLE runs DROP COLUMN "{column}"')
        con.execute("UPDATE schema_version SET version = 1")
    con.close()
    with open_store(db) as store:
        run = store.get_run("old-run")
        assert run is not None and run["data_tokens"] is None and run["repeat"] is None and run["kind"] == "train"
        assert store.list_experiments() == []
    con = sqlite3.connect(db)
    assert con.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)  # 1 -> 2 -> 3
    con.close()


def test_sweep_progress_lines(tmp_path: Path, cache_dir: Path, capfd) -> None:
    plan = plan_of(tmp_path, cache_dir, TINY_STUDY.replace("repetitions = 2", "repetitions = 1"))
    started = time.monotonic()
    result = run_local(plan, str(tmp_path / "s.db"), cache_dir, show_progress=True)
    assert result.complete and time.monotonic() - started < 120
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[sweep tiny-study]")]
    assert len(lines) == 3
    assert lines[0].startswith("[sweep tiny-study] run 1/3 ") and "0 done, 0/14,336 tokens" in lines[0]
    assert "2 done" in lines[2] and "kJ so far" in lines[2] and "ETA" in lines[2]

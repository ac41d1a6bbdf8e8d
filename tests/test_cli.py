"""The CLI contract: bad input exits 2 with one line naming the field and writes nothing to the store;
`runs --json`, `export`, `presets` and the global --store / WATTSCALE_STORE behave as documented."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, TINY_DATA

TINY = ["--preset", "llama-tiny", "--batch-size", "4", "--seq-len", "32", *TINY_DATA, "--no-progress"]
RUN_JSON_KEYS = {"run_id", "status", "preset", "params", "tokens_seen", "seed", "wall_seconds", "final_val_loss",
                 "joules", "energy_source"}


@pytest.fixture
def run_cli(run_cli_in_process):
    """The CLI's main() in this process: these tests are about what commands print, exit and store, which the
    console script does the same way (the process itself is under test in test_cli_grammar, test_train)."""
    return run_cli_in_process


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _tokenizer_with_vocab(tmp_path: Path, vocab: int) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat and the dog ran to the park " * 50], trainer)
    path = tmp_path / "tok.json"
    tok.save(str(path))
    return path


BAD_INPUTS = {
    "unknown preset": (["--preset", "llama-5m", "--tokens", "10000"], "model.preset"),
    "zero budget": (["--preset", "llama-tiny", "--tokens", "0"], "train.tokens"),
    "negative budget": (["--preset", "llama-tiny", "--tokens", "-5"], "train.tokens"),
    "budget below one batch": ([*TINY, "--tokens", "100"], "train.tokens"),
    "missing data file": ([*TINY, "--tokens", "10000", "--data", "nope/missing.txt"], "data.source"),
    "corrupt jsonl": ([*TINY, "--tokens", "10000", "--data", "bad.jsonl"], "data.source"),
    "vocab mismatch": ([*TINY, "--tokens", "10000", "--tokenizer", "tok.json"], "data.tokenizer"),
    "unreadable config": (["--config", "broken.toml"], "--config"),
    "missing config": (["--config", "absent.toml"], "--config"),
    "unknown config key": (["--config", "unknown_key.toml"], "train.learning_rate"),
    # --schedule has choices (argparse refuses it, see test_cli_grammar.py); the file's value is the config's check
    "bad schedule": (["--config", "bad_schedule.toml"], "train.schedule"),
    "cuda without gpu": ([*TINY, "--tokens", "10000", "--device", "cuda:7"], "train.device"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_store(run_cli, tmp_path: Path, case: str) -> None:
    _write(tmp_path, "bad.jsonl", '{"text": "fine"}\n{"text": broken\n')
    _write(tmp_path, "broken.toml", "[train\ntokens = 5")
    _write(tmp_path, "unknown_key.toml", '[model]\npreset = "llama-tiny"\n[train]\ntokens = 10000\nlearning_rate = 1\n')
    _write(tmp_path, "bad_schedule.toml",
           '[model]\npreset = "llama-tiny"\n[train]\ntokens = 10000\nschedule = "linear"\n')
    _tokenizer_with_vocab(tmp_path, 300)
    args, field = BAD_INPUTS[case]
    if case == "cuda without gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    res = run_cli("--store", "w.db", "train", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wattscale: error: "), res.stderr
    assert field in lines[0]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "w.db").exists(), "bad input must not create or touch the store"


def test_bad_input_leaves_an_existing_store_intact(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    ok = run_cli("--store", "w.db", "train", *TINY, "--tokens", "1000", "--cache-dir", str(cache_dir))
    assert ok.returncode == 0, ok.stderr
    before = (tmp_path / "w.db").read_bytes()
    bad = run_cli("--store", "w.db", "train", *TINY, "--tokens", "1000", "--data", "missing.parquet")
    assert bad.returncode == 2
    assert (tmp_path / "w.db").read_bytes() == before
    runs = json.loads(run_cli("--store", "w.db", "runs", "--json").stdout)
    assert len(runs) == 1 and runs[0]["status"] == "finished"


def test_runs_json_export_and_store_env(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    env = {"WATTSCALE_STORE": str(tmp_path / "env.db")}
    for seed in ("0", "1"):
        res = run_cli("train", *TINY, "--tokens", "1000", "--seed", seed, "--cache-dir", str(cache_dir), env=env)
        assert res.returncode == 0, res.stderr
    assert (tmp_path / "env.db").exists() and not (tmp_path / "wattscale.db").exists()
    runs = json.loads(run_cli("runs", "--json", env=env).stdout)
    assert len(runs) == 2 and {r["seed"] for r in runs} == {0, 1}
    for run in runs:
        assert RUN_JSON_KEYS <= run.keys()
        assert run["status"] == "finished" and run["tokens_seen"] == 1000 and run["params"] > 0
        # every run is metered by default: a counter where the machine has one, else the labelled estimate
        assert run["joules"] > 0 and run["energy_source"] in ("counter", "estimated")
        assert run["final_val_loss"] > 0 and run["wall_seconds"] > 0
    table = run_cli("runs", env=env)
    assert table.returncode == 0 and runs[0]["run_id"] in table.stdout
    assert run_cli("export", "runs.csv", env=env).returncode == 0
    with open(tmp_path / "runs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["run_id"] for r in rows) == sorted(r["run_id"] for r in runs)
    assert run_cli("export", "evals.parquet", "--table", "evaluations", env=env).returncode == 0
    import pyarrow.parquet as pq

    evals = pq.read_table(tmp_path / "evals.parquet").to_pylist()
    assert {e["run_id"] for e in evals} == {r["run_id"] for r in runs}


def test_config_file_with_flag_override(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    _write(tmp_path, "run.toml", '[model]\npreset = "llama-tiny"\n[train]\ntokens = 5000\nbatch_size = 4\n'
           'seq_len = 32\nseed = 3\n[data]\nsource = "synthetic"\nsynthetic_mb = 0.3\n')
    res = run_cli("train", "--config", "run.toml", "--tokens", "1000", "--no-progress", "--json",
                  "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["tokens_seen"] == 1000
    runs = json.loads(run_cli("runs", "--json").stdout)
    assert runs[0]["seed"] == 3


def test_presets_lists_named_sizes(run_cli) -> None:
    presets = {p["preset"]: p for p in json.loads(run_cli("presets", "--json").stdout)}
    assert presets["tinyllama-1.1b"]["params"] == 1_100_048_384
    assert presets["llama-4m"]["params"] == 4_262_144


def test_trains_on_tinystories_through_the_path_option(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    source = SHARED_DATA / "tinystories" / "tinystories_validation_first1000.txt"
    if not source.is_file():
        pytest.skip(f"TinyStories sample not found at {source}")
    res = run_cli("train", "--preset", "llama-tiny", "--tokens", "2048", "--batch-size", "4", "--seq-len", "32",
                  "--data", str(source), "--no-progress", "--json", "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["tokens_seen"] == 2048


def test_export_hf_command_loads_in_transformers(run_cli, tmp_path: Path, cache_dir: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    from wattscale.hf import import_hf

    res = run_cli("train", *TINY, "--tokens", "2048", "--json", "--cache-dir", str(cache_dir),
                  env={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr
    run_id = json.loads(res.stdout)["run_id"]
    exported = run_cli("export-hf", run_id, "-o", "hf_out", env={"HF_HUB_OFFLINE": "1"})
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "hf_out"
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    hf_model, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = import_hf(out)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf_model.float()(ids).logits, ours(ids), rtol=0, atol=1e-4)
    missing = run_cli("export-hf", "0123456789abcdef", "-o", "x")
    assert missing.returncode == 2 and "run_id" in missing.stderr


def test_plain_progress_lines_when_not_a_terminal(run_cli, cache_dir: Path) -> None:
    res = run_cli("train", *[a for a in TINY if a != "--no-progress"], "--tokens", "2048",
                  "--cache-dir", str(cache_dir))
    assert res.returncode == 0, res.stderr
    assert "tok/s" in res.stderr and "ETA" in res.stderr and "loss" in res.stderr
    assert "eval at 2,048 tokens" in res.stderr

"""The trainer through its public API and the CLI: exact budget, evals, resume, divergence, store."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATA, default_sigint
from wattscale.config import build_run_config
from wattscale.progress import ProgressHooks
from wattscale.store import open_store
from wattscale.train import train
from wattscale.train.checkpoints import CheckpointWarning

TINY = ["--preset", "llama-tiny", "--batch-size", "4", "--seq-len", "32", *TINY_DATA, "--no-progress"]


def _api_config(tmp_path: Path, meter: dict | None = None, **train_overrides):
    train_table = {"tokens": 1000, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": 256,
                   "run_root": str(tmp_path / "runs"), "eval_tokens": 2048, **train_overrides}
    return build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": train_table,
                                       "data": {"source": "synthetic", "synthetic_mb": 0.3},
                                       "meter": {"idle_seconds": 0.0, **(meter or {})}})


def test_exact_budget_not_a_multiple_of_the_batch(tmp_path: Path, cache_dir: Path) -> None:
    config = _api_config(tmp_path)  # 1000 tokens, 128 per step: 7 full steps + 104
    store_url = str(tmp_path / "w.db")
    result = train(config, store_url, show_progress=False, cache_dir=cache_dir)
    assert (result.status, result.tokens_seen, result.steps) == ("finished", 1000, 8)
    with open_store(store_url) as store:
        steps = store.train_steps(result.run_id)
        evals = store.evaluations(result.run_id)
        record = store.get_run(result.run_id)
    assert [s["tokens_seen"] for s in steps] == [128 * i for i in range(1, 8)] + [1000]
    # evaluations at each crossing of a 256-token multiple, plus the end of the budget
    assert [e["tokens_seen"] for e in evals] == [256, 512, 768, 1000]
    assert record["tokens_seen"] == 1000 and record["tokens_budget"] == 1000
    assert record["final_val_loss"] == pytest.approx(evals[-1]["val_loss"])
    assert math.isclose(evals[-1]["val_ppl"], math.exp(evals[-1]["val_loss"]), rel_tol=1e-9)
    resolved = json.loads(record["config_json"])
    assert resolved["train"]["tokens"] == 1000 and resolved["model"]["name"] == "llama-tiny"
    assert record["params_total"] == sum(p.numel() for p in _tiny_model().parameters())


def test_train_threads_apply_to_the_run_only(tmp_path: Path, cache_dir: Path) -> None:
    """train.threads sets torch's thread count for the run and restores the caller's setting afterwards."""
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    result = train(_api_config(tmp_path, tokens=256, threads=target), str(tmp_path / "w.db"), show_progress=False,
                   cache_dir=cache_dir)
    assert result.status == "finished"
    assert torch.get_num_threads() == before


def test_final_evaluation_only_and_no_intermediate_checkpoints(tmp_path: Path, cache_dir: Path,
                                                              run_cli_in_process) -> None:
    config = _api_config(tmp_path, eval_interval_tokens=0, checkpoint_interval_tokens=0)
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    with open_store(str(tmp_path / "w.db")) as store:
        evals = store.evaluations(result.run_id)
        record = store.get_run(result.run_id)
    assert [e["tokens_seen"] for e in evals] == [1000]
    assert not (tmp_path / "runs" / result.run_id / "checkpoints").exists()
    assert set(record["phases"]) == {"warmup", "train", "eval", "save", "other"}  # no checkpoint phase
    bad = run_cli_in_process("train", *TINY, "--tokens", "1000", "--eval-interval-tokens", "-1")
    assert bad.returncode == 2 and "train.eval_interval_tokens: -1 must be >= 0" in bad.stderr


def _tiny_model():
    from wattscale.model import Llama, ModelConfig

    return Llama(ModelConfig.from_name("llama-tiny"))


def test_rerun_of_finished_run_does_nothing(tmp_path: Path, cache_dir: Path) -> None:
    config = _api_config(tmp_path)
    store_url = str(tmp_path / "w.db")
    first = train(config, store_url, show_progress=False, cache_dir=cache_dir)
    second = train(config, store_url, show_progress=False, cache_dir=cache_dir)
    assert second.already_done and second.run_id == first.run_id
    with open_store(store_url) as store:
        assert len(store.list_runs()) == 1
        assert len(store.train_steps(first.run_id)) == 8


def test_gradient_accumulation_matches_full_batch(tmp_path: Path, cache_dir: Path) -> None:
    full = train(_api_config(tmp_path / "a"), str(tmp_path / "a.db"), show_progress=False, cache_dir=cache_dir)
    accum = train(_api_config(tmp_path / "b", micro_batch_size=1), str(tmp_path / "b.db"),
                  show_progress=False, cache_dir=cache_dir)
    w_full = load_file(str(full.run_dir / "final" / "model.safetensors"))
    w_accum = load_file(str(accum.run_dir / "final" / "model.safetensors"))
    for name in w_full:
        torch.testing.assert_close(w_accum[name], w_full[name], rtol=1e-4, atol=1e-5)


def test_loss_falls_well_below_unigram_entropy(tmp_path: Path, cache_dir: Path) -> None:
    """On the generated stories a tiny model beats the best context-free predictor by a wide margin."""
    config = _api_config(tmp_path, tokens=120_000, batch_size=8, seq_len=64, eval_interval_tokens=60_000,
                         lr=1e-2)
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    from wattscale.data import prepare_data

    data = prepare_data(config.data, config.model.vocab_size, cache_dir)
    counts = torch.bincount(torch.from_numpy(data.train.tokens.astype("int64")), minlength=512).double() + 1
    p_train = counts / counts.sum()
    val = torch.from_numpy(data.val.tokens.astype("int64"))
    unigram_cross_entropy = float(-(p_train.log()[val]).mean())
    assert result.final_val_loss < 0.75 * unigram_cross_entropy, (result.final_val_loss, unigram_cross_entropy)


def test_divergence_is_recorded_not_a_crash(run_cli_in_process, tmp_path: Path) -> None:
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    res = run_cli("--store", "w.db", "train", *TINY, "--tokens", "20000", "--lr", "50", "--json")
    assert res.returncode == 3, res.stderr
    out = json.loads(res.stdout)
    assert out["status"] == "diverged" and out["message"]
    with open_store(str(tmp_path / "w.db")) as store:
        (run,) = store.list_runs()
        assert run["status"] == "diverged" and run["tokens_seen"] < 20000
        steps = store.train_steps(run["run_id"])
    assert steps[-1]["step"] == run["steps"]  # the steps up to the divergence are kept, the last one included
    assert run["train_seconds"] is not None and run["phases"]["train"]["seconds"] == run["train_seconds"]


def test_sigkill_then_resume_is_bit_identical(run_cli_in_process, tmp_path: Path, cache_dir: Path) -> None:
    """A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""
    run_cli = run_cli_in_process  # the CLI's main(), without a new interpreter per call
    args = [*TINY, "--tokens", "40000", "--eval-interval-tokens", "5000", "--checkpoint-interval-tokens", "2048",
            "--cache-dir", str(cache_dir)]
    ref = run_cli("--store", "ref.db", "train", *args, "--run-root", "ref_runs", "--json")
    assert ref.returncode == 0, ref.stderr
    ref_out = json.loads(ref.stdout)

    cmd = [sys.executable, "-m", "wattscale", "--store", "killed.db", "train", *args, "--run-root", "killed_runs"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_root = tmp_path / "killed_runs" / ref_out["run_id"] / "checkpoints"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(ckpt_root.glob("step-*/meta.json"))) >= 1 and _first_ckpt_step(ckpt_root) >= 32:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open_store(str(tmp_path / "killed.db")) as store:
        assert store.get_run(ref_out["run_id"])["status"] == "running", "the kill must land mid-run"

    resumed = run_cli("--store", "killed.db", "train", *args, "--run-root", "killed_runs", "--json")
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["resumed"] and out["tokens_seen"] == 40000
    ref_w = load_file(str(tmp_path / "ref_runs" / ref_out["run_id"] / "final" / "model.safetensors"))
    new_w = load_file(str(tmp_path / "killed_runs" / ref_out["run_id"] / "final" / "model.safetensors"))
    assert ref_w.keys() == new_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], new_w[name]), name
    assert out["final_val_loss"] == ref_out["final_val_loss"]
    with open_store(str(tmp_path / "killed.db")) as store:
        steps = store.train_steps(out["run_id"])
        assert [s["step"] for s in steps] == list(range(1, out["steps"] + 1))  # no duplicates, no gaps
        assert len(store.evaluations(out["run_id"])) == 8
        assert store.get_run(out["run_id"])["resume_count"] == 1


def _first_ckpt_step(root: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in root.glob("step-*/meta.json")]
    return max(steps, default=0)


def test_checkpoints_load_without_unpickling(tmp_path: Path, cache_dir: Path) -> None:
    config = _api_config(tmp_path, tokens=4000, checkpoint_interval_tokens=1024)
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    ckpts = sorted((result.run_dir / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-00000016", "step-00000024"]  # the newest two of 8, 16, 24
    for ckpt in ckpts:
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        assert "optimizer" in state and "rng" in state
        assert load_file(str(ckpt / "model.safetensors"))


def _interrupt_after(tokens: int) -> ProgressHooks:
    """Stops a run as Ctrl-C does once it has trained `tokens` tokens (the hook runs after every step)."""

    def on_tokens(tokens_seen: int) -> None:
        if tokens_seen >= tokens:
            raise KeyboardInterrupt

    return ProgressHooks(on_tokens=on_tokens)


# 32 steps of 128 tokens, a checkpoint every 4; stopped in step 17, the run has checkpoints at steps 12 and 16.
RESUME_SETTINGS = {"tokens": 4096, "eval_interval_tokens": 1024, "checkpoint_interval_tokens": 512}


def _stopped_after_step_17(tmp_path: Path, cache_dir: Path) -> Path:
    """Train the RESUME_SETTINGS run into tmp_path/runs until step 17; its checkpoints folder."""
    with pytest.raises(KeyboardInterrupt):
        train(_api_config(tmp_path, **RESUME_SETTINGS), str(tmp_path / "w.db"), show_progress=False,
              cache_dir=cache_dir, progress_hooks=_interrupt_after(17 * 128))
    (root,) = (tmp_path / "runs").glob("*/checkpoints")
    assert [p.name for p in sorted(root.glob("step-*"))] == ["step-00000012", "step-00000016"]
    return root


def test_truncated_newest_checkpoint_resumes_from_the_one_before_bit_identically(tmp_path: Path,
                                                                                 cache_dir: Path) -> None:
    """The newest checkpoint's weights cut in half (a power loss before they reached the disk): the run
    resumes from the checkpoint before, says so, keeps the damaged one aside, and ends with exactly the
    weights of an uninterrupted run, since steps 13-16 are replayed from the same state and data."""
    reference = train(_api_config(tmp_path / "ref", **RESUME_SETTINGS), str(tmp_path / "ref.db"),
                      show_progress=False, cache_dir=cache_dir)
    root = _stopped_after_step_17(tmp_path, cache_dir)
    weights = root / "step-00000016" / "model.safetensors"
    half = weights.stat().st_size // 2
    weights.write_bytes(weights.read_bytes()[:half])

    with pytest.warns(CheckpointWarning, match=r"^skipped checkpoint step-00000016 \(model\.safetensors: "
                                               r"SafetensorError: .*\): resuming from step-00000012; "):
        resumed = train(_api_config(tmp_path, **RESUME_SETTINGS), str(tmp_path / "w.db"), show_progress=False,
                        cache_dir=cache_dir)
    assert (resumed.run_id, resumed.status, resumed.resumed, resumed.tokens_seen) == \
        (reference.run_id, "finished", True, 4096)
    assert (root / "corrupt-step-00000016" / "model.safetensors").stat().st_size == half
    ref_w = load_file(str(reference.run_dir / "final" / "model.safetensors"))
    new_w = load_file(str(resumed.run_dir / "final" / "model.safetensors"))
    assert ref_w.keys() == new_w.keys()
    for name in ref_w:
        assert torch.equal(ref_w[name], new_w[name]), name
    assert resumed.final_val_loss == reference.final_val_loss
    with open_store(str(tmp_path / "w.db")) as store:
        assert [s["step"] for s in store.train_steps(resumed.run_id)] == list(range(1, 33))
        assert store.get_run(resumed.run_id)["resume_count"] == 1


def test_no_readable_checkpoint_is_one_line_and_exit_2(tmp_path: Path, cache_dir: Path, run_cli_in_process) -> None:
    root = _stopped_after_step_17(tmp_path, cache_dir)
    for ckpt in root.glob("step-*"):
        (ckpt / "trainer_state.pt").write_bytes(b"")
    res = run_cli_in_process("--store", "w.db", "train", *TINY, "--tokens", "4096", "--eval-interval-tokens", "1024",
                             "--checkpoint-interval-tokens", "512", "--run-root", "runs", "--cache-dir", str(cache_dir))
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"wattscale: error: no checkpoint in {root} can be loaded (step-00000016: "
                           "trainer_state.pt: EOFError; step-00000012: trainer_state.pt: EOFError); ")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000012", "step-00000016"]  # nothing moved


def test_torch_compile_trains_like_eager(tmp_path: Path, cache_dir: Path) -> None:
    eager = train(_api_config(tmp_path / "e", tokens=2048), str(tmp_path / "e.db"), show_progress=False,
                  cache_dir=cache_dir)
    compiled = train(_api_config(tmp_path / "c", tokens=2048, compile=True), str(tmp_path / "c.db"),
                     show_progress=False, cache_dir=cache_dir)
    assert compiled.run_id != eager.run_id  # compile is part of what a run computes
    assert compiled.status == "finished" and compiled.tokens_seen == 2048
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, rel=1e-3)


# Ctrl-C delivered while the garbage collector runs a weakref callback (SQLAlchemy's event registry has them):
# CPython prints "Exception ignored in" and drops the KeyboardInterrupt. Here the callback sends the signal itself.
_SWALLOWED_CTRL_C = """
import os, signal, sys, weakref
from wattscale.cli import main
from wattscale.train import loop

real_learning_rate, calls = loop.learning_rate, []

def learning_rate(*args):
    calls.append(1)
    if len(calls) == 5:
        class Garbage: ...
        garbage = Garbage()
        ref = weakref.ref(garbage, lambda _: os.kill(os.getpid(), signal.SIGINT))
        del garbage
    return real_learning_rate(*args)

loop.learning_rate = learning_rate
sys.exit(main(sys.argv[1:]))
"""


def test_a_ctrl_c_the_garbage_collector_swallows_still_stops_the_run(tmp_path: Path, cache_dir: Path) -> None:
    args = ["--store", "w.db", "train", *TINY, "--tokens", "40000", "--cache-dir", str(cache_dir)]
    proc = subprocess.run([sys.executable, "-c", _SWALLOWED_CTRL_C, *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, preexec_fn=default_sigint)
    assert "Exception ignored in" in proc.stderr and "KeyboardInterrupt" in proc.stderr  # it was swallowed
    assert proc.returncode == 130 and "re-run the same command to resume" in proc.stderr, proc.stderr
    with open_store(str(tmp_path / "w.db")) as store:
        (run,) = store.list_runs()
    assert run["status"] == "interrupted"  # not trained on to its 40,000 tokens


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_is_recorded_and_resumable(run_cli_in_process, tmp_path: Path, cache_dir: Path,
                                            sig: signal.Signals) -> None:
    budget = 20_000
    args = [*TINY, "--tokens", str(budget), "--checkpoint-interval-tokens", "2048", "--cache-dir", str(cache_dir)]
    cmd = [sys.executable, "-m", "wattscale", "--store", "w.db", "train", *args]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((tmp_path / "wattscale_runs").glob("*/checkpoints/step-*")):
        time.sleep(0.02)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "re-run the same command to resume" in stderr
    with open_store(str(tmp_path / "w.db")) as store:
        (run,) = store.list_runs()
    assert run["status"] == "interrupted" and run["tokens_seen"] < budget
    resumed = run_cli_in_process("--store", "w.db", "train", *args, "--json")  # the resume: in this process
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["status"] == "finished" and out["resumed"] and out["tokens_seen"] == budget
    # Energy continues across the resume: one run row, evaluation intervals (split by phase) that tile the
    # budget, phases that add up to the run, a trace without overlapping times, and the run's energy equal
    # to what its intervals add up to (but for the final save, which comes after the last interval).
    with open_store(str(tmp_path / "w.db")) as store:
        rows = store.energy_measurements(out["run_id"])
        samples = store.power_samples(out["run_id"])
    (run_row,) = [r for r in rows if r["scope"] == "run"]
    spans = sorted({(r["start_tokens"], r["end_tokens"]) for r in rows if r["scope"] == "interval"})
    assert [a for a, _ in spans] == [0] + [b for _, b in spans[:-1]] and spans[-1][1] == budget
    assert run_row["energy_j"] == out["energy_j"]
    phases = {r["phase"]: r["energy_j"] for r in rows if r["scope"] == "phase"}
    assert sum(phases.values()) == pytest.approx(run_row["energy_j"], rel=1e-9)
    intervals_j = sum(r["energy_j"] for r in rows if r["scope"] == "interval")
    assert intervals_j == pytest.approx(run_row["energy_j"] - phases["save"], rel=0.05, abs=0.5)
    times = [s["t_seconds"] for s in samples]
    assert len(times) == len(set(times))

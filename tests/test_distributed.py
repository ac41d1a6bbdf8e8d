"""One run on two CPU processes (torchrun, gloo): the same run as one process, only rank 0 writing.

The reference is the single-process trainer with the same global batch: two ranks must reproduce its
losses within float tolerance. Budget 16,020 tokens with a global batch of 5 x 32: 100 full steps
split 3 + 2 sequences, then one sequence with 20 counted tokens that rank 1 has no share of.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_DATA
from wattscale.budget import IGNORE_INDEX, mask_targets
from wattscale.config import build_run_config, run_id_for
from wattscale.energy.ranks import RankMeter, merge_states, state_for_rank
from wattscale.errors import ConfigError
from wattscale.store import open_store
from wattscale.train.parallel import DistributedContext, lockstep_rows, pad_rows, rank_rows

TOKENS, STEPS = 16_020, 101
ARGS = ["train", "--preset", "llama-tiny", "--batch-size", "5", "--seq-len", "32", *TINY_DATA, "--threads", "1",
        "--no-progress", "--tokens", str(TOKENS), "--eval-interval-tokens", "8000",
        "--checkpoint-interval-tokens", "1600", "--meters", "cpu-estimate", "--json"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(cwd: Path, store: str, run_root: str, cache_dir: Path, nproc: int, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "wattscale"]
    if nproc > 1:  # torchrun, as `python -m torch.distributed.run` so that it is this interpreter's
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                    "--master-port", str(_free_port()), "-m", "wattscale"]
    return [*launcher, "--store", str(cwd / store), *ARGS, "--run-root", str(cwd / run_root),
            "--cache-dir", str(cache_dir), *extra]


def _env() -> dict[str, str]:
    launcher_vars = ("WATTSCALE_STORE", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    return {k: v for k, v in os.environ.items() if k not in launcher_vars}


def _train(cwd: Path, store: str, run_root: str, cache_dir: Path, nproc: int, *extra: str) -> dict:
    proc = subprocess.run(_command(cwd, store, run_root, cache_dir, nproc, *extra), cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)  # one JSON line: only rank 0 prints


def _rows(store_path: Path, run_id: str) -> tuple[dict, list[dict], list[dict], list[dict]]:
    with open_store(str(store_path)) as store:
        (record,) = store.list_runs()
        assert record["run_id"] == run_id
        return (store.get_run(run_id), store.train_steps(run_id), store.evaluations(run_id),
                store.energy_measurements(run_id))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, dict]:
    cwd = tmp_path_factory.mktemp("one")
    return cwd, _train(cwd, "w.db", "runs", cache_dir, 1)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, dict]:
    cwd = tmp_path_factory.mktemp("two")
    return cwd, _train(cwd, "w.db", "runs", cache_dir, 2)


@pytest.fixture(scope="module")
def fsdp_ranks(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> tuple[Path, dict]:
    cwd = tmp_path_factory.mktemp("fsdp")
    return cwd, _train(cwd, "w.db", "runs", cache_dir, 2, "--parallel", "fsdp")


def test_two_ranks_train_the_single_process_run(one_process, two_ranks) -> None:
    (one_dir, one), (two_dir, two) = one_process, two_ranks
    assert two["run_id"] == one["run_id"]  # the same run, whatever the number of processes
    assert (two["status"], two["tokens_seen"], two["steps"]) == ("finished", TOKENS, STEPS)
    assert two["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-5)
    record, steps, evals, energy = _rows(two_dir / "w.db", two["run_id"])
    _, one_steps, one_evals, _ = _rows(one_dir / "w.db", one["run_id"])
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))  # one writer: no duplicates, no gaps
    assert steps[-1]["tokens_seen"] == record["tokens_seen"] == TOKENS
    losses = torch.tensor([s["loss"] for s in steps], dtype=torch.float64)
    one_losses = torch.tensor([s["loss"] for s in one_steps], dtype=torch.float64)
    torch.testing.assert_close(losses, one_losses, rtol=5e-5, atol=0.0)  # seen: 2.7e-6
    assert [e["tokens_seen"] for e in evals] == [e["tokens_seen"] for e in one_evals] == [8000, 16000, TOKENS]
    assert json.loads(record["config_json"])["resolved"]["world_size"] == 2
    assert json.loads(record["device_info_json"])["world_size"] == 2
    # Energy: each rank measured its own process; the run's total is the sum over ranks, and so is each phase.
    run_rows = {r["device"]: r["energy_j"] for r in energy if r["scope"] == "run"}
    assert set(run_rows) == {"rank0/cpu", "rank1/cpu"} and all(j > 0 for j in run_rows.values())
    assert record["energy_j"] == pytest.approx(sum(run_rows.values()))
    phase_rows = [r for r in energy if r["scope"] == "phase"]
    assert sum(r["energy_j"] for r in phase_rows) == pytest.approx(record["energy_j"], rel=1e-9)
    assert record["train_energy_j"] == pytest.approx(sum(r["energy_j"] for r in phase_rows if r["phase"] == "train"))
    # Evaluation is sharded: each rank evaluates its windows, and its energy there (waiting included) is eval.
    assert {(r["device"], r["phase"]) for r in phase_rows} >= {("rank0/cpu", "eval"), ("rank1/cpu", "eval")}
    intervals = [r for r in energy if r["scope"] == "interval"]
    assert {r["device"] for r in intervals} == set(run_rows)
    assert {(r["start_tokens"], r["end_tokens"]) for r in intervals} == {(0, 8000), (8000, 16000), (16000, TOKENS)}
    assert {(r["device"], r["phase"]) for r in intervals if r["end_tokens"] == 8000} >= {
        ("rank0/cpu", "train"), ("rank1/cpu", "train"), ("rank0/cpu", "eval"), ("rank1/cpu", "eval")}


def test_fsdp_trains_the_same_run_and_writes_sharded_checkpoints(one_process, fsdp_ranks) -> None:
    (one_dir, one), (tmp_path, fsdp) = one_process, fsdp_ranks
    assert fsdp["run_id"] == one["run_id"] and fsdp["tokens_seen"] == TOKENS
    assert fsdp["final_val_loss"] == pytest.approx(one["final_val_loss"], rel=1e-5)
    record, steps, _, energy = _rows(tmp_path / "w.db", fsdp["run_id"])
    _, one_steps, _, _ = _rows(one_dir / "w.db", one["run_id"])
    torch.testing.assert_close(torch.tensor([s["loss"] for s in steps], dtype=torch.float64),
                               torch.tensor([s["loss"] for s in one_steps], dtype=torch.float64), rtol=5e-5, atol=0.0)
    assert json.loads(record["config_json"])["resolved"]["fsdp"]["param_dtype"] == "float32"  # an fp32 run
    assert {(r["device"], r["phase"]) for r in energy if r["scope"] == "phase"} >= {
        ("rank0/cpu", "eval"), ("rank1/cpu", "eval"), ("rank0/cpu", "checkpoint"), ("rank1/cpu", "checkpoint")}
    # Every rank wrote its shards (torch.distributed.checkpoint); one process loads them whole.
    from wattscale.model import Llama, ModelConfig
    from wattscale.train import make_optimizer
    from wattscale.train.run_checkpoints import load_newest_checkpoint

    *_, ckpt = sorted((tmp_path / "runs" / fsdp["run_id"] / "checkpoints").glob("step-*"))
    *_, one_ckpt = sorted((one_dir / "runs" / one["run_id"] / "checkpoints").glob("step-*"))
    assert ckpt.name == one_ckpt.name and not (ckpt / "model.safetensors").exists()
    assert len(list((ckpt / "sharded").glob("*.distcp"))) == 2
    config = build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": {"tokens": TOKENS}})
    model = Llama(ModelConfig.from_name("llama-tiny"))
    optimizer = make_optimizer(model, config)
    single = DistributedContext(0, 0, 1, None, torch.device("cpu"))
    assert load_newest_checkpoint(single, ckpt.parent.parent, model, optimizer).meta.tokens_seen == 16_000
    reference = torch.load(one_ckpt / "trainer_state.pt", weights_only=True)["optimizer"]
    for index, state in reference["state"].items():  # float-order differences after 100 steps, so up to scale
        torch.testing.assert_close(optimizer.state_dict()["state"][index]["exp_avg"], state["exp_avg"],
                                   rtol=0.0, atol=1e-3 * state["exp_avg"].abs().max().item())


def test_killed_rank_stops_the_job_and_a_rerun_resumes_exactly(two_ranks, tmp_path: Path, cache_dir: Path) -> None:
    """Rank 0 SIGKILLed, and its newest checkpoint then truncated (as a power loss could): the rerun resumes
    from the checkpoint before it, and ends with exactly the weights of the uninterrupted run. (FSDP's sharded
    checkpoints, one rank's shard cut short, resume exactly in test_fsdp.py, without the processes' start-up.)"""
    _, uninterrupted = two_ranks
    run_dir = tmp_path / "runs" / uninterrupted["run_id"]
    cmd = _command(tmp_path, "w.db", "runs", cache_dir, 2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(list(run_dir.glob("checkpoints/step-*"))) < 2:
        time.sleep(0.01)
    os.kill(int((run_dir / "lock").read_text()), signal.SIGKILL)  # rank 0 holds the run's lock
    assert proc.wait(timeout=60) != 0  # torchrun ends the other rank and fails the job
    with open_store(str(tmp_path / "w.db")) as store:
        assert store.get_run(uninterrupted["run_id"])["status"] == "running", "the kill must land mid-run"
    *_, previous, newest = sorted(run_dir.glob("checkpoints/step-*"))  # three if killed before pruning
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    resumed = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"skipped checkpoint {newest.name} (model.safetensors: SafetensorError" in resumed.stderr
    assert f"resuming from {previous.name}" in resumed.stderr
    assert not newest.exists() and (newest.parent / f"corrupt-{newest.name}").is_dir()
    out = json.loads(resumed.stdout)
    assert out["resumed"] and out["tokens_seen"] == TOKENS
    assert out["final_val_loss"] == uninterrupted["final_val_loss"]
    final = load_file(str(run_dir / "final" / "model.safetensors"))
    reference = load_file(str(Path(uninterrupted["run_dir"]) / "final" / "model.safetensors"))
    assert all(torch.equal(final[name], reference[name]) for name in reference)
    record, steps, evals, _ = _rows(tmp_path / "w.db", out["run_id"])
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1)) and len(evals) == 3
    assert record["resume_count"] == 1


# --- the pieces, without processes --------------------------------------------------------------------------


@pytest.mark.parametrize(("n_seq", "world_size", "micro_batch"), [(5, 2, 5), (5, 2, 1), (5, 2, 2), (1, 2, 5),
                                                                  (7, 3, 2), (2, 4, 1), (16, 4, 3)])
def test_rank_shares_are_the_single_process_step(n_seq: int, world_size: int, micro_batch: int) -> None:
    seq_len = 4
    targets = torch.arange(n_seq * seq_len).view(n_seq, seq_len)
    for n_tok in (n_seq * seq_len, (n_seq - 1) * seq_len + 1):  # a full step and a partial last one
        shares, micro_batches = [], set()
        for rank in range(world_size):
            start, stop = rank_rows(n_seq, rank, world_size)
            share = mask_targets(targets[start:stop], max(0, n_tok - start * seq_len))
            _, padded = pad_rows(share.clone(), share, lockstep_rows(n_seq, world_size, micro_batch))
            assert torch.equal(padded[:stop - start], share) and (padded[stop - start:] == IGNORE_INDEX).all()
            shares.append(share)
            micro_batches.add(-(-padded.shape[0] // micro_batch))
        assert torch.equal(torch.cat(shares), mask_targets(targets, n_tok))  # union == single-process batch
        assert len(micro_batches) == 1  # every rank runs as many micro-batches (FSDP and DDP stay in step)
        assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def _ctx(rank: int, world_size: int) -> DistributedContext:
    return DistributedContext(rank, rank, world_size, "gloo", torch.device("cpu"))


def test_checkpoint_energy_goes_back_to_the_rank_that_measured_it() -> None:
    def state(devices: dict[str, float], window: dict[str, float]) -> dict:
        def ledger(energy: dict[str, float]) -> dict:
            return {"train": {"seconds": 2.0, "tokens": 160, "steps": 5, "energy_j": energy,
                              "sources": dict.fromkeys(energy, "estimated"), "complete": True, "errors": []}}

        return {"version": 1, "job_seconds": 2.5, "tokens": 160, "ledger": ledger(devices),
                "windows": {"interval": {"ledger": ledger(window), "start_s": 1.0, "start_tokens": 80}}}

    merged = merge_states([state({"rank0/cpu": 1.0}, {"rank0/cpu": 0.5}), None,
                           state({"rank2/cpu": 3.0}, {"rank2/cpu": 1.5})])
    merged["ledger"]["train"]["energy_j"]["cpu"] = 5.0  # a single-process session before
    merged["ledger"]["train"]["sources"]["cpu"] = "estimated"
    shares = [state_for_rank(merged, rank, 2) for rank in range(2)]
    # rank 0 takes the single-process energy and that of rank 2, which this session does not have
    assert shares[0]["ledger"]["train"]["energy_j"] == {"rank0/cpu": 1.0, "rank2/cpu": 3.0, "cpu": 5.0}
    assert shares[0]["windows"]["interval"]["ledger"]["train"]["energy_j"] == {"rank0/cpu": 0.5, "rank2/cpu": 1.5}
    assert shares[1]["ledger"]["train"]["energy_j"] == {}
    # time and tokens are the job's, on every rank
    assert shares[1]["job_seconds"] == 2.5 and shares[1]["windows"]["interval"]["start_tokens"] == 80
    assert state_for_rank(merged, 0, 1) is merged  # one process resumes everything


def test_rank_meter_prefixes_devices_and_nvml_picks_the_rank_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_meters import _fake_pynvml
    from wattscale.energy import NvmlMeter

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([1000, 2000, 3000], [100_000, 200_000, 300_000]))
    meter = RankMeter(NvmlMeter(gpus=["0002"]), rank=3)  # torch's UUIDs lack NVML's "GPU-" prefix
    assert meter.devices == ("rank3/gpu2",) and meter.describe()["devices"] == ["rank3/gpu2"]
    assert meter.components == ("gpu",) and meter.uuids == ("GPU-0002",)
    assert meter.read().power_w == {"rank3/gpu2": 300.0}
    meter.close()
    with pytest.raises(Exception, match="matches no GPU"):
        NvmlMeter(gpus=["GPU-0009"])


def test_parallel_is_validated_and_not_part_of_the_run_id() -> None:
    def config(**train):
        return build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": {"tokens": 10_000, **train}})

    assert run_id_for(config(parallel="fsdp"), "data") == run_id_for(config(), "data")
    with pytest.raises(ConfigError, match="train.parallel"):
        config(parallel="zero3")

"""FSDP2 and sharded evaluation on two CPU processes (torch.multiprocessing, gloo), through the trainer's functions.

Each test spawns two ranks of `llama-tiny` that write what they saw to files; the parent compares with one
process. Faster than torchrun runs of the CLI (tests/test_distributed.py), which cover the whole trainer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wattscale.config import build_run_config
from wattscale.evaluate import evaluate
from wattscale.model import Llama, ModelConfig
from wattscale.train.checkpoints import CheckpointMeta, list_checkpoints
from wattscale.train.loop import make_optimizer, summed_loss_fn, training_step
from wattscale.train.parallel import (
    DistributedContext,
    build_model,
    evaluate_on_ranks,
    full_weights,
    lockstep_rows,
    pad_rows,
    rank_rows,
    wrap_model,
)
from wattscale.train.run_checkpoints import load_newest_checkpoint, save_run_checkpoint

SEED, SEQ_LEN, BATCH, STEPS = 3, 16, 5, 4
CONFIG = build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": {"tokens": 10_000, "lr": 3e-3}})
MODEL = ModelConfig.from_name("llama-tiny")


def _spawn(worker: Callable, tmp_path: Path, *args: object) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, tmp_path, *args), nprocs=2, join=True)


def _join(rank: int, port: int) -> DistributedContext:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    return DistributedContext(rank, rank, 2, "gloo", torch.device("cpu"))


def _windows(n: int) -> torch.Tensor:
    return torch.randint(0, MODEL.vocab_size, (n, SEQ_LEN + 1), generator=torch.Generator().manual_seed(7))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, MODEL.vocab_size, (BATCH, SEQ_LEN + 1), generator=torch.Generator().manual_seed(step))
    return tokens[:, :-1], tokens[:, 1:]


def _step(ctx: DistributedContext, parallel, model, optimizer, step: int) -> float:
    """One optimiser step on this rank's share of step `step`'s batch, as the trainer takes it; this rank's loss."""
    inputs, targets = _batch(step)
    start, stop = rank_rows(BATCH, ctx.rank, ctx.world_size)
    inputs, targets = pad_rows(inputs[start:stop], targets[start:stop], lockstep_rows(BATCH, ctx.world_size, 2))
    loss, _ = training_step(summed_loss_fn(parallel), model, optimizer, inputs, targets, BATCH * SEQ_LEN, 2,
                            ctx.device, None, 1.0, defer_sync=parallel.defer_sync, grad_scale=parallel.grad_scale)
    return float(loss)  # a float, or a 0-d tensor read here


# --- evaluation once per job, FSDP's model built on the meta device, its precision policy --------------------

EVALUATIONS = [("ddp", 5), ("fsdp", 5), ("fsdp", 1)]  # (parallel, windows): 5 windows split 3 + 2; 1 leaves rank 1 none


def _models_worker(rank: int, port: int, out: Path) -> None:
    ctx = _join(rank, port)
    seen: dict = {"eval": [], "precision": {}}
    for parallel, n_windows in EVALUATIONS:
        model, _ = build_model(MODEL, SEED, ctx, parallel)
        seen["rng"] = torch.get_rng_state()
        if parallel == "fsdp":
            local = sum(p.to_local().numel() for p in model.parameters())  # DTensor shards
            assert local < sum(p.numel() for p in model.parameters()), "a rank holds the whole model"
        seen["eval"].append(evaluate_on_ranks(ctx, model, _windows(n_windows), 2, None))
        seen[f"weights_{parallel}"] = full_weights(ctx, model)
    for precision in ("bf16", "fp32"):
        model, parallel = build_model(MODEL, SEED, ctx, "fsdp", precision)
        gathered: list[torch.dtype] = []
        model.layers[0].register_forward_pre_hook(
            lambda block, args, into=gathered: into.append(block.attn.out.weight.dtype))
        optimizer = make_optimizer(model, CONFIG)
        _step(ctx, parallel, model, optimizer, 0)
        sharded = {p.dtype for p in model.parameters()} | {s["exp_avg"].dtype for s in optimizer.state.values()}
        seen["precision"][precision] = (set(gathered), sharded, parallel.record, parallel.casts_params)
    seen["compile"] = _compiled_blocks(ctx)
    torch.save(seen, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def _compiled_blocks(ctx: DistributedContext) -> dict:
    """Train one step with and without per-block compile; torch.compile's backend records the graphs (the
    default backend, inductor, would take a minute to compile on a loaded CPU)."""
    graphs: list[torch.fx.GraphModule] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list) -> Callable:
        graphs.append(graph)
        return graph.forward

    compile_ = torch.compile
    torch.compile = lambda fn, **kwargs: compile_(fn, backend=record, **kwargs)
    try:
        losses, weights = [], []
        for compile_model in (False, True):
            model, parallel = build_model(MODEL, SEED, ctx, "fsdp", "fp32", compile_model)
            optimizer = make_optimizer(model, CONFIG)
            losses.append(_step(ctx, parallel, model, optimizer, 0))
            weights.append(full_weights(ctx, model))
    finally:
        torch.compile = compile_
    calls = {str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"}
    return {"graphs": len(graphs), "collectives": sorted(c for c in calls if "gather" in c or "reduce" in c),
            "losses": losses, "same_weights": all(torch.allclose(weights[0][k], weights[1][k], rtol=1e-5, atol=1e-7)
                                                  for k in weights[0])}


@pytest.fixture(scope="module")
def two_rank_models(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("models")
    _spawn(_models_worker, out)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_sharded_evaluation_is_the_single_process_one(two_rank_models: list[dict]) -> None:
    for (_, n_windows), *seen in zip(EVALUATIONS, *(rank["eval"] for rank in two_rank_models), strict=True):
        expected = evaluate(_reference(), _windows(n_windows), 2, torch.device("cpu"), None)
        for evaluation in seen:  # every rank returns the job's evaluation; each window was evaluated once
            assert evaluation.tokens == expected.tokens == n_windows * SEQ_LEN
            assert evaluation.val_loss == pytest.approx(expected.val_loss, rel=1e-6)


def test_ranks_start_from_the_single_process_weights(two_rank_models: list[dict]) -> None:
    reference = _reference()
    rng_after_build = torch.get_rng_state()
    for parallel in ("ddp", "fsdp"):  # FSDP: built on meta, rank 0's seeded weights broadcast into the shards
        weights = two_rank_models[0][f"weights_{parallel}"]
        assert weights.keys() == reference.state_dict().keys()
        assert all(torch.equal(weights[k], v) for k, v in reference.state_dict().items())
    assert all(torch.equal(rank["rng"], rng_after_build) for rank in two_rank_models)  # the generator goes on


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp32", torch.float32)])
def test_bf16_runs_gather_bf16_parameters_and_keep_fp32_shards(two_rank_models: list[dict], precision: str,
                                                               dtype: torch.dtype) -> None:
    gathered, sharded, record, casts = two_rank_models[0]["precision"][precision]
    assert gathered == {dtype}  # what the block computes with, after FSDP's all-gather
    assert sharded == {torch.float32}  # the optimiser updates float32 shards
    assert casts == (precision == "bf16")  # the trainer then drops autocast
    assert record["fsdp"]["param_dtype"] == str(dtype).removeprefix("torch.")
    assert record["fsdp"]["reduce_dtype"] == "float32"


def _reference() -> Llama:
    torch.manual_seed(SEED)
    return Llama(MODEL)


# --- DCP checkpoints: exact resume, and an unreadable newest one skipped ------------------------------------


def _resume_worker(rank: int, port: int, out: Path) -> None:
    ctx = _join(rank, port)
    run_dir = out / "run"
    model, parallel = build_model(MODEL, SEED, ctx, "fsdp")
    optimizer = make_optimizer(model, CONFIG)
    for step in range(STEPS):
        _step(ctx, parallel, model, optimizer, step)
        if step + 1 in (2, 3):
            save_run_checkpoint(ctx, run_dir, model, optimizer, CheckpointMeta(step + 1, 0, 0, 0.0, None, None))
        if step + 1 == 2:
            at_two = full_weights(ctx, model)
    uninterrupted = full_weights(ctx, model)
    dist.barrier()
    if rank == 0:  # the newest checkpoint's shard of rank 1 cut short, as a lost write could leave it
        shard = next((list_checkpoints(run_dir)[-1] / "sharded").glob("__1_*.distcp"))
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    dist.barrier()

    model, parallel = build_model(MODEL, SEED + 1, ctx, "fsdp")  # another seed: everything comes from the files
    optimizer = make_optimizer(model, CONFIG)
    with pytest.warns(Warning) if rank == 0 else _nothing():
        resume = load_newest_checkpoint(ctx, run_dir, model, optimizer)
    for step in range(resume.meta.step, STEPS):
        _step(ctx, parallel, model, optimizer, step)
    resumed = full_weights(ctx, model)
    # Across formats: DDP replicas load the sharded checkpoint whole; FSDP loads a single-process one (the parent's).
    crossed = {}
    for parallel_mode, folder in (("ddp", run_dir), ("fsdp", out / "single")):
        model, _ = build_model(MODEL, SEED + 2, ctx, parallel_mode)
        optimizer = make_optimizer(model, CONFIG)
        step = load_newest_checkpoint(ctx, folder, model, optimizer).meta.step
        crossed[parallel_mode] = (step, full_weights(ctx, model), optimizer.state_dict()["state"][0]["step"].item())
    torch.save({"at_two": at_two, "uninterrupted": uninterrupted, "resumed": resumed, "skipped": resume.skipped,
                "step": resume.meta.step, "crossed": crossed}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_sharded_checkpoints_resume_exactly_and_skip_an_unreadable_one(tmp_path: Path) -> None:
    single = DistributedContext(0, 0, 1, None, torch.device("cpu"))
    model = _reference()  # a single-process run's checkpoint after 2 steps, for FSDP to resume
    optimizer = make_optimizer(model, CONFIG)
    for step in range(2):
        _step(single, wrap_model(model, single, "ddp"), model, optimizer, step)
    save_run_checkpoint(single, tmp_path / "single", model, optimizer, CheckpointMeta(2, 0, 0, 0.0, None, None))
    _spawn(_resume_worker, tmp_path)
    result = torch.load(tmp_path / "rank0.pt", weights_only=False)
    ddp_step, ddp_weights, ddp_adam_step = result["crossed"]["ddp"]
    assert (ddp_step, ddp_adam_step) == (2, 2.0) and all(torch.equal(ddp_weights[k], v)
                                                          for k, v in result["at_two"].items())
    fsdp_step, fsdp_weights, _ = result["crossed"]["fsdp"]
    assert fsdp_step == 2 and all(torch.equal(fsdp_weights[k], v) for k, v in model.state_dict().items())
    assert result["step"] == 2 and len(result["skipped"]) == 1
    assert result["skipped"][0].startswith("skipped checkpoint step-00000003 (sharded: rank")
    assert result["resumed"].keys() == result["uninterrupted"].keys()
    assert all(torch.equal(result["resumed"][k], v) for k, v in result["uninterrupted"].items())  # bit-identical
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["corrupt-step-00000003", "step-00000002"]
    step_two = checkpoints / "step-00000002"
    assert not (step_two / "model.safetensors").exists()  # nothing gathered: every rank wrote its shard
    assert sorted(p.name for p in (step_two / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # One process resumes the sharded checkpoint whole (DCP reshards on load).
    single = DistributedContext(0, 0, 1, None, torch.device("cpu"))
    model = Llama(MODEL)
    optimizer = make_optimizer(model, CONFIG)
    assert load_newest_checkpoint(single, tmp_path / "run", model, optimizer).meta.step == 2
    assert all(torch.equal(model.state_dict()[k], v) for k, v in result["at_two"].items())
    assert all(int(state["step"]) == 2 for state in optimizer.state.values())


def test_compile_under_fsdp_compiles_each_block_without_the_collectives(two_rank_models: list[dict]) -> None:
    for rank in two_rank_models:
        compiled = rank["compile"]
        assert compiled["graphs"] >= MODEL.n_layers  # each block's forward (again for another micro-batch shape)
        assert compiled["collectives"] == []  # FSDP's all-gather and reduce-scatter stay outside the graphs
        assert compiled["losses"][1] == pytest.approx(compiled["losses"][0], rel=1e-6)
        assert compiled["same_weights"]

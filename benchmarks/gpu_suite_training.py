"""The GPU suite's training sections, through wattscale's own `train()` API with a SQLite store under the work folder.

- ``resume``: a run trained N steps uninterrupted, against the same run stopped (as Ctrl-C stops it) one step
  after its checkpoint at N/2 and resumed: per-step losses, final weights and final validation loss compared
  bit for bit; once as torch runs by default, once under ``torch.use_deterministic_algorithms(True)``.
- ``bf16_divergence``: the same run in bf16 autocast and in fp32, per-step training losses compared.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from gpu_suite_sections import SectionContext, error_text
from wattscale.config import RunConfig, build_run_config
from wattscale.model import ModelConfig
from wattscale.progress import ProgressHooks
from wattscale.store import open_store
from wattscale.train import TrainResult, train

BF16_GAP_LIMIT = 0.05  # bf16 "diverges" when its loss is off fp32's by more than this, averaged over the last quarter


def run_config(ctx: SectionContext, root: Path, steps: int, batch: int, precision: str,
               checkpoint_every_steps: int) -> RunConfig:
    """A `steps`-step run of the suite's training preset at its context length, final evaluation only."""
    s = ctx.sizes
    seq_len = ModelConfig.from_name(s.train_preset).context_length
    tokens_per_step = batch * seq_len
    return build_run_config(overrides={
        "model": {"preset": s.train_preset},
        "train": {"tokens": steps * tokens_per_step, "batch_size": batch, "seq_len": seq_len,
                  "eval_interval_tokens": 0, "checkpoint_interval_tokens": checkpoint_every_steps * tokens_per_step,
                  "eval_tokens": s.eval_tokens, "run_root": str(root / "runs"), "device": str(ctx.device),
                  "precision": precision, "compile": False},
        "data": {"source": "synthetic", "synthetic_mb": s.synthetic_mb},
        # Its own host registry: the suite's runs are alone on the machine, and a shared /tmp registry full of
        # other processes' entries only slows every run's start.
        "meter": {"idle_seconds": 0.0, "host_registry": str(ctx.work_dir / "host")}})


def _train(ctx: SectionContext, config: RunConfig, root: Path, hooks: ProgressHooks | None = None) -> TrainResult:
    return train(config, str(root / "w.db"), show_progress=False, cache_dir=ctx.work_dir / "cache",
                 progress_hooks=hooks)


def step_losses(root: Path, run_id: str) -> list[float]:
    """The run's per-step training losses, as stored."""
    with open_store(str(root / "w.db")) as store:
        return [row["loss"] for row in store.train_steps(run_id)]


def compare(a: TrainResult, a_root: Path, b: TrainResult, b_root: Path) -> dict:
    """Per-step losses, final weights and final validation loss of two runs, bit for bit."""
    la, lb = step_losses(a_root, a.run_id), step_losses(b_root, b.run_id)
    diffs = [abs(x - y) for x, y in zip(la, lb, strict=False)]
    first = next((i + 1 for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y), None)
    wa = load_file(str(a.run_dir / "final" / "model.safetensors"))
    wb = load_file(str(b.run_dir / "final" / "model.safetensors"))
    differing = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    max_w = max((float((wa[k].float() - wb[k].float()).abs().max()) for k in differing if k in wb), default=0.0)
    losses_equal = la == lb
    return {"steps": [len(la), len(lb)], "losses_bit_identical": losses_equal, "first_differing_step": first,
            "max_abs_loss_diff": max(diffs, default=0.0), "weight_tensors": len(wa),
            "weight_tensors_differing": len(differing), "max_abs_weight_diff": max_w,
            "final_val_loss": [a.final_val_loss, b.final_val_loss],
            "bit_identical": losses_equal and not differing and a.final_val_loss == b.final_val_loss}


def _interrupt_at(tokens: int) -> ProgressHooks:
    def on_tokens(tokens_seen: int) -> None:
        if tokens_seen >= tokens:
            raise KeyboardInterrupt

    return ProgressHooks(on_tokens=on_tokens)


def resume_variant(ctx: SectionContext, name: str, repeat: bool) -> dict:
    """Uninterrupted vs stopped-after-N/2+1-and-resumed (and, with `repeat`, vs a second uninterrupted run)."""
    s = ctx.sizes
    half = s.resume_steps // 2
    base = ctx.work_dir / "resume" / name
    roots = {k: base / k for k in ("uninterrupted", "repeat", "resumed")}
    config = {k: run_config(ctx, root, s.resume_steps, s.resume_batch, "auto", half) for k, root in roots.items()}
    t0 = time.perf_counter()
    ref = _train(ctx, config["uninterrupted"], roots["uninterrupted"])
    out: dict = {"steps": s.resume_steps, "checkpoint_step": half, "stopped_after_step": half + 1,
                 "uninterrupted_status": ref.status, "seconds_per_run": time.perf_counter() - t0}
    tokens_per_step = config["resumed"].train.batch_size * config["resumed"].seq_len
    try:
        _train(ctx, config["resumed"], roots["resumed"], _interrupt_at((half + 1) * tokens_per_step))
        out["stop"] = "not stopped: the hook never fired"
    except KeyboardInterrupt:
        out["stop"] = f"stopped after step {half + 1} (as Ctrl-C stops it)"
    resumed = _train(ctx, config["resumed"], roots["resumed"])
    out["resumed_flag"] = resumed.resumed
    out["resumed_vs_uninterrupted"] = compare(ref, roots["uninterrupted"], resumed, roots["resumed"])
    if repeat and ctx.left_s() > 2 * out["seconds_per_run"] + 10:
        again = _train(ctx, config["repeat"], roots["repeat"])
        out["repeat_vs_uninterrupted"] = compare(ref, roots["uninterrupted"], again, roots["repeat"])
    elif repeat:
        out["repeat_vs_uninterrupted"] = {"skipped": "section deadline"}
    return out


def section_resume(ctx: SectionContext) -> dict:
    """Exact resume through train(), by default and under torch.use_deterministic_algorithms(True)."""
    # cuBLAS is deterministic only with a fixed workspace; torch refuses deterministic mode on CUDA without it.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    out: dict = {"preset": ctx.sizes.train_preset, "batch": ctx.sizes.resume_batch, "compile": False,
                 "precision": "auto (bf16 on CUDA, fp32 on CPU)",
                 "cublas_workspace_config": os.environ["CUBLAS_WORKSPACE_CONFIG"]}
    out["default"] = resume_variant(ctx, "default", repeat=True)
    ctx.record(out)
    needed = 3 * out["default"]["seconds_per_run"] + 5
    if ctx.left_s() < needed:
        out["deterministic"] = {"skipped": f"section deadline ({ctx.left_s():.0f} s left, ~{needed:.0f} s needed)"}
        return out
    torch.use_deterministic_algorithms(True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out["deterministic"] = resume_variant(ctx, "deterministic", repeat=False)
            except RuntimeError as exc:  # an op without a deterministic implementation
                out["deterministic"] = {"error": error_text(exc)}
        out["deterministic"]["warnings"] = sorted({str(w.message).splitlines()[0][:300] for w in caught})[:8]
    finally:
        torch.use_deterministic_algorithms(False)
    return out


def section_bf16_divergence(ctx: SectionContext) -> dict:
    """The same run in bf16 autocast and in fp32: relative gap of the per-step training losses."""
    s = ctx.sizes
    base = ctx.work_dir / "divergence"
    results, losses = {}, {}
    for precision in ("fp32", "bf16"):
        root = base / precision
        result = _train(ctx, run_config(ctx, root, s.divergence_steps, s.divergence_batch, precision, 0), root)
        results[precision], losses[precision] = result, step_losses(root, result.run_id)
        ctx.record({"partial": {p: r.status for p, r in results.items()}})
    fp32, bf16 = losses["fp32"], losses["bf16"]
    gaps = [abs(b - f) / abs(f) if math.isfinite(b) else math.inf for f, b in zip(fp32, bf16, strict=False)]
    tail = gaps[len(gaps) - max(1, len(gaps) // 4):]
    tail_mean = sum(tail) / len(tail) if tail else math.inf
    finished = all(r.status == "finished" for r in results.values()) and len(fp32) == len(bf16) == s.divergence_steps
    return {"preset": s.train_preset, "steps": s.divergence_steps, "batch": s.divergence_batch,
            "status": {p: r.status for p, r in results.items()},
            "final_train_loss": {"fp32": fp32[-1] if fp32 else None, "bf16": bf16[-1] if bf16 else None},
            "final_val_loss": {p: r.final_val_loss for p, r in results.items()},
            "max_rel_gap": max(gaps, default=None), "mean_rel_gap_last_quarter": tail_mean,
            "gap_limit": BF16_GAP_LIMIT, "bf16_diverges": not finished or not tail_mean <= BF16_GAP_LIMIT,
            "losses_every_10_steps": {"fp32": fp32[::10], "bf16": bf16[::10]}}

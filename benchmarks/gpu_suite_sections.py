"""The GPU suite's shared pieces (sizes, section context) and its first sections: the machine, throughput and MFU.

Each section is a function ``(ctx: SectionContext) -> dict`` that returns JSON-ready numbers, writes what it has
so far through ``ctx.record`` (so a section stopped at its deadline still leaves its partial figures), and
watches ``ctx.deadline_s`` (a time.monotonic() value) to end early rather than be killed. The training
sections (NVML energy, power-limit sweep) are in `gpu_suite_energy`, the training sections (resumed run, bf16
divergence) in `gpu_suite_training`; the runner is `gpu_suite`.
"""

from __future__ import annotations

import dataclasses
import gc
import math
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from train_throughput import TRAINER_EAGER, build_config, build_ours, time_steps
from wattscale.flops import FLOP_COUNTINGS
from wattscale.hardware import peak_flops
from wattscale.model import ModelConfig, count_parameters, flops_per_token
from wattscale.train import summed_loss_fn, training_step
from wattscale.train.loop import LossFn

DATASHEET_BF16_PEAK_FLOPS = 989e12  # H100 SXM / H200 dense bf16 tensor-core peak (1979 TFLOP/s with sparsity / 2)
MFU_TARGET = 0.50
MEMORY_HEADROOM = 0.90  # use at most this share of the free device memory by the estimate
ACTIVATION_SAFETY = 1.25  # the per-layer estimate below leaves out allocator slack and temporaries
NVIDIA_SMI_FIELDS = ("name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem",
                     "power.draw", "power.limit", "power.default_limit", "power.min_limit", "power.max_limit",
                     "temperature.gpu", "persistence_mode", "compute_mode")


@dataclasses.dataclass(frozen=True)
class SuiteSizes:
    """How big each section's work is: the device run's sizes, or the dry run's tiny ones."""

    big_preset: str = "tinyllama-1.1b"
    big_seq_len: int = 2048
    big_batches: tuple[int, ...] = (8, 4, 2, 1)  # tried in order: the first the estimate admits, then on OOM
    small_preset: str = "llama-4m"
    small_seq_len: int = 512
    small_batches: tuple[int, ...] = (16, 128)  # the trainer's default batch, and one that fills the GPU more
    warmup_steps: int = 2
    timed_steps: int = 10
    matmul_size: int = 8192
    matmul_reps: int = 10
    nvml_warm_s: float = 2.0
    nvml_window_s: float = 8.0
    sample_hz: float = 100.0
    sweep_fractions: tuple[float, ...] = (1.0, 0.75, 0.55)  # of the card's maximum limit, clamped to its minimum
    sweep_batch: int = 64
    sweep_steps: int = 40
    train_preset: str = "llama-4m"
    resume_steps: int = 40
    resume_batch: int = 16
    divergence_steps: int = 200
    divergence_batch: int = 8
    synthetic_mb: float = 4.0
    eval_tokens: int = 16_384


DRY_RUN_SIZES = SuiteSizes(
    big_preset="llama-tiny", big_seq_len=64, big_batches=(4, 2), small_preset="llama-tiny", small_seq_len=64,
    small_batches=(4,), warmup_steps=1, timed_steps=3, matmul_size=256, matmul_reps=3, nvml_warm_s=0.1,
    nvml_window_s=1.0, sweep_fractions=(1.0, 0.75, 0.55), sweep_batch=4, sweep_steps=3, train_preset="llama-tiny",
    resume_steps=8, resume_batch=4, divergence_steps=20, divergence_batch=4, synthetic_mb=0.3, eval_tokens=2048)


@dataclasses.dataclass
class SectionContext:
    """What a section gets: device, sizes, its deadline, the work folder, what ran before, and a recorder."""

    device: torch.device
    sizes: SuiteSizes
    deadline_s: float  # time.monotonic() by which the section must have returned
    work_dir: Path
    dry_run: bool
    compile: bool
    previous: dict  # earlier sections' results, by name (e.g. the measured matmul peak)
    record: Callable[[dict], None] = lambda partial: None
    notes: list[str] = dataclasses.field(default_factory=list)

    def left_s(self) -> float:
        """Seconds until the deadline."""
        return self.deadline_s - time.monotonic()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (host clocks around GPU work need it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(exc: BaseException) -> str:
    """One line: the exception's type and the first line of its message."""
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]


# ---- machine ------------------------------------------------------------------------------------------------


def nvidia_smi() -> dict:
    """Read-only nvidia-smi query of the GPU's name, driver, clocks and power limits (nothing is set)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"error": "nvidia-smi not found"}
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": error_text(exc)}
    gpus = [dict(zip(NVIDIA_SMI_FIELDS, (v.strip() for v in line.split(",")), strict=False))
            for line in out.strip().splitlines()]
    return {"gpus": gpus, "units": "clocks MHz, power W, temperature C"}


def matmul_flops(device: torch.device, size: int, reps: int) -> dict:
    """Measured dense bf16 matmul FLOP/s of size^3 products on random data (median of `reps` after 3 warm-ups)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    seconds = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - t0)
    median_s = statistics.median(seconds)
    return {"size": size, "dtype": "bfloat16", "reps": reps, "seconds_median": median_s,
            "flops_per_second": 2 * size**3 / median_s, "data": "torch.randn (not zeros)"}


def section_machine(ctx: SectionContext) -> dict:
    """GPU name, driver, CUDA and torch versions, nvidia-smi's clocks and power limits, a measured bf16 peak."""
    device = ctx.device
    info: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
                  "nvidia_smi": nvidia_smi()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
        info["datasheet_bf16_peak_flops"], info["datasheet_source"] = peak_flops(device, "bf16")
    ctx.record(info)
    info["matmul"] = matmul_flops(device, ctx.sizes.matmul_size, ctx.sizes.matmul_reps)
    return info


# ---- throughput and MFU -------------------------------------------------------------------------------------


def training_memory_gib(model: ModelConfig, batch: int, seq_len: int) -> float:
    """Rough device memory of a bf16-autocast training step: fp32 weights, gradients and AdamW moments (16 bytes
    a parameter), bf16 weight copies (2), and what autograd saves per token and layer: fp32 residuals at the two
    norms (8 d), bf16 norm outputs, q/k/v, attention and projection inputs (12 d + 4 kv_dim), the SwiGLU's gate,
    up, activation and product (8 ffn); times ACTIVATION_SAFETY. Flash attention saves no T x T scores."""
    params = count_parameters(model).total
    kv_dim = model.n_kv_heads * (model.d_model // model.n_heads)
    per_token_layer = 20 * model.d_model + 4 * kv_dim + 8 * model.ffn_hidden
    activations = ACTIVATION_SAFETY * per_token_layer * model.n_layers * batch * seq_len
    return (18 * params + activations) / 2**30


def free_memory_gib(device: torch.device) -> float:
    """Free memory of the device (host RAM for a CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    import psutil

    return psutil.virtual_memory().available / 2**30


def first_batch_that_fits(batches: tuple[int, ...], attempt: Callable[[int], dict],
                          estimate_gib: Callable[[int], float], free_gib: float) -> dict:
    """Try `attempt(batch)` for each batch the memory estimate admits (largest first), falling back to the
    next on an out-of-memory error; returns the first success with the tries that came before it."""
    tries: list[dict] = []
    for batch in batches:
        need = estimate_gib(batch)
        if need > MEMORY_HEADROOM * free_gib and batch != batches[-1]:
            tries.append({"batch": batch, "skipped": f"estimate {need:.1f} GiB > {MEMORY_HEADROOM:.0%} of "
                                                     f"{free_gib:.1f} GiB free"})
            continue
        try:
            return {**attempt(batch), "estimate_gib": need, "tries": tries}
        except torch.cuda.OutOfMemoryError as exc:
            tries.append({"batch": batch, "estimate_gib": need, "error": error_text(exc)})
        free_device_memory()  # outside the except: its traceback no longer holds the failed attempt's tensors
    raise RuntimeError(f"out of memory at every batch size tried: {tries}")


def measure_training(ctx: SectionContext, preset: str, seq_len: int, batch: int) -> dict:
    """Tokens/s and MFU of wattscale's training step (bf16 autocast, the trainer's chunked loss) on one model:
    eager first (a figure even if compilation then overruns the deadline), then compiled when ctx.compile.
    The headline figures are the compiled ones when they exist. An out-of-memory error in the eager steps
    propagates (the caller tries a smaller batch); a compiled mode that fails is recorded beside the eager one."""
    device = ctx.device
    config = build_config(preset, seq_len, batch, lr=1e-4)
    model, optimizer = build_ours(config, device, TRAINER_EAGER)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, config.model.vocab_size, (batch, seq_len + 1), generator=g)
    inputs, targets = data[:, :-1], data[:, 1:]
    fpt = {counting: flops_per_token(config.model, seq_len, counting) for counting in FLOP_COUNTINGS}
    machine = ctx.previous.get("machine", {})
    peak = machine.get("datasheet_bf16_peak_flops") or (DATASHEET_BF16_PEAK_FLOPS if device.type == "cuda" else None)
    measured = machine.get("matmul", {}).get("flops_per_second")
    out: dict = {"preset": preset, "batch": batch, "seq_len": seq_len, "tokens_per_step": inputs.numel(),
                 "precision": "bf16 autocast", "flops_per_token": fpt, "datasheet_peak_flops": peak,
                 "measured_matmul_flops": measured, "mfu_target": MFU_TARGET}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for mode in ("eager", "compiled") if ctx.compile else ("eager",):
        loss_fn = summed_loss_fn(model, compile_model=mode == "compiled")

        def step(loss_fn: LossFn = loss_fn) -> None:
            training_step(loss_fn, model, optimizer, inputs, targets, inputs.numel(), batch, device, torch.bfloat16,
                          1.0)

        try:
            out[mode] = _time_steps(ctx, step, inputs.numel(), fpt["with_head"], peak, measured,
                                    ctx.sizes.timed_steps if mode == "compiled" or not ctx.compile
                                    else max(2, ctx.sizes.timed_steps // 2))
        except Exception as exc:
            if mode == "eager":
                raise
            out[mode] = {"error": error_text(exc)}
        ctx.record({"partial": out})
    best = out["compiled"] if "tokens_per_second" in out.get("compiled", {}) else out["eager"]
    out.update({k: best[k] for k in ("tokens_per_second", "steady_seconds_per_step", "timed_steps", "mfu_datasheet",
                                     "mfu_measured_matmul", "achieved_flops_per_second")})
    out["mode"] = "compiled" if best is out.get("compiled") else "eager"
    first = out.get("compiled", {}).get("first_step_seconds")
    out["compile_seconds"] = max(0.0, first - best["steady_seconds_per_step"]) if out["mode"] == "compiled" else None
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def _time_steps(ctx: SectionContext, step: Callable[[], None], n_tok: int, flops_per_token_: float,
                peak: float | None, measured: float | None, timed_steps: int) -> dict:
    """The first step timed apart (compilation, allocation), warm-up, then `timed_steps` back to back with one
    sync at the end (stopping early, and saying so, when the section's deadline comes near)."""
    device = ctx.device
    out: dict = {"first_step_seconds": time_steps(step, 1, device)}
    for _ in range(max(0, ctx.sizes.warmup_steps - 1)):
        step()
    sync(device)
    done, t0, per_step = 0, time.perf_counter(), None
    while done < timed_steps:
        if per_step is not None and ctx.left_s() < 3 * per_step + 5:
            out["truncated"] = f"stopped after {done} of {timed_steps} timed steps: section deadline"
            break
        step()
        done += 1
        if done == 1:
            sync(device)
            per_step = time.perf_counter() - t0
    sync(device)
    steady = (time.perf_counter() - t0) / done
    achieved = n_tok / steady * flops_per_token_
    out.update(timed_steps=done, steady_seconds_per_step=steady, tokens_per_second=n_tok / steady,
               achieved_flops_per_second=achieved, mfu_datasheet=achieved / peak if peak else None,
               mfu_measured_matmul=achieved / measured if measured else None)
    return out


def free_device_memory() -> None:
    """Give cached blocks of models that went out of scope back (before the next model is built)."""
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def section_throughput_big(ctx: SectionContext) -> dict:
    """TinyLlama 1.1B (seq 2048, bf16): tokens/s and MFU at the largest batch that fits."""
    s = ctx.sizes
    model = ModelConfig.from_name(s.big_preset)
    result = first_batch_that_fits(
        s.big_batches, lambda b: measure_training(ctx, s.big_preset, s.big_seq_len, b),
        lambda b: training_memory_gib(model, b, s.big_seq_len), free_memory_gib(ctx.device))
    return result


def compile_check(ctx: SectionContext, preset: str, seq_len: int, batch: int) -> dict:
    """One training step eager and one compiled from identical weights and batch: their loss, gradient norm and
    updated weights should agree to bf16 rounding (torch 2.11 miscompiled the chunked loss's autograd)."""
    device = ctx.device
    results = []
    for compiled in (False, True):
        config = build_config(preset, seq_len, batch, lr=1e-4)
        model, optimizer = build_ours(config, device, TRAINER_EAGER)
        g = torch.Generator().manual_seed(1)
        data = torch.randint(0, config.model.vocab_size, (batch, seq_len + 1), generator=g)
        loss, norm = training_step(summed_loss_fn(model, compile_model=compiled), model, optimizer, data[:, :-1],
                                   data[:, 1:], batch * seq_len, batch, device, torch.bfloat16, 1.0)
        results.append((float(loss), float(norm), [p.detach().float().cpu() for p in model.parameters()]))
    (l0, n0, w0), (l1, n1, w1) = results
    weight_gap = max(float((a - b).abs().max()) for a, b in zip(w0, w1, strict=True))
    loss_rel, norm_rel = abs(l1 - l0) / abs(l0), abs(n1 - n0) / max(abs(n0), 1e-12)
    return {"eager_loss": l0, "compiled_loss": l1, "loss_rel_diff": loss_rel, "eager_grad_norm": n0,
            "compiled_grad_norm": n1, "grad_norm_rel_diff": norm_rel, "max_weight_abs_diff": weight_gap,
            "agrees": loss_rel < 1e-2 and norm_rel < 5e-2, "tolerance": "loss 1e-2, grad norm 5e-2 (relative)"}


def section_throughput_small(ctx: SectionContext) -> dict:
    """llama-4m tokens/s at each batch size, and a compiled-vs-eager check of one step."""
    s = ctx.sizes
    out: dict = {"runs": []}
    for batch in s.small_batches:
        if ctx.left_s() < 10:
            out["runs"].append({"batch": batch, "skipped": "section deadline"})
            continue
        out["runs"].append(measure_training(ctx, s.small_preset, s.small_seq_len, batch))
        free_device_memory()
        ctx.record(out)
    if ctx.compile and ctx.left_s() > 15:
        out["compile_check"] = compile_check(ctx, s.small_preset, s.small_seq_len, s.small_batches[0])
    elif ctx.compile:
        out["compile_check"] = {"skipped": "section deadline"}
    else:
        out["compile_check"] = {"skipped": "compile off (--no-compile)"}
    return out


def jsonable(value: object) -> object:
    """NaN and infinities as None, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value

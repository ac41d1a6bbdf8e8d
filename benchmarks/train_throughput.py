"""Training throughput and MFU: wattscale's training step vs a plain transformers LlamaForCausalLM loop.

Both models get the identical architecture (the same preset through `hf_config_dict`), identical
initial weights, the identical batches, the same precision (`--precision fp32` or `bf16`: bf16 is
autocast for both, weights and optimizer state in float32), and AdamW with the same
hyper-parameters and gradient clipping. The reference is the loop a researcher would write with
transformers: `model(input_ids, labels=...)`, `loss.backward()`, clip, `AdamW.step()`. Ours is
`wattscale.train.training_step` with `wattscale.train.make_optimizer` and `summed_loss_fn`, i.e. the
code the trainer runs (`--compile` = the trainer's `train.compile = true`). Rounds alternate the
variants and the reference so drift of a shared machine hits all alike; the reported figures are
medians, and ratios are ratios of medians from the same run; each round's adjacent pair also gives a
paired ratio (`speedup_over_reference_paired_median`). On a machine shared with other work, whose
load only ever adds time, the best (minimum) round of each is the least disturbed estimate of its
cost: `tokens_per_second_best` and `speedup_over_reference_best` (ratio of the minima) are reported too,
with the load average before and after, so a reader can tell which figure to trust.

`--ablation` times several variants of ours side by side (each its own copy of the same weights):
plain logits + F.cross_entropy with foreach AdamW, then the chunked loss, then fused AdamW (the
trainer's default), then torch.compile (inductor's CPU code generation; its compile time is timed
separately and kept out of the steady state). That is the table "technique -> tokens/s and ratio".

MFU = achieved FLOP/s / peak FLOP/s with training FLOPs per token = 6*(N_non_embedding +
N_output_head) + 12*L*d*T (PaLM appendix B; `wattscale.flops`). Peak: on CUDA the datasheet dense
figure for the precision in use (`wattscale.hardware.peak_flops`); on CPU, which has no trustworthy
datasheet peak, the measured FLOP/s of 2048x2048 matmuls in the dtype in use (bf16 for bf16, fp32
for fp32), measured before and after the rounds in this run (the larger is kept). On CPU the run
also measures the FLOP/s that the model's own matmul shapes reach (every Linear's forward and
two backward GEMMs at batch*seq_len rows) and the SDPA attention time, which bound what any
implementation of this model can reach on this machine.

    python benchmarks/train_throughput.py                                  # llama-4m, CPU, fp32
    python benchmarks/train_throughput.py --precision bf16 --ablation      # bf16 autocast, each technique
    python benchmarks/train_throughput.py --preset tinyllama-1.1b --device cuda --seq-len 2048 --batch 8
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from wattscale.budget import IGNORE_INDEX
from wattscale.config import build_run_config
from wattscale.flops import FLOP_COUNTINGS, FLOPS_FORMULA
from wattscale.hardware import device_info, measured_matmul_flops, peak_flops, resolve_precision
from wattscale.hf import hf_config_dict, to_hf_state_dict
from wattscale.model import Llama, count_parameters, flops_per_token
from wattscale.train import make_optimizer, summed_loss_fn, training_step

RESULTS = Path(__file__).resolve().parent / "results"
CPU_FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16",
                         "amx_int8", "amx_fp16")
PEAK_MATMUL_SIZE = 2048
TARGETS = {"fp32": {"speedup": 1.1, "mfu": None}, "bf16": {"speedup": 1.5, "mfu": 0.20},
           "tf32": {"speedup": None, "mfu": None}}


@dataclass(frozen=True)
class Variant:
    """One way of running our training step: which loss, which AdamW, compiled or not."""

    name: str
    loss: str  # "chunked" (Llama.loss, the trainer's) or "logits" (model(x) + F.cross_entropy)
    adamw: str  # "fused" (make_optimizer, the trainer's) or "foreach"
    compile: bool  # torch.compile the loss function (the trainer's train.compile)


TRAINER_EAGER = Variant("trainer default: chunked loss, fused AdamW, eager", "chunked", "fused", False)
TRAINER_COMPILED = Variant("train.compile=true: + torch.compile (inductor)", "chunked", "fused", True)
ABLATION = (
    Variant("our model, logits + F.cross_entropy, foreach AdamW", "logits", "foreach", False),
    Variant("+ chunked loss (Llama.loss)", "chunked", "foreach", False),
    Variant("+ fused AdamW = trainer default (eager)", "chunked", "fused", False),
    TRAINER_COMPILED,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_config(preset: str, seq_len: int, batch: int, lr: float):
    """The run config both implementations are built from."""
    return build_run_config(overrides={"model": {"preset": preset},
                                       "train": {"tokens": batch * seq_len, "batch_size": batch,
                                                 "seq_len": seq_len, "lr": lr}})


def build_ours(config, device: torch.device, variant: Variant):
    """Our model (seed 0 weights) and its optimizer for one variant."""
    torch.manual_seed(0)
    model = Llama(config.model).to(device)
    if variant.adamw == "fused":
        opt = make_optimizer(model, config)
    else:
        tc = config.train
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps, foreach=True)
    return model, opt


def build_reference(config, ours: Llama, device: torch.device):
    """The transformers model with `ours`'s weights and a default (foreach) AdamW."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ref = LlamaForCausalLM(LlamaConfig(**hf_config_dict(config.model)))
    ref.load_state_dict(to_hf_state_dict(ours), strict=not config.model.tie_embeddings)
    if config.model.tie_embeddings:
        ref.tie_weights()
    ref = ref.to(device)
    ref.train()
    tc = config.train
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps,
                                weight_decay=tc.weight_decay)
    return ref, ref_opt


def build_pair(preset: str, seq_len: int, batch: int, device: torch.device, lr: float):
    """Our model+optimizer (trainer default) and the transformers reference with identical weights."""
    config = build_config(preset, seq_len, batch, lr)
    ours, opt = build_ours(config, device, TRAINER_EAGER)
    ref, ref_opt = build_reference(config, ours, device)
    return config, ours, opt, ref, ref_opt


def logits_loss_fn(model: Llama):
    """Summed cross-entropy from the materialised logits: the plain path the chunked loss replaces."""
    def fn(x, y):
        return F.cross_entropy(model(x).float().flatten(0, 1), y.flatten(), reduction="sum",
                               ignore_index=IGNORE_INDEX)
    return fn


def ref_step(model, optimizer, inputs, targets, device, autocast_dtype, grad_clip) -> float:
    """The plain transformers loop: loss from the model's own head, backward, clip, step."""
    x, y = inputs.to(device), targets.to(device)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(input_ids=x).logits
    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def time_steps(fn: Callable[[], object], n_steps: int, device: torch.device) -> float:
    """Seconds per step, median over `n_steps` (device synchronised around each)."""
    times = []
    for _ in range(n_steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_flags() -> dict[str, bool]:
    """Which of the CPU features that matter for matmul speed /proc/cpuinfo lists."""
    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST}


def _time_op(fn: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Seconds per call of `fn`, averaged over at least `min_seconds` after two warm-up calls."""
    for _ in range(2):
        fn()
    _sync(device)
    count, start = 0, time.perf_counter()
    while True:
        fn()
        count += 1
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / count


def model_shape_matmuls(model: Llama, rows: int, device: torch.device, dtype: torch.dtype,
                        min_seconds: float = 0.2) -> dict[str, object]:
    """FLOP/s of the model's own training GEMMs: for each distinct Linear shape, forward [rows, in] x [in, out],
    grad-input [rows, out] x [out, in] and grad-weight [out, rows] x [rows, in], summed FLOPs / summed time."""
    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shape = (module.in_features, module.out_features)
            shapes[shape] = shapes.get(shape, 0) + 1
    total_flops = total_seconds = 0.0
    per_shape = {}
    for (d_in, d_out), count in shapes.items():
        x = torch.randn(rows, d_in, device=device, dtype=dtype)
        w = torch.randn(d_out, d_in, device=device, dtype=dtype)
        g = torch.randn(rows, d_out, device=device, dtype=dtype)
        seconds = sum(_time_op(functools.partial(torch.mm, a, b), device, min_seconds)
                      for a, b in ((x, w.t()), (g, w), (g.t(), x)))  # forward, grad-input, grad-weight
        flops = 3 * 2 * rows * d_in * d_out
        per_shape[f"{d_in}x{d_out} (x{count})"] = flops / seconds
        total_flops += flops * count
        total_seconds += seconds * count
    return {"flops_per_second": total_flops / total_seconds, "per_shape_flops_per_second": per_shape,
            "rows": rows, "dtype": str(dtype).removeprefix("torch."),
            "seconds_per_step": total_seconds}


def attention_seconds(config, batch: int, seq_len: int, device: torch.device, dtype: torch.dtype,
                      min_seconds: float = 0.5) -> float:
    """Seconds of causal SDPA forward + backward for all layers at the model's shapes, in `dtype`."""
    H, K, D = config.model.n_heads, config.model.n_kv_heads, config.model.head_dim
    q = torch.randn(batch, H, seq_len, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, K, seq_len, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, K, seq_len, D, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(batch, H, seq_len, D, device=device, dtype=dtype)

    def fwd_bwd():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=K != H).backward(grad)
    return _time_op(fwd_bwd, device, min_seconds) * config.model.n_layers


def main(argv: list[str] | None = None) -> dict:
    """Run the comparison, write the results JSON (see --out) and return it."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama-4m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="fp32, or bf16 autocast for ours and the reference alike (auto: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compile", action="store_true", help="torch.compile our loss path (trainer's --compile)")
    p.add_argument("--ablation", action="store_true",
                   help="time each technique's variant of ours side by side (implies the compiled variant too)")
    p.add_argument("--no-reference", action="store_true", help="ours only (e.g. a model too big for two copies)")
    p.add_argument("--peak-seconds", type=float, default=2.0,
                   help="how long each CPU matmul-peak measurement runs (before and after the rounds)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    matmul_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    load_before = os.getloadavg()
    config = build_config(args.preset, args.seq_len, args.batch, lr=1e-4)
    variants = ABLATION if args.ablation else (TRAINER_COMPILED if args.compile else TRAINER_EAGER,)
    built = [build_ours(config, device, v) for v in variants]
    ref, ref_opt = (None, None) if args.no_reference else build_reference(config, built[0][0], device)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.model.vocab_size, (args.batch, args.seq_len + 1), generator=g)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    n_tok = inputs.numel()

    steps: dict[str, Callable[[], object]] = {}
    for variant, (model, opt) in zip(variants, built, strict=True):
        loss_fn = summed_loss_fn(model) if variant.loss == "chunked" else logits_loss_fn(model)
        if variant.compile:
            loss_fn = torch.compile(loss_fn)

        def step(loss_fn=loss_fn, model=model, opt=opt):
            training_step(loss_fn, model, opt, inputs, targets, n_tok, args.batch, device, autocast_dtype, 1.0)
        steps[variant.name] = step
    if ref is not None:
        steps["reference"] = lambda: ref_step(ref, ref_opt, inputs, targets, device, autocast_dtype, 1.0)

    # A shared machine's matmul throughput drifts: measure the CPU peak before and after the timed
    # rounds and keep the larger, so MFU is never inflated by a momentarily slow peak measurement.
    cpu_peaks = [] if device.type == "cuda" else [
        measured_matmul_flops(device, matmul_dtype, PEAK_MATMUL_SIZE, args.peak_seconds)]
    first_step = {}
    for name, fn in steps.items():  # the first step holds any compilation: timed, kept out of the rounds
        first_step[name] = time_steps(fn, 1, device)
    for _ in range(args.warmup_steps - 1):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for r in range(args.rounds):
        for name in order if r % 2 == 0 else reversed(order):  # alternate the order round by round
            times[name].append(time_steps(steps[name], args.steps_per_round, device))

    machine = {**device_info(device), "cpu_flags": cpu_flags(), "os_cpu_count": os.cpu_count(),
               "load_average_1_5_15_before": [round(x, 2) for x in load_before]}
    shapes = attention = other_peak = None
    if device.type == "cuda":
        peak, peak_source = peak_flops(device, precision)
    else:
        cpu_peaks.append(measured_matmul_flops(device, matmul_dtype, PEAK_MATMUL_SIZE, args.peak_seconds))
        peak = max(cpu_peaks)
        dtype_name = "bf16" if precision == "bf16" else "fp32"
        peak_source = (f"measured {dtype_name} {PEAK_MATMUL_SIZE}x{PEAK_MATMUL_SIZE} matmul FLOP/s on this CPU with "
                       f"{args.threads} threads, max of before/after the rounds: "
                       f"{[round(p / 1e9, 1) for p in cpu_peaks]} GFLOP/s")
        other_dtype = torch.float32 if precision == "bf16" else torch.bfloat16
        other_peak = {"dtype": str(other_dtype).removeprefix("torch."),
                      "flops_per_second": measured_matmul_flops(device, other_dtype, PEAK_MATMUL_SIZE,
                                                                args.peak_seconds / 2)}
        shapes = model_shape_matmuls(built[0][0], n_tok, device, matmul_dtype, args.peak_seconds / 10)
        attention = attention_seconds(config, args.batch, args.seq_len, device, matmul_dtype, args.peak_seconds / 4)
    machine["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    counts = count_parameters(config.model)
    fpt = {counting: flops_per_token(config.model, args.seq_len, counting) for counting in FLOP_COUNTINGS}
    ref_median = statistics.median(times["reference"]) if ref is not None else None

    def summary(name: str) -> dict:
        sec = statistics.median(times[name])
        tok_s = n_tok / sec
        out = {"seconds_per_step_median": sec, "seconds_per_step_rounds": times[name], "tokens_per_second": tok_s,
               "first_step_seconds": first_step[name],
               "compile_and_first_step_overhead_seconds": first_step[name] - sec,
               **{f"mfu_{counting}": tok_s * fpt[counting] / peak if peak else None for counting in fpt}}
        best = min(times[name])
        out["seconds_per_step_best"] = best
        out["tokens_per_second_best"] = n_tok / best
        out["mfu_with_head_best"] = n_tok / best * fpt["with_head"] / peak if peak else None
        if ref_median is not None and name != "reference":
            out["speedup_over_reference_best"] = min(times["reference"]) / best
            out["speedup_over_reference"] = ref_median / sec
            # Paired within rounds (adjacent in time): robust to a neighbour's load coming and going.
            paired = [r / o for r, o in zip(times["reference"], times[name], strict=True)]
            out["speedup_over_reference_paired_rounds"] = paired
            out["speedup_over_reference_paired_median"] = statistics.median(paired)
        return out

    ablation = [{"variant": v.name, "loss": v.loss, "adamw": v.adamw, "compile": v.compile, **summary(v.name)}
                for v in variants]
    primary = variants[-1].name  # the fastest configuration the trainer offers among those timed
    target = TARGETS[precision]
    result = {
        "benchmark": "train_throughput", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": args.preset, "params_total": counts.total, "params_non_embedding": counts.non_embedding,
        "batch_sequences": args.batch, "seq_len": args.seq_len, "tokens_per_step": n_tok, "precision": precision,
        "autocast": "bf16 autocast, float32 weights and optimizer state" if autocast_dtype else None,
        "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "flops_per_token": fpt, "flops_formula": FLOPS_FORMULA,
        "peak_flops_per_second": peak, "peak_source": peak_source,
        "other_dtype_matmul_peak": other_peak,
        "model_shape_matmuls": shapes,
        "attention_sdpa_seconds_per_step": attention,
        "machine": machine, "ours_variant": primary, "ours": summary(primary),
        "reference": summary("reference") if ref is not None else None,
        "reference_impl": "transformers.LlamaForCausalLM (default attention) + torch.optim.AdamW (foreach)",
        "ablation": ablation if args.ablation else None,
        "command": "python benchmarks/train_throughput.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items() if v not in (False, None)),
    }
    if ref is not None:
        result["speedup_ours_over_reference"] = result["ours"]["speedup_over_reference"]
        result["target_speedup"] = target["speedup"]
    result["target_mfu"] = target["mfu"]
    out = args.out or RESULTS / (f"train_throughput_{args.preset}_{device.type}"
                                 + ("_bf16" if precision == "bf16" and device.type == "cpu" else "")
                                 + ("_ablation" if args.ablation else "_compiled" if args.compile else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("preset", "precision", "tokens_per_step")}))
    for row in ablation:
        ratio = (f", {row['speedup_over_reference']:.2f}x reference (paired median "
                 f"{row['speedup_over_reference_paired_median']:.2f}x, best rounds "
                 f"{row['speedup_over_reference_best']:.2f}x)" if "speedup_over_reference" in row else "")
        print(f"{row['variant']}: {row['tokens_per_second']:,.0f} tok/s "
              f"(best round {row['tokens_per_second_best']:,.0f}), "
              f"MFU {row['mfu_with_head']:.1%} (best {row['mfu_with_head_best']:.1%}){ratio}")
    if ref is not None:
        print(f"reference: {result['reference']['tokens_per_second']:,.0f} tok/s, "
              f"MFU {result['reference']['mfu_with_head']:.1%}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

"""Training throughput and MFU: wattscale's training step vs a plain transformers LlamaForCausalLM loop.

Both models get the identical architecture (the same preset through `hf_config_dict`), identical
initial weights, the identical batches, float32 (CPU) or bf16 autocast (CUDA), and AdamW with
the same hyper-parameters and gradient clipping. The reference is the loop a researcher would
write with transformers: `model(input_ids, labels=...)`, `loss.backward()`, clip, `AdamW.step()`.
Ours is `wattscale.train.training_step` with `wattscale.train.make_optimizer`, i.e. the code the
trainer runs. Rounds alternate ours/reference so drift of a shared machine hits both alike; the
reported figure is the ratio of medians.

MFU = achieved FLOP/s / peak FLOP/s with training FLOPs per token = 6*(N_non_embedding +
N_output_head) + 12*L*d*T (PaLM appendix B; `wattscale.flops`): the output head is a real matmul, tied
or not. MFU with Kaplan's non-embedding N and with all parameters is reported beside it. Peak: on
CUDA the datasheet dense figure for the precision in use (`wattscale.hardware.peak_flops`); on CPU,
which has no trustworthy datasheet peak, the measured FLOP/s of large fp32 matmuls on this machine
(`wattscale.hardware.measured_matmul_flops`), measured in this run.

    python benchmarks/train_throughput.py                      # llama-4m on CPU
    python benchmarks/train_throughput.py --preset tinyllama-1.1b --device cuda --seq-len 2048 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_ours(preset: str, seq_len: int, batch: int, device: torch.device, lr: float):
    """The run config, our model (seed 0) on `device`, and the trainer's optimizer for it."""
    config = build_run_config(overrides={"model": {"preset": preset},
                                         "train": {"tokens": batch * seq_len, "batch_size": batch,
                                                   "seq_len": seq_len, "lr": lr}})
    torch.manual_seed(0)
    ours = Llama(config.model).to(device)
    return config, ours, make_optimizer(ours, config)


def build_pair(preset: str, seq_len: int, batch: int, device: torch.device, lr: float):
    """Our model+optimizer and the transformers reference with identical weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config, ours, optimizer = build_ours(preset, seq_len, batch, device, lr)
    ref = LlamaForCausalLM(LlamaConfig(**hf_config_dict(config.model)))
    ref.load_state_dict(to_hf_state_dict(ours), strict=not config.model.tie_embeddings)
    if config.model.tie_embeddings:
        ref.tie_weights()
    ref = ref.to(device)
    ref.train()
    tc = config.train
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.adam_eps,
                                weight_decay=tc.weight_decay)
    return config, ours, optimizer, ref, ref_opt


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


def time_steps(fn, n_steps: int, device: torch.device) -> float:
    """Seconds per step, median over `n_steps` (device synchronised around each)."""
    times = []
    for _ in range(n_steps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Run the comparison and write benchmarks/results/train_throughput_<preset>_<device>.json."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="llama-4m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps-per-round", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--compile", action="store_true", help="torch.compile our loss path (trainer's --compile)")
    p.add_argument("--no-reference", action="store_true", help="ours only (e.g. a model too big for two copies)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    autocast_dtype = torch.bfloat16 if precision == "bf16" else None
    if args.no_reference:  # no second copy of the model (nor transformers) at all
        config, ours, opt = build_ours(args.preset, args.seq_len, args.batch, device, lr=1e-4)
        ref = ref_opt = None
    else:
        config, ours, opt, ref, ref_opt = build_pair(args.preset, args.seq_len, args.batch, device, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, config.model.vocab_size, (args.batch, args.seq_len + 1), generator=g)
    inputs, targets = batch[:, :-1], batch[:, 1:]
    n_tok = inputs.numel()

    loss_fn = summed_loss_fn(ours, compile_model=args.compile)

    def ours_step():
        training_step(loss_fn, ours, opt, inputs, targets, n_tok, args.batch, device, autocast_dtype, 1.0)

    def reference_step():
        ref_step(ref, ref_opt, inputs, targets, device, autocast_dtype, 1.0)

    # A shared machine's matmul throughput drifts: measure the CPU peak before and after the timed
    # rounds and keep the larger, so MFU is never inflated by a momentarily slow peak measurement.
    cpu_peaks = [] if device.type == "cuda" else [measured_matmul_flops(device, torch.float32, 2048, 2.0)]
    for _ in range(args.warmup_steps):
        ours_step()
        if ref is not None:
            reference_step()
    ours_times, ref_times = [], []
    for _ in range(args.rounds):
        ours_times.append(time_steps(ours_step, args.steps_per_round, device))
        if ref is not None:
            ref_times.append(time_steps(reference_step, args.steps_per_round, device))

    if device.type == "cuda":
        peak, peak_source = peak_flops(device, precision)
    else:
        cpu_peaks.append(measured_matmul_flops(device, torch.float32, 2048, 2.0))
        peak = max(cpu_peaks)
        peak_source = (f"measured fp32 2048x2048 matmul FLOP/s on this CPU with {args.threads} threads, "
                       f"max of before/after the rounds: {[round(p / 1e9, 1) for p in cpu_peaks]} GFLOP/s")
    counts = count_parameters(config.model)
    fpt = {counting: flops_per_token(config.model, args.seq_len, counting) for counting in FLOP_COUNTINGS}

    def summary(times):
        sec = statistics.median(times)
        tok_s = n_tok / sec
        return {"seconds_per_step_median": sec, "seconds_per_step_rounds": times, "tokens_per_second": tok_s,
                **{f"mfu_{counting}": tok_s * fpt[counting] / peak if peak else None for counting in fpt}}

    result = {
        "benchmark": "train_throughput", "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "preset": args.preset, "params_total": counts.total, "params_non_embedding": counts.non_embedding,
        "batch_sequences": args.batch, "seq_len": args.seq_len, "tokens_per_step": n_tok, "precision": precision,
        "rounds": args.rounds, "steps_per_round": args.steps_per_round,
        "flops_per_token": fpt, "flops_formula": FLOPS_FORMULA,
        "peak_flops_per_second": peak, "peak_source": peak_source,
        "machine": device_info(device), "ours": summary(ours_times),
        "reference": summary(ref_times) if ref_times else None,
        "reference_impl": "transformers.LlamaForCausalLM (default attention) + torch.optim.AdamW (foreach)",
        "command": "python benchmarks/train_throughput.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (False, None)),
    }
    if ref_times:
        result["speedup_ours_over_reference"] = statistics.median(ref_times) / statistics.median(ours_times)
        result["target_speedup"] = 1.3
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_compiled" if args.compile else ""
    out = RESULTS / f"train_throughput_{args.preset}_{device.type}{suffix}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("preset", "precision", "tokens_per_step")}))
    print(f"ours: {result['ours']['tokens_per_second']:,.0f} tok/s, MFU {result['ours']['mfu_with_head']:.1%}")
    if ref_times:
        print(f"reference: {result['reference']['tokens_per_second']:,.0f} tok/s; "
              f"speedup {result['speedup_ours_over_reference']:.2f}x (target 1.3x)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The GPU suite's energy sections: NVML's energy counter against sampled power (and Zeus), and the power-limit sweep.

The sweep is the suite's only write to the card, through `PowerLimits` (a small seam over nvidia-ml-py's
set/get power-limit calls, not wattscale's own power-limit settings, so that the suite depends on nothing but
NVML for it; the dry run drives it with `gpu_suite_fakes.FakeNvml`). It is off unless ``--power-limit-sweep``
is given: this workplace forbids changing the card's power limit.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from gpu_suite_sections import SectionContext, error_text, sync
from train_throughput import TRAINER_EAGER, build_config, build_ours
from wattscale.energy.meter import PowerReading
from wattscale.energy.nvml import NvmlMeter, import_pynvml
from wattscale.energy.sampler import PowerSampler
from wattscale.train import summed_loss_fn, training_step

ENERGY_AGREEMENT_TARGET = 0.02

# ---- NVML energy counter vs sampled power -------------------------------------------------------------------


class PowerUsageMeter:
    """nvmlDeviceGetPowerUsage alone (no counter), as a second meter in the same sampler as wattscale's
    NvmlMeter: its integral is the 'sampled nvmlDeviceGetPowerUsage' figure even where NvmlMeter reads the
    instantaneous field instead. Device names get a ':power_usage' suffix."""

    name = "nvml"
    energy_source = "counter"  # it has none: energy_j is None, so windows fall back to the integral

    def __init__(self, nvml: ModuleType, meter: NvmlMeter) -> None:
        self._nvml = nvml
        # The GPUs the wattscale meter chose, by their NVML index (its devices are named gpu<index>).
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(int(d.removeprefix("gpu"))) for d in meter.devices]
        self.devices = tuple(f"{d}:power_usage" for d in meter.devices)

    def read(self) -> PowerReading:
        power = {d: self._nvml.nvmlDeviceGetPowerUsage(h) / 1000.0
                 for d, h in zip(self.devices, self._handles, strict=True)}
        return PowerReading(t_s=time.monotonic(), power_w=power, energy_j=None)

    def describe(self) -> dict:
        return {"kind": "nvml-power-usage", "devices": list(self.devices)}

    def close(self) -> None:
        pass


def _load_loop(device: torch.device, size: int) -> Callable[[], None]:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)

    def run_for(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for _ in range(8):
                a @ b
            sync(device)

    return run_for


def _zeus_monitor(index: int) -> tuple[object | None, str]:
    try:
        import zeus
        from zeus.monitor import ZeusMonitor
    except ImportError as exc:
        return None, f"not installed ({error_text(exc)})"
    try:
        return ZeusMonitor(gpu_indices=[index]), str(getattr(zeus, "__version__", "unknown"))
    except Exception as exc:  # Zeus's own checks (no GPU, no permission) must not stop the section
        return None, f"{getattr(zeus, '__version__', '?')}: ZeusMonitor failed: {error_text(exc)}"


def _window(sampler: PowerSampler, devices: dict[str, str], zeus: object | None, zeus_index: int,
            run: Callable[[], None], name: str) -> dict:
    if zeus is not None:
        zeus.begin_window(name)
    begin = sampler.mark()
    run()
    end = sampler.mark()
    zeus_j = zeus.end_window(name).gpu_energy[zeus_index] if zeus is not None else None
    dev, usage = devices["counter"], devices["power_usage"]
    counter_j = end.counter_j[dev] - begin.counter_j[dev]
    meter_integral_j = end.integral_j[dev] - begin.integral_j[dev]
    usage_integral_j = end.integral_j[usage] - begin.integral_j[usage]

    def rel(x: float | None) -> float | None:
        return None if x is None or counter_j <= 0 else abs(x - counter_j) / counter_j

    return {"seconds": end.t_s - begin.t_s, "counter_j": counter_j,
            "integral_meter_power_j": meter_integral_j, "rel_diff_meter_power": rel(meter_integral_j),
            "integral_power_usage_j": usage_integral_j, "rel_diff_power_usage": rel(usage_integral_j),
            "zeus_j": zeus_j, "rel_diff_zeus": rel(zeus_j),
            "mean_power_w": counter_j / (end.t_s - begin.t_s) if end.t_s > begin.t_s else None}


def section_nvml(ctx: SectionContext) -> dict:
    """wattscale's NvmlMeter counter vs the trapezoid integral of power sampled at 100 Hz (and vs ZeusMonitor)
    over a steady-load window and an on/off window, each begun after the load was already running."""
    s, device = ctx.sizes, ctx.device
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA first, so the meter maps this process's GPU exactly
    nvml = import_pynvml()
    meter = NvmlMeter("auto")
    usage = PowerUsageMeter(nvml, meter)
    out: dict = {"meter": meter.describe(), "sample_hz": s.sample_hz, "target_rel_diff": ENERGY_AGREEMENT_TARGET}
    dev = meter.devices[0]
    index = device.index or 0  # Zeus counts GPUs as CUDA does (cuda:0 is 0)
    zeus, out["zeus_version"] = _zeus_monitor(index)
    sampler = PowerSampler([meter, usage], s.sample_hz, keep_trace=False)
    run_for = _load_loop(device, s.matmul_size)
    devices = {"counter": dev, "power_usage": f"{dev}:power_usage"}
    sampler.start()
    try:
        run_for(s.nvml_warm_s)
        out["steady"] = _window(sampler, devices, zeus, index, lambda: run_for(s.nvml_window_s), "steady")
        ctx.record(out)

        def on_off() -> None:
            pieces = max(2, round(s.nvml_window_s / 1.0))
            for i in range(pieces):
                if i % 2 == 0:
                    run_for(s.nvml_window_s / pieces)
                else:
                    time.sleep(s.nvml_window_s / pieces)

        if ctx.left_s() > s.nvml_window_s + 5:
            out["on_off"] = _window(sampler, devices, zeus, index, on_off, "on_off")
        else:
            out["on_off"] = {"skipped": "section deadline"}
    finally:
        out["sampler"] = sampler.stop().to_dict()
        meter.close()
    windows = [w for w in (out["steady"], out.get("on_off", {})) if "counter_j" in w]
    out["max_rel_diff_meter_power"] = max(w["rel_diff_meter_power"] for w in windows)
    out["max_rel_diff_power_usage"] = max(w["rel_diff_power_usage"] for w in windows)
    zeus_diffs = [w["rel_diff_zeus"] for w in windows if w["rel_diff_zeus"] is not None]
    out["max_rel_diff_zeus"] = max(zeus_diffs) if zeus_diffs else None
    out["within_target"] = out["max_rel_diff_meter_power"] <= ENERGY_AGREEMENT_TARGET
    return out


# ---- power-limit sweep (off by default: this workplace forbids changing the card's power limit) ------------

SWEEP_FORBIDDEN = "skipped: this workplace forbids changing the card's power limit (run with --power-limit-sweep " \
                  "where changing it is allowed)"


class PowerLimits:
    """The suite's one write to the card: set a GPU's power limit through NVML, and restore it.

    Before the first change the original limit goes to a journal file; `restore_power_limit` puts it back from
    that file, so the suite's runner restores it too when a section process was killed before its own `finally`.
    """

    def __init__(self, nvml: ModuleType, index: int, journal: Path) -> None:
        self.nvml, self.index, self.journal = nvml, index, journal
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def limits_w(self) -> dict:
        """The current, default, minimum and maximum limit in watts."""
        n, h = self.nvml, self.handle
        low, high = n.nvmlDeviceGetPowerManagementLimitConstraints(h)
        return {"current_w": n.nvmlDeviceGetPowerManagementLimit(h) / 1000,
                "default_w": n.nvmlDeviceGetPowerManagementDefaultLimit(h) / 1000,
                "min_w": low / 1000, "max_w": high / 1000}

    def set_w(self, watts: float) -> None:
        """Set the limit (journalling the original first)."""
        if not self.journal.exists():
            original = self.nvml.nvmlDeviceGetPowerManagementLimit(self.handle)
            self.journal.write_text(json.dumps({"index": self.index, "original_mw": original, "restored": False}))
        self.nvml.nvmlDeviceSetPowerManagementLimit(self.handle, int(round(watts * 1000)))


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def restore_power_limit(nvml: ModuleType, journal: Path) -> dict | None:
    """Put back the limit a journal recorded, once; returns the journal (None when no limit was changed)."""
    if not journal.exists():
        return None
    entry = json.loads(journal.read_text())
    if entry["restored"]:
        return entry
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(entry["index"])
    nvml.nvmlDeviceSetPowerManagementLimit(handle, entry["original_mw"])
    entry.update(restored=True, limit_after_restore_mw=nvml.nvmlDeviceGetPowerManagementLimit(handle))
    journal.write_text(json.dumps(entry))
    return entry


def sweep_limits_w(limits: dict, fractions: tuple[float, ...]) -> list[float]:
    """The limits to try: fractions of the maximum, clamped to the card's minimum, rounded to whole watts."""
    return [float(max(limits["min_w"], round(f * limits["max_w"]))) for f in fractions]


def section_power_limit_sweep(ctx: SectionContext) -> dict:
    """llama-4m J/token (energy counter) at 3 power limits; the original limit restored on every exit path."""
    s, device = ctx.sizes, ctx.device
    if device.type == "cuda":
        torch.zeros(1, device=device)
    nvml = import_pynvml()
    meter = NvmlMeter("auto")
    journal = ctx.work_dir / "power_limit_journal.json"
    control = PowerLimits(nvml, int(meter.devices[0].removeprefix("gpu")), journal)
    before = control.limits_w()
    out: dict = {"limits_before": before, "journal": str(journal), "points": []}
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)  # SIGTERM runs the finally below too
    try:
        config = build_config(s.small_preset, s.small_seq_len, s.sweep_batch, lr=1e-4)
        model, optimizer = build_ours(config, device, TRAINER_EAGER)
        loss_fn = summed_loss_fn(model, compile_model=ctx.compile)
        data = torch.randint(0, config.model.vocab_size, (s.sweep_batch, s.small_seq_len + 1),
                             generator=torch.Generator().manual_seed(0))
        n_tok = s.sweep_batch * s.small_seq_len

        def step() -> None:
            training_step(loss_fn, model, optimizer, data[:, :-1], data[:, 1:], n_tok, s.sweep_batch, device,
                          torch.bfloat16, 1.0)

        for limit_w in sweep_limits_w(before, s.sweep_fractions):
            if ctx.left_s() < 10:
                out["points"].append({"limit_w": limit_w, "skipped": "section deadline"})
                continue
            control.set_w(limit_w)
            for _ in range(s.warmup_steps):
                step()
            sync(device)
            first, t0 = meter.read(), time.perf_counter()
            for _ in range(s.sweep_steps):
                step()
            sync(device)
            last, seconds = meter.read(), time.perf_counter() - t0
            dev = meter.devices[0]
            energy_j = last.energy_j[dev] - first.energy_j[dev]
            tokens = s.sweep_steps * n_tok
            out["points"].append({"limit_w": limit_w, "limit_read_back_w": control.limits_w()["current_w"],
                                  "energy_j": energy_j, "tokens": tokens, "seconds": seconds,
                                  "j_per_token": energy_j / tokens, "tokens_per_second": tokens / seconds,
                                  "mean_power_w": energy_j / seconds})
            ctx.record(out)
    finally:
        signal.signal(signal.SIGTERM, previous)
        out["restore"] = restore_power_limit(nvml, journal)
        out["limits_after"] = control.limits_w()
        out["restored"] = out["limits_after"]["current_w"] == before["current_w"]
        meter.close()
    return out

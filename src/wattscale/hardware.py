"""What machine a run executes on: device choice, a description for the store, peak FLOP/s for MFU."""

from __future__ import annotations

import functools
import platform
import subprocess
import time
from pathlib import Path

import torch

from wattscale.errors import ConfigError

# Dense (no sparsity) peak tensor-core FLOP/s per device name substring, from the vendors'
# datasheets. MFU = achieved FLOP/s / peak FLOP/s.
PEAK_FLOPS_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def resolve_device(requested: str) -> torch.device:
    """Turn `auto`/`cpu`/`cuda`/`cuda:N` into a torch device, or a ConfigError if unavailable."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {requested!r} requested but CUDA is not available; use --device cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` means float32 on CPU and bf16 autocast on CUDA."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return requested


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else platform.processor()."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def device_info(device: torch.device) -> dict[str, object]:
    """A JSON-ready description of the device and software a run used."""
    info: dict[str, object] = {
        "device": str(device),
        "cpu": cpu_model_name(),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, gpu_count=torch.cuda.device_count())
    return info


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """Datasheet peak FLOP/s for a CUDA device (bf16 dense), with where the figure came from."""
    if device.type != "cuda":
        return None, "no datasheet peak for CPUs; see measured_matmul_flops"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_FLOPS_BF16.items():
        if key in name:
            scale = 1.0 if precision == "bf16" else 0.5  # TF32 tensor-core peak is half of bf16
            return value * scale, f"datasheet {key} {precision} dense"
    return None, f"unknown GPU {name!r}: add it to PEAK_FLOPS_BF16"


# The CPU stand-in for a datasheet peak, recorded when a run is created: square matmuls of this size, timed for
# this long (~0.2 s). A benchmark measures with larger sizes and longer.
RUN_PEAK_MATMUL_SIZE = 1024
RUN_PEAK_MATMUL_SECONDS = 0.1


def run_peak_flops(device: torch.device, precision: str) -> dict[str, object]:
    """Peak FLOP/s to compute a run's MFU against, with its source: datasheet on CUDA, measured on CPU.

    Returned as ``{"peak_flops": float | None, "peak_flops_source": str}`` for the run's device info.
    """
    value, source = peak_flops(device, precision)
    if device.type == "cuda":
        return {"peak_flops": value, "peak_flops_source": source}
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    measured = _cpu_peak_for_runs(str(device), dtype, torch.get_num_threads())
    return {"peak_flops": measured, "peak_flops_source": (
        f"measured {precision} {RUN_PEAK_MATMUL_SIZE}x{RUN_PEAK_MATMUL_SIZE} matmul at run start "
        f"({torch.get_num_threads()} threads; a CPU has no datasheet peak worth trusting)")}


@functools.lru_cache(maxsize=8)
def _cpu_peak_for_runs(device: str, dtype: torch.dtype, threads: int) -> float:
    """The measured peak, once per process for each (device, dtype, threads): a sweep creates many runs in one
    process on an unchanged machine, and re-measuring would cost every run ~0.2 s for the same number."""
    return measured_matmul_flops(torch.device(device), dtype, RUN_PEAK_MATMUL_SIZE, RUN_PEAK_MATMUL_SECONDS)


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 1024,
                          min_seconds: float = 0.5) -> float:
    """Measured dense matmul FLOP/s of `size`x`size` products: the CPU stand-in for a datasheet peak."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _synchronize(device)
    count, start = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        _synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * size**3 * count / elapsed


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_revision(path: Path | None = None) -> str | None:
    """The git commit of wattscale's own source tree (with `-dirty`), or None outside a checkout."""
    where = path or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev

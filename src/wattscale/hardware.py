"""What machine a run executes on: device choice, precision, a description for the store, peak FLOP/s for MFU.

MFU = achieved FLOP/s / (peak FLOP/s per device x devices used). On CUDA the per-device peak comes from
``GPU_PEAKS``, a table of vendor datasheet figures matched against ``torch.cuda.get_device_name()``, for the
dtype the matmuls actually ran in: bf16 tensor cores for bf16, TF32 tensor cores for fp32 weights with TF32
matmuls on (precision ``tf32``), plain fp32 otherwise. A CPU has no datasheet peak worth trusting: a run
records its measured dense matmul FLOP/s instead (``measured_matmul_flops``), and says so.
"""

from __future__ import annotations

import functools
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from wattscale.cpu_info import cpu_model_name
from wattscale.errors import ConfigError

MFU_FORMULA = "MFU = achieved FLOP/s / (peak FLOP/s per device x devices used)"
RESOLVED_PRECISIONS = ("fp32", "tf32", "bf16")
_TF32_NEEDS_CUDA = ("train.precision: 'tf32' (fp32 weights, TF32 tensor-core matmuls) needs a CUDA device, "
                    "not {device}; use fp32 or bf16 here")


@dataclass(frozen=True)
class GpuPeak:
    """Dense (no sparsity) peak FLOP/s of one GPU model, from its vendor datasheet.

    ``pattern`` is a regular expression matched against the whole of ``torch.cuda.get_device_name()``
    (case-insensitive). A figure is None where the datasheet value could not be confirmed.
    """

    name: str  # display name, e.g. "H100 SXM"
    pattern: str
    bf16_flops: float | None  # bf16 (= fp16) tensor core, dense
    tf32_flops: float | None  # TF32 tensor core, dense
    fp32_flops: float | None  # fp32 without tensor cores
    datasheet: str


# NVIDIA datasheets state tensor-core figures "with sparsity" (2:4 structured); dense is half of that. Where a
# datasheet gives the dense figure itself (A100, L40S, A10, GH200) it is used as printed. Device names are the
# strings torch.cuda.get_device_name() / nvidia-smi report. Left out: a bare "NVIDIA H100" (reported by some
# hosts; SXM, PCIe and NVL have different peaks, so the name alone cannot say which), the A10G (an AWS-only part
# with no NVIDIA datasheet to cite), consumer GeForce cards (no datasheet figures confirmed here), and the H200
# NVL's tf32 and fp32 figures (not confirmed; its bf16 figure is). Add a part by adding a row.
_H100 = "NVIDIA H100 Tensor Core GPU datasheet"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf)"
GPU_PEAKS: tuple[GpuPeak, ...] = (
    GpuPeak("H100 SXM", r"NVIDIA H100 80GB HBM3|NVIDIA H100 SXM5? 80GB(?: HBM3)?", 1979e12 / 2, 989e12 / 2, 67e12,
            _H100),
    GpuPeak("H100 PCIe", r"NVIDIA H100 PCIe", 1513e12 / 2, 756e12 / 2, 51e12, _H100),
    GpuPeak("H100 NVL", r"NVIDIA H100 NVL", 1671e12 / 2, 835e12 / 2, 60e12, _H100),
    GpuPeak("H200", r"NVIDIA H200", 1979e12 / 2, 989e12 / 2, 67e12, _H200),
    GpuPeak("H200 NVL", r"NVIDIA H200 NVL", 1671e12 / 2, None, None, _H200),
    GpuPeak("GH200", r"NVIDIA GH200 480GB", 990e12, 494e12, 67e12, "NVIDIA GH200 Grace Hopper Superchip datasheet"),
    GpuPeak("A100 SXM", r"NVIDIA A100-SXM4?-(?:40|80)GB", 312e12, 156e12, 19.5e12, _A100),
    GpuPeak("A100 PCIe", r"NVIDIA A100-PCIE-40GB|NVIDIA A100 80GB PCIe", 312e12, 156e12, 19.5e12, _A100),
    GpuPeak("L40S", r"NVIDIA L40S", 362.05e12, 183e12, 91.6e12, "NVIDIA L40S datasheet"),
    GpuPeak("L4", r"NVIDIA L4", 242e12 / 2, 120e12 / 2, 30.3e12, "NVIDIA L4 Tensor Core GPU datasheet"),
    GpuPeak("A10", r"NVIDIA A10", 125e12, 62.5e12, 31.2e12, "NVIDIA A10 Tensor Core GPU datasheet"),
)


def resolve_device(requested: str) -> torch.device:
    """Turn `auto`/`cpu`/`cuda`/`cuda:N` into a torch device, or a ConfigError if unavailable."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {requested!r} requested but CUDA is not available; use --device cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` means fp32 on CPU and bf16 autocast on CUDA; `tf32` (fp32 weights, TF32 matmuls) needs CUDA."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    _check_precision(requested, device)
    return requested


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in RESOLVED_PRECISIONS:
        raise ConfigError(f"train.precision: {precision!r} is not one of {', '.join(RESOLVED_PRECISIONS)} "
                          "(resolve 'auto' with resolve_precision first)")
    if precision == "tf32" and device.type != "cuda":
        raise ConfigError(_TF32_NEEDS_CUDA.format(device=device.type))


def apply_matmul_precision(device: torch.device, precision: str) -> dict[str, object]:
    """Set torch's float32 matmul precision for a run, and return what was set, for the run record.

    ``tf32``: TF32 tensor-core matmuls on (``torch.set_float32_matmul_precision("high")``; CUDA only, a
    ConfigError elsewhere). ``fp32``: explicitly "highest", so an fp32 run really multiplies in fp32 and is
    scored against the fp32 peak, whatever the process set before. ``bf16``: left as it is (autocast runs the
    matmuls in bf16). Process-wide, like the torch setting itself. Returns ``{"precision", "float32_matmul_precision",
    "tf32"}``, ``tf32`` being None where it does not apply (bf16, or not CUDA).
    """
    _check_precision(precision, device)
    if precision == "tf32":
        torch.set_float32_matmul_precision("high")
    elif precision == "fp32":
        torch.set_float32_matmul_precision("highest")
    tf32 = tf32_matmuls_enabled() if device.type == "cuda" and precision != "bf16" else None
    return {"precision": precision, "float32_matmul_precision": _float32_matmul_precision(), "tf32": tf32}


def tf32_matmuls_enabled() -> bool:
    """Whether float32 CUDA matmuls may run on TF32 tensor cores now, as set by either of torch's APIs."""
    setting = getattr(torch.backends.cuda.matmul, "fp32_precision", None)  # the API of torch >= 2.9
    if setting in ("tf32", "ieee"):
        return setting == "tf32"
    return bool(torch.backends.cuda.matmul.allow_tf32)


def _float32_matmul_precision() -> str:
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses to answer once its legacy and new TF32 APIs have both been used
        return "unknown (torch's legacy and new TF32 settings were mixed)"


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


def match_gpu(device_name: str) -> GpuPeak | None:
    """The ``GPU_PEAKS`` entry whose pattern matches the whole of ``device_name``, or None."""
    for entry in GPU_PEAKS:
        if re.fullmatch(entry.pattern, device_name.strip(), flags=re.IGNORECASE):
            return entry
    return None


def datasheet_peak_flops(device_name: str, precision: str, tf32: bool = False) -> tuple[float | None, str]:
    """Dense datasheet peak FLOP/s of one GPU for the dtype its matmuls ran in, and where the figure came from.

    ``device_name`` as ``torch.cuda.get_device_name()`` reports it; ``precision`` one of fp32, tf32, bf16;
    ``tf32`` whether float32 matmuls ran on TF32 tensor cores. bf16 gets the bf16 peak; fp32 or tf32 get the
    TF32 peak when ``tf32`` is true, else the plain fp32 peak. (None, why) for an unknown GPU or a figure not
    in the table.
    """
    if precision not in RESOLVED_PRECISIONS:
        raise ConfigError(f"precision: {precision!r} is not one of {', '.join(RESOLVED_PRECISIONS)}")
    entry = match_gpu(device_name)
    if entry is None:
        return None, (f"unknown GPU {device_name!r}: add it to GPU_PEAKS in wattscale/hardware.py (a pattern for "
                      "this name and its datasheet peaks), or pass the peak yourself (--peak-flops)")
    kind = "bf16" if precision == "bf16" else "tf32" if tf32 else "fp32"
    value = {"bf16": entry.bf16_flops, "tf32": entry.tf32_flops, "fp32": entry.fp32_flops}[kind]
    note = ("" if precision == "bf16" else " (fp32 weights, TF32 matmuls on)" if tf32
            else " (TF32 matmuls off, although precision tf32 was asked for)" if precision == "tf32"
            else " (TF32 matmuls off)")
    if value is None:
        return None, f"no confirmed datasheet {kind} peak for {entry.name}: pass the peak yourself (--peak-flops)"
    return value, f"datasheet {entry.name} {kind} dense{note}"


def peak_flops(device: torch.device, precision: str, tf32: bool | None = None) -> tuple[float | None, str]:
    """Datasheet peak FLOP/s of one CUDA device for ``precision``, with where the figure came from.

    ``tf32`` None asks torch whether TF32 matmuls are on now (``tf32_matmuls_enabled``); it matters for fp32
    and tf32 only. (None, why) on a CPU: see ``measured_matmul_flops``.
    """
    if device.type != "cuda":
        return None, "no datasheet peak for CPUs; see measured_matmul_flops"
    if tf32 is None:
        tf32 = precision != "bf16" and tf32_matmuls_enabled()
    return datasheet_peak_flops(torch.cuda.get_device_name(device), precision, tf32)


# The CPU stand-in for a datasheet peak, recorded when a run is created: square matmuls of this size, timed for
# this long (~0.2 s). A benchmark measures with larger sizes and longer.
RUN_PEAK_MATMUL_SIZE = 1024
RUN_PEAK_MATMUL_SECONDS = 0.1


def run_peak_flops(device: torch.device, precision: str, devices_used: int = 1) -> dict[str, object]:
    """The peak FLOP/s a run's MFU is computed against, for the run's device info.

    ``devices_used``: the processes of the run, one device each (the world size). Returns
    ``{"peak_flops": per device x devices_used, "peak_flops_per_device", "peak_flops_devices",
    "peak_flops_source", "mfu_formula", "tf32"}``. On CUDA the per-device peak is the datasheet figure for the
    dtype in use (``peak_flops``); ``tf32`` says whether fp32 matmuls ran on TF32 tensor cores (None for bf16).
    On a CPU it is the matmul FLOP/s measured at run start by this process with its threads, multiplied by
    the number of processes the same way; ``tf32`` is None. ``peak_flops`` is None where no peak is known.
    """
    if isinstance(devices_used, bool) or not isinstance(devices_used, int) or devices_used < 1:
        raise ConfigError(f"devices_used: {devices_used!r} must be a positive integer (the run's world size)")
    _check_precision(precision, device)
    tf32: bool | None = None
    if device.type == "cuda":
        if precision != "bf16":
            tf32 = tf32_matmuls_enabled()
        per_device, source = peak_flops(device, precision, tf32=tf32)
    else:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        threads = torch.get_num_threads()
        per_device = _cpu_peak_for_runs(str(device), dtype, threads)
        source = (f"measured {precision} {RUN_PEAK_MATMUL_SIZE}x{RUN_PEAK_MATMUL_SIZE} matmul at run start, per "
                  f"process ({threads} threads; a CPU has no datasheet peak worth trusting)")
    return {"peak_flops": None if per_device is None else per_device * devices_used,
            "peak_flops_per_device": per_device, "peak_flops_devices": devices_used, "peak_flops_source": source,
            "mfu_formula": MFU_FORMULA, "tf32": tf32}


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

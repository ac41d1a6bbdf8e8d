"""``train.deterministic``: deterministic kernels for one run, restored afterwards.

What is bit-identical where (docs/guides/training.md, "Reproducibility"): on a CPU, eager, the same
machine and seed train identical bits with or without this setting (CPU attention is flash attention,
whose backward has no atomics: the same bits at any thread count). On CUDA without it, attention's
backward (flash / memory-efficient kernels accumulate with atomics) and some cuBLAS reductions make
repeated runs differ in the last bits. With it, `torch.use_deterministic_algorithms(True)` refuses
non-deterministic kernels, cuBLAS gets a fixed workspace (``CUBLAS_WORKSPACE_CONFIG``, which cuBLAS reads
when its handle is made: this is set before the run's first CUDA matmul) and attention runs the math
backend, so repeated runs on the same GPU model and software are identical, and slower.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

CUBLAS_WORKSPACE = ":4096:8"  # the setting torch's reproducibility notes give (about 24 MiB per stream)


def attention_backend(deterministic: bool, device_type: str) -> str:
    """The scaled-dot-product attention backend a run pins: "math" for a deterministic CUDA run; "default"
    (torch's choice) otherwise, flash attention on a CPU, which is deterministic already."""
    return "math" if deterministic and device_type == "cuda" else "default"


@contextmanager
def deterministic_kernels(enabled: bool, device_type: str) -> Iterator[None]:
    """Within the block: deterministic algorithms, cuBLAS's fixed workspace and math attention on CUDA
    (when `enabled`); every setting is put back afterwards. Enter it before the run's first CUDA work."""
    if not enabled:
        yield
        return
    with ExitStack() as stack:
        old_mode = torch.are_deterministic_algorithms_enabled()
        old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        old_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        if old_env is None:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
        torch.use_deterministic_algorithms(True)

        def restore() -> None:
            torch.use_deterministic_algorithms(old_mode, warn_only=old_warn)
            if old_env is None:
                os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

        stack.callback(restore)
        if attention_backend(True, device_type) == "math":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


def determinism_record(enabled: bool, device_type: str) -> dict[str, Any]:
    """What the run record keeps about it (in device_info_json): the setting, the attention backend and
    cuBLAS's workspace setting as the run saw it."""
    return {"deterministic": enabled, "attention_backend": attention_backend(enabled, device_type),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG") if device_type == "cuda" else None}

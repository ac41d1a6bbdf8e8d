"""The CPU's name, without importing torch (`wattscale measure` starts before every command it wraps)."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, else platform.processor()."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

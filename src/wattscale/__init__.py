"""wattscale: energy-aware language-model training-scale experiments.

`wattscale.Monitor` measures any PyTorch code by phase (see `wattscale.energy.monitor`); it is imported on
first use, so `import wattscale` (and the command line) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and the docs' API reference; imported lazily below
    from wattscale.energy import Monitor, MonitorResult

__version__ = "0.1.0"
__all__ = ["Monitor", "MonitorResult", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Monitor", "MonitorResult"):
        from wattscale import energy

        return getattr(energy, name)
    raise AttributeError(f"module 'wattscale' has no attribute {name!r}")

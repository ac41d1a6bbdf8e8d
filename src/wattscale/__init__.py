"""wattscale: energy-aware language-model training-scale experiments."""

__version__ = "0.1.0"

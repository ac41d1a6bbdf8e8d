"""Energy measurement inside other trainers: Hugging Face ``Trainer`` (`wattscale.integrations.hf`, extra
``hf``) and PyTorch Lightning (`wattscale.integrations.lightning`, extra ``lightning``).

Import the submodule you need; this package imports neither ``transformers`` nor ``lightning``. The shared
core (tokens from a batch, a model's FLOPs, the metrics) is `wattscale.integrations.common`.
"""

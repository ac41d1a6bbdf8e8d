"""GPU-only checks (skipped on CPU-only machines, run them on a machine with CUDA)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from wattscale.config import build_run_config
from wattscale.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_bf16_autocast_training_on_cuda(tmp_path: Path) -> None:
    config = build_run_config(overrides={
        "model": {"preset": "llama-tiny"},
        "train": {"tokens": 8192, "batch_size": 8, "seq_len": 64, "device": "cuda", "eval_tokens": 4096,
                  "run_root": str(tmp_path / "runs")},
        "data": {"source": "synthetic", "synthetic_mb": 0.3}})
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=tmp_path / "cache")
    assert result.status == "finished" and result.tokens_seen == 8192
    assert math.isfinite(result.final_val_loss) and result.final_val_loss < math.log(512)

"""The PyTorch Lightning callback: a tiny LlamaForCausalLM in a LightningModule, fitted for a few steps on CPU
with validation and checkpoints, measured by a fake constant-power meter (exact references: the attention
masks fed, the model's own parameter count)."""

from __future__ import annotations

import functools
import glob
import importlib.util
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("lightning") is None or importlib.util.find_spec("transformers") is None:
    pytest.skip("lightning or transformers is not installed: pip install -e '.[lightning,hf]'",
                allow_module_level=True)

# lightning and transformers are imported by the tests that use them (through these helpers), not when every
# xdist worker collects this file: they cost seconds per process.
from torch.utils.data import DataLoader  # noqa: E402

from integration_fixtures import ConstantMeter, Recorder, mask_tokens, rows, tiny_model  # noqa: E402
from wattscale.integrations.common import model_facts  # noqa: E402
from wattscale.store import open_store  # noqa: E402


@functools.cache
def tiny_llama_class() -> type:
    """A LightningModule around the tiny LlamaForCausalLM that can raise at a chosen step."""
    import lightning.pytorch as pl

    class TinyLlama(pl.LightningModule):
        def __init__(self, fail_at_step: int | None = None, error: BaseException | None = None) -> None:
            super().__init__()
            self.model = tiny_model()
            self.fail_at_step, self.error = fail_at_step, error

        def training_step(self, batch, batch_idx):
            if self.fail_at_step is not None and self.global_step == self.fail_at_step:
                raise self.error
            return self.model(**batch).loss

        def validation_step(self, batch, batch_idx):
            self.log("val_loss", self.model(**batch).loss)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    return TinyLlama


def TinyLlama(**kwargs: Any) -> Any:  # noqa: N802 - reads as the class it builds
    return tiny_llama_class()(**kwargs)


def fit(tmp_path: Path, train: list, val: list, module: Any = None, trackers=(), ckpt_path=None,
        **trainer_args):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from wattscale.integrations.lightning import WattscaleCallback

    cb = WattscaleCallback(store=str(tmp_path / "runs.db"), name="tiny-pl", trackers=trackers,
                           meters=[ConstantMeter()], sample_hz=50, idle_seconds=0, host_registry=str(tmp_path / "h"))
    settings = dict(max_steps=4, accumulate_grad_batches=2, val_check_interval=4, num_sanity_val_steps=0,
                    log_every_n_steps=1, accelerator="cpu", devices=1, enable_progress_bar=False,
                    enable_model_summary=False, logger=TensorBoardLogger(str(tmp_path / "tb"), name="tiny"),
                    callbacks=[cb, ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=2,
                                                   save_top_k=-1)])
    settings.update(trainer_args)
    trainer = pl.Trainer(**settings)
    module = module or TinyLlama()
    trainer.fit(module, DataLoader(train, batch_size=4), DataLoader(val, batch_size=4), ckpt_path=ckpt_path)
    return cb, trainer, module


def test_fit_is_stored_with_phases_tokens_flops_and_logger_metrics(tmp_path: Path, run_cli_in_process) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, val = rows(32, seed=1), rows(8, seed=2)
    tracker = Recorder()
    cb, trainer, module = fit(tmp_path, train, val, trackers=[tracker])
    result = cb.result
    assert result.status == "finished"
    # 4 steps x 2 accumulated batches x 4 rows: the 32 rows once; validation after batches 4 and 8.
    assert result.phase("warmup").tokens + result.phase("train").tokens == mask_tokens(train)
    assert (result.phase("warmup").steps, result.phase("train").steps) == (1, 3)
    assert result.phase("eval").tokens == 2 * mask_tokens(val)
    for phase in ("train", "eval", "save"):
        assert result.phase(phase).energy_j > 0

    facts = model_facts(module.model, 16)
    with open_store(str(tmp_path / "runs.db")) as store:
        (record,) = store.list_runs()
    assert (record["kind"], record["status"], record["name"]) == ("measured", "finished", "tiny-pl")
    assert record["params_total"] == facts.params and record["flops_per_token"] == pytest.approx(facts.flops_per_token)
    assert {"train", "eval", "save"} <= set(record["phases"])

    (event_file,) = glob.glob(str(tmp_path / "tb" / "**" / "events.out.tfevents*"), recursive=True)
    accumulator = EventAccumulator(event_file).Reload()
    assert {"energy_j", "power_w", "energy_j_per_token", "eval_energy_j", "eval_energy_j_per_token"} <= set(
        accumulator.Tags()["scalars"])
    assert [e.step for e in accumulator.Scalars("energy_j")] == [1, 2, 3, 4]
    assert all(e.value == pytest.approx(100.0, rel=0.05) for e in accumulator.Scalars("power_w"))

    (params,) = tracker.params
    assert params["run_id"] == result.run_id and params["params"] == facts.params and tracker.closed == 1
    assert {"energy_j/train", "energy_j/eval"} <= set(tracker.metrics[-1][0])

    energy = run_cli_in_process("--store", str(tmp_path / "runs.db"), "energy", result.run_id, "--json")
    assert energy.returncode == 0, energy.stderr


def test_resumed_fit_names_the_run_it_continues(tmp_path: Path) -> None:
    train, val = rows(32, seed=3), rows(4, seed=4)
    first, _, _ = fit(tmp_path, train, val, max_steps=2, logger=False)
    (checkpoint,) = glob.glob(str(tmp_path / "ckpt" / "*step=2*.ckpt"))
    second, _, _ = fit(tmp_path, train, val, max_steps=4, logger=False, ckpt_path=checkpoint)
    assert second.monitor.metadata["resumed_from_run_id"] == first.result.run_id
    assert second.monitor.metadata["resumed_at_step"] == 2 and second.result.job.steps == 2


def test_an_exception_in_fit_keeps_the_partial_run_as_failed(tmp_path: Path) -> None:
    module = TinyLlama(fail_at_step=2, error=RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, rows(32, seed=5), rows(4, seed=6), module=module, logger=False)
    with open_store(str(tmp_path / "runs.db")) as store:
        (record,) = store.list_runs()
        stored_rows = store.energy_measurements(record["run_id"])
    assert record["status"] == "failed" and record["message"].startswith("RuntimeError: boom")
    assert record["steps"] == 2 and any(r["phase"] == "train" and r["energy_j"] > 0 for r in stored_rows)


def test_ctrl_c_in_fit_keeps_the_partial_run_as_interrupted(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGINT)
    module = TinyLlama(fail_at_step=1, error=KeyboardInterrupt())
    try:
        with pytest.raises(SystemExit):  # Lightning turns Ctrl-C into a graceful shutdown and exit(1)
            fit(tmp_path, rows(32, seed=7), rows(4, seed=8), module=module, logger=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    with open_store(str(tmp_path / "runs.db")) as store:
        (record,) = store.list_runs()
    assert record["status"] == "interrupted" and record["steps"] == 1 and record["tokens_seen"] > 0

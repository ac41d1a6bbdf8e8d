"""Energy of a PyTorch Lightning ``fit``, by phase, in its loggers and in the store (needs ``wattscale[lightning]``).

```python
from wattscale.integrations.lightning import WattscaleCallback

trainer = lightning.Trainer(max_steps=1000, callbacks=[WattscaleCallback(store="runs.db", name="llama-pl")])
trainer.fit(module, train_loader, val_loader)
```

The same behaviour as the Hugging Face callback (`wattscale.integrations.hf`):

- **Phases**: ``train`` for the training batches (the first ``warmup_steps`` optimizer steps, default 1,
  are ``warmup``), ``eval`` for validation (the sanity check included), ``save`` from each checkpoint's
  ``on_save_checkpoint`` until the next batch; the rest is ``other``.
- **Tokens** from each batch the hooks receive (``on_train_batch_start``, ``on_validation_batch_start``):
  the sum of its attention mask, else the size of its token ids (`wattscale.integrations.common.count_tokens`).
  Optimizer steps are counted from ``trainer.global_step``, so gradient accumulation counts right.
- **The run**: a ``measured`` run with the module's name, parameter count and, when the module (or its
  ``model`` attribute) is a Llama-shaped Hugging Face model, FLOPs per token.
- **Metrics** go to every logger of the trainer (``trainer.loggers``: TensorBoardLogger, MLFlowLogger,
  CSVLogger, ...) at the trainer's ``log_every_n_steps``: ``energy_j``, ``power_w``, ``energy_j_per_token``;
  after each validation ``eval_energy_j``, ``eval_power_w``, ``eval_energy_j_per_token`` of that validation.
- **Failures**: ``on_exception`` ends the run ``interrupted`` (Ctrl-C) or ``failed``, with the figures so far.
- **Several processes**: each rank measures its own devices and records its own run ``<name>-rank<N>``
  (RAPL, which counts a whole CPU package, is read by local rank 0 of each host only).
- **Resumed fits** (``ckpt_path=``) are new runs naming the run they continue (``resumed_from_run_id``,
  kept in the checkpoint under ``"wattscale"``) and the step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback

from wattscale.integrations.common import EVAL, SAVE, TRAIN, EnergySession, Tracker, count_tokens, sequence_length

CHECKPOINT_KEY = "wattscale"


class WattscaleCallback(Callback):
    """Measures ``trainer.fit(...)`` by phase and logs the energy to the trainer's loggers (see the module).

    Args:
        store: a `Store` or database path/URL; the measurement becomes a run of kind ``measured``.
        name: the run's name (default: the model's name).
        trackers: tracker specs (``"mlflow:sqlite:///mlflow.db"``, ``"tensorboard:tb"``, as ``train --track``
            takes) or objects with ``log_params(params)``, ``log_metrics(metrics, step)`` and ``close()`` (e.g.
            from `wattscale.trackers`): parameters once, the energy metrics plus each phase's energy so far
            (``energy_j/train``, ...) at every log, closed at the end.
        metadata: more JSON-ready facts to store with the run.
        meters: already-open meters to use instead of discovering them (tests, custom hardware).
        gpus: ``"auto"``, CUDA indexes or ``[]`` (as `Monitor`).
        **monitor_settings: `MeterConfig` fields: ``sample_hz``, ``idle_seconds``, ``warmup_steps`` (default
            1 here), ``total``, ``kinds``, ...
    """

    def __init__(self, store: Any = None, name: str | None = None, trackers: Sequence[Tracker | str] = (), *,
                 metadata: Mapping[str, Any] | None = None, meters: Any = None, gpus: Any = "auto",
                 **monitor_settings: Any) -> None:
        self.session = EnergySession(store=store, name=name, trackers=trackers, meters=meters, gpus=gpus,
                                     metadata=metadata, settings=monitor_settings)
        self._fitting = False
        self._training = False
        self._last_step = 0
        self._last_logged_step = -1
        self._facts: dict[str, Any] = {"trainer": "lightning"}

    @property
    def monitor(self) -> Any:
        """The `Monitor` of the fit (None before the first batch)."""
        return self.session.monitor

    @property
    def result(self) -> Any:
        """The `MonitorResult` once the fit ended (None before)."""
        monitor = self.session.monitor
        return monitor.result if monitor is not None and not monitor.running else None

    # ---- fit --------------------------------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._fitting = self.session.monitor is None  # one callback measures one fit
        self._facts["accumulate_grad_batches"] = trainer.accumulate_grad_batches

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        previous = checkpoint.get(CHECKPOINT_KEY) or {}
        if previous.get("run_id"):
            self._facts["resumed_from_run_id"] = previous["run_id"]

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._training = self._fitting
        self._last_step = trainer.global_step  # restored from a checkpoint by now
        if trainer.global_step > 0:
            self._facts["resumed_at_step"] = trainer.global_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._ensure_started(trainer, pl_module, batch):
            self.session.set_phase(TRAIN)
            self.session.count_tokens(count_tokens(batch))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.session.running:
            return
        steps = trainer.global_step - self._last_step
        self._last_step = trainer.global_step
        self.session.count_steps(steps)
        step = trainer.global_step
        if steps > 0 and step % max(1, trainer.log_every_n_steps) == 0 and step != self._last_logged_step:
            self._last_logged_step = step
            self._log(trainer, self.session.interval_metrics())

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if self._ensure_started(trainer, pl_module, batch):
            self.session.set_phase(EVAL)
            self.session.count_tokens(count_tokens(batch))

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.session.running or self.session.phase != EVAL:
            return
        if not trainer.sanity_checking:
            self._log(trainer, self.session.eval_metrics())
        self.session.set_phase(TRAIN if self._training else None)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        if not self.session.running:
            return
        self.session.set_phase(SAVE)
        checkpoint[CHECKPOINT_KEY] = {"run_id": self.session.monitor.run_id, "global_step": trainer.global_step,
                                      "tokens": self.session.monitor.tokens}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._training = False
        if self._fitting:
            self._fitting = False
            self.session.finish("finished", None, trainer.global_step)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self._fitting:
            self._fitting = self._training = False
            status = "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed"
            self.session.finish(status, f"{type(exception).__name__}: {exception}", trainer.global_step)

    # ---- internals --------------------------------------------------------------------------------------

    def _ensure_started(self, trainer: Any, pl_module: Any, batch: Any) -> bool:
        """Start the measurement at the first batch of the fit (its length gives the FLOPs); True if running."""
        if self._fitting and self.session.monitor is None:
            self.session.start(_model_of(pl_module), sequence_length(batch), rank=trainer.global_rank,
                               world_size=trainer.world_size, local_rank=trainer.local_rank, facts=self._facts)
        return self._fitting and self.session.running

    def _log(self, trainer: Any, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.session.tracker_metrics(metrics, trainer.global_step)


def _model_of(pl_module: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model a LightningModule wraps (its only child with a ``config``), else the module."""
    if getattr(pl_module, "config", None) is not None:
        return pl_module
    wrapped = [m for m in pl_module.children() if getattr(m, "config", None) is not None]
    if len(wrapped) == 1 and sum(p.numel() for p in wrapped[0].parameters()) == \
            sum(p.numel() for p in pl_module.parameters()):
        return wrapped[0]
    return pl_module

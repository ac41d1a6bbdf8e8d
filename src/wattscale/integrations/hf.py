"""Energy of a Hugging Face ``Trainer`` run, by phase, in its logs and in the store (needs ``wattscale[hf]``).

```python
from wattscale.integrations.hf import WattscaleCallback

trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val)
WattscaleCallback(store="runs.db", name="llama-ft").attach(trainer)   # or Trainer(callbacks=[...])
trainer.train()
```

- **Phases**: ``train`` for the optimizer steps (the first ``warmup_steps``, default 1, are ``warmup``),
  ``eval`` for each evaluation during training, ``save`` for each checkpoint save; the rest is ``other``.
- **Tokens** come from the batches the model is really called with (a forward pre-hook), the sum of
  their attention masks: every micro-batch of gradient accumulation, and evaluation batches in ``eval``.
- **The run** is a ``measured`` run in the store with the model's name, parameter count and, for a
  Llama-shaped model, FLOPs per token (see `wattscale.integrations.common`).
- **Logs**: each training log (and its copy in ``trainer.state.log_history``) gains ``energy_j`` (so
  far), ``power_w`` and ``energy_j_per_token`` (since the previous log); each evaluation log
  ``eval_energy_j``, ``eval_power_w`` and ``eval_energy_j_per_token`` of that evaluation. `attach` puts
  the callback before the Trainer's reporting callbacks (TensorBoard, MLflow, ...), so they receive these
  keys; a callback given in ``Trainer(callbacks=[...])`` runs after them (the Trainer adds user callbacks
  last, and warns so) and only ``log_history`` and the trackers see the energy. `attach` also records a
  ``failed`` or ``interrupted`` status (partial figures kept) when ``trainer.train()`` raises; without it
  such a run ends as ``interrupted`` when the process exits.
- **Several processes** (DDP): each rank measures the devices it uses and records its own run, named
  ``<name>-rank<N>``; their energies add up to the job's (RAPL, which counts a whole CPU package, is read
  by local rank 0 of each host only).
- **Resumed training** (``train(resume_from_checkpoint=...)``) is a new run covering the new session;
  its metadata names the run it continues (``resumed_from_run_id``, from the checkpoint) and the step.

Only ``trainer.train()`` is measured: a ``trainer.evaluate()`` called on its own is not.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import DefaultFlowCallback

from wattscale.integrations.common import EVAL, SAVE, TRAIN, EnergySession, Tracker, sequence_length, tokens_in_call

STATE_FILE = "wattscale_run_rank{rank}.json"  # written into each checkpoint folder


class WattscaleCallback(TrainerCallback):
    """Measures ``trainer.train()`` by phase and adds the energy to its logs (see the module docstring).

    Args:
        store: a `Store` or database path/URL; the measurement becomes a run of kind ``measured``.
        name: the run's name (default: the model's name).
        trackers: tracker specs (``"mlflow:sqlite:///mlflow.db"``, ``"tensorboard:tb"``, as ``train --track``
            takes) or objects with ``log_params(params)``, ``log_metrics(metrics, step)`` and ``close()`` (e.g.
            from `wattscale.trackers`): parameters once, the energy metrics plus each phase's energy so far
            (``energy_j/train``, ``energy_j/eval``, ...) at every log, closed at the end.
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
        self._attached = False
        self._training = False
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._rank, self._world_size, self._local_rank = 0, 1, 0
        self._facts: dict[str, Any] = {}
        self._resume_from: str | None = None  # the checkpoint folder trainer.train() was given (via attach)

    @property
    def monitor(self) -> Any:
        """The `Monitor` of the training (None before the first batch)."""
        return self.session.monitor

    @property
    def result(self) -> Any:
        """The `MonitorResult` once training ended (None before)."""
        monitor = self.session.monitor
        return monitor.result if monitor is not None and not monitor.running else None

    def attach(self, trainer: Any) -> WattscaleCallback:
        """Add this callback to `trainer` before its reporting callbacks, and record a failed or interrupted
        ``trainer.train()`` with that status; returns the callback."""
        handler = trainer.callback_handler
        callbacks = [c for c in handler.callbacks if c is not self]
        after_flow = next((i + 1 for i, c in enumerate(callbacks) if isinstance(c, DefaultFlowCallback)), 0)
        callbacks.insert(after_flow, self)  # after the flow callback: its should_evaluate/should_save are set
        handler.callbacks = callbacks
        if not getattr(trainer.train, "_wattscale_wrapped", False):
            trainer.train = _recording_failures(trainer.train, self)
        self._attached = True
        return self

    # ---- trainer events ---------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self.session.monitor is not None:
            warnings.warn("WattscaleCallback: this callback already measured a training; create a new one for "
                          "each trainer.train() (this one is not measured)", RuntimeWarning, stacklevel=2)
            return
        if not self._attached and [r for r in (args.report_to or []) if r != "none"]:
            warnings.warn("WattscaleCallback: the Trainer's reporting callbacks run before this one, so "
                          f"{args.report_to} will not receive the energy metrics; use "
                          "WattscaleCallback(...).attach(trainer) instead of Trainer(callbacks=[...])",
                          RuntimeWarning, stacklevel=2)
        self._rank, self._world_size = int(args.process_index), int(args.world_size)
        self._local_rank = int(args.local_process_index)
        self._facts = {"trainer": "transformers", "gradient_accumulation_steps": args.gradient_accumulation_steps}
        if state.global_step > 0:
            folder = self._resume_from or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            self._facts.update(resumed_at_step=state.global_step, **_previous_run(folder, self._rank))
        self._training = True
        self._hook = model.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.set_phase(TRAIN)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session.count_steps(1)
        self._evaluation_or_save_next(control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._evaluation_or_save_next(control)  # eval_strategy / save_strategy "epoch"

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._training:
            self.session.set_phase(SAVE if control.should_save else TRAIN)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.session.running:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            with open(os.path.join(folder, STATE_FILE.format(rank=self._rank)), "w", encoding="utf-8") as f:
                json.dump({"run_id": self.session.monitor.run_id, "global_step": state.global_step,
                           "tokens": self.session.monitor.tokens}, f)
        self.session.set_phase(TRAIN)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs is None or not self.session.running:
            return
        evaluation = any(key.startswith("eval_") for key in logs)
        metrics = self.session.eval_metrics() if evaluation else self.session.interval_metrics()
        logs.update(metrics)
        last = state.log_history[-1] if state.log_history else None  # the Trainer stored a copy of `logs`
        if isinstance(last, dict) and all(last.get(key) == value for key, value in logs.items() if key not in metrics):
            last.update(metrics)
        self.session.tracker_metrics(metrics, state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end("finished", None, state.global_step)

    # ---- internals --------------------------------------------------------------------------------------

    def _on_forward(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not self._training:
            return
        session = self.session
        if session.monitor is None:
            batch = kwargs if "input_ids" in kwargs else (args[0] if args else None)
            session.start(module, sequence_length(batch), rank=self._rank, world_size=self._world_size,
                          local_rank=self._local_rank, facts=self._facts)
            session.set_phase(TRAIN if module.training else EVAL)
        elif not module.training and session.phase == TRAIN:  # an evaluation the flags did not announce
            session.set_phase(EVAL)
        session.count_tokens(tokens_in_call(args, kwargs))

    def _evaluation_or_save_next(self, control: Any) -> None:
        """The Trainer evaluates, then saves, right after the step (or epoch) whose flags say so."""
        if control.should_evaluate:
            self.session.set_phase(EVAL)
        elif control.should_save:
            self.session.set_phase(SAVE)

    def _end(self, status: str, message: str | None, step: int | None) -> None:
        self._training = False
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.session.finish(status, message, step)


def _recording_failures(train: Any, callback: WattscaleCallback) -> Any:
    """`trainer.train` that ends the measurement as failed / interrupted when training raises."""

    @functools.wraps(train)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        resume = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        callback._resume_from = resume if isinstance(resume, str) else None
        try:
            return train(*args, **kwargs)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            callback._end(status, f"{type(exc).__name__}: {exc}", None)
            raise

    wrapped._wattscale_wrapped = True  # type: ignore[attr-defined]
    return wrapped


def _previous_run(folder: str, rank: int) -> dict[str, Any]:
    """The run a resumed training continues, from the checkpoint folder it resumes (empty if it has no record)."""
    path = os.path.join(folder, STATE_FILE.format(rank=rank))
    try:
        with open(path, encoding="utf-8") as f:
            return {"resumed_from_run_id": json.load(f)["run_id"]}
    except (OSError, ValueError, KeyError):
        return {}

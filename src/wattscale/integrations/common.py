"""What the Hugging Face and Lightning callbacks share: tokens from a batch, a model's parameters and FLOPs,
and one `Monitor` driven by a trainer's events, with the energy metrics its logs and trackers receive.

Nothing here imports ``transformers`` or ``lightning``; only torch.

**Tokens** (`count_tokens`) are the non-padding tokens of a batch: the sum of its ``attention_mask`` when
it has a 2-D one, else the number of elements of ``input_ids`` (or of the batch's first integer tensor).

**FLOPs per token** are known for a Llama-shaped model (`model_facts`): the config's ``hidden_size``,
``num_hidden_layers``, ``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size`` and
``vocab_size`` give the shape that `wattscale.flops.flops_per_token_from_config` takes, and the shape is
trusted only if its parameter count equals the model's own (a model with biases, extra norms or another
head size fails the check). Otherwise ``flops_per_token`` is None and ``flops_note`` says why.

**Metrics** (`EnergySession.interval_metrics`), read from `Monitor.snapshot()`:

- ``energy_j``: the job's energy so far (every phase but the idle baseline), joules;
- ``power_w``: mean power since the previous log, watts;
- ``energy_j_per_token``: joules per token counted since the previous log (absent when none was).

They are absent when nothing could be metered (energy is then None, never a silent zero).
"""

from __future__ import annotations

import atexit
import warnings
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from wattscale.errors import ConfigError

TRAIN, EVAL, SAVE = "train", "eval", "save"
DEFAULT_WARMUP_STEPS = 1  # as wattscale's own trainer: the first optimizer step allocates and warms caches


class Tracker(Protocol):
    """What a tracker given in ``trackers=`` must have (`wattscale.trackers` implements it)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


# ---- tokens ----------------------------------------------------------------------------------------------

def count_tokens(batch: Any) -> int:
    """Non-padding tokens in `batch`: a dict / ``BatchEncoding``, a tuple or list, or a tensor of token ids.

    A mapping counts ``attention_mask.sum()`` when it holds a 2-D mask, else ``input_ids.numel()`` (else
    ``inputs_embeds``' batch x sequence); a tuple or list counts its first mapping, else its first integer
    tensor (taken as the token ids; a mask in a tuple cannot be told from labels, so it is not used); an
    integer tensor counts its elements. Anything else counts 0.
    """
    if isinstance(batch, Mapping):
        return _tokens_of_inputs(batch)
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, Mapping):
                return _tokens_of_inputs(item)
        for item in batch:
            if _is_token_ids(item):
                return int(item.numel())
        return 0
    return int(batch.numel()) if _is_token_ids(batch) else 0


def tokens_in_call(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """Tokens of one ``model(*args, **kwargs)`` call (a forward pre-hook's arguments), as `count_tokens`."""
    if any(key in kwargs for key in ("input_ids", "attention_mask", "inputs_embeds")):
        return _tokens_of_inputs(kwargs)
    return count_tokens(args[0]) if args else 0


def _tokens_of_inputs(inputs: Mapping[str, Any]) -> int:
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return int(mask.sum().item())
    ids = inputs.get("input_ids")
    if isinstance(ids, torch.Tensor):
        return int(ids.numel())
    embeds = inputs.get("inputs_embeds")
    if isinstance(embeds, torch.Tensor) and embeds.dim() >= 2:
        return int(embeds.shape[:-1].numel())
    return 0


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not value.is_floating_point() and value.dtype != torch.bool


def sequence_length(batch: Any) -> int | None:
    """The sequence length (last dimension) of the batch's token ids, or None if it has none."""
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
        return int(ids.shape[-1]) if isinstance(ids, torch.Tensor) and ids.dim() >= 1 else None
    if isinstance(batch, (tuple, list)):
        for item in batch:
            found = sequence_length(item)
            if found is not None:
                return found
        return None
    return int(batch.shape[-1]) if _is_token_ids(batch) and batch.dim() >= 1 else None


# ---- the model ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelFacts:
    """A model's name, parameter count and, where known, training FLOPs per token at ``seq_len``."""

    name: str
    params: int
    flops_per_token: float | None
    seq_len: int | None
    flops_note: str  # how the FLOPs were found, or why they are not known

    def metadata(self) -> dict[str, Any]:
        """The facts stored with a measured run (``model``, ``params``, ``flops_per_token``, ...)."""
        return {"model": self.name, "params": self.params, "flops_per_token": self.flops_per_token,
                "flops_seq_len": self.seq_len, "flops_note": self.flops_note}


def model_facts(model: torch.nn.Module, seq_len: int | None) -> ModelFacts:
    """`ModelFacts` of `model` (a ``transformers`` model or any module) trained on sequences of `seq_len`."""
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    config = getattr(model, "config", None)
    name = (getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None)
            or type(model).__name__)
    shape, reason = llama_shape(config)
    if shape is None:
        return ModelFacts(name, params, None, seq_len, f"FLOPs not known: {reason}")
    from wattscale.flops import FLOPS_FORMULA, flops_per_token_from_config, parameter_counts

    expected = parameter_counts(shape).total
    if expected != params:
        return ModelFacts(name, params, None, seq_len, f"FLOPs not known: the model has {params} parameters, a "
                          f"Llama of its config's shape would have {expected} (biases, extra layers or another head)")
    if seq_len is None:
        return ModelFacts(name, params, None, None, "FLOPs not known: no batch gave the sequence length")
    flops = flops_per_token_from_config(shape, seq_len=seq_len)
    return ModelFacts(name, params, flops, seq_len, f"{FLOPS_FORMULA}, T={seq_len} (the first batch's length)")


def llama_shape(config: Any) -> tuple[dict[str, Any] | None, str]:
    """(the shape `wattscale.flops` takes, "") of a Llama-like HF config, or (None, why it is not one)."""
    if config is None:
        return None, "the model has no `config`"
    fields = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
              "ffn_hidden": "intermediate_size", "vocab_size": "vocab_size"}
    values = {ours: getattr(config, theirs, None) for ours, theirs in fields.items()}
    missing = [fields[k] for k, v in values.items() if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
    if missing:
        return None, f"its config has no {', '.join(missing)}"
    kv_heads = getattr(config, "num_key_value_heads", None) or values["n_heads"]
    head_dim = getattr(config, "head_dim", None)
    if values["d_model"] % values["n_heads"] or (head_dim and head_dim * values["n_heads"] != values["d_model"]):
        return None, "its head size is not hidden_size / num_attention_heads"
    context = getattr(config, "max_position_embeddings", None) or 1
    shape = {**values, "n_kv_heads": int(kv_heads), "context_length": int(context),
             "tie_embeddings": bool(getattr(config, "tie_word_embeddings", False))}
    return shape, ""


# ---- the measurement ------------------------------------------------------------------------------------

class EnergySession:
    """One `Monitor` driven by a trainer's events, and the metrics its logs and trackers get.

    The Monitor starts lazily (`start`), when the first batch shows the sequence length (the FLOPs need it).
    Phases switch with `set_phase`; tokens count with `count_tokens` in the phase that is active; `finish`
    stops the Monitor with a status and closes the trackers. A process that exits while the session runs
    (an exception the trainer does not report) ends it as ``interrupted``, so no stored run stays ``running``.
    """

    def __init__(self, *, store: Any, name: str | None, trackers: Sequence[Tracker | str], meters: Any, gpus: Any,
                 metadata: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> None:
        if any(isinstance(t, str) for t in trackers):  # spec strings, as `wattscale train --track` takes
            from wattscale.trackers import tracker_from_spec

            trackers = [tracker_from_spec(t, run_name=name, where="trackers") if isinstance(t, str) else t
                        for t in trackers]
        for tracker in trackers:
            missing = [m for m in ("log_params", "log_metrics", "close") if not callable(getattr(tracker, m, None))]
            if missing:
                raise ConfigError(f"trackers: {type(tracker).__name__} has no {', '.join(missing)}(); give objects "
                                  "with log_params(params), log_metrics(metrics, step) and close()")
        self.store, self.name, self.trackers = store, name, list(trackers)
        self.meters, self.gpus, self.extra_metadata = meters, gpus, dict(metadata or {})
        self.settings = {"warmup_steps": DEFAULT_WARMUP_STEPS, **settings}
        self.monitor: Any = None  # wattscale.Monitor once started
        self.facts: ModelFacts | None = None
        self.tracker_errors: list[str] = []
        self._phase: str | None = None
        self._phase_cm: AbstractContextManager[Any] | None = None
        self._last = (0.0, 0.0, 0)  # (energy_j, seconds, tokens) at the previous log
        self._eval_start = (0.0, 0.0, 0)

    @property
    def running(self) -> bool:
        """True between `start` and `finish`."""
        return self.monitor is not None and self.monitor.running

    @property
    def phase(self) -> str | None:
        """The phase set last (None: outside every phase)."""
        return self._phase

    def start(self, model: torch.nn.Module, seq_len: int | None, *, rank: int = 0, world_size: int = 1,
              local_rank: int = 0, facts: Mapping[str, Any] | None = None) -> None:
        """Start the Monitor (once) for `model`.

        Every rank of a multi-process job records its own run (``<name>-rank<N>``) of the devices it uses;
        RAPL counts a whole CPU package, so only local rank 0 of each host reads it (as wattscale's trainer),
        unless ``kinds`` was given: the others estimate their own process's CPU power instead.
        """
        if self.monitor is not None:
            return
        from wattscale.energy.monitor import Monitor

        self.facts = model_facts(model, seq_len)
        metadata = {**self.facts.metadata(), **dict(facts or {}), **self.extra_metadata}
        name = self.name or self.facts.name
        if world_size > 1:
            metadata.update(rank=rank, world_size=world_size)
            name = f"{name}-rank{rank}"
        settings = dict(self.settings)
        if local_rank > 0 and "kinds" not in settings and self.meters is None:
            from wattscale.energy.meter import METER_KINDS

            settings["kinds"] = tuple(kind for kind in METER_KINDS if kind != "rapl")
        self.monitor = Monitor(meters=self.meters, gpus=self.gpus, store=self.store, name=name,
                               metadata=metadata, **settings)
        self.monitor.start()
        atexit.register(self._at_exit)
        self._call_trackers("log_params", {"run_id": self.monitor.run_id, "name": name, **metadata})

    def set_phase(self, phase: str | None) -> None:
        """Make `phase` (``train``, ``eval``, ``save``; None for none) the active one, if it is not already."""
        if not self.running or phase == self._phase:
            return
        if self._phase_cm is not None:
            cm, self._phase_cm = self._phase_cm, None
            cm.__exit__(None, None, None)
        self._phase = phase
        if phase is not None:
            self._phase_cm = self.monitor.phase(phase)
            self._phase_cm.__enter__()
            if phase == EVAL:
                self._eval_start = self._totals(self.monitor.snapshot())

    def count_tokens(self, tokens: int) -> None:
        """Count `tokens` in the active phase."""
        if self.running and tokens:
            self.monitor.step(tokens=tokens, steps=0)

    def count_steps(self, steps: int = 1) -> None:
        """Count optimizer steps (the first ``warmup_steps`` of the session are the warm-up phase)."""
        if self.running and steps > 0:
            self.monitor.step(tokens=0, steps=steps)

    def interval_metrics(self) -> dict[str, float]:
        """``energy_j``, ``power_w``, ``energy_j_per_token`` since the previous call (see the module docstring)."""
        if not self.running:
            return {}
        now = self._totals(self.monitor.snapshot())
        metrics = _delta_metrics("", now, self._last)
        self._last = now
        return metrics

    def eval_metrics(self) -> dict[str, float]:
        """``eval_energy_j``, ``eval_power_w``, ``eval_energy_j_per_token`` of the evaluation running now."""
        if not self.running:
            return {}
        return _delta_metrics("eval_", self._totals(self.monitor.snapshot()), self._eval_start)

    def tracker_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Send `metrics` plus each phase's energy so far (``energy_j/train``, ...) to the trackers."""
        if not self.running or not self.trackers:
            return
        snapshot = self.monitor.snapshot()
        phases = {f"energy_j/{name}": p.energy_j for name, p in snapshot.phases.items() if p.energy_j is not None}
        self._call_trackers("log_metrics", {**metrics, **phases}, step)

    def finish(self, status: str = "finished", message: str | None = None, step: int | None = None) -> Any:
        """Stop the Monitor with `status`, give the trackers the final figures and close them; the result."""
        if self.monitor is None:
            return None
        if not self.monitor.running:
            return self.monitor.result
        atexit.unregister(self._at_exit)
        self.set_phase(None)
        result = self.monitor.stop(status, message=message)
        if self.trackers:
            final = {f"energy_j/{name}": p.energy_j for name, p in result.phases.items() if p.energy_j is not None}
            if result.job.energy_j is not None:
                final["energy_j"] = result.job.energy_j
            self._call_trackers("log_metrics", final, step if step is not None else result.job.steps)
        for tracker in list(self.trackers):
            self._call_tracker(tracker, "close")
        return result

    def _at_exit(self) -> None:
        if self.running:
            try:
                self.finish("interrupted", "the process ended while training ran (no end event from the trainer)")
            except Exception as exc:  # the store may be gone at exit; say so, never a traceback
                warnings.warn(f"wattscale: the interrupted measurement could not be recorded: {exc}",
                              RuntimeWarning, stacklevel=1)

    @staticmethod
    def _totals(snapshot: Any) -> tuple[float | None, float, int]:
        return snapshot.job.energy_j, snapshot.job.seconds, snapshot.job.tokens

    def _call_trackers(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            self._call_tracker(tracker, method, *args)

    def _call_tracker(self, tracker: Tracker, method: str, *args: Any) -> None:
        """A failing tracker is dropped with a warning: the training and its measurement go on."""
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:
            message = f"tracker {type(tracker).__name__}.{method}() failed and is no longer used: " \
                      f"{type(exc).__name__}: {exc}"
            self.tracker_errors.append(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if tracker in self.trackers:
                self.trackers.remove(tracker)


def _delta_metrics(prefix: str, now: tuple[float | None, float, int],
                   before: tuple[float | None, float, int]) -> dict[str, float]:
    energy_j, seconds, tokens = now
    if energy_j is None:
        return {}
    delta_j = energy_j - (before[0] or 0.0)
    metrics = {f"{prefix}energy_j": delta_j if prefix else energy_j}
    if seconds - before[1] > 0:
        metrics[f"{prefix}power_w"] = delta_j / (seconds - before[1])
    if tokens - before[2] > 0:
        metrics[f"{prefix}energy_j_per_token"] = delta_j / (tokens - before[2])
    return metrics

"""Scaling-law input: one table of (params, tokens, batch_tokens, steps, loss) points grouped into runs.

Columns (CSV headers, DataFrame columns and :class:`LawData` fields): ``params`` (N, parameters),
``tokens`` (D, training tokens seen), ``batch_tokens`` (M, tokens per optimiser step), ``steps`` (K), ``loss``
(validation loss in nats/token, > 0), and optionally ``run_id`` (bootstrap cluster: checkpoints of one run
resample together; default one run per row), ``weight`` (per point, default 1), ``flops`` (training compute;
used only to derive ``tokens = flops / (6 params)`` when ``tokens`` is absent), ``energy_j`` (joules of the
run, for the energy model). Of tokens, batch_tokens and steps any two give the third (``D = M K``); when all
three are given they must agree within 1%.

From the store (:func:`law_data_from_store`): finished runs only; ``params`` is ``params_non_embedding`` by
default (``param_counting="total"`` for ``params_total``) and the choice is recorded; ``batch_tokens`` is
``train.batch_size * train.seq_len`` from the run's config (``model.context_length`` when ``train.seq_len`` is null,
as for every run trained without ``--seq-len``); the point is (tokens_seen, final_val_loss), and with
``checkpoints=True`` every stored evaluation too (``steps = tokens_seen / batch_tokens``). Intermediate
checkpoints of a decaying schedule (cosine) are not what a shorter run would reach, which is why they are off
by default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wattscale.errors import ConfigError

COLUMNS = ("params", "tokens", "batch_tokens", "steps", "loss", "run_id", "weight", "flops", "energy_j")
PARAM_COUNTINGS = ("total", "non_embedding", "unspecified")
CONSISTENCY_RTOL = 0.01


@dataclass(frozen=True)
class LawData:
    """Points for a fit: arrays of equal length n; batch_tokens/steps are None when unknown."""

    params: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray
    run_id: np.ndarray
    weight: np.ndarray
    batch_tokens: np.ndarray | None = None
    steps: np.ndarray | None = None
    energy_j: np.ndarray | None = None
    param_counting: str = "unspecified"
    source: str = ""
    energy_source: str = ""  # counter / integrated / estimated (the least direct of the runs'), "" if unknown
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    @property
    def n_runs(self) -> int:
        """Number of distinct runs (bootstrap clusters)."""
        return int(np.unique(self.run_id).shape[0])

    def variable(self, name: str) -> np.ndarray:
        """One variable by name (params, tokens, batch_tokens, steps); ConfigError if absent."""
        value = getattr(self, name, None)
        if value is None:
            raise ConfigError(f"{name}: this form needs the column {name!r}; give it (or two of tokens, "
                              "batch_tokens, steps) in the input")
        return value

    def subset(self, mask: np.ndarray) -> LawData:
        """The points where mask is True."""
        pick = {k: (None if getattr(self, k) is None else getattr(self, k)[mask])
                for k in ("params", "tokens", "loss", "run_id", "weight", "batch_tokens", "steps", "energy_j")}
        return LawData(**pick, param_counting=self.param_counting, source=self.source,
                       energy_source=self.energy_source, notes=self.notes)


def _floats(name: str, values: Any, source: str = "") -> np.ndarray:
    """The column as float64; ConfigError naming the first cell that is not a number."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        cells = np.asarray(values, dtype=object).ravel()
        i = next((i for i, v in enumerate(cells) if not _is_number(v)), 0)
        where = f" of {source}" if source else ""
        raise ConfigError(f"{name}: {cells[i]!r} at data row {i + 1}{where} is not a number; give numbers") from None


def _positive(name: str, values: Any, source: str = "") -> np.ndarray:
    where = f" of {source}" if source else ""
    arr = _floats(name, values, source)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ConfigError(f"{name}: {int(bad.sum())} value(s) are not finite and > 0 (first at data row {i + 1}"
                          f"{where}: {arr.ravel()[i]:g}); the fit takes logs: drop or fix those rows")
    return arr


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def make_law_data(*, params: Any, loss: Any, tokens: Any = None, batch_tokens: Any = None, steps: Any = None,
                  run_id: Any = None, weight: Any = None, flops: Any = None, energy_j: Any = None,
                  param_counting: str = "unspecified", source: str = "") -> LawData:
    """Validate and complete the columns (derive the third of tokens/batch_tokens/steps); see the module doc."""
    if param_counting not in PARAM_COUNTINGS:
        raise ConfigError(f"param_counting: {param_counting!r} is not one of {', '.join(PARAM_COUNTINGS)}")
    if np.size(loss) == 0:
        raise ConfigError(f"points: {source or 'the input'} has no rows; a fit needs points (one per run or "
                          "checkpoint)")
    n_arr = _positive("params", params, source)
    y = _positive("loss", loss, source)
    if n_arr.shape != y.shape or n_arr.ndim != 1:
        raise ConfigError(f"params/loss: need 1-D columns of equal length, got {n_arr.shape} and {y.shape}")
    if tokens is None and flops is not None:
        tokens = _positive("flops", flops, source) / (6.0 * n_arr)
    d, m, k = (None if v is None else _positive(name, v, source)
               for name, v in (("tokens", tokens), ("batch_tokens", batch_tokens), ("steps", steps)))
    if d is None and m is not None and k is not None:
        d = m * k
    elif d is not None and m is not None and k is None:
        k = d / m
    elif d is not None and m is None and k is not None:
        m = d / k
    elif d is not None and m is not None and k is not None:
        off = np.abs(m * k / d - 1.0)
        if (off > CONSISTENCY_RTOL).any():
            raise ConfigError(f"tokens: {int((off > CONSISTENCY_RTOL).sum())} row(s) where tokens != batch_tokens * "
                              f"steps by more than {CONSISTENCY_RTOL:.0%}; fix them or give only two of the three")
    if d is None:
        raise ConfigError("tokens: missing; give a tokens column (or flops, or batch_tokens and steps)")
    w = np.ones_like(y) if weight is None else _floats("weight", weight, source)
    if w.shape != y.shape or not (np.isfinite(w) & (w >= 0)).all() or not w.sum() > 0:
        raise ConfigError("weight: need one finite weight >= 0 per row, not all zero")
    runs = np.arange(len(y)).astype(str) if run_id is None else np.asarray(run_id).astype(str)
    energy = None if energy_j is None else _floats("energy_j", energy_j, source)
    return LawData(params=n_arr, tokens=d, loss=y, run_id=runs, weight=w, batch_tokens=m, steps=k,
                   energy_j=energy, param_counting=param_counting, source=source)


def law_data_from_frame(frame: Any, columns: dict[str, str] | None = None, *, param_counting: str = "unspecified",
                        source: str = "") -> LawData:
    """LawData from a pandas DataFrame; ``columns`` maps our names (see COLUMNS) to the frame's headers."""
    mapping = {name: name for name in COLUMNS} | dict(columns or {})
    unknown = [k for k in (columns or {}) if k not in COLUMNS]
    if unknown:
        raise ConfigError(f"column: unknown name(s) {unknown}; known: {', '.join(COLUMNS)}")
    for required in ("params", "loss"):
        if mapping[required] not in frame.columns:
            raise ConfigError(f"{required}: no column {mapping[required]!r} in the input (columns: "
                              f"{', '.join(map(str, frame.columns))}); map it with --column {required}=HEADER")
    given = {name: frame[col].to_numpy() for name, col in mapping.items() if col in frame.columns}
    return make_law_data(**given, param_counting=param_counting, source=source)


def law_data_from_csv(path: str | Path, columns: dict[str, str] | None = None, *,
                      param_counting: str = "unspecified") -> LawData:
    """LawData from a CSV file with the documented column names (or a mapping to the file's headers)."""
    from wattscale.analysis.table_files import read_table

    frame = read_table(path, "--csv")
    return law_data_from_frame(frame, columns, param_counting=param_counting, source=str(path))


def _batch_tokens(run: dict[str, Any]) -> float | None:
    """Tokens per optimiser step: train.batch_size x the sequence length (train.seq_len, which runs trained
    without --seq-len store as null: then the model's context_length, see flops.stored_seq_len)."""
    from wattscale.flops import stored_seq_len

    try:
        config = json.loads(run.get("config_json") or "{}")
        return float(config["train"]["batch_size"]) * float(stored_seq_len(config))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def law_data_from_store(url: str, experiment: str | None = None, *, param_counting: str = "non_embedding",
                        checkpoints: bool = False) -> LawData:
    """LawData from the finished runs in a store (see the module docstring for what each column is)."""
    from wattscale.store import open_store

    with open_store(url, create=False) as store:
        return law_data_from_open_store(store, experiment, param_counting=param_counting, checkpoints=checkpoints,
                                        source=f"store {url}")


def law_data_from_open_store(store: Any, experiment: str | None = None, *, param_counting: str = "non_embedding",
                             checkpoints: bool = False, source: str | None = None) -> LawData:
    """`law_data_from_store` on an open `wattscale.store.Store`."""
    if param_counting not in ("total", "non_embedding"):
        raise ConfigError(f"--param-counting: {param_counting!r}; use total or non_embedding")
    label = source or f"store {store.display_url}"
    rows: dict[str, list[Any]] = {k: [] for k in ("params", "tokens", "batch_tokens", "loss", "run_id", "energy_j")}
    skipped = 0
    sources: set[str] = set()
    runs = [r for r in store.list_runs(experiment=experiment) if r.get("status") == "finished"]
    for run in runs:
        n_params = run.get(f"params_{param_counting}")
        m = _batch_tokens(run)
        points = [(run.get("tokens_seen"), run.get("final_val_loss"))]
        if checkpoints:
            points += [(e["tokens_seen"], e["val_loss"]) for e in store.evaluations(run["run_id"])
                       if e["tokens_seen"] != run.get("tokens_seen")]
        for tokens, loss in points:
            if not all(v is not None and math.isfinite(float(v)) and float(v) > 0 for v in (n_params, m, tokens,
                                                                                             loss)):
                skipped += 1
                continue
            energy = run.get("energy_j") if tokens == run.get("tokens_seen") else None
            if energy is not None:
                sources.add(str(run.get("energy_source")))
            for key, value in zip(rows, (n_params, tokens, m, loss, run["run_id"], energy), strict=True):
                rows[key].append(value)
    if not rows["loss"]:
        where = f"experiment {experiment!r}" if experiment else "the store"
        raise ConfigError(f"--from-store: no finished runs with params, tokens, batch size and loss in {where}; "
                          "train some (wattscale run FILE) or use --csv")
    energy = np.array([np.nan if e is None else float(e) for e in rows["energy_j"]])
    data = make_law_data(params=rows["params"], tokens=rows["tokens"], batch_tokens=rows["batch_tokens"],
                         loss=rows["loss"], run_id=rows["run_id"], energy_j=energy, param_counting=param_counting,
                         source=label + (f" experiment {experiment}" if experiment else ""))
    note = (f"{skipped} point(s) without params, tokens, batch size or a finite loss were skipped",) if skipped else ()
    least_direct = next((s for s in ("estimated", "integrated", "counter") if s in sources), "")
    return LawData(**{k: getattr(data, k) for k in ("params", "tokens", "loss", "run_id", "weight", "batch_tokens",
                                                    "steps", "energy_j", "param_counting", "source")},
                   energy_source=least_direct, notes=note)

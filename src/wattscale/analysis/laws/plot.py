"""A figure of a fitted law: data with fitted curves, the optimum with its bootstrap band, predicted vs observed.

Panels: (1) loss against tokens (Chinchilla, Kaplan) or batch size (three-term, one curve per (N, D) group,
M*(D) marked), points coloured by model size; (2) the compute-optimal N*(C) (Chinchilla, Kaplan) or M*(D)
(three-term) with the 95% bootstrap band, and the data's own best batch per (N, D) for the three-term law;
(3) predicted against observed loss. matplotlib with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wattscale.analysis.laws.bootstrap import LawBootstrap
from wattscale.analysis.laws.data import LawData
from wattscale.analysis.laws.fit import LawFit
from wattscale.analysis.laws.forms import compute_optimal, get_form, optimal_batch_tokens
from wattscale.errors import ConfigError
from wattscale.output_paths import write_error

MAX_CURVES = 6


def _band(values: np.ndarray | None, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    if values is None:
        return None
    tail = 100 * (1 - level) / 2
    return np.nanpercentile(values, tail, axis=0), np.nanpercentile(values, 100 - tail, axis=0)


def _pick(values: np.ndarray, k: int) -> np.ndarray:
    uniq = np.unique(values)
    return uniq[np.unique(np.linspace(0, uniq.size - 1, min(k, uniq.size)).round().astype(int))]


def _panel_tokens(ax, data: LawData, fit: LawFit, cmap, norm) -> None:
    ax.scatter(data.tokens, data.loss, c=np.log10(data.params), cmap=cmap, norm=norm, s=12)
    d = np.geomspace(data.tokens.min(), data.tokens.max(), 200)
    for n in _pick(data.params, MAX_CURVES):
        ax.plot(d, fit.predict(params=np.full_like(d, n), tokens=d), color=cmap(norm(np.log10(n))), lw=1)
    ax.set(xscale="log", yscale="log", xlabel="tokens D", ylabel="loss", title=f"{fit.form}: {fit.formula}")


def _groups(data: LawData, limit: int | None = MAX_CURVES) -> list[tuple[float, float]]:
    """(N, D) pairs, those with the most points first (D matched to 0.1%)."""
    keys, counts = np.unique(np.stack([data.params, np.round(np.log(data.tokens), 3)]), axis=1, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:limit]
    return [(float(keys[0, i]), float(np.exp(keys[1, i]))) for i in order]


def _panel_batch(ax, data: LawData, fit: LawFit, cmap, norm) -> None:
    ax.scatter(data.batch_tokens, data.loss, c=np.log10(data.params), cmap=cmap, norm=norm, s=12)
    m = np.geomspace(data.batch_tokens.min(), data.batch_tokens.max(), 200)
    for n, d in _groups(data):
        color = cmap(norm(np.log10(n)))
        ax.plot(m, fit.predict(params=np.full_like(m, n), batch_tokens=m, steps=d / m), color=color, lw=1)
        m_opt = float(optimal_batch_tokens(fit.params, np.array(d)))
        ax.plot([m_opt], fit.predict(params=n, batch_tokens=m_opt, steps=d / m_opt), "v", color=color)
    ax.set(xscale="log", yscale="log", xlabel="batch size M (tokens)", ylabel="loss",
           title="three-term: curves at fixed (N, D), v = M*(D)")


def _panel_optimum(ax, data: LawData, fit: LawFit, boot: LawBootstrap | None) -> None:
    reps = None if boot is None or boot.replicates.shape[0] < 2 else boot.replicate_params()
    level = 0.95 if boot is None else boot.level
    if fit.form == "three-term":
        d = np.geomspace(data.tokens.min() / 3, data.tokens.max() * 3, 100)
        ax.plot(d, optimal_batch_tokens(fit.params, d), "k-", label="M*(D)")
        band = _band(optimal_batch_tokens(reps, d[None, :]) if reps else None, level)
        for n, dd in _groups(data, limit=None):
            sel = (data.params == n) & np.isclose(data.tokens, dd, rtol=1e-3)
            if np.unique(data.batch_tokens[sel]).size < 3:
                continue  # a best batch needs several batch sizes at this (N, D)
            ax.plot(dd, data.batch_tokens[sel][np.argmin(data.loss[sel])], "o", ms=4, color="tab:red")
        ax.set(xlabel="tokens D", ylabel="batch size M (tokens)", title="optimal batch (o: best observed)")
    else:
        c = np.geomspace((6 * data.params * data.tokens).min() / 3, (6 * data.params * data.tokens).max() * 30, 100)
        ax.plot(c, compute_optimal(fit.form, fit.params, c)["params"], "k-", label="N*(C)")
        band = _band(compute_optimal(fit.form, reps, c[None, :])["params"] if reps else None, level)
        ax.scatter(6 * data.params * data.tokens, data.params, s=6, color="0.6", label="data (6ND, N)")
        d = c
        ax.set(xlabel="compute C = 6ND (FLOPs)", ylabel="model size N", title="compute-optimal N*(C)")
    if band is not None:
        ax.fill_between(d, band[0], band[1], color="0.8", label=f"{level:.0%} bootstrap band")
    ax.set(xscale="log", yscale="log")
    ax.legend(fontsize=7)


def plot_fit(data: LawData, fit: LawFit, boot: LawBootstrap | None, path: str | Path) -> Path:
    """Write the three-panel figure of the fit to ``path`` (format from its suffix: png, pdf, svg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"-o/--output: {str(path)!r} must end in .png, .pdf or .svg")
    cmap = plt.get_cmap("viridis")
    norm = plt.Normalize(np.log10(data.params.min()), np.log10(data.params.max()) + 1e-9)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    (_panel_batch if fit.form == "three-term" else _panel_tokens)(axes[0], data, fit, cmap, norm)
    _panel_optimum(axes[1], data, fit, boot)
    pred = fit.predict(**{v: data.variable(v) for v in get_form(fit.form).variables})
    axes[2].scatter(data.loss, pred, s=8, c=np.log10(data.params), cmap=cmap, norm=norm)
    lims = [min(data.loss.min(), pred.min()), max(data.loss.max(), pred.max())]
    axes[2].plot(lims, lims, "k--", lw=1)
    axes[2].set(xlabel="observed loss", ylabel="predicted loss", title=f"RMSE(log loss) = {fit.rmse_log_loss:.4f}")
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[2], label="log10 N")
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        raise write_error("-o/--output", path, exc) from None
    finally:
        plt.close(fig)
    return path

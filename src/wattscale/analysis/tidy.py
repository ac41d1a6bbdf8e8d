"""Tidy tables (one observation per row, fixed column names) from an analysis result, for CSV files.

Each function takes the JSON-ready dict of a `StudyAnalysis` (``to_dict()``) and returns a DataFrame whose
columns never depend on the arguments. :func:`write_outputs` writes them all, with the JSON, to a folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from wattscale.errors import ConfigError

STATISTICS_COLUMNS = ("metric", "factor", "subject", "n_subjects_complete", "dropped_subjects", "f", "df1", "df2",
                      "p", "ng2", "mauchly_w", "mauchly_p", "sphericity_violated", "gg_epsilon", "df1_gg", "df2_gg",
                      "p_gg", "apa", "friedman_chi2", "friedman_df", "friedman_p", "kendall_w", "page_l_increasing",
                      "page_p_increasing", "page_l_decreasing", "page_p_decreasing", "monotonic_verdict",
                      "mixed_lr_chi2", "mixed_df", "mixed_p", "not_computable")


def runs_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per run: level, subject, condition, every metric, sources, not-computable reasons."""
    rows = [{**{k: v for k, v in r.items() if k != "not_computable"},
             "not_computable": "; ".join(f"{k}: {v}" for k, v in r["not_computable"].items())}
            for r in analysis["runs"]]
    return pd.DataFrame(rows)


def conditions_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per (metric, level): n, mean, SD, 95% CI, min, max, energy sources, note."""
    rows = [{**c, "energy_sources": ",".join(c["energy_sources"])} for c in analysis["conditions"]]
    return pd.DataFrame(rows)


def statistics_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per metric: RM-ANOVA, sphericity, GG, Friedman, Page's L both ways, mixed model."""
    rows = []
    for s in analysis["statistics"]:
        a, fr = s["rm_anova"] or {}, s["friedman"] or {}
        inc, dec, mm = s["trend_increasing"] or {}, s["trend_decreasing"] or {}, s["mixed_model"] or {}
        rows.append({
            "metric": s["metric"], "factor": s["factor"], "subject": s["subject"],
            "n_subjects_complete": s["n_subjects_complete"],
            "dropped_subjects": ",".join(map(str, s["dropped_subjects"])),
            **{k: a.get(k) for k in ("f", "df1", "df2", "p", "ng2", "mauchly_w", "mauchly_p", "sphericity_violated",
                                     "gg_epsilon", "df1_gg", "df2_gg", "p_gg")},
            "apa": s["apa"], "friedman_chi2": fr.get("chi2"), "friedman_df": fr.get("df"), "friedman_p": fr.get("p"),
            "kendall_w": fr.get("kendall_w"), "page_l_increasing": inc.get("page_l"),
            "page_p_increasing": inc.get("p"), "page_l_decreasing": dec.get("page_l"),
            "page_p_decreasing": dec.get("p"), "monotonic_verdict": s["monotonic_verdict"],
            "mixed_lr_chi2": mm.get("lr_chi2"), "mixed_df": mm.get("df"), "mixed_p": mm.get("p"),
            "not_computable": "; ".join(f"{k}: {v}" for k, v in s["not_computable"].items()),
        })
    return pd.DataFrame(rows, columns=list(STATISTICS_COLUMNS))


def pairwise_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per (metric, pair of levels): mean difference, 95% CI, t, df, p (raw, Bonferroni, Holm), d_z."""
    return pd.DataFrame([p for s in analysis["statistics"] for p in s["pairwise"]])


def returns_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per (metric, step up the token factor): change, per doubling, per kWh, relative; with CIs."""
    rows = []
    for r in analysis["returns"]:
        for step in r["steps"]:
            row = {k: step[k] for k in ("metric", "level_lo", "level_hi", "tokens_lo", "tokens_hi", "kind")}
            for part in ("value_change", "per_doubling", "per_kwh", "relative_change"):
                row.update({f"{part}_{k}": v for k, v in step[part].items()})
            row["diminishing_note"] = r["note"]
            rows.append(row)
    return pd.DataFrame(rows)


def dynamics_intervals_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per (condition, run, interval): loss, perplexity, change, volatility, backslide."""
    return pd.DataFrame([{"condition": d["condition"], **row} for d in analysis["dynamics"] for row in d["intervals"]])


def dynamics_spread_table(analysis: dict[str, Any]) -> pd.DataFrame:
    """One row per (condition, interval): across-seed mean/SD/CV, mean volatility, backslides, spikes."""
    return pd.DataFrame([{"condition": d["condition"], **row}
                         for d in analysis["dynamics"] for row in d["across_seeds"]])


TABLES = {"runs": runs_table, "conditions": conditions_table, "statistics": statistics_table,
          "pairwise": pairwise_table, "returns": returns_table, "dynamics_intervals": dynamics_intervals_table,
          "dynamics_across_seeds": dynamics_spread_table}


def write_outputs(analysis: dict[str, Any], folder: Path, json_text: str) -> list[Path]:
    """Write analysis.json and one CSV per tidy table into ``folder``; return the paths written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        written = [folder / "analysis.json"]
        written[0].write_text(json_text)
        for name, make in TABLES.items():
            path = folder / f"{name}.csv"
            make(analysis).to_csv(path, index=False)
            written.append(path)
    except OSError as exc:
        raise ConfigError(f"-o/--output: cannot write to {folder} ({exc.strerror}); choose a writable folder") from None
    return written


def load_long_csv(path: Path, metric: str, factor: str, subject: str) -> pd.DataFrame:
    """A long-format CSV (one row per observation) with the three named columns; errors name the flag."""
    from wattscale.analysis.table_files import read_table

    frame = read_table(path, "--csv")
    for flag, column in (("--metric", metric), ("--factor", factor), ("--subject", subject)):
        if column not in frame.columns:
            raise ConfigError(f"{flag}: column {column!r} is not in {path.name}; columns: {list(frame.columns)}")
    return frame


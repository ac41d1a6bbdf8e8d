"""Figures as Plotly JSON (``{"data": [...], "layout": {...}}``), built as plain dicts.

Why Plotly: it is what ML papers' companion dashboards and notebooks use, and one inlined
plotly.js gives every figure hover values, legend toggling (click a series to hide it) and
PNG/SVG export from its toolbar, with no server and no network. The figures are written as plain
dicts rather than through ``plotly.graph_objects`` because they are simple and the dicts are
smaller and faster to build (no per-trace validation; the Python template is left out, plotly.js
has its own defaults). Every user string in a figure goes through ``plot_text`` first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from wattscale.report.html import plot_text

# Plotly's default colour sequence (D3 category10), so colours match plotly.js's own order.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
FIGURE_HEIGHT_PX = 420


def colour(i: int, alpha: float | None = None) -> str:
    """The i-th palette colour, as hex or as rgba with the given alpha."""
    hex_colour = PALETTE[i % len(PALETTE)]
    if alpha is None:
        return hex_colour
    r, g, b = (int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def r6(value: float | int | None) -> float | int | None:
    """A number rounded to 6 significant digits for display (keeps the file small); None and non-finite -> None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not math.isfinite(value):
        return None
    return float(f"{value:.6g}")


def base_layout(title: str, x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    """The layout every report figure shares (titles are escaped here): white background, legend on the right."""
    axis = {"gridcolor": "#e6e6e6", "zeroline": False, "automargin": True, "linecolor": "#999", "ticks": "outside"}
    layout: dict[str, Any] = {
        "title": {"text": plot_text(title), "x": 0.0, "xanchor": "left", "font": {"size": 15}},
        "xaxis": {**axis, "title": {"text": plot_text(x_title)}},
        "yaxis": {**axis, "title": {"text": plot_text(y_title)}},
        "height": FIGURE_HEIGHT_PX, "margin": {"l": 64, "r": 16, "t": 48, "b": 56},
        "paper_bgcolor": "#ffffff", "plot_bgcolor": "#ffffff", "hovermode": "closest",
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12},
        "legend": {"itemclick": "toggle", "itemdoubleclick": "toggleothers"},
    }
    layout.update(extra)
    return layout


def band_traces(name: str, i: int, x: Sequence[Any], y: Sequence[Any], low: Sequence[Any], high: Sequence[Any],
                band_label: str, hover_y: str = "%{y:.4g}") -> list[dict[str, Any]]:
    """A line with a shaded band (one legend entry toggles both): the band trace, then the line."""
    group = f"g{i}"
    shown_name = plot_text(name)
    band = {"type": "scatter", "mode": "lines", "x": list(x) + list(reversed(x)),
            "y": [r6(v) for v in high] + [r6(v) for v in reversed(low)], "fill": "toself",
            "fillcolor": colour(i, 0.18), "line": {"width": 0, "color": colour(i, 0.18)}, "hoverinfo": "skip",
            "legendgroup": group, "showlegend": False, "name": shown_name}
    line = {"type": "scatter", "mode": "lines+markers", "x": list(x), "y": [r6(v) for v in y], "name": shown_name,
            "legendgroup": group, "line": {"color": colour(i), "width": 2}, "marker": {"size": 5},
            "customdata": [[r6(lo), r6(hi)] for lo, hi in zip(low, high, strict=True)],
            "hovertemplate": f"{hover_y} ({plot_text(band_label)} %{{customdata[0]:.4g}} – %{{customdata[1]:.4g}})"
                             "<extra>%{fullData.name}</extra>"}
    return [band, line]


def loss_figure(conditions: Sequence[str], bands: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Validation loss vs tokens per condition: the mean across seeds with a min–max band.

    ``bands[condition]`` is ``band_across_runs`` output: rows ``{"x", "n", "mean", "min", "max"}``.
    """
    data: list[dict[str, Any]] = []
    for i, condition in enumerate(conditions):
        rows = bands.get(condition) or []
        if not rows:
            continue
        traces = band_traces(condition, i, [r["x"] for r in rows], [r["mean"] for r in rows],
                             [r["min"] for r in rows], [r["max"] for r in rows], "min–max")
        traces[1]["customdata"] = [[r6(r["min"]), r6(r["max"]), r["n"]] for r in rows]
        traces[1]["hovertemplate"] = ("mean %{y:.4f} (min %{customdata[0]:.4f}, max %{customdata[1]:.4f}, "
                                      "n=%{customdata[2]})<br>%{x:,} tokens<extra>%{fullData.name}</extra>")
        data.extend(traces)
    scale_buttons = [{"label": "linear x", "method": "relayout", "args": [{"xaxis.type": "linear"}]},
                     {"label": "log x", "method": "relayout", "args": [{"xaxis.type": "log"}]}]
    layout = base_layout("Validation loss", "tokens seen", "validation loss (nats/token)",
                         updatemenus=[{"type": "buttons", "direction": "right", "x": 1.0, "xanchor": "right",
                                       "y": 1.12, "yanchor": "top", "buttons": scale_buttons,
                                       "showactive": True}])
    return {"data": data, "layout": layout}


def power_figure(title: str, power: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Power over training time, one line per device (already thinned for display)."""
    data = []
    for i, (device, trace) in enumerate(power.items()):
        data.append({"type": "scatter", "mode": "lines", "name": plot_text(device),
                     "x": [r6(t) for t in trace["t_seconds"]], "y": [r6(w) for w in trace["power_w"]],
                     "line": {"color": colour(i), "width": 1.2},
                     "hovertemplate": "%{y:.2f} W at %{x:.1f} s<extra>%{fullData.name}</extra>"})
    return {"data": data, "layout": base_layout(title, "training time (s)", "power (W)", hovermode="x")}


def interval_energy_figure(title: str, intervals: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Energy of each interval between evaluations as bars spanning its token range, stacked by phase (the
    sum over devices), so training steps stand apart from evaluations and checkpoints."""
    by_phase: dict[str, dict[tuple, dict[str, Any]]] = {}
    for k, row in enumerate(intervals):
        start = row["start_tokens"] if row["start_tokens"] is not None else k
        end = row["end_tokens"] if row["end_tokens"] is not None else k + 1
        cell = by_phase.setdefault(row.get("phase") or "all phases", {}).setdefault(
            (start, end), {"energy_j": 0.0, "sources": set(), "complete": True, "seconds": row.get("phase_seconds"),
                           "start_s": row["start_seconds"], "end_s": row["end_seconds"]})
        cell["energy_j"] += row["energy_j"]
        cell["sources"].add(row["source"])
        cell["complete"] = cell["complete"] and bool(row["complete"])
    data = []
    for i, (phase, cells) in enumerate(by_phase.items()):
        spans = list(cells)
        data.append({
            "type": "bar", "name": plot_text(phase), "marker": {"color": colour(i), "line": {"color": "#fff",
                                                                                          "width": 0.5}},
            "x": [(s + e) / 2 for s, e in spans], "width": [max(e - s, 1) for s, e in spans],
            "y": [r6(cells[span]["energy_j"]) for span in spans],
            "customdata": [[s, e, r6(cells[(s, e)]["start_s"]), r6(cells[(s, e)]["end_s"]),
                            plot_text(", ".join(sorted(cells[(s, e)]["sources"]))),
                            "yes" if cells[(s, e)]["complete"] else "NO", r6(cells[(s, e)]["seconds"])]
                           for s, e in spans],
            "hovertemplate": ("%{y:.4g} J in %{customdata[6]:.2f} s of this phase, tokens "
                              "%{customdata[0]:,}–%{customdata[1]:,} (%{customdata[2]:.1f}–%{customdata[3]:.1f} s)"
                              "<br>source %{customdata[4]}, complete %{customdata[5]}<extra>%{fullData.name}</extra>")})
    return {"data": data, "layout": base_layout(title, "tokens seen (bar = interval)", "energy (J)",
                                                barmode="stack", bargap=0)}


# Above this many runs a condition is drawn as a box (quartiles, 1.5 IQR whiskers) instead of one dot per
# run: thousands of SVG markers take seconds to draw, and a box says more about hundreds of runs.
MAX_DOTS_PER_CONDITION = 40
# basis_energy_j and tokens_per_joule are on the report's energy basis (the training phase by default).
EFFICIENCY_METRICS = (("basis_energy_j", "energy for efficiency (J)"), ("energy_j", "whole-job energy (J)"),
                      ("wall_seconds", "wall time (s)"), ("tokens_per_joule", "tokens per joule"))


def efficiency_figure(conditions: Sequence[str], runs_by_condition: Mapping[str, Sequence[Mapping[str, Any]]],
                      summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Energy, wall time and tokens/J per condition: each run as a dot (a box above 40 runs), the mean and 95% CI.

    ``summaries[condition][metric]`` is ``mean_ci`` output. Conditions sit at x = 0, 1, ... (labelled
    ticks) so that the dots can stand left of the mean and spread a little, deterministically.
    """
    labels = [plot_text(c) for c in conditions]
    data: list[dict[str, Any]] = []
    layout = base_layout("Energy, time and efficiency per condition", "", "",
                         grid={"rows": 1, "columns": len(EFFICIENCY_METRICS), "pattern": "independent"},
                         legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
                         height=FIGURE_HEIGHT_PX + 80, margin={"l": 64, "r": 16, "t": 48, "b": 120})
    for k, (metric, axis_title) in enumerate(EFFICIENCY_METRICS):
        suffix = "" if k == 0 else str(k + 1)
        xs, ys, names, box_x, box_y = [], [], [], [], []
        for i, condition in enumerate(conditions):
            runs = [run for run in runs_by_condition.get(condition, ()) if run.get(metric) is not None]
            if len(runs) > MAX_DOTS_PER_CONDITION:
                box_x.extend([i - 0.18] * len(runs))
                box_y.extend(r6(run[metric]) for run in runs)
                continue
            for j, run in enumerate(runs):
                xs.append(r6(i - 0.18 + 0.12 * ((j * 0.618034) % 1.0 - 0.5)))  # golden-ratio spread, no RNG
                ys.append(r6(run[metric]))
                names.append([labels[i], plot_text(run.get("run_id", ""))])
        if xs:
            data.append({"type": "scatter", "mode": "markers", "name": "runs", "legendgroup": "runs",
                         "showlegend": k == 0, "x": xs, "y": ys, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                         "marker": {"color": colour(7, 0.7), "size": 6}, "customdata": names,
                         "hovertemplate": "%{y:.4g}<br>run %{customdata[1]}<extra>%{customdata[0]}</extra>"})
        if box_x:
            data.append({"type": "box", "name": f"runs (box; conditions with over {MAX_DOTS_PER_CONDITION} runs)",
                         "legendgroup": "box", "showlegend": k == 0, "x": box_x, "y": box_y, "width": 0.2,
                         "boxpoints": False, "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
                         "marker": {"color": colour(7)}, "line": {"color": colour(7), "width": 1.2}})
        stats = [summaries.get(c, {}).get(metric, {}) for c in conditions]
        data.append({
            "type": "scatter", "mode": "markers", "name": "mean ± 95% CI (t)", "legendgroup": "mean",
            "showlegend": k == 0, "x": [i + 0.12 for i in range(len(conditions))],
            "y": [r6(s.get("mean")) for s in stats], "xaxis": f"x{suffix}", "yaxis": f"y{suffix}",
            "marker": {"color": colour(0), "size": 10, "symbol": "diamond"},
            "error_y": {"type": "data", "symmetric": False, "color": colour(0), "thickness": 2, "width": 6,
                        "array": [_gap(s.get("ci_high"), s.get("mean")) for s in stats],
                        "arrayminus": [_gap(s.get("mean"), s.get("ci_low")) for s in stats]},
            "customdata": [[s.get("n", 0), r6(s.get("ci_low")), r6(s.get("ci_high")), label]
                           for s, label in zip(stats, labels, strict=True)],
            "hovertemplate": ("mean %{y:.4g}, 95% CI %{customdata[1]:.4g} – %{customdata[2]:.4g}, "
                              "n=%{customdata[0]}<extra>%{customdata[3]}</extra>")})
        layout[f"xaxis{suffix}"] = {**layout["xaxis"], "title": {"text": ""}, "tickmode": "array",
                                    "tickvals": list(range(len(conditions))), "ticktext": labels,
                                    "range": [-0.5, len(conditions) - 0.5], "showgrid": False}
        layout[f"yaxis{suffix}"] = {**layout["yaxis"], "title": {"text": axis_title}}
    return {"data": data, "layout": layout}


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else r6(a - b)


def series_figure(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A figure from the generic series spec that pending sections receive (see the package docstring).

    ``series[i]``: name, x, y, optional y_low/y_high (a band for lines, error bars for markers),
    mode ("lines" | "markers" | "lines+markers", default "lines+markers") or kind "bar".
    """
    data: list[dict[str, Any]] = []
    for i, series in enumerate(spec.get("series", ())):
        name, y = series.get("name", f"series {i + 1}"), list(series["y"])
        x = [plot_text(v) if isinstance(v, str) else v for v in series["x"]]
        low, high = series.get("y_low"), series.get("y_high")
        mode = series.get("mode", "lines+markers")
        if series.get("kind") == "bar":
            trace: dict[str, Any] = {"type": "bar", "name": plot_text(name), "x": x, "y": [r6(v) for v in y],
                                     "marker": {"color": colour(i)}}
            if low is not None and high is not None:
                trace["error_y"] = _error_bars(y, low, high)
            data.append(trace)
        elif low is not None and high is not None and "lines" in mode:
            data.extend(band_traces(name, i, x, y, low, high, series.get("band_label", "band")))
        else:
            trace = {"type": "scatter", "mode": mode, "name": plot_text(name), "x": x, "y": [r6(v) for v in y],
                     "line": {"color": colour(i)}, "marker": {"color": colour(i), "size": 7}}
            if low is not None and high is not None:
                trace["error_y"] = _error_bars(y, low, high)
            data.append(trace)
    layout = base_layout(spec.get("title", ""), spec.get("x_label", ""), spec.get("y_label", ""))
    if spec.get("x_log"):
        layout["xaxis"]["type"] = "log"
    if spec.get("y_log"):
        layout["yaxis"]["type"] = "log"
    return {"data": data, "layout": layout}


def _error_bars(y: Sequence[Any], low: Sequence[Any], high: Sequence[Any]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "thickness": 1.5, "width": 5,
            "array": [_gap(h, v) for v, h in zip(y, high, strict=True)],
            "arrayminus": [_gap(v, lo) for v, lo in zip(y, low, strict=True)]}

"""The HTML report: one self-contained file (works offline, opened from disk) and the live view.

    from wattscale.report import write_report
    result = write_report("study.db", "report.html", experiment="dynamics_4m-smoke")   # ReportResult

or ``wattscale report [--experiment NAME] [--run RUN_ID] -o report.html``. The page inlines
plotly.js once (from the ``plotly`` package) and embeds every figure as JSON, so it makes no
network request; a Content-Security-Policy forbids any. Every user string (run, experiment and
condition names, notes, data paths) is escaped for where it lands (see ``report.html``).

Sections
--------
A section is a function returning ``Section(id, title, html, figures, pending)``: ``html`` is an
escaped fragment (build it with ``report.html``: ``table``, ``paragraph``, ``definition_list``,
``figure_slot``), ``figures`` maps the ids of the fragment's figure slots to Plotly JSON
(``{"data": [...], "layout": {...}}``). ``build.default_sections`` lists them in order; ``build.render``
numbers them and writes the page.

Built in: ``design_section(data)``, ``runs_section(data)``, ``loss_section(data)``,
``power_section(data)`` read ``ReportData`` (``data.gather``); ``efficiency_section(summary)``
takes the dict ``efficiency_summary(data)`` returns::

    {"conditions": [label, ...], "metrics": ["energy_j", "wall_seconds", "tokens_per_joule"],
     "confidence": 0.95, "method": "one line saying how the interval was computed",
     "summaries": {label: {metric: {"n", "mean", "sd", "ci_low", "ci_high"}}},
     "runs": {label: [{"run_id", metric: value, ...}]}, "energy_sources": {label: ["estimated", ...]}}

Pending, to be filled from ``wattscale.analysis``: ``statistics_section(content)``,
``dynamics_section(content)``, ``laws_section(content)`` — each shows "Section pending" for
``content=None`` and otherwise renders a generic JSON-ready content dict (every key optional)::

    {"intro": "a paragraph",
     "sentences": ["F(2, 98) = 77.32, p < .001, eta2_G = .53", ...],       # e.g. APA sentences
     "tables": [{"title": str, "columns": [str, ...], "rows": [[str | int | float | None, ...]],
                 "note": str}],
     "figures": [{"title": str, "x_label": str, "y_label": str, "x_log": bool, "y_log": bool,
                  "caption": str,
                  "series": [{"name": str, "x": [...], "y": [...],
                              "y_low": [...], "y_high": [...],     # optional: band (lines) or error bars
                              "band_label": "95% CI",              # named in the hover
                              "mode": "lines" | "markers" | "lines+markers", "kind": "bar" (optional)}]}],
     "notes": ["a footnote", ...]}

Pass them to ``build_report``/``write_report`` as ``statistics=``, ``dynamics=``, ``laws=``.
Numbers may be NaN/inf (drawn as gaps, shown as "–"); strings are escaped by the renderer.

Figures: Plotly (hover values, click a legend entry to hide a series, double-click to isolate it;
the toolbar's camera saves a PNG at 2x, the disk button an SVG). Power traces are thinned for
display only (min/max per bucket, ``summary.minmax_downsample``); the store is never changed.
"""

from wattscale.report.build import ReportResult, build_report, default_sections, render, write_report
from wattscale.report.data import ReportData, gather
from wattscale.report.sections import (
    Section,
    content_section,
    dynamics_section,
    efficiency_section,
    efficiency_summary,
    laws_section,
    statistics_section,
)

__all__ = [
    "ReportData", "ReportResult", "Section", "build_report", "content_section", "default_sections",
    "dynamics_section", "efficiency_section", "efficiency_summary", "gather", "laws_section", "render",
    "statistics_section", "write_report",
]

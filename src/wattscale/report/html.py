"""HTML building blocks for the report: escaping, tables, figure slots, and the page itself.

Every string that reaches the page passes through one of three doors, chosen by where it lands:

- ``text(s)`` / ``attr(s)``: HTML text and quoted attribute values (``html.escape``, quotes too);
- ``plot_text(s)``: labels inside a Plotly figure (trace names, titles, hover text). Plotly renders
  a small subset of HTML in labels and turns ``&lt;`` back into ``<`` when it draws, so escaping
  ``& < >`` makes a label show exactly the user's characters;
- ``script_json(obj)``: data embedded in ``<script type="application/json">``; ``< > &`` and
  U+2028/U+2029 become ``\\uXXXX`` escapes, so no string can close the script element. The page's
  JavaScript is a static file that reads this data with ``JSON.parse``; no script is ever built
  by concatenating data.

On top of escaping, the page carries a Content-Security-Policy that allows only its own inline
scripts (by SHA-256 hash), no network fetches of any kind, and images only from data:/blob: URLs
(what Plotly's PNG/SVG export uses).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache, lru_cache
from importlib import resources
from typing import Any

Cell = str | int | float | bool | None


def text(value: object) -> str:
    """Escape a value for HTML text or a double-quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


attr = text


def plot_text(value: object) -> str:
    """Escape a value for a Plotly label: Plotly draws ``&lt;`` as ``<``, so the user's text shows as typed."""
    return html.escape("" if value is None else str(value), quote=False)


_JSON_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                                "\u2028": "\\u2028", "\u2029": "\\u2029"})


def script_json(data: Any) -> str:
    """JSON safe to place inside a ``<script>`` element: non-finite floats become null, ``<>&`` are escaped."""
    encoded = json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    return encoded.translate(_JSON_ESCAPES)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def fmt(value: Cell, digits: int = 4) -> str:
    """A cell's display text: thousands separators, 4 significant digits for floats (all digits from 1,000 up,
    exponent beyond 1e9 or below 1e-3), '–' for None."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if 10 ** (digits - 1) <= abs(value) < 1e9:
            return f"{value:,.0f}"  # 12,346 rather than 1.235e+04
        return f"{value:,.{digits}g}" if 1e-3 <= abs(value) or value == 0 else f"{value:.{digits - 1}e}"
    return str(value)


def table(columns: Sequence[str], rows: Iterable[Sequence[Cell]], *, table_id: str | None = None,
          sortable: bool = False, numeric: Sequence[bool] | None = None) -> str:
    """An HTML table of escaped cells. Sortable tables carry each number in ``data-v`` for the sorter."""
    numeric = list(numeric) if numeric is not None else [False] * len(columns)
    ident = f' id="{attr(table_id)}"' if table_id else ""
    klass = ' class="sortable"' if sortable else ""
    head = "".join(f'<th{" class=num" if num else ""} scope="col">{text(c)}</th>'
                   for c, num in zip(columns, numeric, strict=True))
    body = []
    for row in rows:
        cells = []
        for value, num in zip(row, numeric, strict=True):
            if num and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                cells.append(f'<td class="num" data-v="{value!r}">{text(fmt(value))}</td>')
            else:
                cells.append(f'<td{" class=num" if num else ""}>{text(fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table{ident}{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def definition_list(items: Iterable[tuple[str, Cell]]) -> str:
    """A ``<dl>`` of escaped label/value pairs."""
    return "<dl>" + "".join(f"<dt>{text(k)}</dt><dd>{text(fmt(v))}</dd>" for k, v in items) + "</dl>"


def paragraph(content: str) -> str:
    """An escaped paragraph."""
    return f"<p>{text(content)}</p>"


def figure_slot(figure_id: str, caption: str) -> str:
    """Where a figure goes: report.js draws the figure with this id into the div."""
    return (f'<figure><div class="plot" id="{attr(figure_id)}" data-figure="{attr(figure_id)}"></div>'
            f"<figcaption>{text(caption)}</figcaption></figure>")


@cache
def _asset(name: str) -> str:
    return resources.files("wattscale.report").joinpath("assets", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def plotly_js() -> str:
    """The plotly.js bundle shipped with the ``plotly`` package (inlined once, so the page works offline)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _sha256_source(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def page(title: str, sections_html: Sequence[str], nav: Sequence[tuple[str, str]], figures: Mapping[str, Any],
         subtitle: str) -> str:
    """The whole self-contained page: CSS, plotly.js, the figure data and the sections."""
    plotly = plotly_js()
    app = _asset("report.js")
    # </script> inside a script body would end it early; plotly.js and report.js never contain it.
    for name, source in (("plotly.js", plotly), ("report.js", app)):
        if "</script" in source.lower():
            raise RuntimeError(f"{name} contains '</script'; it cannot be inlined")
    csp = ("default-src 'none'; "
           f"script-src {_sha256_source(plotly)} {_sha256_source(app)}; "
           "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; "
           "base-uri 'none'; form-action 'none'")
    links = "".join(f'<a href="#{attr(anchor)}">{text(label)}</a>' for anchor, label in nav)
    return "".join((
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{attr(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="wattscale">',
        f"<title>{text(title)}</title><style>{_asset('report.css')}</style></head>\n<body>",
        f"<header><h1>{text(title)}</h1><p class=\"sub\">{text(subtitle)}</p><nav>{links}</nav></header>\n<main>",
        "\n".join(sections_html),
        "</main>\n",
        f'<script type="application/json" id="wattscale-figures">{script_json(figures)}</script>\n',
        f"<script>{plotly}</script>\n<script>{app}</script>\n</body></html>\n",
    ))

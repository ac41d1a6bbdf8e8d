/* wattscale report: draws the figures embedded as JSON, makes tables sortable and the runs table
   filterable. Static code: all data comes from JSON.parse of the #wattscale-figures element and
   from the page's escaped text; nothing here is generated from data. */
(function () {
  "use strict";

  function plotConfig(id) {
    return {
      responsive: true,
      displaylogo: false,
      // The camera button downloads a PNG at 2x for slides; the disk button an SVG for papers.
      toImageButtonOptions: { format: "png", filename: id, scale: 2 },
      modeBarButtonsToAdd: [{
        name: "downloadSvg",
        title: "Download plot as SVG",
        icon: Plotly.Icons.disk,
        click: function (gd) { Plotly.downloadImage(gd, { format: "svg", filename: id }); }
      }]
    };
  }

  function drawFigures() {
    var source = document.getElementById("wattscale-figures");
    var figures = source ? JSON.parse(source.textContent) : {};
    var drawing = [];
    Object.keys(figures).forEach(function (id) {
      var el = document.getElementById(id);
      if (!el) { return; }
      var fig = figures[id];
      drawing.push(Plotly.newPlot(el, fig.data, fig.layout, plotConfig(id)));
    });
    Promise.all(drawing).then(function () {
      document.body.setAttribute("data-figures-ready", String(drawing.length));
    }, function (err) {
      document.body.setAttribute("data-figures-ready", "error");
      console.error("wattscale report: a figure failed to draw:", err);
    });
  }

  function cellKey(row, index, numeric) {
    var cell = row.cells[index];
    if (!cell) { return numeric ? null : ""; }
    if (numeric) {
      var v = cell.getAttribute("data-v");
      return v === null ? null : parseFloat(v);
    }
    return cell.textContent;
  }

  function sortBy(tableEl, th, index) {
    var numeric = th.classList.contains("num");
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    Array.prototype.forEach.call(tableEl.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = tableEl.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, index, numeric), y = cellKey(b, index, numeric);
      if (x === null || y === null) { return (x === null) - (y === null); }  // missing values last
      var order = numeric ? x - y : x.localeCompare(y, undefined, { numeric: true });
      return ascending ? order : -order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function makeSortable() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (tableEl) {
      Array.prototype.forEach.call(tableEl.tHead.rows[0].cells, function (th, index) {
        th.tabIndex = 0;
        th.title = "sort";
        th.addEventListener("click", function () { sortBy(tableEl, th, index); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(tableEl, th, index); }
        });
      });
    });
  }

  function makeFilter() {
    var input = document.getElementById("runs-filter");
    var tableEl = document.getElementById("runs-table");
    var count = document.getElementById("runs-count");
    if (!input || !tableEl) { return; }
    var rows = tableEl.tBodies[0].rows;
    function apply() {
      var query = input.value.trim().toLowerCase();
      var shown = 0;
      Array.prototype.forEach.call(rows, function (r) {
        var match = !query || r.textContent.toLowerCase().indexOf(query) !== -1;
        r.hidden = !match;
        shown += match ? 1 : 0;
      });
      if (count) { count.textContent = shown + " of " + rows.length + " runs"; }
    }
    input.addEventListener("input", apply);
    apply();
  }

  makeSortable();
  makeFilter();
  drawFigures();
})();

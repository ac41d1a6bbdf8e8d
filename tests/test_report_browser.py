"""The report in a real headless browser (Debian's chromium through Playwright).

Loads with no console errors and no network requests, draws its figures, shows injected strings
as text without running them, sorts and filters the runs table, exports SVG, and leaves a
screenshot in $WATTSCALE_TEST_ARTIFACTS (else the test's tmp folder). Without chromium these
tests skip locally and fail under CI=true (.ci/chromium.sh installs it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from report_helpers import (
    BROWSER_ARGS,
    IN_CI,
    XSS_PAYLOADS,
    XSS_RUN_NAME,
    artifacts_dir,
    chromium_path,
    embedded_figures,
    real_study_store,
    xss_store,
)
from wattscale.report import write_report
from wattscale.store import open_store

MAIN_FIGURES = ("fig-loss", "fig-power", "fig-interval-energy", "fig-efficiency", "fig-dynamics-5")
LOAD_TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("CI=true but playwright is not installed (it is in the test extra)", pytrace=False)
        pytest.skip("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield instance
        finally:
            instance.close()


class Page:
    """A page that records console errors, uncaught exceptions, requests and dialogs while it loads."""

    def __init__(self, browser: Any, path: Path) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-figures-ready]", state="attached", timeout=LOAD_TIMEOUT_MS)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def foreign_requests(self) -> list[str]:
        # data:/blob: URLs are the page's own figure exports, not network traffic.
        return [u for u in self.requests if u != self.url and not u.startswith(("data:", "blob:"))]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def study_report(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    db = real_study_store(tmp_path_factory, cache_dir)
    out = tmp_path_factory.mktemp("browser_report") / "report.html"
    with open_store(db) as store:
        named = next(r for r in store.list_runs() if r["name"] == XSS_RUN_NAME)
    write_report(db, out, run_id=named["run_id"])  # all runs; the power figure shows the named run
    return out


def test_report_loads_offline_draws_its_figures_and_shows_a_script_name_as_text(
        browser: Any, study_report: Path, tmp_path: Path) -> None:
    page = Page(browser, study_report)
    try:
        assert page.errors == []
        assert page.foreign_requests() == []
        assert page.dialogs == []
        every_figure = embedded_figures(study_report.read_text(encoding="utf-8"))
        assert set(MAIN_FIGURES) <= set(every_figure)
        assert page.page.get_attribute("body", "data-figures-ready") == str(len(every_figure))
        for figure_id in MAIN_FIGURES:
            drawn = page.page.eval_on_selector(
                f"#{figure_id}", "el => el.querySelectorAll('.main-svg .trace path, .main-svg .trace .point').length")
            assert drawn > 0, figure_id
        runs_text = page.page.inner_text("#runs-table")
        assert XSS_RUN_NAME in runs_text
        assert page.page.eval_on_selector_all("#runs-table script", "els => els.length") == 0
        title = page.page.text_content("#fig-power .gtitle")
        assert title is not None and XSS_RUN_NAME in title  # Plotly draws the escaped name as text
        shot = artifacts_dir(tmp_path / "artifacts") / "report.png"
        page.page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


def test_escaping_alone_keeps_injected_strings_inert(browser: Any, tmp_path: Path) -> None:
    """With the page's Content-Security-Policy removed, no injected markup runs: escaping is what protects it."""
    db = xss_store(tmp_path)
    result = write_report(db, tmp_path / "xss.html", experiment=XSS_PAYLOADS["experiment"])
    html = result.path.read_text(encoding="utf-8")
    without_csp, count = re.subn(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    assert count == 1
    (tmp_path / "xss_no_csp.html").write_text(without_csp, encoding="utf-8")
    for name in ("xss.html", "xss_no_csp.html"):
        page = Page(browser, tmp_path / name)
        try:
            assert page.errors == [] and page.dialogs == [] and page.foreign_requests() == []
            assert page.page.evaluate("typeof window.__xss") == "undefined"
            body = page.page.inner_text("body")
            for key in ("experiment", "run_name", "condition", "data_source"):
                assert XSS_PAYLOADS[key] in body, key
            legend = page.page.eval_on_selector_all("#fig-loss .legendtext", "els => els.map(e => e.textContent)")
            assert XSS_PAYLOADS["condition"] in legend
        finally:
            page.close()


def test_runs_table_sorts_and_filters_and_figures_export_svg(browser: Any, study_report: Path) -> None:
    page = Page(browser, study_report)
    try:
        header = page.page.locator("#runs-table th", has_text="final val loss")
        column = page.page.eval_on_selector_all("#runs-table th", "hs => hs.map(h => h.textContent)").index(
            "final val loss")

        def losses() -> list[float]:
            cells = page.page.eval_on_selector_all(
                f"#runs-table tbody tr td:nth-child({column + 1})", "tds => tds.map(td => td.getAttribute('data-v'))")
            return [float(v) for v in cells]

        header.click()
        assert losses() == sorted(losses())
        header.click()
        assert losses() == sorted(losses(), reverse=True)
        page.page.fill("#runs-filter", "data_tokens=4096")
        assert page.page.inner_text("#runs-count") == "2 of 5 runs"
        page.page.hover("#fig-loss")
        with page.page.expect_download() as download_info:
            page.page.click('#fig-loss .modebar-btn[data-title="Download plot as SVG"]')
        download = download_info.value
        assert download.suggested_filename == "fig-loss.svg"
        svg = Path(download.path()).read_text(encoding="utf-8")
        assert svg.startswith("<svg") and "data_tokens=2048" in svg
        assert page.errors == [] and page.foreign_requests() == []
    finally:
        page.close()


SCREENSHOT_MAX_BYTES = 300_000
SCREENSHOT_SECTION = "efficiency"
README_SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "assets" / "report.png"


def test_first_screen_screenshot_for_the_readme(browser: Any, tmp_path_factory: pytest.TempPathFactory,
                                                 cache_dir: Path, tmp_path: Path) -> None:
    """The report's first screen of an experiment, as the README and the docs show it (docs/assets/report.png).

    With WATTSCALE_UPDATE_SCREENSHOT=1 the PNG replaces docs/assets/report.png; it must stay under 300 KB.
    WATTSCALE_SCREENSHOT_REPORT=PATH shoots that report instead of the test's tiny study: the committed PNG is
    the quickstart's (`wattscale quickstart`, then PATH=quickstart/report.html; see CONTRIBUTING.md).
    """
    given = os.environ.get("WATTSCALE_SCREENSHOT_REPORT")
    if given:
        out = Path(given)
    else:
        db = real_study_store(tmp_path_factory, cache_dir)
        out = tmp_path / "report.html"
        write_report(db, out, experiment="report-study")  # the study of report_helpers.TINY_STUDY
    page = Page(browser, out)
    try:
        assert page.errors == []
        page.page.set_viewport_size({"width": 1280, "height": 800})
        # The energy and efficiency section: what wattscale is about, with every condition's mean and interval.
        page.page.evaluate(f"document.getElementById({SCREENSHOT_SECTION!r}).scrollIntoView()")
        shot = artifacts_dir(tmp_path / "artifacts") / "report-first-screen.png"
        page.page.screenshot(path=str(shot), full_page=False)
    finally:
        page.close()
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 10_000 < len(data) < SCREENSHOT_MAX_BYTES, f"{len(data):,} bytes; the README's screenshot must be < 300 KB"
    if os.environ.get("WATTSCALE_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        README_SCREENSHOT.write_bytes(data)
    if README_SCREENSHOT.exists():
        assert README_SCREENSHOT.stat().st_size < SCREENSHOT_MAX_BYTES, "docs/assets/report.png must be < 300 KB"

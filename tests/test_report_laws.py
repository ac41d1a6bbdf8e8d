"""The report's scaling-law section on a store whose runs follow a known three-term law."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from law_fixtures import TRUTH, write_law_store
from report_helpers import embedded_figures
from wattscale.report import build_report
from wattscale.report.laws_content import choose_form, laws_content
from wattscale.store import open_store


@pytest.fixture(scope="module")
def law_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_law_store(tmp_path_factory.mktemp("report_laws") / "laws.db")


def test_three_term_law_with_batch_band_and_energy_frontier(law_db: Path) -> None:
    with open_store(law_db) as store:
        content = laws_content(store, "laws", n_boot=20)
    assert content["intro"].startswith("three-term law") and "20 bootstrap replicates" in content["intro"]
    params = {row[0]: row[1] for row in content["tables"][0]["rows"]}
    for name in ("alpha", "beta", "gamma"):  # the known exponents, recovered from 0.2%-noise data
        assert params[name] == pytest.approx(TRUTH[name], abs=0.03), name
    titles = [t["title"] for t in content["tables"]]
    assert "Optimal batch size M*(D) and the near-optimal band" in titles and "Energy-optimal plans" in titles
    batch = next(t for t in content["tables"] if t["title"].startswith("Optimal batch size"))
    exponent = float(batch["note"].split("D^")[1].split()[0])  # M*(D) = k D^(gamma / (beta + gamma))
    assert exponent == pytest.approx(TRUTH["gamma"] / (TRUTH["beta"] + TRUTH["gamma"]), abs=0.03)
    figures = [f["title"] for f in content["figures"]]
    assert figures == ["Fitted against observed loss",
                       "Optimal batch size M*(D) with its 95% CI and the near-optimal band",
                       "Energy-optimal frontier: lowest predicted loss per energy budget"]
    frontier = content["figures"][2]["series"][0]
    assert frontier["y"] == sorted(frontier["y"], reverse=True)  # more energy never predicts a higher loss
    assert all(lo <= y <= hi for lo, y, hi in zip(frontier["y_low"], frontier["y"], frontier["y_high"], strict=True))


def test_report_draws_the_law_section_and_says_when_no_law_can_be_fitted(law_db: Path, tmp_path: Path) -> None:
    with open_store(law_db) as store:
        html, _, sections = build_report(store, "laws")
    assert [s.id for s in sections if s.pending] == []
    assert {"fig-laws-1", "fig-laws-2", "fig-laws-3"} <= set(embedded_figures(html))
    one_size = SimpleNamespace(params=np.array([1e7, 1e7]), tokens=np.array([1e9, 2e9]), batch_tokens=None,
                               steps=None)
    form, why = choose_form(one_size)  # one model size: no law, and the section says why
    assert form is None and "1 model size(s)" in why

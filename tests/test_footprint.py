"""Carbon and cost: PUE, constant and time-series intensity, price, and where the settings come from."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

import pytest

from wattscale.errors import ConfigError
from wattscale.footprint import (
    FootprintSettings,
    add_footprint_flags,
    footprint_of,
    load_intensity_csv,
    resolve_footprint,
)

KWH = 3.6e6


def _csv(tmp_path, text: str):
    path = tmp_path / "grid.csv"
    path.write_text(text)
    return path


def test_constant_intensity_pue_and_price():
    settings = FootprintSettings(carbon_intensity_g_per_kwh=400, price_per_kwh=0.25, currency="EUR", pue=1.5)
    result = footprint_of(2 * KWH, settings, energy_source="counter")
    assert result.facility_energy_j == pytest.approx(3 * KWH)
    assert result.co2e_g == pytest.approx(1200)
    assert result.cost == pytest.approx(0.75) and result.currency == "EUR"
    assert result.inputs == "PUE 1.50; 400 gCO2e/kWh (constant); 0.25 EUR/kWh"
    assert result.carbon_basis == "400 gCO2e/kWh (constant)"


def test_nothing_given_gives_device_energy_only():
    result = footprint_of(KWH, FootprintSettings())
    assert (result.facility_energy_j, result.co2e_g, result.cost, result.currency) == (KWH, None, None, None)
    assert not FootprintSettings().configured


def test_series_is_time_weighted_over_the_run(tmp_path):
    path = _csv(tmp_path, "timestamp,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T01:00:00Z,300\n"
                          "2026-01-01T02:00:00Z,500\n")
    settings = FootprintSettings(carbon_intensity_csv=str(path))
    start = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    end = datetime(2026, 1, 1, 1, 30, tzinfo=UTC)  # half an hour at 100, half at 300
    result = footprint_of(KWH, settings, start=start, end=end)
    assert result.co2e_g == pytest.approx(200)
    assert "time-weighted mean over the run" in result.carbon_basis
    planned = footprint_of(KWH, settings)  # no times: the whole series' mean (the last value holds one step)
    assert planned.co2e_g == pytest.approx(300) and "whole series" in planned.carbon_basis


def test_run_outside_the_series_has_no_co2e_and_says_why(tmp_path):
    path = _csv(tmp_path, "time,intensity\n2026-01-01 00:00,100\n2026-01-01 01:00,300\n")
    result = footprint_of(KWH, FootprintSettings(carbon_intensity_csv=str(path)),
                          start=datetime(2026, 2, 1, tzinfo=UTC), end=datetime(2026, 2, 1, 1, tzinfo=UTC))
    assert result.co2e_g is None and "not the run" in result.carbon_basis


@pytest.mark.parametrize(("text", "message"), [
    ("when,value\n2026-01-01,1\n", "needs a time column"),
    ("timestamp,g_per_kwh\nyesterday,1\n", "line 2: expected an ISO 8601 time"),
    ("timestamp,g_per_kwh\n2026-01-01,-5\n", "not a finite number >= 0"),
    ("timestamp,g_per_kwh\n", "has no rows"),
    ("timestamp,g_per_kwh\n2026-01-01,1\n2026-01-01,2\n", "repeats a timestamp"),
])
def test_bad_csv_is_one_line_naming_the_setting(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_intensity_csv(_csv(tmp_path, text))
    assert str(caught.value).startswith("footprint.carbon_intensity_csv") and "\n" not in str(caught.value)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pue": 0.9}, "footprint.pue"),
    ({"pue": 120}, "footprint.pue"),
    ({"price_per_kwh": 0.3}, "footprint.currency"),
    ({"carbon_intensity_g_per_kwh": -1}, "footprint.carbon_intensity_g_per_kwh"),
    ({"carbon_intensity_g_per_kwh": 1, "carbon_intensity_csv": "x.csv"}, "not both"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        FootprintSettings(**kwargs)


def test_flags_beat_environment_beat_file(tmp_path):
    parser = argparse.ArgumentParser()
    add_footprint_flags(parser)
    file_settings = {"carbon_intensity_g_per_kwh": 50, "pue": 1.1, "price_per_kwh": 0.1, "currency": "USD"}
    environ = {"WATTSCALE_CARBON_INTENSITY": "200", "WATTSCALE_CURRENCY": "EUR"}
    settings = resolve_footprint(parser.parse_args(["--pue", "1.3"]), file_settings, environ)
    assert settings == FootprintSettings(carbon_intensity_g_per_kwh=200, pue=1.3, price_per_kwh=0.1, currency="EUR")
    csv_path = str(_csv(tmp_path, "timestamp,g_per_kwh\n2026-01-01,1\n"))
    settings = resolve_footprint(parser.parse_args(["--carbon-intensity", csv_path]), file_settings, environ)
    assert settings.carbon_intensity_csv == csv_path and settings.carbon_intensity_g_per_kwh is None
    with pytest.raises(ConfigError, match="footprint.carbon_intensity_kg: unknown key"):
        resolve_footprint(None, {"carbon_intensity_kg": 1}, {})
    with pytest.raises(ConfigError, match=r"\$WATTSCALE_PUE: 'high' is not a number"):
        resolve_footprint(None, None, {"WATTSCALE_PUE": "high"})


def test_a_stored_run_uses_its_window_and_its_own_recorded_intensity_last():
    from wattscale.footprint import run_footprint, run_window

    record = {"energy_j": KWH, "energy_source": "integrated", "started_at": "2026-01-01T00:00:00+00:00",
              "finished_at": None, "wall_seconds": 1800.0, "config_json": '{"meter": {"grid_gco2e_per_kwh": 250}}'}
    # A run still going (no finished_at) ends at started_at + wall_seconds.
    assert run_window(record) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    own = run_footprint(record, FootprintSettings(pue=1.2))
    assert own.co2e_g == pytest.approx(1.2 * 250) and own.energy_source == "integrated"
    assert own.carbon_basis == "250 gCO2e/kWh (constant; the run's meter.grid_gco2e_per_kwh)"
    given = run_footprint(record, FootprintSettings(carbon_intensity_g_per_kwh=100))
    assert given.co2e_g == pytest.approx(100) and given.carbon_basis == "100 gCO2e/kWh (constant)"
    assert run_footprint({**record, "energy_j": None}, FootprintSettings()) is None
    assert run_footprint(record, FootprintSettings(), energy_j=KWH / 2).co2e_g == pytest.approx(125)


def test_the_summary_line_states_the_inputs_once_for_many_runs_of_a_series(tmp_path):
    from wattscale.footprint import summary_line

    path = _csv(tmp_path, "timestamp,g_per_kwh\n2026-01-01T00:00:00Z,100\n2026-01-01T01:00:00Z,300\n")
    settings = FootprintSettings(carbon_intensity_csv=str(path))
    prints = [footprint_of(KWH, settings, start=datetime(2026, 1, 1, 0, m, tzinfo=UTC),
                           end=datetime(2026, 1, 1, 1, m, tzinfo=UTC)).as_dict() for m in (0, 10, 20, 30, 40)]
    prints.append(footprint_of(KWH, settings, start=datetime(2026, 3, 1, tzinfo=UTC),
                               end=datetime(2026, 3, 1, 1, tzinfo=UTC)).as_dict())
    assert len({p["carbon_basis"] for p in prints}) == 6  # each run its own mean, one outside the series
    assert summary_line([*prints, None], "each run's job energy") == (
        f"CO2e and cost: each run's job energy x PUE; inputs: PUE 1.00; gCO2e/kWh from {path}; no price; carbon "
        f"basis: {path} covers 2026-01-01 00:00 to 2026-01-01 02:00 UTC (a run outside it has no CO2e) | {path}: "
        "time-weighted mean over the run")

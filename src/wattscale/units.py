"""Unit conversions, each defined once: multiply by a ``X_PER_Y`` constant to turn Y into X.

Plain numbers (no imports), so any module can use them: ``energy_kwh = energy_j / JOULES_PER_KWH``.
"""

from __future__ import annotations

JOULES_PER_KWH = 3.6e6  # 1 kWh = 1,000 W x 3,600 s
SECONDS_PER_HOUR = 3600.0
BYTES_PER_MB = 1_000_000  # decimal megabytes, as in data.synthetic_mb and the sizes printed

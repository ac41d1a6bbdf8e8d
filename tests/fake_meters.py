"""A fake constant-power meter with an energy counter, shared by the integration and tracker tests."""

from __future__ import annotations

import time

from wattscale.energy.meter import PowerReading


class ConstantMeter:
    """`watts` on one GPU with an energy counter: every interval's energy is watts x its seconds."""

    name, energy_source, devices = "nvml", "counter", ("gpu0",)

    def __init__(self, watts: float = 100.0) -> None:
        self.watts, self.t0 = watts, time.monotonic()

    def read(self) -> PowerReading:
        now = time.monotonic()
        return PowerReading(now, {"gpu0": self.watts}, {"gpu0": self.watts * (now - self.t0)})

    def describe(self) -> dict:
        return {"kind": "nvml", "devices": ["gpu0"]}

    def close(self) -> None:
        pass

"""GPU power limit and SM clock as experiment factors: set through NVML for a run, restored on every exit.

```toml
[gpu]
power_limit_w = 300      # nvmlDeviceSetPowerManagementLimit (needs root)
sm_clock_mhz = 1410      # nvmlDeviceSetGpuLockedClocks(min = max = 1410) (needs root)
```

Both are part of a run's id when set (they change what a run measures) and leave every other run's id
as it was when absent. An experiment file varies them like any other setting
(``"gpu.power_limit_w" = [200, 300, 400]``).

`GpuControl` is a context manager for the GPUs one process uses (under torchrun each rank its own local
GPU): on entry it checks the request against what NVML says the device allows, reads the current values,
sets the requested ones and reads back what NVML enforces; on exit it puts back the power limit it found
and resets the locked clocks (``nvmlDeviceResetGpuLockedClocks``). The restore runs exactly once, on a
normal end, an exception, Ctrl-C, or SIGTERM: a handler restores, then calls the handler that was there
before (wattscale's CLI turns SIGTERM into an interrupt), or ends the process as SIGTERM would.
`GpuControl.record()` says what was requested, found, set and restored, for the run's stored config.

NVML cannot read back whether clocks were locked before, so the restore resets them to the driver's
default (unlocked), as ``nvidia-smi --reset-gpu-clocks`` does.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType, ModuleType
from typing import Any

from wattscale.errors import ConfigError
from wattscale.identity import identity_field

NEEDS_ROOT = "{field}: {what} needs root (NVML: no permission); run as root or remove the setting"
_WHAT = {"power_limit_w": "changing the power limit", "sm_clock_mhz": "locking the SM clock"}


@dataclass(frozen=True)
class GpuConfig:
    """GPU settings a run applies while it trains (the [gpu] table); a key left out leaves the GPU as it is."""

    power_limit_w: float | None = identity_field(None, since=None)  # board power limit in W (needs root)
    sm_clock_mhz: int | None = identity_field(None, since=None)  # SM clock locked at this MHz (needs root)

    def __post_init__(self) -> None:
        p = self.power_limit_w
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
                raise ConfigError(f"gpu.power_limit_w: {p!r} must be a positive number of watts; omit it to keep "
                                  "the GPU's own limit")
            object.__setattr__(self, "power_limit_w", float(p))  # 300 and 300.0 must hash to the same run id
        c = self.sm_clock_mhz
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c <= 0):
            raise ConfigError(f"gpu.sm_clock_mhz: {c!r} must be a positive whole number of MHz; omit it to leave "
                              "the clocks unlocked")

    @property
    def active(self) -> bool:
        """Whether the run changes anything on its GPUs."""
        return self.power_limit_w is not None or self.sm_clock_mhz is not None

    def settings(self) -> dict[str, Any]:
        """The requested values that are set, as JSON-ready data."""
        return {k: v for k, v in (("power_limit_w", self.power_limit_w), ("sm_clock_mhz", self.sm_clock_mhz))
                if v is not None}

    def first_field(self) -> str:
        """`gpu.<name>` of the first setting given (for messages about the whole table)."""
        return "gpu." + next(iter(self.settings()), "power_limit_w")


def static_problems(gpu: GpuConfig, device: str) -> list[str]:
    """Problems known from the settings alone: a GPU setting on a run that asks for the CPU."""
    if gpu.active and device == "cpu":
        return [f"{gpu.first_field()}: needs a CUDA device, but train.device is 'cpu'; set train.device to cuda "
                "(--device cuda) or remove the setting"]
    return []


@dataclass
class _Gpu:
    """One controlled GPU: its handle and what was found, set and restored (W and MHz)."""

    uuid: str
    name: str
    handle: Any
    before: dict[str, Any]
    after: dict[str, Any] | None = None
    restored: dict[str, Any] | None = None
    power_set: bool = False
    clocks_locked: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name": self.name, "before": self.before, "after": self.after,
                "restored": self.restored}


class GpuControl:
    """Apply `settings` to the GPUs with these NVML `uuids` while the context is open (see the module docstring).

    ``nvml`` is the pynvml module (default: imported; tests pass a fake). Refusals are ConfigErrors naming
    the setting: a value outside the device's range, a GPU that does not support it, missing permission.
    Nothing is left changed when one is raised. Inactive settings make this a no-op.
    """

    def __init__(self, settings: GpuConfig, uuids: Sequence[str], nvml: ModuleType | None = None) -> None:
        self.settings = settings
        self._uuids = tuple(uuids)
        self._nvml = nvml
        self._gpus: list[_Gpu] = []
        self._state = "new"  # new -> applied -> restored
        self._started_at: str | None = None
        self._previous_handler: Any = None
        self._handler_installed = False
        self._nvml_open = False
        self._lock = threading.RLock()  # re-entrant: SIGTERM may arrive while the main thread is in restore()

    # --- the context ---------------------------------------------------------------------------------

    def __enter__(self) -> GpuControl:
        if self.settings.active:
            self._install_sigterm()  # first: a SIGTERM while the values are being set restores those already set
            try:
                self.apply()
            except BaseException:
                self._uninstall_sigterm()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.restore()
        finally:
            self._uninstall_sigterm()

    def apply(self) -> None:
        """Check, then set the requested values on every GPU; on a refusal undo what was set and raise."""
        if self._state != "new" or not self.settings.active:
            return
        self._open_nvml()
        self._started_at = datetime.now(UTC).isoformat()
        try:
            self._gpus = [self._inspect(uuid) for uuid in self._uuids]
            for gpu in self._gpus:
                self._check(gpu)
            with self._lock:
                if self._state != "new":
                    return  # restored by a SIGTERM meanwhile (its previous handler ignored it): set nothing
                self._state = "applied"  # from here on, restore() undoes whatever was set
            for gpu in self._gpus:
                if self._state != "applied":
                    return  # restored by a SIGTERM meanwhile (its previous handler ignored it): set nothing more
                self._set(gpu)
                gpu.after = self._read(gpu)
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Put back the power limit found and unlock the clocks, once; later calls do nothing."""
        with self._lock:
            if self._state == "restored":
                return
            self._state = "restored"
        nvml = self._nvml
        for gpu in self._gpus:
            errors: list[str] = []
            if gpu.clocks_locked:
                self._try(errors, "reset locked clocks", nvml.nvmlDeviceResetGpuLockedClocks, gpu.handle)
            if gpu.power_set:
                self._try(errors, "restore the power limit", nvml.nvmlDeviceSetPowerManagementLimit, gpu.handle,
                          round(gpu.before["power_limit_w"] * 1000))
            if gpu.power_set or gpu.clocks_locked:
                gpu.restored = {**self._read(gpu), "clocks_unlocked": gpu.clocks_locked, "errors": errors}
                for error in errors:
                    print(f"wattscale: warning: {gpu.uuid}: {error}; set it back by hand (nvidia-smi)",
                          file=sys.stderr, flush=True)
        self._close_nvml()

    def record(self) -> dict[str, Any] | None:
        """What was requested, found (before), set (after, as NVML reports it) and restored, per GPU; None if
        nothing was requested."""
        if not self.settings.active:
            return None
        return {"requested": self.settings.settings(), "started_at": self._started_at,
                "state": self._state, "gpus": [g.to_dict() for g in self._gpus],
                "units": {"power": "W", "clock": "MHz"},
                "restore": "the power limit found before; clocks unlocked (nvmlDeviceResetGpuLockedClocks)"}

    # --- NVML --------------------------------------------------------------------------------------------

    def _open_nvml(self) -> ModuleType:
        field = self.settings.first_field()
        if self._nvml is None:
            from wattscale.energy.meter import MeterError
            from wattscale.energy.nvml import import_pynvml

            try:
                self._nvml = import_pynvml()
            except MeterError:
                raise ConfigError(f"{field}: needs nvidia-ml-py (pip install 'wattscale[nvidia]'), or remove the "
                                  "setting") from None
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise ConfigError(f"{field}: NVML cannot start ({_reason(nvml, exc)}); it needs an NVIDIA driver, or "
                              "remove the setting") from None
        self._nvml_open = True
        return nvml

    def _close_nvml(self) -> None:
        if self._nvml_open:
            self._nvml_open = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass  # nothing useful to report: the values are already back

    def _inspect(self, uuid: str) -> _Gpu:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid.encode())  # bytes: what every nvidia-ml-py accepts
            name = _text(nvml.nvmlDeviceGetName(handle))
        except nvml.NVMLError as exc:
            raise ConfigError(f"{self.settings.first_field()}: NVML cannot open GPU {uuid} ({_reason(nvml, exc)}); "
                              "remove the setting") from None
        gpu = _Gpu(uuid, name, handle, {})
        gpu.before = self._read(gpu)
        return gpu

    def _read(self, gpu: _Gpu) -> dict[str, Any]:
        """Power limit (set and enforced, W) and SM clock (current and max, MHz); None where NVML cannot say."""
        nvml, h = self._nvml, gpu.handle
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        calls = {"power_limit_w": (nvml.nvmlDeviceGetPowerManagementLimit, 1000.0),
                 "enforced_power_limit_w": (nvml.nvmlDeviceGetEnforcedPowerLimit, 1000.0),
                 "sm_clock_mhz": (lambda handle: nvml.nvmlDeviceGetClockInfo(handle, sm), 1),
                 "max_sm_clock_mhz": (lambda handle: nvml.nvmlDeviceGetMaxClockInfo(handle, sm), 1)}
        out: dict[str, Any] = {}
        for key, (call, per_unit) in calls.items():
            try:
                value = call(h)
            except nvml.NVMLError:
                out[key] = None
                continue
            out[key] = value / per_unit if per_unit != 1 else int(value)
        return out

    def _check(self, gpu: _Gpu) -> None:
        """Refuse a request outside what the GPU allows, before anything is set."""
        nvml, where = self._nvml, f"{gpu.uuid} ({gpu.name})"
        limit = self.settings.power_limit_w
        if limit is not None:
            try:
                low_mw, high_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(gpu.handle)
            except nvml.NVMLError as exc:
                raise _refusal(nvml, exc, "power_limit_w", where) from None
            if gpu.before.get("power_limit_w") is None:
                raise ConfigError(f"gpu.power_limit_w: NVML cannot read the power limit of {where}, so it could not "
                                  "be restored; remove the setting")
            if not low_mw / 1000 <= limit <= high_mw / 1000:
                raise ConfigError(f"gpu.power_limit_w: {limit:g} W is outside what {where} allows "
                                  f"({low_mw / 1000:g}-{high_mw / 1000:g} W, NVML's power management limit "
                                  "constraints); choose a limit in that range")
        clock = self.settings.sm_clock_mhz
        if clock is not None:
            supported = self._supported_sm_clocks(gpu, where)
            if clock not in supported:
                below = max((c for c in supported if c < clock), default=None)
                above = min((c for c in supported if c > clock), default=None)
                near = " or ".join(str(c) for c in (below, above) if c is not None)
                raise ConfigError(f"gpu.sm_clock_mhz: {clock} MHz is not a supported SM clock of {where} "
                                  f"({min(supported)}-{max(supported)} MHz in steps NVML lists); nearest: {near}")

    def _supported_sm_clocks(self, gpu: _Gpu, where: str) -> list[int]:
        nvml = self._nvml
        try:
            clocks: set[int] = set()
            for memory_mhz in nvml.nvmlDeviceGetSupportedMemoryClocks(gpu.handle):
                clocks.update(int(c) for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(gpu.handle, memory_mhz))
        except nvml.NVMLError as exc:
            raise _refusal(nvml, exc, "sm_clock_mhz", where) from None
        if not clocks:
            raise ConfigError(f"gpu.sm_clock_mhz: NVML lists no supported SM clocks for {where}; remove the setting")
        return sorted(clocks)

    def _set(self, gpu: _Gpu) -> None:
        nvml, where = self._nvml, f"{gpu.uuid} ({gpu.name})"
        # Each flag is raised before its call, so that a SIGTERM the moment the call returns still restores it.
        if self.settings.power_limit_w is not None:
            gpu.power_set = True
            try:
                nvml.nvmlDeviceSetPowerManagementLimit(gpu.handle, round(self.settings.power_limit_w * 1000))
            except nvml.NVMLError as exc:
                gpu.power_set = False
                raise _refusal(nvml, exc, "power_limit_w", where) from None
        if self.settings.sm_clock_mhz is not None:
            clock = self.settings.sm_clock_mhz
            gpu.clocks_locked = True
            try:
                nvml.nvmlDeviceSetGpuLockedClocks(gpu.handle, clock, clock)
            except nvml.NVMLError as exc:
                gpu.clocks_locked = False
                raise _refusal(nvml, exc, "sm_clock_mhz", where) from None

    def _try(self, errors: list[str], what: str, call: Callable[..., Any], *args: Any) -> None:
        try:
            call(*args)
        except self._nvml.NVMLError as exc:
            errors.append(f"could not {what} ({_reason(self._nvml, exc)})")

    # --- SIGTERM -----------------------------------------------------------------------------------------

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; the context's exit still restores
        self._previous_handler = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._handler_installed = True

    def _uninstall_sigterm(self) -> None:
        if self._handler_installed:
            self._handler_installed = False
            if signal.getsignal(signal.SIGTERM) == self._on_sigterm:
                signal.signal(signal.SIGTERM, self._previous_handler)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Restore, then do what SIGTERM did before: the previous handler, or end the process (status 143)."""
        self.restore()
        previous = self._previous_handler
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            self._uninstall_sigterm()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def control_gpus(settings: GpuConfig, device: Any, nvml: ModuleType | None = None) -> GpuControl:
    """The `GpuControl` for the GPU a training process uses (``device``: its torch device).

    Inactive settings give a no-op control; active ones on a non-CUDA device are refused.
    """
    if not settings.active:
        return GpuControl(settings, (), nvml)
    return GpuControl(settings, local_gpu_uuids(settings, device), nvml)


def local_gpu_uuids(settings: GpuConfig, device: Any) -> list[str]:
    """The UUIDs of the GPUs `device` means (its own index, or the current CUDA device); the test seam."""
    if getattr(device, "type", str(device)) != "cuda":
        raise ConfigError(f"{settings.first_field()}: needs a CUDA device, but this run uses {device}; run on a "
                          "GPU or remove the setting")
    import torch

    from wattscale.energy.gpus import device_uuid

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = device_uuid(index)
    return [uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"]


def record_gpu_control(store: Any, run_id: str, control: GpuControl) -> None:
    """Put ``control.record()`` into the run's stored config (``config_json`` -> resolved.gpu_control).

    One entry per session (a resumed run sets and restores again), keyed by when it started; the
    config_hash stays the settings' at the run's start. A store that cannot be written is left alone:
    the run's own outcome matters more.
    """
    import json

    from wattscale.errors import StoreError

    record = control.record()
    if store is None or record is None:
        return
    try:
        run = store.get_run(run_id)
        if run is None:
            return
        config = json.loads(run["config_json"])
        resolved = config.setdefault("resolved", {})
        sessions = [s for s in resolved.get("gpu_control", []) if s.get("started_at") != record["started_at"]]
        resolved["gpu_control"] = [*sessions, record]
        store.update_run(run_id, config_json=json.dumps(config, sort_keys=True))
    except StoreError:
        pass


# pynvml's error classes and the NVML return codes they stand for (nvml.h: NVML_ERROR_NOT_SUPPORTED = 3, ...)
_ERRORS = {"NoPermission": ("NVML_ERROR_NO_PERMISSION", 4), "NotSupported": ("NVML_ERROR_NOT_SUPPORTED", 3)}


def _is(nvml: ModuleType, exc: BaseException, name: str) -> bool:
    """Whether `exc` is pynvml's NVMLError_<name> (by class, by its NVML return code, or by class name)."""
    cls = getattr(nvml, f"NVMLError_{name}", None)
    constant, code = _ERRORS[name]
    return ((isinstance(cls, type) and isinstance(exc, cls)) or type(exc).__name__ == f"NVMLError_{name}"
            or getattr(exc, "value", None) == getattr(nvml, constant, code))


def _refusal(nvml: ModuleType, exc: BaseException, key: str, where: str) -> ConfigError:
    field = f"gpu.{key}"
    if _is(nvml, exc, "NoPermission"):
        return ConfigError(NEEDS_ROOT.format(field=field, what=_WHAT[key]))
    if _is(nvml, exc, "NotSupported"):
        return ConfigError(f"{field}: {where} does not support {_WHAT[key]} (NVML: not supported); remove the "
                           "setting")
    return ConfigError(f"{field}: NVML refused {_WHAT[key]} on {where} ({_reason(nvml, exc)}); remove the setting")


def _reason(nvml: ModuleType, exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

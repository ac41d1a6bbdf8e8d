"""`wattscale measure -- CMD ARGS...`: run a command and measure it, its process tree and the GPUs it uses.

```python
from wattscale.energy.command import MeasureSpec, measure_command

out = measure_command(MeasureSpec(argv=("python", "train.py"), name="baseline", store="runs.db"))
print(out.exit_code, out.status, out.result.job.energy_j, out.result.job.source)
```

How it measures:

- **Start.** The command is started in its own session (process group) behind a small gate, so that the
  meters open on its PID and the idle baseline (``idle_seconds``) is measured before it runs; then the gate
  opens and the command's program replaces it (same PID, nothing in between).
- **Devices.** The CPU estimate covers the command's process tree (its CPU time and its descendants');
  RAPL, when readable, is host-wide (every process of the host, said in the notes); GPUs: with
  ``gpus="auto"`` the GPUs visible to the command, each counted from the moment NVML lists a process of
  the tree on it (`wattscale.energy.tree_gpus`); a list of GPUs measures those whole; ``[]`` none.
- **Phases.** The command runs in phase ``command`` until it marks one: a `wattscale.Monitor` inside it
  does so by itself, any program by appending lines to the phase file (`wattscale.energy.phase_file`);
  lines are read every 10 ms, so phase boundaries lag the command's by about 10-20 ms.
- **Signals.** SIGINT, SIGTERM and SIGHUP that reach wattscale are forwarded to the command's process
  group (it has a session of its own, so a terminal's Ctrl-C reaches it once, through wattscale); the
  first two are forwarded as they are, the third becomes SIGKILL. wattscale waits for the command, keeps
  the partial measurement and marks it ``interrupted``.
- **Result.** Status ``finished`` (exit 0), ``failed`` (non-zero exit) or ``interrupted`` (a signal was
  forwarded, or the command died of one); the exit code is the command's (128 + N for signal N).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wattscale.energy.discover import close_meters, discover_meters
from wattscale.energy.gpus import GpuSelection
from wattscale.energy.measurement import OTHER_PHASE
from wattscale.energy.meter import Meter, MeterConfig
from wattscale.energy.monitor import Monitor, is_phase_name
from wattscale.energy.phase_file import PHASE_FILE_ENV, POLL_S, PhaseFileTail, parse_line
from wattscale.energy.result import MonitorResult
from wattscale.energy.tree_gpus import TreeGpuMeter, tree_pids
from wattscale.errors import ConfigError, WattscaleError

DEFAULT_PHASE = "command"
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
KILL_AFTER_SIGNALS = 3  # the third signal wattscale receives is sent as SIGKILL
MAX_BAD_LINE_NOTES = 5
EXIT_NOT_FOUND = 127  # as a shell
EXIT_NOT_EXECUTABLE = 126
_GATE_FAILED = 125

# Runs in the command's process before its program: says it is ready, waits for "go", restores the signal
# dispositions Python changed (SIGPIPE and SIGXFSZ ignored, its own SIGINT handler), and execs the command.
_GATE = """\
import os, signal, sys
ready, go = int(sys.argv[1]), int(sys.argv[2])
if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
os.write(ready, b"1"); os.close(ready)
if os.read(go, 1) != b"1":
    os._exit(125)
os.close(go)
for name in ("SIGPIPE", "SIGXFSZ"):
    if hasattr(signal, name):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
try:
    os.execv(sys.argv[3], sys.argv[4:])
except OSError as exc:
    sys.stderr.write(f"wattscale measure: cannot run {sys.argv[4]}: {exc.strerror}\\n")
    os._exit(127)
"""


class CommandNotFound(WattscaleError):
    """The command to measure does not exist or cannot be executed (exit 127 / 126, as a shell)."""

    def __init__(self, message: str, exit_code: int = EXIT_NOT_FOUND) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class MeasureSpec:
    """What to run and how to measure it.

    ``argv``: the command and its arguments (run without a shell). ``phase_file``: a file any program may
    append phase lines to (default: a temporary one, given to the command as $WATTSCALE_PHASE_FILE).
    ``store``: a database path/URL to record the run in (kind ``measured``), or None.
    """

    argv: tuple[str, ...]
    name: str | None = None
    phase_file: Path | None = None
    config: MeterConfig = field(default_factory=MeterConfig)
    gpus: GpuSelection = "auto"
    store: str | None = None

    def __post_init__(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ConfigError("measure: no command given; put it after --, e.g. `wattscale measure -- python "
                              "train.py`")


@dataclass(frozen=True)
class CommandMeasurement:
    """A measured command: how it ended and its energy (`MonitorResult`, by phase and component)."""

    argv: tuple[str, ...]
    command_line: str
    returncode: int  # as subprocess gives it: negative -N when signal N ended the command
    exit_code: int  # what wattscale exits with: the command's status, 128 + N for signal N
    status: str  # finished / failed / interrupted
    message: str
    wall_seconds: float  # from the command's start to its end
    forwarded_signals: tuple[str, ...]
    result: MonitorResult
    store: str | None
    started_at: datetime  # UTC, when the command started (after the idle baseline)
    ended_at: datetime  # UTC, when it ended

    @property
    def run_id(self) -> str | None:
        return self.result.run_id

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the command, how it ended, and the measurement (units in the names)."""
        return {"run_id": self.run_id, "store": self.store, "command_line": self.command_line,
                "argv": list(self.argv), "exit_code": self.exit_code, "returncode": self.returncode,
                "status": self.status, "message": self.message, "wall_seconds": self.wall_seconds,
                "started_at": self.started_at.isoformat(), "ended_at": self.ended_at.isoformat(),
                "forwarded_signals": list(self.forwarded_signals), "measurement": self.result.to_dict()}


def measure_command(spec: MeasureSpec) -> CommandMeasurement:
    """Run `spec.argv`, measure it, record it (if `spec.store`), and return how it ended and what it used.

    Raises CommandNotFound before anything runs or is stored when the program cannot be found or executed.
    """
    program = _resolve(spec.argv[0])
    with _PhaseFile(spec.phase_file) as phase_path:
        env = {**os.environ, PHASE_FILE_ENV: str(phase_path)}
        child, go = _spawn(program, spec.argv, env)
        forwarder = _Forwarder(child.pid)
        forwarder.install()
        try:
            return _measure(spec, child, go, phase_path, forwarder)
        finally:
            forwarder.restore()
            _close(go)
            if child.returncode is None:  # setup failed before the command ran: the gate exits on EOF
                child.wait()


def _measure(spec: MeasureSpec, child: subprocess.Popen, go: int, phase_path: Path,
             forwarder: _Forwarder) -> CommandMeasurement:
    """Open the meters on the gate's PID, start the Monitor (idle baseline), let the command go, follow it."""
    meters, not_used = discover_meters(spec.config, gpus=spec.gpus, pid=child.pid)
    meters, tree_gpus = _watch_tree_gpus(meters, spec.gpus, child.pid)
    command_line = shlex.join(spec.argv)
    notes = [f"not used: {reason}" for reason in not_used]
    if any(m.name == "rapl" for m in meters):
        notes.append("RAPL (cpu_package, dram) is host-wide: it counts every process of this host, not only the "
                     "command's")
    monitor: Monitor | None = None
    tail: PhaseFileTail | None = None
    try:
        monitor = Monitor(spec.config, gpus=spec.gpus, meters=meters, store=spec.store, name=spec.name, notes=notes,
                          metadata={"command_line": command_line, "argv": list(spec.argv), "cwd": os.getcwd()})
        monitor.start()
        if tree_gpus is not None:
            tree_gpus.gate()
        follower = _Follower(monitor)
        follower.enter(DEFAULT_PHASE)  # the meter reading that starts it is after the gate
        tail = PhaseFileTail(phase_path, follower.on_line).start()
        started, started_at = time.monotonic(), datetime.now(UTC)
        try:
            os.write(go, b"1")
        except OSError:
            pass  # the gate already died (a signal before the command started): its status says so
        _wait_without_reaping(child)
        wall_s, ended_at = time.monotonic() - started, datetime.now(UTC)
        forwarded = tuple(forwarder.names)  # a signal from here on finds the command gone
        stopping, tail = tail, None  # stopped once, even if reading the rest fails
        stopping.stop()
        follower.leave()
        returncode = child.poll() if not hasattr(os, "waitid") else _peek_status(child)
        status, message, exit_code = _outcome(returncode, forwarded)
        if tree_gpus is not None:
            for note in tree_gpus.usage_notes():
                monitor.note(note)
            monitor.metadata["gpus_used"] = tree_gpus.usage()
        monitor.metadata.update({"exit_status": exit_code, "returncode": returncode,
                                 "forwarded_signals": list(forwarded), "phase_lines": follower.lines})
        result = monitor.stop(status, message)
    except BaseException:
        if tail is not None:
            tail.stop()
        if monitor is not None and monitor.running:
            monitor.stop("failed", "wattscale measure failed while measuring")
        raise
    finally:
        close_meters(meters)
    child.wait()
    return CommandMeasurement(tuple(spec.argv), command_line, returncode, exit_code, status, message, wall_s,
                              forwarded, result, spec.store, started_at, ended_at)


def _resolve(program: str) -> str:
    """The program's path, or CommandNotFound naming it (127 missing, 126 not executable)."""
    if os.sep in program:
        path = Path(program)
        if not path.exists():
            raise CommandNotFound(f"measure: command not found: {program}")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise CommandNotFound(f"measure: {program} is not executable (chmod +x it, or run it with its "
                                  "interpreter, e.g. `-- python script.py`)", EXIT_NOT_EXECUTABLE)
        return program
    found = shutil.which(program)
    if found is None:
        raise CommandNotFound(f"measure: command not found: {program} (not on PATH; give its path or install it)")
    return found


def _spawn(program: str, argv: Sequence[str], env: dict[str, str]) -> tuple[subprocess.Popen, int]:
    """Start the gate in a new session; returns it (its PID becomes the command's) and the 'go' pipe's end."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _GATE, str(ready_w), str(go_r), program,
                                  *argv], pass_fds=(ready_w, go_r), start_new_session=True, env=env)
    except BaseException:
        for fd in (ready_r, ready_w, go_r, go_w):
            _close(fd)
        raise
    _close(ready_w)
    _close(go_r)
    try:
        ready = os.read(ready_r, 1)
    finally:
        _close(ready_r)
    if ready != b"1":
        _close(go_w)
        child.wait()
        raise WattscaleError(f"measure: could not start {argv[0]} (the starter exited with {child.returncode})")
    return child, go_w  # the gate execs the resolved path with argv as given (argv[0] as a shell passes it)


def _watch_tree_gpus(meters: list[Meter], gpus: GpuSelection, pid: int) -> tuple[list[Meter], TreeGpuMeter | None]:
    """With gpus="auto", the NVML meter counts a GPU only once the command's tree uses it."""
    if gpus != "auto":
        return meters, None
    out: list[Meter] = []
    wrapped = None
    for meter in meters:
        if meter.name == "nvml" and hasattr(meter, "running_pids"):
            wrapped = TreeGpuMeter(meter, meter.running_pids, lambda: tree_pids(pid))
            meter = wrapped
        out.append(meter)
    return out, wrapped


def _wait_without_reaping(child: subprocess.Popen) -> None:
    """Wait until the command exits but leave it a zombie, so the CPU estimate can still read its final times."""
    if hasattr(os, "waitid"):
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    else:  # pragma: no cover - not on Linux
        child.wait()


def _peek_status(child: subprocess.Popen) -> int:
    """The exited (not yet reaped) command's status as a subprocess returncode."""
    info = os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
    if info is None:  # pragma: no cover - it has exited: waitid said so
        return child.wait()
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _outcome(returncode: int, forwarded: Sequence[str]) -> tuple[str, str, int]:
    """(status, message, exit code) of an ended command."""
    if returncode < 0:
        name = _signal_name(-returncode)
        how = f"killed by signal {-returncode} ({name})"
        exit_code = 128 - returncode
    else:
        how, exit_code = f"exited with status {returncode}", returncode
    if forwarded:
        return "interrupted", f"interrupted: {', '.join(forwarded)} forwarded; the command {how}", exit_code
    if returncode < 0:
        return "interrupted", f"the command was {how}", exit_code
    return ("finished" if returncode == 0 else "failed"), f"the command {how}", exit_code


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class _Forwarder:
    """Signal handlers that forward SIGINT/SIGTERM/SIGHUP to the command's process group (SIGKILL the 3rd)."""

    def __init__(self, pgid: int) -> None:
        self.pgid = pgid
        self.names: list[str] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread; signals then act as usual
        for name in FORWARDED_SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            current = signal.getsignal(number)
            if current is signal.SIG_IGN:
                continue  # ignored here (e.g. a background job): ignored by the command too, as a shell does
            self._previous[number] = current
            signal.signal(number, self._forward)

    def _forward(self, number: int, frame: object) -> None:
        self.names.append(_signal_name(number))
        sent = signal.SIGKILL if len(self.names) >= KILL_AFTER_SIGNALS else number
        try:
            os.killpg(self.pgid, sent)
        except (ProcessLookupError, PermissionError):
            pass  # the command's group has already exited

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()


class _Follower:
    """Turns phase-file lines into the parent Monitor's phases and steps (called from the tail thread)."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._context: Any = None
        self.current: str | None = None
        self.lines = 0
        self._bad = 0

    def enter(self, phase: str) -> None:
        self.leave()
        if phase != OTHER_PHASE:
            context = self._monitor.phase(phase)
            context.__enter__()
            self._context = context
        self.current = phase

    def leave(self) -> None:
        if self._context is not None:
            context, self._context = self._context, None
            context.__exit__(None, None, None)
        self.current = OTHER_PHASE

    def on_line(self, text: str, number: int) -> None:
        parsed = parse_line(text, is_phase_name)
        if parsed is None:
            return
        if isinstance(parsed, str):
            self._skip(number, parsed)
            return
        try:
            if parsed.phase != self.current:
                self.enter(parsed.phase)
            if parsed.tokens or parsed.steps:
                self._monitor.step(tokens=parsed.tokens, steps=parsed.steps)
        except WattscaleError as exc:  # the measurement goes on; the notes say what was not followed
            self._skip(number, str(exc))
            return
        self.lines += 1

    def _skip(self, number: int, why: str) -> None:
        self._bad += 1
        if self._bad <= MAX_BAD_LINE_NOTES:
            self._monitor.note(f"phase file line {number}: {why}; skipped")
        elif self._bad == MAX_BAD_LINE_NOTES + 1:
            self._monitor.note(f"phase file: more lines were skipped as invalid (only the first {MAX_BAD_LINE_NOTES} "
                               "are noted)")


class _PhaseFile:
    """The phase file: the user's (created if missing; lines already in it are not read) or a temporary one."""

    def __init__(self, given: Path | None) -> None:
        self._given = given
        self._tmp: str | None = None

    def __enter__(self) -> Path:
        if self._given is not None:
            folder = self._given.parent
            if not folder.is_dir():
                raise ConfigError(f"measure: phase file {self._given}: its folder {folder} does not exist; create "
                                  "it or choose another path")
            if self._given.is_dir():
                raise ConfigError(f"measure: phase file {self._given} is a folder; give a file path")
            self._given.touch()
            return self._given
        self._tmp = tempfile.mkdtemp(prefix="wattscale-measure-")
        path = Path(self._tmp) / "phases"
        path.touch()
        return path

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["DEFAULT_PHASE", "POLL_S", "CommandMeasurement", "CommandNotFound", "MeasureSpec", "measure_command"]

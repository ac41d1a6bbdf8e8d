"""`wattscale measure -- CMD`: exit status passed through, the run stored with the command's line, phases from
a child using wattscale.Monitor (wattscale train too) and from a phase file any program writes, the process
tree's CPU time, GPUs counted once the tree uses them (a fake NVML), commands not found, and Ctrl-C / SIGTERM
forwarded to the command with the partial measurement kept.

The CPU estimate is the meter here (no RAPL, no GPU): its energy is the tree's CPU seconds x tdp_w_per_core,
so a child that burns a known CPU time gives a reference.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import psutil
import pytest

from conftest import TINY_DATA, default_sigint
from wattscale import Monitor
from wattscale.energy.meter import PowerReading
from wattscale.energy.monitor import is_phase_name
from wattscale.energy.phase_file import PHASE_FILE_ENV, PhaseLine, parse_line
from wattscale.energy.tree_gpus import TreeGpuMeter
from wattscale.store import open_store

PY = sys.executable
SRC = str(Path(__file__).resolve().parents[1] / "src")
FAST = ("--idle-seconds", "0", "--sample-hz", "50", "--meters", "cpu-estimate")


def burn(cpu_s: float) -> str:
    """Python source that burns `cpu_s` seconds of CPU time."""
    return f"import time\nt = time.process_time()\nwhile time.process_time() - t < {cpu_s}: pass\n"


def stored(store: Path) -> tuple[dict, list[dict]]:
    with open_store(str(store)) as s:
        (record,) = s.list_runs()
        return record, s.energy_measurements(record["run_id"])


def test_exit_status_passes_through_and_the_run_records_the_command(tmp_path: Path, run_cli_in_process) -> None:
    db = tmp_path / "m.db"
    code = 'import sys; print("child says hi"); sys.exit(3)'
    out = run_cli_in_process("--store", str(db), "measure", "--name", "demo", *FAST, "--", PY, "-c", code)
    assert out.returncode == 3, out.stderr
    assert "failed (the command exited with status 3)" in out.stderr and "command" in out.stderr  # the table
    record, rows = stored(db)
    assert record["kind"] == "measured" and record["status"] == "failed" and record["name"] == "demo"
    assert record["command_line"] == f"{PY} -c '{code}'"  # the child's, not wattscale's
    assert "status 3" in record["message"] and record["wall_seconds"] > 0
    metadata = json.loads(record["config_json"])["metadata"]
    assert metadata["exit_status"] == 3 and metadata["argv"] == [PY, "-c", code] and metadata["forwarded_signals"] == []
    assert record["energy_source"] == "estimated" and record["energy_j"] > 0
    assert {(r["scope"], r["phase"], r["component"], r["source"]) for r in rows} >= {
        ("run", None, "cpu_estimate", "estimated"), ("phase", "command", "cpu_estimate", "estimated")}

    ok = run_cli_in_process("--store", str(db), "measure", *FAST, "--json", "--carbon-intensity", "400",
                            "--price-per-kwh", "0.5", "--currency", "EUR", "--pue", "1.5", "--", PY, "-c", "pass")
    assert ok.returncode == 0
    data = json.loads(ok.stdout)  # the child printed nothing: stdout is the JSON object alone
    assert data["status"] == "finished" and data["exit_code"] == 0 and data["measurement"]["status"] == "finished"
    assert set(data["measurement"]["phases"]) >= {"command"}
    kwh = data["measurement"]["job"]["energy_j"] * 1.5 / 3.6e6
    foot = data["footprint"]
    assert foot["co2e_g"] == pytest.approx(kwh * 400) and foot["cost"] == pytest.approx(kwh * 0.5)
    assert "PUE 1.50" in data["footprint"]["inputs"] and data["footprint"]["currency"] == "EUR"

    killed = run_cli_in_process("--store", str(db), "measure", *FAST, "-o", str(tmp_path / "k.json"), "--", PY, "-c",
                                "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.returncode == 128 + 9
    data = json.loads((tmp_path / "k.json").read_text())
    assert data["status"] == "interrupted" and "killed by signal 9 (SIGKILL)" in data["message"]


def test_the_process_tree_counts_a_grandchild_and_not_wattscale(tmp_path: Path, run_cli_in_process) -> None:
    # The child only waits; its grandchild burns 1.5 CPU seconds: at 10 W per busy core that is 15 J.
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn(1.5)!r}], check=True)"
    out = run_cli_in_process("--store", str(tmp_path / "m.db"), "measure", *FAST, "--cpu-tdp-w-per-core", "10",
                             "--json", "--", PY, "-c", child)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)["measurement"]["job"]
    # 15 J plus the two interpreters' start-up; wattscale's own sampling is not in the tree
    assert 15.0 <= job["components"]["cpu_estimate"]["energy_j"] < 15.0 + 10 * 1.5
    assert job["complete"] and not job["errors"]  # the last reading was of the exited (not yet reaped) command


def test_phases_and_tokens_from_a_child_using_monitor(tmp_path: Path, run_cli_in_process) -> None:
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        import time
        from wattscale import Monitor
        def busy(s):
            t = time.monotonic()
            while time.monotonic() - t < s: pass
        with Monitor(meters=[], idle_seconds=0) as m:
            for _ in range(2):
                with m.phase("train"):
                    busy(0.3)
                    m.step(tokens=512)
            with m.phase("eval"):
                busy(0.3)
    """)
    db = tmp_path / "m.db"
    out = run_cli_in_process("--store", str(db), "measure", *FAST, "--json", "--", PY, "-c", child)
    assert out.returncode == 0, out.stderr
    phases = json.loads(out.stdout)["measurement"]["phases"]
    assert {"command", "train", "eval", "other"} <= set(phases)
    assert phases["train"]["tokens"] == 1024 and phases["train"]["steps"] == 2
    # boundaries lag the child's by the 10 ms poll: the phase times match within a few polls
    assert phases["train"]["seconds"] == pytest.approx(0.6, abs=0.15)
    assert phases["eval"]["seconds"] == pytest.approx(0.3, abs=0.15) and phases["eval"]["tokens"] == 0
    assert phases["train"]["energy_j"] > 0 and phases["train"]["joules_per_token"] > 0
    record, _ = stored(db)
    assert record["train_tokens"] == 1024 and record["tokens_seen"] == 1024
    assert record["train_energy_j"] == pytest.approx(phases["train"]["energy_j"])


def test_the_trainer_measured_as_a_command_brings_its_phases_and_tokens(tmp_path: Path, run_cli_in_process) -> None:
    train = [PY, "-m", "wattscale", "--store", str(tmp_path / "inner.db"), "train", "--preset", "llama-tiny",
             "--tokens", "4096", *TINY_DATA, "--threads", "1", "--no-progress", "--meters", "none"]
    out = run_cli_in_process("--store", str(tmp_path / "m.db"), "measure", *FAST, "--json", "--", *train)
    assert out.returncode == 0, out.stderr
    phases = json.loads(out.stdout)["measurement"]["phases"]
    assert {"command", "warmup", "train", "eval", "checkpoint", "save"} <= set(phases)
    assert phases["warmup"]["tokens"] + phases["train"]["tokens"] == 4096 and phases["warmup"]["steps"] == 1


def test_a_phase_file_any_program_appends_to(tmp_path: Path, run_cli_in_process) -> None:
    lines = tmp_path / "phases.txt"
    lines.write_text("old-phase 999\n")  # lines already there are not read
    script = ('echo load >> "$WATTSCALE_PHASE_FILE"; sleep 0.3; echo "train 4096" >> "$WATTSCALE_PHASE_FILE"; '
              'echo "Train!" >> "$WATTSCALE_PHASE_FILE"; echo "idle" >> "$WATTSCALE_PHASE_FILE"; sleep 0.3; '
              'printf "train 4096 2\\nother\\n# a comment\\n" >> "$WATTSCALE_PHASE_FILE"; sleep 0.2')
    out = run_cli_in_process("--store", str(tmp_path / "m.db"), "measure", *FAST, "--phase-file", str(lines),
                             "--json", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["measurement"]
    assert "old-phase" not in m["phases"]
    assert m["phases"]["load"]["seconds"] == pytest.approx(0.3, abs=0.15)
    assert m["phases"]["train"]["tokens"] == 8192 and m["phases"]["train"]["steps"] == 3
    assert m["phases"]["train"]["seconds"] == pytest.approx(0.3, abs=0.15)
    assert m["phases"]["other"]["seconds"] >= 0.1
    bad = [n for n in m["notes"] if n.startswith("phase file line")]
    assert len(bad) == 2 and "'Train!'" in bad[0] and "'idle'" in bad[1]


def test_the_phase_line_format() -> None:
    def parse(text):
        return parse_line(text, is_phase_name)

    assert parse("train") == PhaseLine("train")
    assert parse("  eval 128 \n") == PhaseLine("eval", 128, 1)
    assert parse("train 4096 4") == PhaseLine("train", 4096, 4)
    assert parse("other") == PhaseLine("other") and parse("") is None and parse("# note") is None
    assert "not a phase name" in parse("Train") and "not a phase name" in parse("idle")
    assert "TOKENS must be a whole number" in parse("train -5") and "expected PHASE" in parse("a 1 2 3")


def test_a_monitor_writes_the_phase_file_on_rank_0_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "phases"
    monkeypatch.setenv(PHASE_FILE_ENV, str(path))
    with Monitor(meters=[], idle_seconds=0) as m:
        with m.phase("train"):
            m.step(tokens=512)
        with m.phase("eval"):
            pass
    assert path.read_text().splitlines() == ["train", "train 512 1", "other", "eval", "other"]
    monkeypatch.setenv("RANK", "1")
    with Monitor(meters=[], idle_seconds=0) as m, m.phase("train"):
        m.step(tokens=512)
    assert len(path.read_text().splitlines()) == 5


@pytest.mark.parametrize("argv, code, says", [
    (["--", "no-such-program-wattscale"], 127, "command not found: no-such-program-wattscale"),
    (["--", "./plain.txt"], 126, "./plain.txt is not executable"),
    (["--"], 2, "no command; put the command after --"),
    ([PY, "-c", "pass"], 2, "no command; put the command after --"),
    (["-o", "no-folder/m.json", "--", PY, "-c", "open('ran', 'w')"], 2, "-o/--output: the folder no-folder does not"),
])
def test_a_command_that_cannot_run_stores_nothing(tmp_path: Path, run_cli_in_process, argv: list[str], code: int,
                                                  says: str) -> None:
    (tmp_path / "plain.txt").write_text("not a program\n")
    out = run_cli_in_process("--store", str(tmp_path / "m.db"), "measure", "--idle-seconds", "0", *argv)
    assert out.returncode == code and says in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "ran").exists()


class _ClockMeter:
    """Two GPUs at 100 W each, with a counter, as NVML would give them."""

    name, energy_source, devices = "nvml", "counter", ("gpu0", "gpu1")

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def read(self) -> PowerReading:
        now = time.monotonic()
        energy = dict.fromkeys(self.devices, 100.0 * (now - self.t0))
        return PowerReading(now, dict.fromkeys(self.devices, 100.0), energy)

    def describe(self) -> dict:
        return {"kind": "nvml", "inputs": {}}

    def close(self) -> None:
        pass


def test_a_gpu_counts_from_when_the_tree_uses_it() -> None:
    on_gpu: dict[str, set[int]] = {"gpu0": set(), "gpu1": {99}}
    meter = TreeGpuMeter(_ClockMeter(), lambda: on_gpu, lambda: {10, 11}, usage_poll_s=0.0)
    time.sleep(0.1)
    before = meter.read()  # before the gate (the idle baseline) every GPU counts
    assert before.energy_j["gpu0"] == pytest.approx(10.0, abs=3) and before.energy_j["gpu1"] > 5
    meter.gate()
    time.sleep(0.1)
    unused = meter.read()
    assert unused.energy_j == pytest.approx(before.energy_j, abs=0.5) and unused.power_w == {"gpu0": 0.0, "gpu1": 0.0}
    on_gpu["gpu0"] = {11}  # a process of the tree appears on gpu0
    meter.read()
    time.sleep(0.2)
    used = meter.read()
    assert used.energy_j["gpu0"] - unused.energy_j["gpu0"] == pytest.approx(20.0, abs=5)
    assert used.energy_j["gpu1"] == unused.energy_j["gpu1"] and used.power_w["gpu0"] == 100.0
    assert set(meter.usage()) == {"gpu0"}
    (note,) = meter.usage_notes()
    assert "gpu1 watched but not used" in note


def test_measure_charges_only_the_gpus_the_command_uses(tmp_path: Path, run_cli_in_process,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake nvidia-ml-py: two GPUs at 100 W; gpu0 runs every process whose command line has the marker.
    t0 = time.monotonic()
    fake = types.ModuleType("pynvml")
    fake.NVMLError = type("NVMLError", (Exception,), {})
    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 2
    fake.nvmlDeviceGetHandleByIndex = lambda i: i
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    fake.nvmlDeviceGetUUID = lambda h: f"GPU-{h:04d}"
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: int(100_000 * (time.monotonic() - t0))
    fake.nvmlDeviceGetPowerUsage = lambda h: 100_000

    def processes(h):
        if h == 1:
            return []
        return [types.SimpleNamespace(pid=p.pid) for p in psutil.process_iter(["cmdline"])
                if "gpu-user-marker" in " ".join(p.info["cmdline"] or [])]

    fake.nvmlDeviceGetComputeRunningProcesses = processes
    fake.nvmlDeviceGetGraphicsRunningProcesses = lambda h: []
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = run_cli_in_process("--store", str(tmp_path / "m.db"), "measure", "--idle-seconds", "0", "--sample-hz", "50",
                             "--meters", "nvml", "--json", "--", PY, "-c",
                             "import time; time.sleep(1.5)  # gpu-user-marker")
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)["measurement"]
    devices = {d["device"] for d in m["devices"]}
    assert devices == {"gpu0", "gpu1"}
    gpu = m["job"]["components"]["gpu"]
    assert gpu["source"] == "counter" and 100 <= gpu["energy_j"] <= 100 * m["job"]["seconds"] + 1
    assert any("gpu1 watched but not used" in n for n in m["notes"])
    record, rows = stored(tmp_path / "m.db")
    assert json.loads(record["config_json"])["metadata"]["gpus_used"].keys() == {"gpu0"}
    assert [r["energy_j"] for r in rows if r["phase"] == "command" and r["device"] == "gpu1"] == [0.0]


# ---- signals: the real CLI in a process of its own ------------------------------------------------------------


def _start_measure(tmp_path: Path, child: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("WATTSCALE_STORE", None)
    return subprocess.Popen([PY, "-m", "wattscale", "--store", str(tmp_path / "m.db"), "measure", *FAST, "--json",
                             "--", PY, "-c", child], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    end = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "the command never started"
        time.sleep(0.02)


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_is_forwarded_once_and_the_partial_run_kept(tmp_path: Path, sent: signal.Signals) -> None:
    # The command handles the signal by noting it and exiting 7; it burns CPU until then.
    child = textwrap.dedent(f"""
        import os, signal, time
        def handler(signum, frame):
            with open("got", "a") as f:
                f.write(signal.Signals(signum).name + "\\n")
            time.sleep(0.3)  # a second delivery would be noted before this exit
            os._exit(7)
        signal.signal(signal.{sent.name}, handler)
        open("ready", "w").close()
        while True:
            pass
    """)
    proc = _start_measure(tmp_path, child)
    _wait_for(tmp_path / "ready", proc)
    time.sleep(0.5)  # some energy to keep
    os.killpg(proc.pid, sent)  # as a terminal sends Ctrl-C to its foreground process group: wattscale only
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 7, stderr
    assert (tmp_path / "got").read_text().splitlines() == [sent.name]  # delivered once, through wattscale
    data = json.loads(stdout)
    assert data["status"] == "interrupted" and data["forwarded_signals"] == [sent.name]
    assert f"{sent.name} forwarded" in data["message"] and "status 7" in data["message"]
    record, _ = stored(tmp_path / "m.db")
    assert record["status"] == "interrupted" and record["energy_j"] > 2.0  # >= 0.5 s of a busy core at 10 W
    assert json.loads(record["config_json"])["metadata"]["exit_status"] == 7


def test_the_third_signal_kills_a_command_that_ignores_them(tmp_path: Path) -> None:
    child = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nopen('ready', 'w').close()\n"
             "time.sleep(60)")
    proc = _start_measure(tmp_path, child)
    _wait_for(tmp_path / "ready", proc)
    for _ in range(3):
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.2)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, stderr
    data = json.loads(stdout)
    assert data["status"] == "interrupted" and data["forwarded_signals"] == ["SIGINT"] * 3
    assert "killed by signal 9 (SIGKILL)" in data["message"]

"""GPU power limit and SM clock as run settings: validation, run identity, set-and-restore on every exit path
(normal end, exception, Ctrl-C, SIGTERM in a real subprocess), refusals, the record in the store, grid factors.

This machine has no GPU: NVML is the fake of tests/fake_nvml.py, and the one seam that maps a torch device to
GPU UUIDs (`gpu_control.local_gpu_uuids`) is patched where a CPU training run stands in for a GPU one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fake_nvml import FakeGpu, fake_pynvml
from wattscale.config import build_run_config, load_toml, run_id_for
from wattscale.energy import gpu_control
from wattscale.energy.gpu_control import GpuConfig, GpuControl
from wattscale.errors import ConfigError
from wattscale.experiment import load_experiment, plan_experiment
from wattscale.store import open_store
from wattscale.train import train

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
NO_ROOT = ("gpu.power_limit_w: changing the power limit needs root (NVML: no permission); run as root or remove "
           "the setting")


def _config(gpu: dict | None = None, **train):
    tables = {"model": {"preset": "llama-tiny"}, "train": {"tokens": 10_000, "batch_size": 4, **train}}
    if gpu is not None:
        tables["gpu"] = gpu
    return build_run_config(tables)


def _sets(nvml) -> list[tuple]:
    return [c for c in nvml.calls if c[0] in ("set_power_limit", "lock_clocks", "reset_clocks")]


# --- settings and identity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu,message", [
    ({"power_limit_w": 0}, "gpu.power_limit_w: 0 must be a positive number of watts"),
    ({"power_limit_w": -250.0}, "gpu.power_limit_w: -250.0 must be a positive number of watts"),
    ({"sm_clock_mhz": 0}, "gpu.sm_clock_mhz: 0 must be a positive whole number of MHz"),
    ({"sm_clock_mhz": 1410.5}, "gpu.sm_clock_mhz: 1410.5 is not a int"),
    ({"power_limt_w": 300}, "gpu.power_limt_w: unknown key; did you mean gpu.power_limit_w?"),
])
def test_bad_settings_are_one_line_errors_naming_the_field(gpu: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _config(gpu)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_gpu_setting_on_a_cpu_run_is_refused_before_training() -> None:
    with pytest.raises(ConfigError, match=r"^gpu.sm_clock_mhz: needs a CUDA device, but train.device is 'cpu'"):
        _config({"sm_clock_mhz": 1410}, device="cpu")


def test_absent_gpu_settings_keep_run_ids_and_the_stored_config() -> None:
    plain, empty = _config(), _config({})
    assert run_id_for(plain, "fp0") == run_id_for(empty, "fp0") == "6aa515f192a54313"  # test_run_identity's golden
    assert "gpu" not in plain.to_dict()  # so the config hash of runs stored before the [gpu] table is unchanged


def test_gpu_settings_enter_the_run_id() -> None:
    ids = {run_id_for(_config(gpu), "fp0") for gpu in (
        {}, {"power_limit_w": 200}, {"power_limit_w": 300}, {"sm_clock_mhz": 1410},
        {"power_limit_w": 300, "sm_clock_mhz": 1410})}
    assert len(ids) == 5
    assert run_id_for(_config({"power_limit_w": 300}), "fp0") == run_id_for(_config({"power_limit_w": 300.0}), "fp0")
    assert _config({"power_limit_w": 300}).to_dict()["gpu"] == {"power_limit_w": 300.0, "sm_clock_mhz": None}


# --- set and restore -------------------------------------------------------------------------------------------


def test_sets_then_restores_on_a_normal_end_and_records_it() -> None:
    nvml = fake_pynvml()
    gpu = nvml.gpus[0]
    with GpuControl(GpuConfig(power_limit_w=300, sm_clock_mhz=1410), ["GPU-0000"], nvml) as control:
        assert (gpu.limit_mw, gpu.locked) == (300_000, (1410, 1410))
    assert (gpu.limit_mw, gpu.locked) == (700_000, None)
    assert _sets(nvml) == [("set_power_limit", "GPU-0000", 300_000), ("lock_clocks", "GPU-0000", 1410, 1410),
                           ("reset_clocks", "GPU-0000"), ("set_power_limit", "GPU-0000", 700_000)]
    assert nvml.calls[-1] == ("shutdown",)
    record = control.record()
    assert record["requested"] == {"power_limit_w": 300.0, "sm_clock_mhz": 1410} and record["state"] == "restored"
    (one,) = record["gpus"]
    assert one["uuid"] == "GPU-0000" and one["name"] == "NVIDIA H200"
    assert one["before"]["power_limit_w"] == 700.0 and one["before"]["sm_clock_mhz"] == 1980
    assert one["after"]["enforced_power_limit_w"] == 300.0 and one["after"]["sm_clock_mhz"] == 1410
    assert one["restored"]["power_limit_w"] == 700.0 and one["restored"]["clocks_unlocked"] is True
    assert one["restored"]["errors"] == []
    json.dumps(record)  # goes into the stored config as it is


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_restores_when_the_run_raises(error: BaseException) -> None:
    nvml = fake_pynvml()
    with pytest.raises(type(error)), GpuControl(GpuConfig(power_limit_w=250), ["GPU-0000"], nvml):
        assert nvml.gpus[0].limit_mw == 250_000
        raise error
    assert nvml.gpus[0].limit_mw == 700_000
    assert _sets(nvml) == [("set_power_limit", "GPU-0000", 250_000), ("set_power_limit", "GPU-0000", 700_000)]


def test_restores_exactly_once_and_puts_the_sigterm_handler_back() -> None:
    nvml = fake_pynvml()
    before = signal.getsignal(signal.SIGTERM)
    with GpuControl(GpuConfig(power_limit_w=250), ["GPU-0000"], nvml) as control:
        assert signal.getsignal(signal.SIGTERM) == control._on_sigterm
        control.restore()
        control.restore()
    assert signal.getsignal(signal.SIGTERM) == before
    assert [c for c in _sets(nvml) if c[2] == 700_000] == [("set_power_limit", "GPU-0000", 700_000)]


def test_no_settings_touch_nothing() -> None:
    nvml = fake_pynvml()
    with GpuControl(GpuConfig(), ["GPU-0000"], nvml) as control:
        pass
    assert nvml.calls == [] and control.record() is None


_CHILD = textwrap.dedent('''
    import signal, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from fake_nvml import fake_pynvml
    from wattscale.energy.gpu_control import GpuConfig, GpuControl

    def interrupt(signum, frame):
        raise KeyboardInterrupt  # as wattscale's CLI does with SIGTERM

    if sys.argv[2] == "chained":
        signal.signal(signal.SIGTERM, interrupt)
    nvml = fake_pynvml(log_path=Path(sys.argv[1]))
    try:
        with GpuControl(GpuConfig(power_limit_w=300, sm_clock_mhz=1410), ["GPU-0000"], nvml):
            print("ready", flush=True)
            time.sleep(120)
    except KeyboardInterrupt:
        sys.exit(130)
''')


@pytest.mark.parametrize("mode,status", [("default", -signal.SIGTERM), ("chained", 130)])
def test_sigterm_restores_then_ends_as_before(tmp_path: Path, mode: str, status: int) -> None:
    """SIGTERM to a real process: the GPU is restored once, then the previous handler runs (or SIGTERM's default)."""
    log = tmp_path / "nvml.log"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(log), mode, str(TESTS)], stdout=subprocess.PIPE,
                             env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == status
    finally:
        if child.poll() is None:
            child.kill()
    calls = [tuple(json.loads(line)) for line in log.read_text().splitlines()]
    assert [c for c in calls if c[0] != "init"] == [
        ("set_power_limit", "GPU-0000", 300_000), ("lock_clocks", "GPU-0000", 1410, 1410),
        ("reset_clocks", "GPU-0000"), ("set_power_limit", "GPU-0000", 700_000), ("shutdown",)]


def test_sigterm_while_setting_restores_what_was_set_and_sets_nothing_more() -> None:
    """A SIGTERM between two GPUs' settings (its previous handler ignoring it): the first is put back, the second
    is never touched."""
    nvml = fake_pynvml([FakeGpu(), FakeGpu(uuid="GPU-0001")])
    set_limit = nvml.nvmlDeviceSetPowerManagementLimit

    def set_then_signal(handle: int, limit_mw: int) -> None:
        set_limit(handle, limit_mw)
        if limit_mw == 300_000:
            os.kill(os.getpid(), signal.SIGTERM)

    nvml.nvmlDeviceSetPowerManagementLimit = set_then_signal
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with GpuControl(GpuConfig(power_limit_w=300), ["GPU-0000", "GPU-0001"], nvml) as control:
            assert [g.limit_mw for g in nvml.gpus] == [700_000, 700_000]
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _sets(nvml) == [("set_power_limit", "GPU-0000", 300_000), ("set_power_limit", "GPU-0000", 700_000)]
    assert control.record()["state"] == "restored"


# --- refusals ---------------------------------------------------------------------------------------------------


def test_out_of_range_power_limit_is_refused_before_anything_is_set() -> None:
    nvml = fake_pynvml()
    with pytest.raises(ConfigError) as err, GpuControl(GpuConfig(power_limit_w=1000), ["GPU-0000"], nvml):
        pass
    assert str(err.value) == ("gpu.power_limit_w: 1000 W is outside what GPU-0000 (NVIDIA H200) allows (200-700 W, "
                              "NVML's power management limit constraints); choose a limit in that range")
    assert _sets(nvml) == [] and nvml.calls[-1] == ("shutdown",)


def test_unsupported_sm_clock_names_the_nearest_supported_ones() -> None:
    nvml = fake_pynvml()
    with pytest.raises(ConfigError) as err, GpuControl(GpuConfig(sm_clock_mhz=1412), ["GPU-0000"], nvml):
        pass
    assert str(err.value) == ("gpu.sm_clock_mhz: 1412 MHz is not a supported SM clock of GPU-0000 (NVIDIA H200) "
                              "(345-1980 MHz in steps NVML lists); nearest: 1410 or 1425")
    assert _sets(nvml) == []


def test_clocks_not_supported() -> None:
    nvml = fake_pynvml([FakeGpu(clocks_supported=False)])
    with pytest.raises(ConfigError, match=r"^gpu.sm_clock_mhz: GPU-0000 \(NVIDIA H200\) does not support locking "
                                          r"the SM clock \(NVML: not supported\); remove the setting$"):
        GpuControl(GpuConfig(sm_clock_mhz=1410), ["GPU-0000"], nvml).apply()


def test_no_permission_on_the_second_gpu_restores_the_first() -> None:
    nvml = fake_pynvml([FakeGpu(), FakeGpu(uuid="GPU-0001", root=False)])
    with pytest.raises(ConfigError) as err, GpuControl(GpuConfig(power_limit_w=300), ["GPU-0000", "GPU-0001"], nvml):
        pass
    assert str(err.value) == NO_ROOT
    assert [g.limit_mw for g in nvml.gpus] == [700_000, 700_000]
    assert _sets(nvml) == [("set_power_limit", "GPU-0000", 300_000), ("set_power_limit", "GPU-0000", 700_000)]


def test_cpu_device_is_refused_at_run_time() -> None:
    import torch

    with pytest.raises(ConfigError, match=r"^gpu.power_limit_w: needs a CUDA device, but this run uses cpu; run on "
                                          r"a GPU or remove the setting$"):
        gpu_control.control_gpus(GpuConfig(power_limit_w=300), torch.device("cpu"))


# --- through the trainer and the CLI -------------------------------------------------------------------------

RUN_TOML = ('[model]\npreset = "llama-tiny"\n[train]\ntokens = 512\nbatch_size = 4\nseq_len = 32\n'
            'eval_tokens = 2048\n[data]\nsource = "synthetic"\nsynthetic_mb = 0.3\n'
            '[meter]\nidle_seconds = 0.0\nkinds = ["cpu-estimate"]\n[gpu]\npower_limit_w = 300\n')


@pytest.fixture
def fake_gpu_run(monkeypatch: pytest.MonkeyPatch):
    """The trainer's CPU device stands for GPU-0000 of a fake NVML (returned)."""
    nvml = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(gpu_control, "local_gpu_uuids", lambda settings, device: ["GPU-0000"])
    return nvml


def test_cli_refuses_without_permission_in_one_line_and_leaves_the_store_alone(
        fake_gpu_run, run_cli_in_process, tmp_path: Path) -> None:
    fake_gpu_run.gpus[0].root = False
    (tmp_path / "run.toml").write_text(RUN_TOML)
    result = run_cli_in_process("train", "--config", "run.toml", "--store", "w.db", "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip() == f"wattscale: error: {NO_ROOT}"
    assert not (tmp_path / "w.db").exists() and not (tmp_path / "wattscale_runs").exists()


def test_cli_refuses_a_gpu_setting_on_this_cpu_machine(run_cli_in_process, tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(RUN_TOML)
    result = run_cli_in_process("train", "--config", "run.toml", "--store", "w.db", "--no-progress")
    assert result.returncode == 2
    assert result.stderr.strip() == ("wattscale: error: gpu.power_limit_w: needs a CUDA device, but this run uses "
                                     "cpu; run on a GPU or remove the setting")
    assert not (tmp_path / "w.db").exists()


def test_a_training_run_sets_restores_and_stores_what_it_did(fake_gpu_run, tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "run.toml").write_text(RUN_TOML)
    tables = load_toml(tmp_path / "run.toml")
    tables["train"]["run_root"] = str(tmp_path / "runs")
    result = train(build_run_config(tables), str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    assert result.status == "finished" and fake_gpu_run.gpus[0].limit_mw == 700_000
    assert _sets(fake_gpu_run) == [("set_power_limit", "GPU-0000", 300_000), ("set_power_limit", "GPU-0000", 700_000)]
    with open_store(str(tmp_path / "w.db")) as store:
        stored = json.loads(store.get_run(result.run_id)["config_json"])
    assert stored["gpu"] == {"power_limit_w": 300.0, "sm_clock_mhz": None}
    (session,) = stored["resolved"]["gpu_control"]
    assert session["requested"] == {"power_limit_w": 300.0} and session["state"] == "restored"
    assert session["gpus"][0]["after"]["enforced_power_limit_w"] == 300.0
    assert session["gpus"][0]["restored"]["power_limit_w"] == 700.0


# --- grid factors -----------------------------------------------------------------------------------------------

STUDY = '''[experiment]
name = "power_sweep"
[model]
preset = "llama-tiny"
[train]
tokens = 4096
batch_size = 4
seq_len = 64
[data]
source = "synthetic"
synthetic_mb = 0.5
[grid]
"gpu.power_limit_w" = [200, 300, 400]
'''


def test_power_limit_is_a_grid_factor_with_one_run_id_per_value(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(STUDY)
    spec = load_experiment(path)
    plan = plan_experiment(spec, tmp_path / "cache", prepare=False)
    limits = sorted(r.config.gpu.power_limit_w for r in plan.runs)
    assert limits == [200.0, 300.0, 400.0] and len({r.run_id for r in plan.runs}) == 3
    bare = tmp_path / "bare.toml"
    bare.write_text(STUDY.replace('"gpu.power_limit_w"', "power_limit_w"))  # only [gpu] has the key
    assert [f for f, _ in load_experiment(bare).grid] == ["gpu.power_limit_w"]
    cpu = tmp_path / "cpu.toml"
    cpu.write_text(STUDY.replace("seq_len = 64", 'seq_len = 64\ndevice = "cpu"'))
    with pytest.raises(ConfigError, match=r"^condition 'power_limit_w=200': gpu.power_limit_w: needs a CUDA "
                                          r"device, but train.device is 'cpu'"):
        plan_experiment(load_experiment(cpu), tmp_path / "cache", prepare=False)


def test_a_study_without_gpu_settings_keeps_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace('"gpu.power_limit_w" = [200, 300, 400]', '"train.lr" = [0.001, 0.003]'))
    spec = load_experiment(path)
    assert "gpu" not in spec.to_dict()
    assert spec.spec_hash() == "975c8deafa437370450cc0628f191f9344f970e5bdf6996b62ec04a79bf747e9"  # before [gpu]
    path.write_text(path.read_text() + "[gpu]\npower_limit_w = 250\n")
    assert load_experiment(path).to_dict()["gpu"] == {"power_limit_w": 250}

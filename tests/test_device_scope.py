"""A measurement reads only the GPUs its process uses: CUDA_VISIBLE_DEVICES (indexes and UUIDs), the rank's
GPU under torchrun, explicit choices, and no GPU at all for a CPU run on a GPU host. NVML is a fake here
that numbers four GPUs in PCI order, as the real one does, whatever CUDA_VISIBLE_DEVICES says."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from test_meters import _fake_pynvml
from wattscale.energy.gpus import NvmlGpu, choose_gpus
from wattscale.energy.meter import MeterError
from wattscale.energy.nvml import NvmlMeter

HOST = [NvmlGpu(i, f"GPU-000{i}-aaaa", "NVIDIA H100 80GB HBM3") for i in range(4)]


def uuids(*indexes: int) -> tuple[str, ...]:
    return tuple(HOST[i].uuid for i in indexes)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, (0, 1, 2, 3)),  # nothing set: every GPU of the host is visible
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, (2, 3)),
    ({"CUDA_VISIBLE_DEVICES": "GPU-0003-aaaa,GPU-0001"}, (3, 1)),  # UUIDs, in the given order; a prefix is enough
    ({"CUDA_VISIBLE_DEVICES": "1,7,2"}, (1,)),  # CUDA stops at the first invalid entry
    ({"CUDA_VISIBLE_DEVICES": ""}, ()),  # no GPU at all
    ({"CUDA_VISIBLE_DEVICES": "2,3", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, (3,)),  # a torchrun rank: its own GPU
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, (3,)),
])
def test_auto_measures_the_gpus_the_process_can_use(env: dict[str, str], expected: tuple[int, ...]) -> None:
    assert choose_gpus("auto", HOST, env).uuids == uuids(*expected)


def test_explicit_choices_count_among_the_visible_gpus() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert choose_gpus([0], HOST, env).uuids == uuids(2)  # cuda:0 of this process is the host's GPU 2
    assert choose_gpus(["GPU-0001"], HOST, env).uuids == uuids(1)
    assert choose_gpus([], HOST, env).uuids == ()
    with pytest.raises(MeterError, match="CUDA index 2 does not exist; 2 GPU"):
        choose_gpus([2], HOST, env)
    with pytest.raises(MeterError, match="matches several GPUs"):
        choose_gpus(["GPU-000"], HOST, {})
    with pytest.raises(MeterError, match="MIG instance"):
        choose_gpus("auto", HOST, {"CUDA_VISIBLE_DEVICES": "MIG-4b1f-0"})


def test_torch_knows_cuda_order_exactly_and_mixed_models_are_noted() -> None:
    # PyTorch (CUDA initialised) gives the visible devices' UUIDs in CUDA's order: taken as they are.
    assert choose_gpus("auto", HOST, {}, torch_uuids=["0002-aaaa", "0000-aaaa"]).uuids == uuids(2, 0)
    mixed = [*HOST[:2], NvmlGpu(2, "GPU-0002-aaaa", "NVIDIA A100-SXM4-80GB")]
    choice = choose_gpus("auto", mixed, {"CUDA_VISIBLE_DEVICES": "1"})
    assert choice.uuids == ("GPU-0001-aaaa",) and "PCI order" in choice.notes[0]
    assert not choose_gpus("auto", mixed, {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).notes
    assert "measuring all 4 GPUs" in choose_gpus("auto", HOST, {}).notes[0]


def test_nvml_meter_reads_only_the_visible_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0] * 4, [100_000, 200_000, 300_000, 400_000]))
    meter = NvmlMeter(env={"CUDA_VISIBLE_DEVICES": "3,1"})
    assert meter.devices == ("gpu3", "gpu1") and meter.uuids == ("GPU-0003", "GPU-0001")
    assert meter.read().power_w == {"gpu3": 400.0, "gpu1": 200.0}
    assert [g["uuid"] for g in meter.describe()["inputs"]["gpus"]] == ["GPU-0003", "GPU-0001"]
    meter.close()
    with pytest.raises(MeterError, match="no GPU selected"):
        NvmlMeter(env={"CUDA_VISIBLE_DEVICES": ""})


def test_a_cpu_run_on_a_gpu_host_measures_no_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 cache_dir: Path) -> None:
    from wattscale.config import build_run_config
    from wattscale.store import open_store
    from wattscale.train import train

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml([0] * 4, [300_000] * 4))
    config = build_run_config(overrides={
        "model": {"preset": "llama-tiny"},
        "train": {"tokens": 1024, "batch_size": 4, "seq_len": 32, "eval_tokens": 1024, "device": "cpu",
                  "run_root": str(tmp_path / "runs")},
        "data": {"source": "synthetic", "synthetic_mb": 0.3},
        "meter": {"kinds": ["nvml", "cpu-estimate"], "idle_seconds": 0, "host_registry": str(tmp_path / "host")}})
    result = train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
    with open_store(str(tmp_path / "w.db")) as store:
        record = store.get_run(result.run_id)
    energy = json.loads(record["energy_json"])
    assert [d["component"] for d in energy["devices"]] == ["cpu_estimate"]
    assert "not used: nvml: not used, this process uses no GPU" in energy["notes"]
    assert record["energy_source"] == "estimated"

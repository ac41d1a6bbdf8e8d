"""wattscale.hardware: the datasheet peak table against real device names, precision and TF32, run peaks."""

from __future__ import annotations

import re

import pytest
import torch

from wattscale import hardware
from wattscale.errors import ConfigError
from wattscale.hardware import (
    GPU_PEAKS,
    MFU_FORMULA,
    apply_matmul_precision,
    datasheet_peak_flops,
    match_gpu,
    peak_flops,
    resolve_precision,
    run_peak_flops,
)

# Names as torch.cuda.get_device_name() / nvidia-smi report them on real machines -> the table entry.
REAL_NAMES = {
    "NVIDIA H100 80GB HBM3": "H100 SXM",
    "NVIDIA H100 SXM5 80GB": "H100 SXM",  # as some inventories spell it; torch reports the line above
    "NVIDIA H100 PCIe": "H100 PCIe",
    "NVIDIA H100 NVL": "H100 NVL",
    "NVIDIA H200": "H200",
    "NVIDIA H200 NVL": "H200 NVL",
    "NVIDIA GH200 480GB": "GH200",
    "NVIDIA A100-SXM4-40GB": "A100 SXM",
    "NVIDIA A100-SXM4-80GB": "A100 SXM",
    "NVIDIA A100-SXM-80GB": "A100 SXM",
    "NVIDIA A100-PCIE-40GB": "A100 PCIe",
    "NVIDIA A100 80GB PCIe": "A100 PCIe",
    "NVIDIA L40S": "L40S",
    "NVIDIA L4": "L4",
    "NVIDIA A10": "A10",
}


@pytest.fixture
def restore_matmul_precision():
    """apply_matmul_precision changes a process-wide torch setting: put the default back afterwards."""
    yield
    torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize(("device_name", "entry"), REAL_NAMES.items())
def test_every_real_device_name_maps_to_exactly_its_entry(device_name: str, entry: str) -> None:
    assert match_gpu(device_name).name == entry
    matching = [e.name for e in GPU_PEAKS if re.fullmatch(e.pattern, device_name, flags=re.IGNORECASE)]
    assert matching == [entry]  # no second, shadowed entry


def test_a10_and_a100_do_not_match_each_other_and_near_names_are_unknown() -> None:
    assert match_gpu("NVIDIA A10").name == "A10"
    assert match_gpu("NVIDIA A100-SXM4-80GB").name == "A100 SXM"
    assert match_gpu("NVIDIA A100 80GB PCIe").name == "A100 PCIe"
    # Substrings of a known name, or a known name inside another, are not that part.
    for name in ("NVIDIA A10G", "NVIDIA L40", "NVIDIA H100", "NVIDIA H20", "NVIDIA H800", "NVIDIA A100"):
        assert match_gpu(name) is None, name
    assert match_gpu("NVIDIA H200 NVL").name == "H200 NVL" and match_gpu("NVIDIA H200").name == "H200"


def test_unknown_gpu_gives_none_and_says_to_add_it() -> None:
    value, source = datasheet_peak_flops("NVIDIA A10G", "bf16")
    assert value is None and "unknown GPU 'NVIDIA A10G'" in source and "add it to GPU_PEAKS" in source


def test_datasheet_peaks_for_the_dtype_actually_used() -> None:
    h100 = "NVIDIA H100 80GB HBM3"
    assert datasheet_peak_flops(h100, "bf16") == (989.5e12, "datasheet H100 SXM bf16 dense")
    value, source = datasheet_peak_flops(h100, "fp32", tf32=True)
    assert value == 494.5e12 and source.startswith("datasheet H100 SXM tf32 dense") and "TF32 matmuls on" in source
    value, source = datasheet_peak_flops(h100, "fp32", tf32=False)
    assert value == 67e12 and source.startswith("datasheet H100 SXM fp32 dense") and "TF32 matmuls off" in source
    assert datasheet_peak_flops(h100, "tf32", tf32=True)[0] == 494.5e12
    value, source = datasheet_peak_flops(h100, "tf32", tf32=False)  # asked for, but not switched on: fp32 peak
    assert value == 67e12 and "although precision tf32 was asked for" in source
    assert datasheet_peak_flops("NVIDIA A100-SXM4-40GB", "fp32", tf32=True)[0] == 156e12
    assert datasheet_peak_flops("NVIDIA L4", "bf16")[0] == 121e12
    value, source = datasheet_peak_flops("NVIDIA H200 NVL", "fp32", tf32=False)  # not confirmed: no guess
    assert value is None and "no confirmed datasheet fp32 peak for H200 NVL" in source
    with pytest.raises(ConfigError, match="precision"):
        datasheet_peak_flops(h100, "fp16")


def test_every_entry_is_dense_and_ordered_like_the_hardware() -> None:
    for e in GPU_PEAKS:
        known = [v for v in (e.bf16_flops, e.tf32_flops, e.fp32_flops) if v is not None]
        assert known == sorted(known, reverse=True), e.name  # bf16 > tf32 > fp32 on every tensor-core part
        if e.tf32_flops is not None:
            assert e.bf16_flops == pytest.approx(2 * e.tf32_flops, rel=0.02), e.name  # dense TF32 = bf16 / 2 (rounded)


def test_peak_flops_on_cpu_has_no_datasheet_figure() -> None:
    assert peak_flops(torch.device("cpu"), "fp32") == (None, "no datasheet peak for CPUs; see measured_matmul_flops")


def test_tf32_is_a_cuda_only_precision() -> None:
    cpu = torch.device("cpu")
    for call in (lambda: resolve_precision("tf32", cpu), lambda: apply_matmul_precision(cpu, "tf32"),
                 lambda: run_peak_flops(cpu, "tf32")):
        with pytest.raises(ConfigError, match=r"train\.precision: 'tf32'.*use fp32 or bf16"):
            call()
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        resolve_precision("fp16", cpu)


def test_tf32_precision_is_accepted_by_the_config_and_refused_on_an_explicit_cpu() -> None:
    from wattscale.config import PRECISIONS, build_run_config

    assert "tf32" in PRECISIONS
    config = build_run_config(overrides={"model": {"preset": "llama-tiny"},
                                         "train": {"tokens": 1024, "precision": "tf32", "device": "cuda"}})
    assert config.train.precision == "tf32"
    with pytest.raises(ConfigError, match=r"train\.precision: 'tf32'.*needs a CUDA device"):
        build_run_config(overrides={"model": {"preset": "llama-tiny"},
                                    "train": {"tokens": 1024, "precision": "tf32", "device": "cpu"}})


def test_fp32_sets_highest_and_returns_what_it_set(restore_matmul_precision) -> None:
    torch.set_float32_matmul_precision("high")  # as some earlier code in the process might have left it
    record = apply_matmul_precision(torch.device("cpu"), "fp32")
    assert torch.get_float32_matmul_precision() == "highest"
    assert record == {"precision": "fp32", "float32_matmul_precision": "highest", "tf32": None}
    record = apply_matmul_precision(torch.device("cpu"), "bf16")  # bf16 leaves the setting alone
    assert record == {"precision": "bf16", "float32_matmul_precision": "highest", "tf32": None}


def test_run_peak_on_cpu_is_measured_per_process_and_multiplied(monkeypatch) -> None:
    monkeypatch.setattr(hardware, "_cpu_peak_for_runs", lambda device, dtype, threads: 2.0e11)
    one = run_peak_flops(torch.device("cpu"), "fp32")
    assert one == {"peak_flops": 2.0e11, "peak_flops_per_device": 2.0e11, "peak_flops_devices": 1,
                   "peak_flops_source": one["peak_flops_source"], "mfu_formula": MFU_FORMULA, "tf32": None}
    source = one["peak_flops_source"]
    assert source.startswith("measured fp32 1024x1024 matmul") and "per process" in source
    four = run_peak_flops(torch.device("cpu"), "bf16", devices_used=4)
    assert four["peak_flops"] == 8.0e11 and four["peak_flops_per_device"] == 2.0e11 and four["peak_flops_devices"] == 4
    assert MFU_FORMULA == "MFU = achieved FLOP/s / (peak FLOP/s per device x devices used)"
    with pytest.raises(ConfigError, match="devices_used"):
        run_peak_flops(torch.device("cpu"), "fp32", devices_used=0)


def test_run_peak_on_cuda_from_the_table_times_devices(monkeypatch) -> None:
    """The CUDA path without a GPU: the device name and TF32 state stand in for torch's answers."""
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(hardware, "tf32_matmuls_enabled", lambda: True)
    cuda = torch.device("cuda")
    record = run_peak_flops(cuda, "fp32", devices_used=8)
    assert record["peak_flops_per_device"] == 156e12 and record["peak_flops"] == 8 * 156e12
    assert record["tf32"] is True and record["peak_flops_source"].startswith("datasheet A100 SXM tf32 dense")
    monkeypatch.setattr(hardware, "tf32_matmuls_enabled", lambda: False)
    record = run_peak_flops(cuda, "fp32", devices_used=2)
    assert record["peak_flops"] == 2 * 19.5e12 and record["tf32"] is False
    record = run_peak_flops(cuda, "bf16", devices_used=2)
    assert record["peak_flops"] == 2 * 312e12 and record["tf32"] is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A10G")
    record = run_peak_flops(cuda, "bf16", devices_used=2)
    assert record["peak_flops"] is None and record["peak_flops_per_device"] is None
    assert "add it to GPU_PEAKS" in record["peak_flops_source"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_apply_matmul_precision_on_cuda_switches_tf32(restore_matmul_precision) -> None:
    cuda = torch.device("cuda")
    record = apply_matmul_precision(cuda, "tf32")
    assert record == {"precision": "tf32", "float32_matmul_precision": "high", "tf32": True}
    assert run_peak_flops(cuda, "tf32")["tf32"] is True
    record = apply_matmul_precision(cuda, "fp32")
    assert record == {"precision": "fp32", "float32_matmul_precision": "highest", "tf32": False}
    peak = run_peak_flops(cuda, "fp32")
    assert peak["tf32"] is False and "TF32 matmuls off" in peak["peak_flops_source"]
    name = torch.cuda.get_device_name(cuda)
    assert (peak["peak_flops"] is not None) == (match_gpu(name) is not None and match_gpu(name).fp32_flops is not None)

"""benchmarks/train_throughput.py: --precision, MFU against the measured peak of the dtype in use, the ablation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"
TINY = ["--preset", "llama-tiny", "--seq-len", "32", "--batch", "2", "--rounds", "2", "--steps-per-round", "1",
        "--warmup-steps", "1", "--threads", "1", "--peak-seconds", "0.2"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_sets_peak_dtype_and_mfu(bench, tmp_path, precision):
    out = tmp_path / "r.json"
    result = bench.main([*TINY, "--precision", precision, "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["precision"] == precision
    assert result["peak_source"].startswith(f"measured {precision} 2048x2048 matmul")
    other = "float32" if precision == "bf16" else "bfloat16"
    assert result["other_dtype_matmul_peak"]["dtype"] == other
    assert (result["autocast"] is not None) == (precision == "bf16")
    ours = result["ours"]
    # MFU is achieved FLOP/s over the measured peak of the dtype in use, for each FLOP counting.
    for counting, fpt in result["flops_per_token"].items():
        achieved = ours["tokens_per_second"] * fpt
        assert ours[f"mfu_{counting}"] == pytest.approx(achieved / result["peak_flops_per_second"])
    assert ours["tokens_per_second"] == pytest.approx(64 / ours["seconds_per_step_median"])
    assert result["speedup_ours_over_reference"] == pytest.approx(
        result["reference"]["seconds_per_step_median"] / ours["seconds_per_step_median"])
    assert len(ours["speedup_over_reference_paired_rounds"]) == 2
    assert result["target_speedup"] == {"fp32": 1.1, "bf16": 1.5}[precision]
    machine = result["machine"]
    assert set(machine["cpu_flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert len(machine["load_average_1_5_15_before"]) == 3 and len(machine["load_average_1_5_15_after"]) == 3
    shapes = result["model_shape_matmuls"]
    assert shapes["rows"] == 64 and shapes["flops_per_second"] > 0
    assert list(shapes["per_shape_flops_per_second"]) == [  # qkv, out, gate_up, down, the (tied) head
        "64x128 (x2)", "64x64 (x2)", "64x352 (x2)", "176x64 (x2)", "64x512 (x1)"]
    assert result["attention_sdpa_seconds_per_step"] > 0
    assert result["ablation"] is None


def test_ablation_times_each_variant_side_by_side(bench, tmp_path, monkeypatch):
    eager = tuple(v for v in bench.ABLATION if not v.compile)  # compiling is the slow part; the trainer tests it
    monkeypatch.setattr(bench, "ABLATION", eager)
    result = bench.main([*TINY, "--precision", "bf16", "--ablation", "--out", str(tmp_path / "a.json")])
    rows = result["ablation"]
    assert [r["variant"] for r in rows] == [v.name for v in eager]
    assert [(r["loss"], r["adamw"]) for r in rows] == [("logits", "foreach"), ("chunked", "foreach"),
                                                       ("chunked", "fused")]
    assert all(len(r["seconds_per_step_rounds"]) == 2 and r["speedup_over_reference"] > 0 for r in rows)
    assert result["ours_variant"] == eager[-1].name
    assert "--ablation" in result["command"] and "--precision bf16" in result["command"]


def test_unknown_precision_is_refused(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main([*TINY, "--precision", "fp16"])
    assert exc.value.code == 2
    assert "--precision" in capsys.readouterr().err

"""train.deterministic: deterministic kernels for the run only, recorded, and what is bit-identical on a CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wattscale.config import build_run_config, run_id_for
from wattscale.store import open_store
from wattscale.train import train
from wattscale.train.determinism import CUBLAS_WORKSPACE, attention_backend, determinism_record, deterministic_kernels


def test_deterministic_kernels_are_set_for_the_block_only(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert not torch.are_deterministic_algorithms_enabled()
    with deterministic_kernels(True, "cuda"):
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
        # math attention only: the flash and memory-efficient backwards accumulate with atomics
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()
        assert determinism_record(True, "cuda") == {"deterministic": True, "attention_backend": "math",
                                                    "cublas_workspace_config": CUBLAS_WORKSPACE}
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.backends.cuda.flash_sdp_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    with deterministic_kernels(True, "cpu"):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
        assert torch.backends.cuda.flash_sdp_enabled()  # CPU: torch's choice (flash), deterministic already
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with deterministic_kernels(False, "cuda"):
        assert not torch.are_deterministic_algorithms_enabled()
    assert attention_backend(False, "cuda") == attention_backend(True, "cpu") == "default"


def test_cpu_attention_backward_is_bit_identical_at_any_thread_count() -> None:
    """The claim behind leaving CPU attention alone: the same bits repeated, at 1 and 2 threads."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 64, 16, generator=generator, requires_grad=True) for h in (4, 2, 2))
    before = torch.get_num_threads()
    outs = []
    try:
        with deterministic_kernels(True, "cpu"):  # raises if the CPU kernel had no deterministic implementation
            for threads in (1, 2, 1, 2):
                torch.set_num_threads(threads)
                for t in (q, k, v):
                    t.grad = None
                y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                (y * y).sum().backward()
                outs.append([y.detach(), q.grad, k.grad, v.grad])
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for out in outs[1:] for a, b in zip(outs[0], out, strict=True))


def _config(tmp_path: Path, **train_table):
    table = {"tokens": 600, "batch_size": 4, "seq_len": 32, "eval_interval_tokens": 0,
             "run_root": str(tmp_path / "runs"), "eval_tokens": 512, **train_table}
    return build_run_config(overrides={"model": {"preset": "llama-tiny"}, "train": table,
                                       "data": {"source": "synthetic", "synthetic_mb": 0.3},
                                       "meter": {"idle_seconds": 0.0, "kinds": ("none",)}})


def test_a_deterministic_run_is_recorded_and_cpu_eager_bits_do_not_depend_on_it(tmp_path: Path, cache_dir: Path,
                                                                                monkeypatch) -> None:
    import wattscale.train.session as session

    seen = []
    real_evaluate = session.evaluate_on_ranks

    def evaluate(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(session, "evaluate_on_ranks", evaluate)
    plain, det = _config(tmp_path / "a"), _config(tmp_path / "b", deterministic=True)
    assert run_id_for(det, "fp") != run_id_for(plain, "fp")
    results = [train(config, str(tmp_path / "w.db"), show_progress=False, cache_dir=cache_dir)
               for config in (plain, det)]
    assert seen == [False, True] and not torch.are_deterministic_algorithms_enabled()
    with open_store(str(tmp_path / "w.db")) as store:
        records = [store.get_run(r.run_id) for r in results]
    infos = [json.loads(r["device_info_json"])["determinism"] for r in records]
    assert infos == [{"deterministic": False, "attention_backend": "default", "cublas_workspace_config": None},
                     {"deterministic": True, "attention_backend": "default", "cublas_workspace_config": None}]
    assert json.loads(records[1]["config_json"])["train"]["deterministic"] is True
    # CPU, eager, same machine and seed: identical bits with or without deterministic kernels
    weights = [load_file(str(r.run_dir / "final" / "model.safetensors")) for r in results]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])


@pytest.mark.parametrize("value", ["yes", 1])
def test_deterministic_must_be_a_bool(run_cli_in_process, tmp_path: Path, value) -> None:
    path = tmp_path / "run.toml"
    literal = f'"{value}"' if isinstance(value, str) else str(value)
    path.write_text(f'[model]\npreset = "llama-tiny"\n[train]\ntokens = 1000\ndeterministic = {literal}\n')
    bad = run_cli_in_process("train", "--config", str(path), "--no-progress")
    assert bad.returncode == 2 and "train.deterministic" in bad.stderr

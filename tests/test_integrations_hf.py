"""The Hugging Face Trainer callback: a tiny LlamaForCausalLM trained for a few steps on CPU with evaluation
and checkpoints, measured by a fake constant-power meter, so the phases, tokens and stored run have exact
references (the attention masks fed, the model's own parameter count)."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

if importlib.util.find_spec("transformers") is None:
    pytest.skip("transformers is not installed: pip install -e '.[hf]'", allow_module_level=True)

# transformers is imported by the tests that use it (through these helpers), not when every xdist worker
# collects this file: it costs seconds per process.
from integration_fixtures import SEQ, VOCAB, ConstantMeter, Recorder, mask_tokens, rows, tiny_model  # noqa: E402
from wattscale.errors import ConfigError  # noqa: E402
from wattscale.flops import flops_per_token_from_config  # noqa: E402
from wattscale.integrations.common import EnergySession, count_tokens, model_facts  # noqa: E402
from wattscale.store import open_store  # noqa: E402


def stop_at(error: BaseException, step: int) -> Any:
    """A TrainerCallback that raises `error` at the end of optimizer step `step`."""
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise error

    return Stop()


def trainer_for(tmp_path: Path, train: list, val: list, report_to: list[str] | None = None, **overrides) -> Any:
    from transformers import Trainer, TrainingArguments
    from transformers.data.data_collator import default_data_collator

    args = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, gradient_accumulation_steps=2,
                per_device_eval_batch_size=4, max_steps=4, eval_strategy="steps", eval_steps=2,
                save_strategy="steps", save_steps=2, logging_steps=1, report_to=report_to or [], use_cpu=True,
                seed=0, dataloader_num_workers=0, learning_rate=1e-3, disable_tqdm=True)
    args.update(overrides)
    return Trainer(model=tiny_model(), args=TrainingArguments(**args), train_dataset=train, eval_dataset=val,
                   data_collator=default_data_collator)


def callback(tmp_path: Path, **kwargs) -> Any:
    from wattscale.integrations.hf import WattscaleCallback

    return WattscaleCallback(store=str(tmp_path / "runs.db"), meters=[ConstantMeter()], sample_hz=50,
                             idle_seconds=0, host_registry=str(tmp_path / "host"), **kwargs)


def test_the_package_imports_neither_transformers_nor_lightning() -> None:
    code = ("import sys, wattscale.integrations, wattscale.integrations.common; "
            "print(sorted(m for m in ('transformers', 'lightning') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
    assert out.stdout.strip() == "[]"


def test_count_tokens_reads_masks_ids_and_tuples() -> None:
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert count_tokens({"input_ids": ids, "attention_mask": mask}) == 8
    from transformers import BatchEncoding

    assert count_tokens(BatchEncoding({"input_ids": ids, "attention_mask": mask})) == 8
    assert count_tokens({"input_ids": ids}) == 10
    assert count_tokens((ids, ids)) == 10 and count_tokens([{"input_ids": ids, "attention_mask": mask}]) == 8
    assert count_tokens(ids) == 10 and count_tokens(torch.zeros(2, 3)) == 0 and count_tokens("text") == 0


def test_model_facts_match_wattscale_flops_for_a_llama_and_say_why_not_otherwise() -> None:
    model = tiny_model()
    facts = model_facts(model, SEQ)
    params = sum(p.numel() for p in model.parameters())
    shape = {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64, "vocab_size": VOCAB,
             "context_length": 64, "tie_embeddings": False}
    assert facts.params == params and facts.flops_per_token == flops_per_token_from_config(shape, seq_len=SEQ)
    from transformers import LlamaConfig, LlamaForCausalLM

    biased = LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=64, vocab_size=VOCAB, attention_bias=True))
    other = model_facts(biased, SEQ)
    assert other.flops_per_token is None and "parameters" in other.flops_note
    plain = model_facts(torch.nn.Linear(3, 2), SEQ)
    assert (plain.params, plain.flops_per_token, plain.name) == (8, None, "Linear") and "config" in plain.flops_note


def test_each_rank_records_its_own_run_and_only_local_rank_0_reads_rapl(tmp_path: Path) -> None:
    class Broken(Recorder):
        def log_metrics(self, metrics, step):
            raise OSError("disk full")

    broken, kept = Broken(), Recorder()
    session = EnergySession(store=None, name="job", trackers=[broken, kept], meters=None, gpus=[], metadata=None,
                            settings={"idle_seconds": 0, "host_registry": str(tmp_path / "host")})
    session.start(torch.nn.Linear(4, 4), SEQ, rank=3, world_size=4, local_rank=1)
    monitor = session.monitor
    assert monitor.name == "job-rank3" and (monitor.metadata["rank"], monitor.metadata["world_size"]) == (3, 4)
    assert "rapl" not in monitor.config.kinds and "cpu-estimate" in monitor.config.kinds
    with pytest.warns(RuntimeWarning, match="Broken.log_metrics.*disk full"):
        session.tracker_metrics(session.interval_metrics(), step=1)
    assert session.trackers == [kept] and len(kept.metrics) == 1
    assert session.finish().status == "finished" and (broken.closed, kept.closed) == (0, 1)
    with pytest.raises(ConfigError, match="trackers: object has no log_params"):
        EnergySession(store=None, name=None, trackers=[object()], meters=None, gpus=[], metadata=None, settings={})


def test_trainer_run_is_stored_with_phases_tokens_flops_and_logs(tmp_path: Path, run_cli_in_process) -> None:
    train, val = rows(32, seed=1), rows(8, seed=2)
    trainer = trainer_for(tmp_path, train, val)
    tracker = Recorder()
    cb = callback(tmp_path, name="tiny-ft", trackers=[tracker]).attach(trainer)
    trainer.train()

    result = cb.result
    assert result.status == "finished"
    # 4 optimizer steps x 2 micro-batches x 4 rows = one pass over the 32 rows: every mask was fed once;
    # the first step is the warm-up. Evaluation ran twice (steps 2 and 4) over the 8 validation rows.
    assert result.phase("warmup").tokens + result.phase("train").tokens == mask_tokens(train)
    assert (result.phase("warmup").steps, result.phase("train").steps) == (1, 3)
    assert result.phase("eval").tokens == 2 * mask_tokens(val)
    for phase in ("train", "eval", "save"):
        assert result.phase(phase).energy_j > 0 and result.phase(phase).seconds > 0
    assert result.phase("save").tokens == 0

    with open_store(str(tmp_path / "runs.db")) as store:
        (record,) = store.list_runs()
        stored_rows = store.energy_measurements(record["run_id"])
    facts = model_facts(trainer.model, SEQ)
    assert (record["kind"], record["status"], record["name"]) == ("measured", "finished", "tiny-ft")
    assert record["params_total"] == facts.params and record["flops_per_token"] == pytest.approx(facts.flops_per_token)
    assert record["train_tokens"] == result.phase("train").tokens
    assert {"train", "eval", "save", "warmup"} <= set(record["phases"])
    assert {r["phase"] for r in stored_rows} >= {"train", "eval", "save"}

    history = trainer.state.log_history
    train_logs = [h for h in history if "loss" in h]
    eval_logs = [h for h in history if "eval_loss" in h]
    assert len(train_logs) == 4 and len(eval_logs) == 2
    for log in train_logs:
        assert log["energy_j"] > 0 and log["power_w"] == pytest.approx(100.0, rel=0.05)
        assert log["energy_j_per_token"] > 0
    assert [log["energy_j"] for log in train_logs] == sorted(log["energy_j"] for log in train_logs)
    for log in eval_logs:  # this evaluation's energy over its tokens
        assert log["eval_energy_j"] > 0
        assert log["eval_energy_j_per_token"] == pytest.approx(log["eval_energy_j"] / mask_tokens(val))

    (params,) = tracker.params
    assert params["run_id"] == result.run_id and params["params"] == facts.params and params["model"]
    assert params["flops_per_token"] == pytest.approx(facts.flops_per_token)
    assert tracker.closed == 1
    assert {"energy_j/train", "energy_j/eval", "energy_j/save"} <= set(tracker.metrics[-1][0])
    assert any("energy_j_per_token" in m for m, _ in tracker.metrics)
    assert [step for _, step in tracker.metrics[:4]] == [1, 2, 2, 3]

    shown = run_cli_in_process("--store", str(tmp_path / "runs.db"), "runs", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)[0]["kind"] == "measured"
    energy = run_cli_in_process("--store", str(tmp_path / "runs.db"), "energy", result.run_id, "--json")
    assert energy.returncode == 0, energy.stderr
    assert {"train", "eval", "save"} <= {p["phase"] for p in json.loads(energy.stdout)["phases"]}


@pytest.mark.parametrize("eval_strategy", ["epoch", "no"])
def test_evaluation_and_save_at_epoch_end_are_their_own_phases(tmp_path: Path, eval_strategy: str) -> None:
    train, val = rows(8, seed=11), rows(4, seed=12)
    trainer = trainer_for(tmp_path, train, val, max_steps=-1, num_train_epochs=2, eval_strategy=eval_strategy,
                          save_strategy="epoch", gradient_accumulation_steps=1)
    cb = callback(tmp_path, warmup_steps=0).attach(trainer)
    entered = []
    set_phase = cb.session.set_phase
    cb.session.set_phase = lambda phase: (entered.append(phase) if phase != cb.session.phase else None,
                                          set_phase(phase))
    trainer.train()
    result = cb.result
    assert result.phase("train").tokens == 2 * mask_tokens(train) and result.phase("train").steps == 4
    evaluations = 2 if eval_strategy == "epoch" else 0
    assert entered.count("save") == 2 and entered.count("eval") == evaluations  # one per epoch
    assert result.phase("eval").tokens == evaluations * mask_tokens(val)
    assert result.phase("save").energy_j > 0 and result.phase("save").tokens == 0


def test_tensorboard_event_file_gets_the_energy_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = trainer_for(tmp_path, rows(16, seed=3), rows(4, seed=4), report_to=["tensorboard"], max_steps=2,
                          eval_steps=1, save_strategy="no")
    callback(tmp_path).attach(trainer)
    trainer.train()
    (event_file,) = glob.glob(str(tmp_path / "out" / "**" / "events.out.tfevents*"), recursive=True)
    tags = EventAccumulator(event_file).Reload().Tags()["scalars"]
    assert {"train/energy_j", "train/power_w", "train/energy_j_per_token", "eval/energy_j",
            "eval/energy_j_per_token"} <= set(tags)


def test_a_callback_given_to_the_trainer_warns_that_reporters_miss_the_metrics(tmp_path: Path) -> None:
    cb = callback(tmp_path)
    trainer = trainer_for(tmp_path, rows(8, seed=5), rows(4, seed=6), report_to=["tensorboard"], max_steps=1,
                          gradient_accumulation_steps=1, eval_strategy="no", save_strategy="no")
    trainer.add_callback(cb)
    with pytest.warns(RuntimeWarning, match="attach"):
        trainer.train()
    assert cb.result.status == "finished" and "energy_j" in trainer.state.log_history[0]


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "interrupted")])
def test_training_that_raises_keeps_the_partial_run(tmp_path: Path, error: BaseException, status: str) -> None:
    trainer = trainer_for(tmp_path, rows(32, seed=7), rows(4, seed=8), eval_strategy="no", save_strategy="no")
    trainer.add_callback(stop_at(error, step=2))
    cb = callback(tmp_path).attach(trainer)
    with pytest.raises(type(error)):
        trainer.train()
    assert cb.result.status == status and cb.result.phase("train").energy_j > 0
    with open_store(str(tmp_path / "runs.db")) as store:
        (record,) = store.list_runs()
        stored_rows = store.energy_measurements(record["run_id"])
    assert record["status"] == status and record["message"].startswith(type(error).__name__)
    assert record["steps"] == 2 and record["tokens_seen"] == cb.result.job.tokens > 0
    assert any(r["phase"] == "train" and r["energy_j"] > 0 for r in stored_rows)


def test_resumed_training_is_a_new_run_naming_the_one_it_continues(tmp_path: Path) -> None:
    train, val = rows(32, seed=9), rows(4, seed=10)
    first = trainer_for(tmp_path, train, val, eval_strategy="no", max_steps=2)
    first_cb = callback(tmp_path).attach(first)
    first.train()
    second = trainer_for(tmp_path, train, val, eval_strategy="no", max_steps=4)
    second_cb = callback(tmp_path).attach(second)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        second.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert second_cb.monitor.metadata["resumed_from_run_id"] == first_cb.result.run_id
    assert second_cb.monitor.metadata["resumed_at_step"] == 2
    assert second_cb.result.job.steps == 2  # only the new session's steps
    with open_store(str(tmp_path / "runs.db")) as store:
        assert {r["status"] for r in store.list_runs()} == {"finished"} and len(store.list_runs()) == 2


def test_a_tracker_spec_logs_the_energy_to_a_real_mlflow_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trainer = trainer_for(tmp_path, rows(16, seed=7), rows(4, seed=8), max_steps=2, eval_steps=1,
                          save_strategy="no")
    callback(tmp_path, name="hf-mlflow", trackers=[f"mlflow:{uri}#hf"]).attach(trainer)
    trainer.train()
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("hf").experiment_id])
    with open_store(str(tmp_path / "runs.db")) as store:
        (stored,) = store.list_runs()
    assert run.data.params["run_id"] == stored["run_id"]
    history = client.get_metric_history(run.info.run_id, "energy_j/train")
    assert len(history) >= 2 and all(m.value > 0 for m in history)
    # The last value logged is the stored run's training-phase energy (the fake meter draws 100 W).
    train_j = sum(r["energy_j"] for r in store_phase_rows(tmp_path / "runs.db", stored["run_id"])
                  if r["phase"] == "train")
    assert history[-1].value == pytest.approx(train_j, rel=1e-6)


def store_phase_rows(path: Path, run_id: str) -> list[dict]:
    with open_store(str(path)) as store:
        return [r for r in store.energy_measurements(run_id) if r["scope"] == "phase"]

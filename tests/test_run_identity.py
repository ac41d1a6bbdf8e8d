"""A run's identity: the run id (and config hash) come from the fields marked as identity, and stay stable.

The golden values were computed with the code before identity was marked on the dataclass fields
(commit 09f7139): runs stored then must keep their ids so that they still resume.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from wattscale.config import RunConfig, TrainConfig, build_run_config, earlier_run_ids, load_toml, run_id_for
from wattscale.data import DataConfig, data_fingerprint
from wattscale.data.sources import open_source
from wattscale.experiment import load_experiment, plan_experiment
from wattscale.identity import identity_field, identity_names
from wattscale.model import ModelConfig
from wattscale.store import open_store
from wattscale.train.session import config_hash_for

FINGERPRINT = "fp0"


def _config(model=None, train=None, data=None, meter=None) -> RunConfig:
    overrides = {"model": {"preset": "llama-tiny", **(model or {})},
                 "train": {"tokens": 10_000, "batch_size": 4, **(train or {})}}
    if data:
        overrides["data"] = data
    if meter:
        overrides["meter"] = meter
    return build_run_config(None, overrides)


def _config_hash(config: RunConfig) -> str:
    """The runs.config_hash a training session stores for `config` (see Session._record_start)."""
    resolved = config.to_dict()
    resolved["data_fingerprint"] = FINGERPRINT
    resolved["resolved"] = {"device": "cpu", "precision": "fp32", "world_size": 1, "eval_interval_tokens": 1024,
                            "checkpoint_interval_tokens": 1024, "total_steps": 10, "warmup_steps": 1}
    return config_hash_for(resolved)


RUN_TOML = ('[model]\npreset = "llama-1m"\n[train]\ntokens = 131072\nbatch_size = 8\nseq_len = 128\nlr = 2e-3\n'
            'eval_interval_tokens = 16384\n[data]\nsource = "synthetic"\nsynthetic_mb = 1.0\n[meter]\nsample_hz = 20\n')

CASES = {
    "defaults": {},
    "preset_override": {"model": {"preset": "llama-4m", "n_layers": 2, "rope_base": 500000.0}},
    "data_tokens_epochs": {"train": {"tokens": None, "data_tokens": 4096, "epochs": 2}},
    "repeat": {"train": {"repeat": 3, "seed": 7}},
    "optimiser": {"train": {"lr": 1e-3, "schedule": "wsd", "eval_at_start": True, "precision": "fp32",
                            "device": "cpu"}},
    "data_meter": {"data": {"synthetic_mb": 0.5, "val_fraction": 0.1},
                   "meter": {"sample_hz": 50.0, "idle_seconds": 0.0}},
    "non_identity": {"train": {"run_root": "/x", "name": "n", "threads": 2, "parallel": "fsdp",
                               "checkpoint_interval_tokens": 0}},
}

GOLDEN = {  # case: (run id, config hash)
    "defaults": ("6aa515f192a54313", "6f5595028c9cd2407ba5f3a0b596abbe94529580b311aaffe455515df6d52ba0"),
    "preset_override": ("004cdd880d79a1d7", "56db5d9b11407dc52f2dfd277778d26460ec65f7adabc4aca4e7f792b29e22fc"),
    "data_tokens_epochs": ("ff6a6e9ddc65dc78", "bbeec5df1a49ff90576faf9b5090485cfa8cc4b9a319383eac0a12072e647e73"),
    "repeat": ("f5f67bb1f424d902", "fd6c436235af5a2c4f536df3fc0fb1ea56b0d8136879e7436fc49fba03a372be"),
    "optimiser": ("a2ed8a9995c410ca", "d89eb571fdc45f6067dfb445189bf25c8b032cfc8acbdabeb77e6901b75c5450"),
    "data_meter": ("3cd9c534907e083f", "5f8718d1160e60516cbdc80d666411256ec0f9ac1e99c343e925f4095e65cc29"),
    "non_identity": ("6aa515f192a54313", "d6b248d806f87b1ae8c96f2f462d7bd5e1dd1ac26e12d818cca355eae9607cfa"),
    "toml_file": ("f22bc3e9af679929", "0f8003587fca95306af3dfc8b0934d9aaf8b3009ade6d0e810723f8dfd2a1de0"),
}

EXPERIMENT_TOML = '''[experiment]
name = "golden"
repetitions = 2
seeds = "per-repetition"
order = "random-blocks"
[model]
preset = "llama-tiny"
[train]
epochs = 1
batch_size = 4
seq_len = 64
eval_tokens = 4096
device = "cpu"
threads = 2
[data]
source = "synthetic"
synthetic_mb = 0.5
[grid]
"train.data_tokens" = [2048, 4096]
"train.lr" = [0.001, 0.003]
'''

GOLDEN_PLAN = [  # (data_tokens, lr, seed, run id) in the plan's order
    (4096, 0.001, 0, "0e6d7dd73bcff3f6"), (2048, 0.001, 0, "eb5062ee9f2968af"),
    (2048, 0.003, 0, "b9613953677ef57a"), (4096, 0.003, 0, "ea6d223f85345676"),
    (4096, 0.001, 1, "6593225afa27dfeb"), (2048, 0.003, 1, "6e51b6a72961f8ed"),
    (4096, 0.003, 1, "06d0c4b63384c56d"), (2048, 0.001, 1, "4d50913e7725ae52"),
]


def _case(name: str, tmp_path: Path) -> RunConfig:
    if name == "toml_file":
        path = tmp_path / "run.toml"
        path.write_text(RUN_TOML)
        return build_run_config(load_toml(path))
    return _config(**CASES[name])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_run_ids_and_config_hashes_match_those_stored_before(name: str, tmp_path: Path) -> None:
    config = _case(name, tmp_path)
    assert (run_id_for(config, FINGERPRINT), _config_hash(config)) == GOLDEN[name]


def test_experiment_plan_run_ids_match_those_stored_before(tmp_path: Path) -> None:
    path = tmp_path / "golden.toml"
    path.write_text(EXPERIMENT_TOML)
    plan = plan_experiment(load_experiment(path), tmp_path / "cache", prepare=False)
    got = [(r.config.train.data_tokens, r.config.train.lr, r.config.train.seed, r.run_id) for r in plan.runs]
    assert got == GOLDEN_PLAN


def _with_new_field(config: RunConfig, section: str, new_field: tuple) -> RunConfig:
    """`config` whose `section` dataclass is a subclass with one more field (at its default)."""
    part = getattr(config, section)
    cls = dataclasses.make_dataclass(f"New{type(part).__name__}", [new_field], bases=(type(part),), frozen=True)
    values = {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}
    return dataclasses.replace(config, **{section: cls(**values)})


@pytest.mark.parametrize("section", ["model", "train", "data", "meter"])
@pytest.mark.parametrize("value", [0, 7])
def test_an_unmarked_new_field_leaves_run_ids_unchanged(section: str, value: int, tmp_path: Path) -> None:
    for name in ("defaults", "data_tokens_epochs", "repeat", "toml_file"):
        config = _case(name, tmp_path)
        extended = _with_new_field(config, section, ("new_knob", int, dataclasses.field(default=value)))
        assert extended != config and getattr(extended, section).new_knob == value
        assert run_id_for(extended, FINGERPRINT) == GOLDEN[name][0]


def test_an_unmarked_new_section_leaves_run_ids_unchanged() -> None:
    config = _config()
    cls = dataclasses.make_dataclass("NewRunConfig", [("extra", dict, dataclasses.field(default_factory=dict))],
                                     bases=(RunConfig,), frozen=True)
    extended = cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, extra={"a": 1})
    assert run_id_for(extended, FINGERPRINT) == GOLDEN["defaults"][0]


@pytest.mark.parametrize("section", ["model", "train", "data"])
def test_a_marked_new_field_enters_the_run_id(section: str) -> None:
    config = _config()
    marked = _with_new_field(config, section, ("new_knob", int, identity_field(3)))
    assert run_id_for(marked, FINGERPRINT) != GOLDEN["defaults"][0]
    later = _with_new_field(config, section, ("new_knob", int, identity_field(3, since=3)))
    assert run_id_for(later, FINGERPRINT) == GOLDEN["defaults"][0]  # at its default: runs stored before keep ids
    changed = dataclasses.replace(later, **{section: dataclasses.replace(getattr(later, section), new_knob=4)})
    assert run_id_for(changed, FINGERPRINT) != GOLDEN["defaults"][0]


CHANGES = {  # one marked field of each config and a value other than the default case's
    "model": {"n_layers": 3, "rope_base": 20000.0, "name": "renamed", "init_std": 0.01},
    "train": {"tokens": 20_000, "seed": 1, "repeat": 1, "lr": 1e-3, "schedule": "constant", "eval_tokens": 1024,
              "device": "cpu", "precision": "fp32", "compile": True, "divergence_factor": 3.0,
              "deterministic": True},
    "data": {"source": "other.txt", "synthetic_mb": 2.0, "synthetic_seed": 1, "val_fraction": 0.1},
}


@pytest.mark.parametrize("section,key,value", [(s, k, v) for s, kv in CHANGES.items() for k, v in kv.items()])
def test_changing_a_marked_field_changes_the_run_id(section: str, key: str, value: object) -> None:
    config = _config()
    changed = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **{key: value})})
    assert run_id_for(changed, FINGERPRINT) != run_id_for(config, FINGERPRINT)


def test_the_identity_fields_are_marked_on_the_dataclasses() -> None:
    assert identity_names(RunConfig) == ("model", "train", "data", "gpu")
    assert set(identity_names(ModelConfig)) == {f.name for f in dataclasses.fields(ModelConfig)}
    assert set(identity_names(DataConfig)) == {f.name for f in dataclasses.fields(DataConfig)}
    not_identity = {f.name for f in dataclasses.fields(TrainConfig)} - set(identity_names(TrainConfig))
    assert not_identity == {"checkpoint_interval_tokens", "run_root", "name", "threads", "parallel", "track",
                            "log_interval_steps"}


# --- data paths: their content counts, not where they lie ----------------------------------------------

LOCAL_DATA = {"source": "/data/stories/train.txt", "val_source": "/data/stories/val.txt", "tokenizer": "/data/tok.json"}


def test_a_local_data_path_enters_the_id_as_local_and_its_earlier_id_is_found_again() -> None:
    config = _config(data=LOCAL_DATA)
    # Computed with the code before (commit fff5295), when the absolute paths entered the id.
    assert earlier_run_ids(config, FINGERPRINT) == ("be5f32d4236cbc6f",)
    assert run_id_for(config, FINGERPRINT) == "c752072abf322866"
    moved = _config(data={key: value.replace("/data/", "/elsewhere/") for key, value in LOCAL_DATA.items()})
    assert run_id_for(moved, FINGERPRINT) == run_id_for(config, FINGERPRINT)
    assert earlier_run_ids(moved, FINGERPRINT) != earlier_run_ids(config, FINGERPRINT)
    assert run_id_for(moved, "other content") != run_id_for(config, FINGERPRINT)
    assert earlier_run_ids(_config(), FINGERPRINT) == ()  # synthetic data: the id never changed


def _corpus(path: Path, mb: float = 0.3, seed: int = 0) -> Path:
    """A text file of generated stories (the built-in corpus, written out as a local file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    documents = open_source("synthetic", synthetic_mb=mb, synthetic_seed=seed).iter_documents()
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return path


def test_the_same_text_in_another_folder_is_the_same_run(tmp_path: Path) -> None:
    here, there = _corpus(tmp_path / "a" / "stories.txt"), tmp_path / "b" / "stories.txt"
    there.parent.mkdir()
    shutil.copyfile(here, there)
    vocab = _config().model.vocab_size
    fingerprints = [data_fingerprint(DataConfig(source=str(path)), vocab) for path in (here, there)]
    assert fingerprints[0] == fingerprints[1]
    ids = [run_id_for(_config(data={"source": str(path)}), fingerprint)
           for path, fingerprint in zip((here, there), fingerprints, strict=True)]
    assert ids[0] == ids[1]
    there.write_text(there.read_text(encoding="utf-8") + "One more story.\n", encoding="utf-8")
    assert data_fingerprint(DataConfig(source=str(there)), vocab) != fingerprints[0]


TRAIN_ARGS = ("--preset", "llama-tiny", "--tokens", "2048", "--batch-size", "4", "--seq-len", "32",
              "--eval-tokens", "2048", "--idle-seconds", "0", "--no-progress", "--json")


def test_a_run_stored_under_its_earlier_id_is_renamed_not_trained_again(run_cli_in_process, tmp_path: Path,
                                                                        cache_dir: Path) -> None:
    """A store written before the change: `train` and `run` find its runs under their earlier ids."""
    source = _corpus(tmp_path / "data" / "stories.txt")
    common = ("--store", "s.db", "train", *TRAIN_ARGS, "--cache-dir", str(cache_dir))
    first = run_cli_in_process(*common, "--data", str(source))
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    config = _config(data={"source": str(source)},
                     train={"tokens": 2048, "seq_len": 32, "eval_tokens": 2048})
    fingerprint = data_fingerprint(DataConfig(source=str(source)), config.model.vocab_size)
    (earlier,) = earlier_run_ids(config, fingerprint)
    with open_store(tmp_path / "s.db") as store:
        assert store.rename_run(run_id, earlier)  # as the code before stored it
        steps = len(store.train_steps(earlier))

    again = run_cli_in_process(*common, "--data", str(source))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["already_done"] is True
    assert f"run {earlier} is now run {run_id}" in again.stderr
    with open_store(tmp_path / "s.db") as store:
        assert [r["run_id"] for r in store.list_runs()] == [run_id] and len(store.train_steps(run_id)) == steps

    moved = tmp_path / "copy" / "stories.txt"
    moved.parent.mkdir()
    shutil.copyfile(source, moved)
    elsewhere = run_cli_in_process(*common, "--data", str(moved))
    assert elsewhere.returncode == 0 and json.loads(elsewhere.stdout)["already_done"] is True


STUDY_ON_A_FILE = """
[experiment]
name = "on-a-file"
repetitions = 1
[model]
preset = "llama-tiny"
[train]
batch_size = 4
seq_len = 32
eval_tokens = 2048
[data]
source = "data/stories.txt"
[meter]
idle_seconds = 0
[grid]
"train.tokens" = [1024, 2048]
"""


def test_an_experiment_stored_under_earlier_ids_resumes_where_it_was(run_cli_in_process, tmp_path: Path,
                                                                     cache_dir: Path) -> None:
    _corpus(tmp_path / "data" / "stories.txt")
    (tmp_path / "study.toml").write_text(STUDY_ON_A_FILE, encoding="utf-8")
    command = ("--store", "s.db", "run", "study.toml", "--cache-dir", str(cache_dir), "--no-progress")
    assert run_cli_in_process(*command).returncode == 0
    plan = plan_experiment(load_experiment(tmp_path / "study.toml"), cache_dir, prepare=False)
    with open_store(tmp_path / "s.db") as store:
        for run in plan.runs:  # the store as the code before wrote it: runs and plan under the earlier ids
            assert store.rename_run(run.run_id, run.earlier_run_ids[0])
    planned = json.loads(run_cli_in_process("--store", "s.db", "plan", "study.toml", "--cache-dir", str(cache_dir),
                                            "--json").stdout)
    assert planned["done_runs"] == 2  # plan reads them under their earlier ids (and writes nothing)

    again = run_cli_in_process(*command)
    assert again.returncode == 0 and "(2 were already done)" in again.stdout
    assert again.stderr.count("is now run") == 2
    with open_store(tmp_path / "s.db") as store:
        assert [r["run_id"] for r in store.experiment_runs("on-a-file")] == [r.run_id for r in plan.runs]
        assert {r["run_id"] for r in store.list_runs()} == {r.run_id for r in plan.runs}

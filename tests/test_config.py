"""Configuration: TOML + flags merge, validation errors that name the field, stable run ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from wattscale.config import build_run_config, load_toml, run_id_for
from wattscale.errors import ConfigError


def _config(**train):
    return build_run_config(overrides={"model": {"preset": "llama-tiny"},
                                       "train": {"tokens": 10_000, "batch_size": 4, **train}})


def test_flags_override_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[model]\npreset = "llama-4m"\n[train]\ntokens = 100000\nlr = 0.001\n[data]\nsource = "synthetic"\n')
    config = build_run_config(load_toml(f), {"train": {"lr": 0.002, "seed": None}})
    assert config.model.name == "llama-4m" and config.train.tokens == 100_000
    assert config.train.lr == 0.002 and config.train.seed == 0


def test_run_id_depends_on_what_is_computed_not_where_it_is_stored() -> None:
    a = run_id_for(_config(), "data1")
    assert a == run_id_for(_config(run_root="elsewhere", checkpoint_interval_tokens=512, name="x"), "data1")
    assert a != run_id_for(_config(seed=1), "data1")
    assert a != run_id_for(_config(), "data2")
    assert len(a) == 16


@pytest.mark.parametrize("toml,field", [
    ('[train]\ntokens = 10\nbogus = 1\n[model]\npreset = "llama-tiny"\n', "train.bogus"),
    ('[model]\npreset = "llama-tiny"\nlayers = 3\n[train]\ntokens = 100000\n', "model.layers"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = "many"\n', "train.tokens"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = 100000\nschedule = "linear"\n', "train.schedule"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = 100000\n[extra]\na = 1\n', "extra"),
    ('[model]\npreset = "nope"\n[train]\ntokens = 100000\n', "model.preset"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = 100\n', "train.tokens"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = -5\n', "train.tokens"),
    ('[model]\npreset = "llama-tiny"\n[train]\ntokens = 100000\nseq_len = 4096\n', "train.seq_len"),
    ('[model]\npreset = "llama-tiny"\n[data]\nsource = "synthetic"\n', "train.tokens"),
])
def test_bad_config_names_the_field(tmp_path: Path, toml: str, field: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as info:
        build_run_config(load_toml(f))
    assert str(info.value).startswith(field) or f"{field}:" in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_toml(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[train\ntokens = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(f)
    with pytest.raises(ConfigError, match="not found"):
        load_toml(tmp_path / "missing.toml")


def test_budget_smaller_than_one_batch_message() -> None:
    with pytest.raises(ConfigError, match=r"smaller than one batch \(4 x 64 = 256 tokens\)"):
        _config(tokens=255)

"""Checkpoints on disk: durable writes (fsync before every rename), the newest two kept, and the fallback
from a checkpoint that cannot be read to the one before it. The trainer's resume is in test_train.py."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from wattscale.errors import DataError
from wattscale.train.checkpoints import (
    CheckpointMeta,
    CheckpointWarning,
    ResumePoint,
    list_checkpoints,
    load_checkpoint,
    load_newest,
    save_checkpoint,
    save_weights,
)


def _model(seed: int = 0, n_in: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(n_in, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    _step(model, optimizer)  # so that the optimiser has state to save
    return model, optimizer


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(2, model.in_features)).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def _meta(step: int) -> CheckpointMeta:
    return CheckpointMeta(step=step, tokens_seen=128 * step, sequences_consumed=4 * step, wall_seconds=0.5 * step,
                          best_loss_ema=None, loss_ema=None)


def _loader(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Callable[[Path], CheckpointMeta]:
    return lambda path: load_checkpoint(path, model, optimizer)


def _names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


def test_the_newest_two_checkpoints_are_kept(tmp_path: Path) -> None:
    model, optimizer = _model()
    for step in (8, 16, 24, 32):
        save_checkpoint(tmp_path, model, optimizer, _meta(step))
    assert _names(tmp_path) == ["step-00000024", "step-00000032"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == _names(tmp_path)  # no .tmp left


def test_every_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Record fsyncs by inode: a rename keeps a file's inode, so the files in the final folder can be matched
    # with the fsyncs made while they were still in the temporary one.
    events: list[tuple[str, object]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("replace", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model, optimizer = _model()
    final = save_checkpoint(tmp_path, model, optimizer, _meta(8))
    rename = events.index(("replace", final.name))
    before, after = set(events[:rename]), set(events[rename + 1:])
    files = sorted(final.iterdir())
    assert [f.name for f in files] == ["meta.json", "model.safetensors", "trainer_state.pt"]
    for path in [*files, final]:  # final: the temporary folder, renamed
        assert ("fsync", path.stat().st_ino) in before, path.name
    assert ("fsync", final.parent.stat().st_ino) in after

    events.clear()
    weights = tmp_path / "final" / "model.safetensors"
    save_weights(weights, model)
    rename = events.index(("replace", weights.name))
    assert ("fsync", weights.stat().st_ino) in events[:rename]
    assert ("fsync", weights.parent.stat().st_ino) in events[rename + 1:]


# Ways a file can come back from a power loss or a bad disk, and the reason the warning gives.
DAMAGE = {
    "model cut in half": ("model.safetensors", lambda b: b[: len(b) // 2], "model.safetensors: SafetensorError"),
    "model empty": ("model.safetensors", lambda b: b"", "model.safetensors: SafetensorError"),
    "trainer state cut in half": ("trainer_state.pt", lambda b: b[: len(b) // 2], "trainer_state.pt: "),
    "trainer state empty": ("trainer_state.pt", lambda b: b"", "trainer_state.pt: EOFError"),
    "meta not JSON": ("meta.json", lambda b: b[:7], "meta.json: JSONDecodeError"),
    "meta missing fields": ("meta.json", lambda b: b'{"step": 16}', "meta.json: TypeError"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path, damage) -> None:
    name, cut, reason = damage
    model, optimizer = _model()
    save_checkpoint(tmp_path, model, optimizer, _meta(8))
    weights_at_8 = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, optimizer)
    newest = save_checkpoint(tmp_path, model, optimizer, _meta(16))
    damaged = cut((newest / name).read_bytes())
    (newest / name).write_bytes(damaged)

    fresh, fresh_optimizer = _model(seed=1)
    with pytest.warns(CheckpointWarning) as caught:
        resume = load_newest(tmp_path, _loader(fresh, fresh_optimizer))
    assert (resume.meta, resume.path) == (_meta(8), tmp_path / "checkpoints" / "step-00000008")
    aside = tmp_path / "checkpoints" / "corrupt-step-00000016"
    (message,) = resume.skipped
    assert message.startswith(f"skipped checkpoint step-00000016 ({reason}")
    assert "resuming from step-00000008" in message and str(aside) in message and "\n" not in message
    assert [str(w.message) for w in caught] == [message]
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, weights_at_8[key]), key
    # The damaged one is kept, as it was, for inspection; it is no longer a checkpoint of the run.
    assert (aside / name).read_bytes() == damaged
    assert _names(tmp_path) == ["step-00000008"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_newest(tmp_path, _loader(fresh, fresh_optimizer))
    assert (again.meta.step, again.skipped) == (8, ())
    # The run goes on: the step it writes again and the one after are the two kept, the damaged one stays aside.
    for step in (16, 24):
        save_checkpoint(tmp_path, model, optimizer, _meta(step))
    assert _names(tmp_path) == ["step-00000016", "step-00000024"] and aside.is_dir()


def test_a_step_damaged_twice_keeps_both_copies(tmp_path: Path) -> None:
    model, optimizer = _model()
    save_checkpoint(tmp_path, model, optimizer, _meta(8))
    for _ in range(2):
        newest = save_checkpoint(tmp_path, model, optimizer, _meta(16))
        (newest / "meta.json").write_text("{")
        with pytest.warns(CheckpointWarning):
            assert load_newest(tmp_path, _loader(*_model())).meta.step == 8
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["corrupt-step-00000016", "corrupt-step-00000016-2",
                                                      "step-00000008"]


def test_no_checkpoint_means_a_fresh_start(tmp_path: Path) -> None:
    assert load_newest(tmp_path, _loader(*_model())) == ResumePoint(meta=None, path=None, skipped=())


def test_every_checkpoint_unreadable_is_a_one_line_data_error_and_moves_nothing(tmp_path: Path) -> None:
    model, optimizer = _model()
    for step in (8, 16):
        (save_checkpoint(tmp_path, model, optimizer, _meta(step)) / "model.safetensors").write_bytes(b"")
    with pytest.raises(DataError) as raised:
        load_newest(tmp_path, _loader(*_model()))
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"no checkpoint in {tmp_path / 'checkpoints'} can be loaded (step-00000016: "
                              "model.safetensors: SafetensorError")
    assert "; step-00000008: model.safetensors: SafetensorError" in message
    assert message.endswith("rename or delete that folder and re-run the same command")
    assert _names(tmp_path) == ["step-00000008", "step-00000016"]


def test_checkpoints_that_do_not_fit_the_model_are_not_moved_aside(tmp_path: Path) -> None:
    """A mismatch every checkpoint shares (another model) is not damage: it fails without touching them."""
    model, optimizer = _model()
    for step in (8, 16):
        save_checkpoint(tmp_path, model, optimizer, _meta(step))
    with pytest.raises(DataError, match=r"step-00000016: RuntimeError: Error\(s\) in loading state_dict"):
        load_newest(tmp_path, _loader(*_model(n_in=5)))
    assert _names(tmp_path) == ["step-00000008", "step-00000016"]
